from stalwart.events import EventLog


def test_line_format_and_levels(tmp_path):
    path = tmp_path / "log"
    log = EventLog("info", str(path))
    log.emit("network.listen-start", ListenerId="smtp", LocalIp="0.0.0.0", LocalPort=25, Tls=False)
    log.emit("smtp.connection-start", SpanId=1)  # debug: filtered out at info
    log.emit("server.reload-error", Reason='bad "quote"\nline')
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith('network.listen-start ListenerId=smtp LocalIp=0.0.0.0 LocalPort=25 Tls=false')
    assert ' ERROR ' in lines[1] and 'Reason="bad \\"quote\\"\\nline"' in lines[1]


def test_subscribers_see_events_whatever_the_level(tmp_path):
    log = EventLog("off", str(tmp_path / "log"))
    seen = []
    log.subscribe("auth.failed", lambda event, keys: seen.append((event, keys)))
    log.subscribe("auth.failed", lambda event, keys: 1 / 0)  # a broken subscriber is isolated
    log.emit("auth.failed", RemoteIp="192.0.2.1", AccountName="bob")
    assert seen == [("auth.failed", {"RemoteIp": "192.0.2.1", "AccountName": "bob"})]
    assert (tmp_path / "log").read_text() == ""


def test_reopen_moves_to_new_file(tmp_path):
    path = tmp_path / "log"
    log = EventLog("info", str(path))
    log.emit("server.ready")
    path.rename(tmp_path / "log.1")
    log.reopen()
    log.emit("server.stopped")
    assert "server.stopped" in path.read_text() and "server.stopped" not in (tmp_path / "log.1").read_text()


def test_sensitive_values_never_reach_the_log(tmp_path):
    from stalwart.events import Sensitive

    log = EventLog("info", str(tmp_path / "log"))
    seen = []
    log.subscribe("auth.failed", lambda event, keys: seen.append(keys["Credential"].value))
    log.emit("auth.failed", level="info", AccountName="bob", Credential=Sensitive(b"hunter2"))
    assert seen == [b"hunter2"]
    text = (tmp_path / "log").read_text()
    assert "hunter2" not in text and "Credential=***" in text
