"""SMTP/LMTP DATA in bounded memory: the chunked reader, the spool file and its delivery.

Core tests feed random chunkings into the reader and into a session with a tiny spool threshold;
end-to-end tests send 20 MiB through a real stalwartd and watch the worker's memory and the spool.
"""
import os
import smtplib
import socket
import struct
import threading
import time

import psutil
import pytest
from harness import Server, free_port, listener, recv_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailcore import ctx as make_ctx
from mailcore import drive, replies, services

from stalwart.accounts import hash_password
from stalwart.mailstore import spool as spool_mod
from stalwart.mailstore.maildir import copy_file
from stalwart.protocols.base import NEED_DATA, Blocking
from stalwart.protocols.smtp import SmtpSession
from stalwart.protocols.smtp_data import NEED_MORE, SPOOL, SPOOL_THRESHOLD, DataReader

# Bodies made of the pieces that matter for dot-stuffing and the terminator.
PIECES = [b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.", b"\r\n.\r\n", b"a", b"xyz", b"\n.\n"]
bodies = st.lists(st.sampled_from(PIECES), max_size=60).map(b"".join).map(
    lambda b: b + b"\r\n" if b and not b.endswith(b"\r\n") else b)  # smtplib ends a body with CRLF


def read(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def stuff(body: bytes) -> bytes:
    """What a client sends after 354 (RFC 5321 §4.5.2): dots doubled at line starts, then "." CRLF."""
    return (b"\r\n" + body).replace(b"\r\n.", b"\r\n..")[2:] + b".\r\n"


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points + [len(data)]:
        out.append(data[prev:p])
        prev = p
    return [c for c in out if c]


def read_all(reader: DataReader, chunks: list[bytes], threshold: int) -> tuple[bytes, bytes, int]:
    """Drive ``reader`` as the session does: (body, bytes after the terminator, peak pending)."""
    out, peak = bytearray(), 0
    for i, chunk in enumerate(chunks):
        end = reader.feed(bytearray(chunk), 0)
        peak = max(peak, reader.pending)
        if end >= 0:
            out += reader.finish()
            return bytes(out), chunk[end:] + b"".join(chunks[i + 1:]), peak
        assert end == (SPOOL if reader.pending >= threshold and not reader.oversize else NEED_MORE)
        if end == SPOOL:
            out += reader.take()
    raise AssertionError("terminator not found")


@settings(max_examples=400, deadline=None)
@given(body=bodies, cuts=st.lists(st.integers(0, 10 ** 6), max_size=30), threshold=st.integers(1, 40),
       trailer=st.sampled_from([b"", b"QUIT\r\n", b"\r\n.\r\n"]))
def test_reader_any_chunking_gives_the_unstuffed_body(body, cuts, threshold, trailer):
    wire = stuff(body) + trailer
    chunks = split(wire, cuts)
    reader = DataReader(max_size=10 ** 9, threshold=threshold)
    got, rest, peak = read_all(reader, chunks, threshold)
    assert got == body
    assert rest == trailer
    assert reader.size == len(body) and not reader.oversize
    assert peak <= max(threshold, 4) + max(map(len, chunks)) + 2  # bounded by threshold + one read


@settings(max_examples=300, deadline=None)
@given(body=bodies, cuts=st.lists(st.integers(0, 10 ** 6), max_size=30), threshold=st.integers(1, 40),
       limit=st.integers(0, 200))
def test_reader_limit_is_exact_on_the_unstuffed_size(body, cuts, threshold, limit):
    reader = DataReader(max_size=limit, threshold=threshold)
    got, rest, _ = read_all(reader, split(stuff(body) + b"NOOP\r\n", cuts), threshold)
    assert rest == b"NOOP\r\n"  # drained to the terminator whatever the size
    assert reader.oversize == (len(body) > limit)
    if not reader.oversize:
        assert got == body


def test_reader_drains_oversize_in_constant_memory():
    reader = DataReader(max_size=1000)
    for _ in range(200):
        assert reader.feed(bytearray(b"y" * 4000 + b"\r\n"), 0) == NEED_MORE
        assert reader.pending < 5000
    assert reader.oversize
    assert reader.feed(bytearray(b".\r\n"), 0) == 3 and reader.finish() == b""


def test_reader_never_ends_on_bare_lf_dot():
    reader = DataReader(max_size=10 ** 6)
    for piece in (b"a\n.\n", b"b\r.\r", b"c\n.\r\n", b"d\r\n.\n"):
        assert reader.feed(bytearray(piece), 0) == NEED_MORE
    assert reader.feed(bytearray(b"\r\n.\r\n"), 0) == 5
    assert reader.finish() == b"a\n.\nb\r.\rc\n.\r\nd\r\n\n\r\n"


# -- the session with a spool ------------------------------------------------------------------
def session(tmp_path, lmtp=False, threshold=32, **kw):
    return SmtpSession(make_ctx(), lmtp=lmtp, services=services(tmp_path), spool_threshold=threshold, **kw)


def maildir_files(tmp_path, account):
    new = os.path.join(str(tmp_path), "mail", account, "new")
    return [os.path.join(new, n) for n in sorted(os.listdir(new))] if os.path.isdir(new) else []


def spool_files(tmp_path):
    d = os.path.join(str(tmp_path), "spool")
    return os.listdir(d) if os.path.isdir(d) else []


def spool_files_after_discard(tmp_path, timeout=5.0):
    """The spool files left once a discard's background removal had its chance (bounded wait)."""
    deadline = time.monotonic() + timeout
    while spool_files(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return spool_files(tmp_path)


ENVELOPE = b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<jane@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies.map(lambda b: b * 3), cuts=st.lists(st.integers(0, 10 ** 6), max_size=20),
       threshold=st.integers(8, 64), lmtp=st.booleans())
def test_spooled_message_delivered_byte_exact_to_two_recipients(tmp_path_factory, body, cuts, threshold, lmtp):
    tmp_path = tmp_path_factory.mktemp("spool")
    core = session(tmp_path, lmtp=lmtp, threshold=threshold)
    envelope = ENVELOPE.replace(b"EHLO", b"LHLO") if lmtp else ENVELOPE
    chunks = split(stuff(body) + b"NOOP\r\n", cuts)
    out = replies(drive(core, [envelope] + chunks))
    # Spooled iff some read before the one completing the terminator left threshold bytes pending.
    seen, spooled = 2, False
    for chunk in chunks:
        seen += len(chunk)
        if seen - 2 >= len(stuff(body)):
            break
        spooled = spooled or seen >= threshold
    if lmtp:
        assert out.endswith(b"250 2.1.5 <jane@example.org> delivered.\r\n"
                            b"250 2.1.5 <bob@example.org> delivered.\r\n250 2.0.0 OK\r\n")
    else:
        assert out.endswith(b"250 2.0.0 Message accepted for delivery.\r\n250 2.0.0 OK\r\n")
    (jane,), (bob,) = maildir_files(tmp_path, "jane"), maildir_files(tmp_path, "bob")
    data = read(jane)
    assert data.startswith(b"Received: from c (unknown [192.0.2.1])") and data.endswith(body)
    assert data.split(b"\r\n\t", 2)[2].split(b"\r\n", 1)[1] == body  # Received ends, the body starts
    assert read(bob) == data
    assert (os.stat(jane).st_ino == os.stat(bob).st_ino) == spooled  # spooled: one inode, two links
    assert spool_files(tmp_path) == []
    assert os.listdir(os.path.join(str(tmp_path), "mail", "jane", "tmp")) == []


def test_small_message_stays_in_memory(tmp_path):
    core = session(tmp_path, threshold=SPOOL_THRESHOLD)
    jobs = []
    core.receive_data(ENVELOPE + b"Subject: s\r\n\r\nsmall\r\n.\r\n")
    for _ in range(100):
        ev = core.next_event()
        if ev is NEED_DATA:
            break
        if isinstance(ev, Blocking):
            jobs.append(ev.fn.__name__)
            core.blocking_done(ev.fn(*ev.args), None)
    assert jobs == ["deliver_job"]  # no spool job: one write at the end, as before
    assert spool_files(tmp_path) == []


def test_oversized_spooled_message_is_552_and_leaves_nothing(tmp_path):
    core = session(tmp_path, threshold=64, max_message_size=1000)
    chunks = [ENVELOPE] + [b"y" * 98 + b"\r\n"] * 30 + [b".\r\nNOOP\r\n"]
    seen_spool = []
    out = []
    for chunk in chunks:
        out += drive(core, [chunk])
        seen_spool.append(len(spool_files(tmp_path)))
    assert 1 in seen_spool  # it did spool before going over the limit
    assert replies(out).endswith(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n"
                                 b"552 5.3.4 Message too big for system.\r\n250 2.0.0 OK\r\n")
    assert spool_files_after_discard(tmp_path) == [] and maildir_files(tmp_path, "jane") == []


def test_connection_closed_mid_data_removes_the_spool(tmp_path):
    core = session(tmp_path, threshold=64)
    drive(core, [ENVELOPE] + [b"z" * 100 + b"\r\n"] * 5)
    assert len(spool_files(tmp_path)) == 1
    core.connection_closed()
    assert spool_files_after_discard(tmp_path) == [] and maildir_files(tmp_path, "jane") == []


def test_discard_leaves_close_and_unlink_to_another_thread(tmp_path, monkeypatch):
    """Review finding: a client dropping mid-DATA made the event loop (connection_closed ->
    Spool.discard) close and unlink a file of up to 100 MiB itself, 5-50 ms of a stalled loop."""
    core = session(tmp_path, threshold=64)
    line = b"x" * 1022 + b"\r\n"
    drive(core, [ENVELOPE] + [line * 1024] * 32)  # 32 MiB spooled
    [name] = spool_files(tmp_path)
    path, spool_fd = os.path.join(str(tmp_path), "spool", name), core._spool._fd
    real_unlink, real_close = os.unlink, os.close
    seen = []

    def unlink(p, *a, **kw):
        if p == path:
            seen.append(("unlink", threading.current_thread()))
        return real_unlink(p, *a, **kw)

    def close(fd):
        if fd == spool_fd:
            seen.append(("close", threading.current_thread()))
        return real_close(fd)

    monkeypatch.setattr(spool_mod.os, "unlink", unlink)
    monkeypatch.setattr(spool_mod.os, "close", close)
    assert os.path.getsize(path) >= 32 << 20 and spool_fd is not None
    core.connection_closed()  # on this thread, which stands for the event loop
    assert spool_files_after_discard(tmp_path) == [] and maildir_files(tmp_path, "jane") == []
    assert sorted(op for op, _ in seen) == ["close", "unlink"]
    assert all(th is not threading.current_thread() for _, th in seen), seen


def test_discard_while_a_job_holds_the_spool_is_done_by_that_job(tmp_path):
    spool = spool_mod.Spool(str(tmp_path / "spool"))
    spool.append(b"H\r\n", b"body")
    assert len(os.listdir(tmp_path / "spool")) == 1
    entered, leave = threading.Event(), threading.Event()
    real_write = spool_mod.write_all

    def slow_write(fd, data):
        entered.set()
        assert leave.wait(5)
        real_write(fd, data)

    spool_mod.write_all = slow_write
    try:
        t = threading.Thread(target=spool.append, args=(b"", b"more"))
        t.start()
        assert entered.wait(5)
        spool.discard()  # the job holds the lock: discard must not wait for it
        assert len(os.listdir(tmp_path / "spool")) == 1
        leave.set()
        t.join(5)
    finally:
        spool_mod.write_all = real_write
    assert os.listdir(tmp_path / "spool") == []
    with pytest.raises(spool_mod.SpoolDiscarded):
        spool.append(b"", b"late")
    assert os.listdir(tmp_path / "spool") == []  # a late write never recreates the file


def test_disk_error_while_spooling_is_drained_then_451(tmp_path):
    core = session(tmp_path, threshold=64)
    (tmp_path / "spool").write_bytes(b"")  # a file where the directory should be: no spool file
    out = replies(drive(core, [ENVELOPE] + [b"w" * 100 + b"\r\n"] * 5 + [b".\r\nNOOP\r\n"]))
    assert out.endswith(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n"
                        b"451 4.3.0 Could not store the message, try again later.\r\n250 2.0.0 OK\r\n")
    assert maildir_files(tmp_path, "jane") == [] and core._data is None


def test_copy_when_a_link_cannot_be_made(tmp_path, monkeypatch):
    """Another filesystem (EXDEV): each recipient gets a fsynced copy; same bytes."""
    import errno

    def no_link(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    core = session(tmp_path, threshold=16)
    body = b"Subject: x\r\n\r\n" + b".line\r\n" * 50
    out = replies(drive(core, [ENVELOPE, stuff(body)]))
    assert out.endswith(b"250 2.0.0 Message accepted for delivery.\r\n")
    (jane,), (bob,) = maildir_files(tmp_path, "jane"), maildir_files(tmp_path, "bob")
    assert read(jane) == read(bob) and read(jane).endswith(body)
    assert os.stat(jane).st_ino != os.stat(bob).st_ino and spool_files(tmp_path) == []


def test_lmtp_spooled_message_one_recipient_failing(tmp_path):
    """RFC 2033 §4.2 with a spooled message: each recipient's own outcome, in RCPT order."""
    os.makedirs(tmp_path / "mail")
    (tmp_path / "mail" / "bob").write_bytes(b"")  # bob's Maildir cannot be created
    core = session(tmp_path, lmtp=True, threshold=16)
    body = b"Subject: y\r\n\r\n" + b"line\r\n" * 40
    out = replies(drive(core, [ENVELOPE.replace(b"EHLO", b"LHLO"), stuff(body)]))
    assert out.endswith(b"250 2.1.5 <jane@example.org> delivered.\r\n"
                        b"451 4.3.0 <bob@example.org> temporary failure, try again later.\r\n")
    (jane,) = maildir_files(tmp_path, "jane")
    assert read(jane).endswith(body) and spool_files(tmp_path) == []


def test_spool_deliver_puts_a_late_header_after_received(tmp_path):
    """The classification header is known only at the end: the one case that copies."""
    from stalwart.mailstore import MailStore

    store = MailStore(str(tmp_path))
    spool = store.new_spool()
    spool.append(b"Received: from x;\r\n\tdate\r\n", b"Subject: s\r\n\r\n")
    outcome = spool.deliver(store, b"body\r\n", b"X-Spam-LLM: SPAM\r\n", ["jane", "bob"])
    assert outcome == {"jane": None, "bob": None}
    (jane,), (bob,) = maildir_files(tmp_path, "jane"), maildir_files(tmp_path, "bob")
    assert read(jane) == b"Received: from x;\r\n\tdate\r\nX-Spam-LLM: SPAM\r\nSubject: s\r\n\r\nbody\r\n"
    assert jane.endswith(f",S={len(read(jane))}") and os.stat(jane).st_ino == os.stat(bob).st_ino
    assert os.listdir(tmp_path / "spool") == []


def test_copy_file_from_an_offset(tmp_path):
    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_bytes(bytes(range(256)) * 1000)
    with open(src, "rb") as s, open(dst, "wb") as d:
        d.write(b"HEAD")
        d.flush()
        copy_file(s.fileno(), d.fileno(), 100, 5000)
    assert dst.read_bytes() == b"HEAD" + (bytes(range(256)) * 1000)[100:5100]


def test_sweep_removes_only_old_spool_files(tmp_path):
    d = tmp_path / "spool"
    d.mkdir()
    (d / "old").write_bytes(b"x")
    (d / "new").write_bytes(b"y")
    os.utime(d / "old", (time.time() - 2 * 86400,) * 2)
    assert spool_mod.sweep(str(d)) == 1
    assert os.listdir(d) == ["new"]
    assert spool_mod.sweep(str(tmp_path / "missing")) == 0


# -- end to end ----------------------------------------------------------------------------------
BIG = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ports = {"smtp": free_port(), "lmtp": free_port()}
    config = {
        "SystemSettings": {"defaultHostname": "mx.example.test", "threadPoolSize": 1},
        "NetworkListener": [listener("smtp", "smtp", ports["smtp"], useTls=False),
                            listener("lmtp", "lmtp", ports["lmtp"], useTls=False)],
        "Domain": [{"name": "example.org"}],
        "Account": [
            {"name": "jane", "secret": hash_password("jane-secret", ln=4), "emails": ["jane@example.org"]},
            {"name": "bob", "secret": hash_password("bob-secret", ln=4), "emails": ["bob@example.org"]},
        ],
    }
    srv = Server(tmp_path_factory.mktemp("spool-e2e"), config)
    # Left by a worker killed long ago, and by one killed a minute ago: only the first is swept.
    spool = os.path.join(srv.data_dir, "spool")
    os.makedirs(spool)
    for name, age in (("stale", 2 * 86400), ("recent", 60)):
        with open(os.path.join(spool, name), "wb") as fh:
            fh.write(b"partial")
        os.utime(os.path.join(spool, name), (time.time() - age,) * 2)
    srv.start()
    yield srv, ports
    srv.stop()


def e2e_spool(srv):
    return [n for n in os.listdir(os.path.join(srv.data_dir, "spool")) if n != "recent"]


def e2e_new(srv, account):
    new = os.path.join(srv.data_dir, "mail", account, "new")
    return sorted(os.path.join(new, n) for n in os.listdir(new)) if os.path.isdir(new) else []


def big_body(size: int) -> bytes:
    line = b"." + b"0123456789abcdef" * 4 + b"\r\n"  # a leading dot on every line: stuffed on the wire
    return b"Subject: big\r\n\r\n" + line * (size // len(line))


def test_startup_sweeps_day_old_spool_files(server):
    srv, _ = server
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "stale" in os.listdir(os.path.join(srv.data_dir, "spool")):
        time.sleep(0.05)
    assert sorted(os.listdir(os.path.join(srv.data_dir, "spool"))) == ["recent"]


def worker_rss(srv) -> int:
    return sum(psutil.Process(pid).memory_info().rss for pid in srv.workers())


def test_20mib_message_two_recipients_in_bounded_memory(server):
    srv, ports = server
    assert len(srv.workers()) == 1
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as s:  # warm up: imports, pools
        s.sendmail("a@remote.test", ["jane@example.org"], b"Subject: warm\r\n\r\nup\r\n")
    before_jane, before_bob = set(e2e_new(srv, "jane")), set(e2e_new(srv, "bob"))
    base = worker_rss(srv)
    peak, stop = [base], threading.Event()

    def sample():
        for _ in range(10000):  # bounded; stopped long before
            if stop.wait(0.01):
                return
            peak.append(worker_rss(srv))

    body = big_body(BIG)
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=60) as s:
            assert s.sendmail("a@remote.test", ["jane@example.org", "bob@example.org"], body) == {}
    finally:
        stop.set()
        sampler.join(5)
    growth = max(peak) - base
    assert growth < 8 * 1024 * 1024, f"worker RSS grew by {growth / 2**20:.1f} MiB for a {BIG / 2**20:.0f} MiB message"
    # The new names, not the last in sort order: Maildir names of one second do not sort as text.
    (got,) = set(e2e_new(srv, "jane")) - before_jane
    (bob_msg,) = set(e2e_new(srv, "bob")) - before_bob
    data = read(got)
    assert data.startswith(b"Received: from ") and data.endswith(body)
    assert data.split(b"\r\n\t", 2)[2].split(b"\r\n", 1)[1] == body
    assert os.stat(got).st_ino == os.stat(bob_msg).st_ino  # written once, linked twice
    assert e2e_spool(srv) == []


def smtp_dialogue(port: int, rcpts: list[bytes], lmtp: bool = False) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert recv_line(sock).startswith(b"220")
    sock.sendall((b"LHLO" if lmtp else b"EHLO") + b" client.test\r\n")
    for _ in range(20):
        if recv_line(sock)[3:4] == b" ":
            break
    sock.sendall(b"MAIL FROM:<a@remote.test>\r\n")
    assert recv_line(sock).startswith(b"250")
    for rcpt in rcpts:
        sock.sendall(b"RCPT TO:<" + rcpt + b">\r\n")
        assert recv_line(sock).startswith(b"250")
    sock.sendall(b"DATA\r\n")
    assert recv_line(sock).startswith(b"354")
    return sock


@pytest.mark.parametrize("how", ["reset", "fin"])
def test_client_gone_mid_data_leaves_no_message_and_no_spool(server, how):
    srv, ports = server
    before = e2e_new(srv, "jane")
    sock = smtp_dialogue(ports["smtp"], [b"jane@example.org"])
    body = big_body(BIG)
    sock.sendall(stuff(body)[:BIG // 2])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not e2e_spool(srv):
        time.sleep(0.02)
    assert len(e2e_spool(srv)) == 1  # it is being spooled
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and e2e_spool(srv):
        time.sleep(0.05)
    assert e2e_spool(srv) == []
    assert e2e_new(srv, "jane") == before


def test_lmtp_spooled_message_gets_one_reply_per_recipient(server):
    srv, ports = server
    before = set(e2e_new(srv, "bob"))
    sock = smtp_dialogue(ports["lmtp"], [b"jane@example.org", b"bob@example.org"], lmtp=True)
    body = big_body(4 * 1024 * 1024)
    sock.sendall(stuff(body))
    assert recv_line(sock, 30) == b"250 2.1.5 <jane@example.org> delivered.\r\n"
    assert recv_line(sock, 30) == b"250 2.1.5 <bob@example.org> delivered.\r\n"
    sock.sendall(b"QUIT\r\n")
    assert recv_line(sock).startswith(b"221")
    sock.close()
    (new_msg,) = set(e2e_new(srv, "bob")) - before  # not bob[-1]: names of one second do not sort as text
    assert read(new_msg).endswith(body)
    assert e2e_spool(srv) == []


def test_worker_killed_mid_data_leaves_nothing_in_new(server):
    srv, ports = server
    before = e2e_new(srv, "jane")
    workers = srv.workers()
    sock = smtp_dialogue(ports["smtp"], [b"jane@example.org"])
    sock.sendall(stuff(big_body(BIG))[:BIG // 2])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not e2e_spool(srv):
        time.sleep(0.02)
    assert e2e_spool(srv)
    os.kill(workers[0], 9)
    sock.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (not srv.workers() or srv.workers() == workers):
        time.sleep(0.1)
    assert e2e_new(srv, "jane") == before  # only spool/ holds the partial message
    leftover = e2e_spool(srv)
    assert len(leftover) == 1
    os.unlink(os.path.join(srv.data_dir, "spool", leftover[0]))  # a day from now, a worker would


@pytest.mark.slow
def test_spooled_message_is_classified_and_the_header_follows_received(tmp_path):
    """services.md §4.2 on a message over the spool threshold: the model sees its first bytes and
    the header lands between Received: and the body (the one spooled case that copies)."""
    from test_ai_smtp_e2e import start
    from test_ai_support import FakeOpenAi

    body = b"From: a@example.net\r\nTo: jane@example.org\r\nSubject: Ink\r\n\r\nCheap printer ink.\r\n" + \
        b"filler line of an attachment, long enough\r\n" * (3 * 2 ** 20 // 44)
    with FakeOpenAi() as model:
        model.reply = "Commercial,Medium,Printer ink offer"
        srv, port = start(tmp_path, model.url("/v1/chat/completions"), "valid")
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                s.sendmail("a@example.net", ["jane@example.org"], body)
            (path,) = e2e_new(srv, "jane")
            assert os.listdir(os.path.join(srv.data_dir, "spool")) == []
        finally:
            srv.stop()
        assert "Subject: Ink\n\nCheap printer ink." in model.requests[-1].json()["messages"][0]["content"]
    message = read(path)
    received, rest = message.split(b";\r\n\t", 1)
    assert received.startswith(b"Received: from ")
    _date, rest = rest.split(b"\r\n", 1)
    assert rest == b"X-Spam-LLM: COMMERCIAL; confidence=MEDIUM (Printer ink offer)\r\n" + body
