"""The shared metrics table behind GET /metrics: per-slot rows, event counting, Prometheus rendering."""
import os

from prometheus_client.parser import text_string_to_metric_families

from stalwart import events
from stalwart.protocols.http.metrics import MetricsTable, render_counters


def families(lines):
    return {f.name: f for f in text_string_to_metric_families("\n".join(lines) + "\n")}


def sample(fams, name, **labels):
    return next(s.value for f in fams.values() for s in f.samples if s.name == name and s.labels == labels)


def test_rows_sum_across_slots_and_forked_writers():
    table = MetricsTable(max_listeners=4, max_workers=3)
    a = table.recorder(0, {"smtp": 0, "https": 2})
    for _ in range(3):
        a.accepted(0)
    a.session(0)
    pid = os.fork()
    if pid == 0:  # a second worker, in another process, writes its own row
        b = table.recorder(2, {"smtp": 0, "https": 2})
        b.accepted(0)
        b.accepted(2)
        os._exit(0)
    os.waitpid(pid, 0)
    listeners, bans = table.snapshot()
    assert listeners["smtp"]["accepted"] == 4 and listeners["smtp"]["sessions"] == 1
    assert listeners["https"]["accepted"] == 1
    assert set(listeners) == {"smtp", "https"} and bans == dict.fromkeys(bans, 0)


def test_events_are_counted_per_listener_and_reason():
    table = MetricsTable(max_listeners=4, max_workers=2)
    rec = table.recorder(1, {"smtp": 0, "https": 1})
    rec.subscribe()
    try:
        events.emit("limit.concurrent-connection", level="off", ListenerId="smtp", Details="listener")
        events.emit("limit.concurrent-connection", level="off", ListenerId="smtp", Details="server")
        events.emit("security.ip-blocked", level="off", ListenerId="https", RemoteIp="192.0.2.1")
        events.emit("tls.handshake", level="off", ListenerId="https")
        events.emit("tls.handshake-error", level="off", ListenerId="https", Reason="timeout")
        events.emit("security.scan-ban", level="off", RemoteIp="192.0.2.1")
        events.emit("security.ip-blocked", level="off", ListenerId="unknown")
    finally:
        rec.unsubscribe()
    listeners, bans = table.snapshot()
    assert listeners["smtp"]["refused_listener_limit"] == 1 and listeners["smtp"]["refused_server_limit"] == 1
    assert listeners["https"]["refused_blocked"] == 1
    assert listeners["https"]["tls_handshakes"] == 1 and listeners["https"]["tls_failures"] == 1
    assert bans["portScanning"] == 1 and bans["authFailure"] == 0


def test_render_parses_as_prometheus():
    table = MetricsTable(max_listeners=2, max_workers=1)
    rec = table.recorder(0, {'we"ird\\name': 0, "imap": 1})
    rec.accepted(0)
    rec.session(0)
    rec.session(1)
    fams = families(render_counters(*table.snapshot(), [('we"ird\\name', "http"), ("imap", "imap")]))
    assert sample(fams, "stalwart_connections_accepted_total", listener='we"ird\\name') == 1
    assert sample(fams, "stalwart_sessions_total", protocol="http") == 1
    assert sample(fams, "stalwart_sessions_total", protocol="imap") == 1
    assert sample(fams, "stalwart_connections_refused_total", listener="imap", reason="blocked") == 0
    assert sample(fams, "stalwart_bans_total", category="authFailure") == 0


def test_a_reused_listener_index_starts_from_zero():
    table = MetricsTable(max_listeners=2, max_workers=2)
    table.recorder(0, {"old": 1}).accepted(1)
    table.recorder(1, {"old": 1}).accepted(1)
    assert table.snapshot()[0]["old"]["accepted"] == 2
    table.recorder(0, {"new": 1}).accepted(1)
    listeners, _ = table.snapshot()
    assert "old" not in listeners and listeners["new"]["accepted"] == 1
    table.recorder(1, {"new": 1})  # same name again: nothing is cleared
    assert table.snapshot()[0]["new"]["accepted"] == 1
