"""One account's Maildir shared by sessions in two worker processes (threadPoolSize 2).

POP3: the exclusive maildrop lock (RFC 1939 §8, ``[IN-USE]`` of RFC 2449 §8.1.1) across workers,
released at QUIT, on a dropped connection, on the idle timeout and when the worker is killed; the
POP3 listing stays stable while IMAP expunges and mail arrives. IMAP: two sessions in two workers,
one expunging, the other learning of it at its next NOOP; flags set by both survive; racing SMTP
deliveries never get one UID twice.
"""
import imaplib
import os
import poplib
import re
import signal
import smtplib
import socket
import threading
import time

import psutil
import pytest
from harness import Server, free_port, listener

from stalwart.accounts import hash_password

ADDR = "jane@example.org"


def _config(ports: dict, **imap) -> dict:
    return {
        "SystemSettings": {"defaultHostname": "mx.example.test", "threadPoolSize": 2},
        "NetworkListener": [listener("smtp", "smtp", ports["smtp"]),
                            listener("pop3", "pop3", ports["pop3"], allowPlainTextAuth=True),
                            listener("imap", "imap", ports["imap"], allowPlainTextAuth=True)],
        "Domain": [{"name": "example.org"}],
        "Account": [{"name": "jane", "secret": hash_password("jane-secret", ln=8), "emails": [ADDR]}],
        **({"Imap": imap} if imap else {}),
    }


@pytest.fixture
def server(tmp_path):
    ports = {n: free_port() for n in ("smtp", "pop3", "imap")}
    srv = Server(tmp_path, _config(ports)).start()
    assert len(_workers(srv)) == 2
    yield srv, ports
    srv.stop()


def _workers(srv: Server, want: int = 2, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = srv.workers()
        if len(pids) >= want:
            return pids
        time.sleep(0.05)
    return srv.workers()


def worker_of(srv: Server, sock: socket.socket, timeout: float = 5.0) -> int:
    """PID of the worker process that accepted this client socket (its peer is our local port)."""
    port = sock.getsockname()[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in srv.workers():
            try:
                conns = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                continue
            if any(c.raddr and c.raddr.port == port for c in conns):
                return pid
        time.sleep(0.02)
    raise AssertionError(f"no worker holds the connection from port {port}")


def lock_holders(srv: Server) -> list[int]:
    """Workers with the account's maildrop.lock open (a session holding the POP3 lock)."""
    path = os.path.join(srv.data_dir, "mail", "jane", "maildrop.lock")
    out = []
    for pid in srv.workers():
        try:
            if any(f.path == path for f in psutil.Process(pid).open_files()):
                out.append(pid)
        except psutil.NoSuchProcess:
            continue
    return out


def deliver(port: int, subjects: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        for subj in subjects:
            s.sendmail("a@remote.test", [ADDR], f"Subject: {subj}\r\nMessage-ID: <{subj}@remote.test>\r\n\r\n"
                                                f"body of {subj}\r\n".encode())


def pop_login(port: int) -> poplib.POP3:
    p = poplib.POP3("127.0.0.1", port, timeout=10)
    p.user("jane")
    p.pass_("jane-secret")
    return p


def pop_login_eventually(port: int, timeout: float = 10.0) -> poplib.POP3:
    """The lock is dropped when the server notices the end of the holder: retry briefly."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            p = poplib.POP3("127.0.0.1", port, timeout=10)
        except OSError:  # a worker just killed: its share of connections fails until it is replaced
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            continue
        p.user("jane")
        try:
            p.pass_("jane-secret")
            return p
        except poplib.error_proto as exc:
            p.quit()
            if b"[IN-USE]" not in exc.args[0] or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def contender_in_other_worker(srv: Server, port: int, holder: int, tries: int = 40):
    """Connect until the kernel hands a connection to a worker other than ``holder``."""
    spare = []
    try:
        for _ in range(tries):
            p = poplib.POP3("127.0.0.1", port, timeout=10)
            if worker_of(srv, p.sock) != holder:
                return p
            spare.append(p)
        raise AssertionError(f"{tries} connections all went to worker {holder}")
    finally:
        for p in spare:
            p.quit()


def imap_login(port: int) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    m.login("jane", "jane-secret")
    assert m.select("INBOX")[0] == "OK"
    return m


def imap_pair(srv: Server, port: int, tries: int = 40) -> tuple[imaplib.IMAP4, imaplib.IMAP4]:
    """Two selected IMAP sessions served by two different worker processes."""
    a = imap_login(port)
    wa = worker_of(srv, a.sock)
    for _ in range(tries):
        b = imaplib.IMAP4("127.0.0.1", port, timeout=10)
        if worker_of(srv, b.sock) != wa:
            b.login("jane", "jane-secret")
            assert b.select("INBOX")[0] == "OK"
            return a, b
        b.logout()
    raise AssertionError(f"{tries} IMAP connections all went to worker {wa}")


# -- POP3 maildrop lock --------------------------------------------------------------------------
def test_second_pop3_login_gets_in_use_until_first_quits(server):
    srv, ports = server
    deliver(ports["smtp"], ["a1", "a2"])
    first = pop_login(ports["pop3"])
    holder = worker_of(srv, first.sock)
    assert lock_holders(srv) == [holder]
    assert "RESP-CODES" in first.capa()

    other = contender_in_other_worker(srv, ports["pop3"], holder)  # the lock works across processes
    same_worker = None
    for _ in range(40):  # and between two sessions of one process
        p = poplib.POP3("127.0.0.1", ports["pop3"], timeout=10)
        if worker_of(srv, p.sock) == holder:
            same_worker = p
            break
        p.quit()
    assert same_worker is not None
    for p in (other, same_worker):
        p.user("jane")
        with pytest.raises(poplib.error_proto, match=r"-ERR \[IN-USE\]"):
            p.pass_("jane-secret")
        # Still in AUTHORIZATION: no transaction command is accepted
        with pytest.raises(poplib.error_proto, match="Not authenticated"):
            p.stat()
    assert "auth.failed" not in srv.log()  # right credentials: no failure for the auto-ban layer

    first.dele(1)
    assert first.quit().startswith(b"+OK")
    assert lock_holders(srv) == []  # released before the farewell was sent
    # The contender retries on the same connection and now owns the maildrop.
    other.user("jane")
    assert other.pass_("jane-secret").startswith(b"+OK")
    assert other.stat()[0] == 1  # the deletion was applied before the lock was released
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        same_worker.user("jane")
        same_worker.pass_("jane-secret")
    other.quit()
    same_worker.user("jane")
    assert same_worker.pass_("jane-secret").startswith(b"+OK")
    same_worker.quit()


def test_lock_released_when_connection_drops(server):
    srv, ports = server
    first = pop_login(ports["pop3"])
    assert len(lock_holders(srv)) == 1
    first.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    first.sock.close()  # RST, no QUIT
    first.file.close()
    second = pop_login_eventually(ports["pop3"])
    assert second.stat()[0] == 0
    second.quit()
    assert lock_holders(srv) == []


def test_kill_9_of_the_holding_worker_frees_the_maildrop(server):
    srv, ports = server
    first = pop_login(ports["pop3"])
    holder = worker_of(srv, first.sock)
    assert lock_holders(srv) == [holder]
    os.kill(holder, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while psutil.pid_exists(holder) and psutil.Process(holder).status() != psutil.STATUS_ZOMBIE \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    second = pop_login_eventually(ports["pop3"])
    assert worker_of(srv, second.sock) != holder
    assert len(lock_holders(srv)) == 1
    second.quit()
    first.close()
    assert len(_workers(srv)) == 2  # the master replaced the killed worker


def test_lock_released_on_idle_timeout(tmp_path):
    ports = {n: free_port() for n in ("smtp", "pop3", "imap")}
    srv = Server(tmp_path, _config(ports, timeoutAuthenticated=1000)).start()
    try:
        first = pop_login(ports["pop3"])
        assert len(lock_holders(srv)) == 1
        time.sleep(1.5)
        # The sweep runs once a second: the timeout line arrives within about two seconds.
        first.sock.settimeout(5)
        assert first.file.readline().startswith(b"-ERR Connection timed out")
        second = pop_login_eventually(ports["pop3"])
        second.quit()
        first.close()
    finally:
        srv.stop()


def test_pop3_listing_is_stable_while_imap_expunges_and_mail_arrives(server):
    _srv, ports = server
    deliver(ports["smtp"], ["p1", "p2", "p3"])
    pop = pop_login(ports["pop3"])
    count, _ = pop.stat()
    uidl = pop.uidl()[1]
    assert count == 3

    imap = imap_login(ports["imap"])
    assert imap.store("2", "+FLAGS", "(\\Deleted)")[0] == "OK"
    assert imap.expunge()[1] == [b"2"]
    deliver(ports["smtp"], ["p4"])
    imap.logout()

    assert pop.stat()[0] == 3 and pop.uidl()[1] == uidl  # the listing taken at login
    with pytest.raises(poplib.error_proto, match="Message 2 is no longer available"):
        pop.retr(2)
    with pytest.raises(poplib.error_proto, match="Message 2 is no longer available"):
        pop.top(2, 0)
    assert b"Subject: p3" in pop.retr(3)[1]
    pop.dele(1)
    pop.dele(2)  # already gone: QUIT still succeeds
    assert pop.quit().startswith(b"+OK")

    pop = pop_login(ports["pop3"])
    subjects = [next(line for line in pop.top(i, 0)[1] if line.startswith(b"Subject:")) for i in (1, 2)]
    assert pop.stat()[0] == 2 and subjects == [b"Subject: p3", b"Subject: p4"]
    pop.quit()


# -- IMAP across processes ---------------------------------------------------------------------
def test_imap_expunge_in_one_worker_seen_by_the_other(server):
    srv, ports = server
    deliver(ports["smtp"], ["i1", "i2", "i3"])
    a, b = imap_pair(srv, ports["imap"])
    try:
        uids = b.uid("FETCH", "1:*", "(UID)")[1]
        assert len(uids) == 3

        assert a.store("2", "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert a.expunge()[1] == [b"2"]

        # B's view still has message 2: a flags-only FETCH answers from it, a body FETCH says the
        # message is gone, and neither carries an untagged EXPUNGE (RFC 3501 §7.4.1).
        typ, data = b.fetch("1:3", "(FLAGS)")
        assert typ == "OK" and len(data) == 3
        typ, data = b.fetch("2", "(BODY.PEEK[])")
        assert typ == "NO" and b"EXPUNGEISSUED" in data[0]
        typ, data = b.fetch("1,3", "(BODY.PEEK[HEADER])")
        assert typ == "OK" and b"Subject: i1" in data[0][1] and b"Subject: i3" in data[2][1]
        assert "EXPUNGE" not in b.untagged_responses
        typ, data = b.uid("SEARCH", None, "ALL")
        assert typ == "OK"

        typ, _ = b.noop()
        assert typ == "OK" and b.untagged_responses.pop("EXPUNGE") == [b"2"]
        typ, data = b.uid("FETCH", "1:*", "(UID)")
        assert [re.search(rb"UID (\d+)", d).group(1) for d in data] == \
            [re.search(rb"UID (\d+)", d).group(1) for d in (uids[0], uids[2])]

        # Flags set by each session survive the other's (stale) view.
        assert a.store("1", "+FLAGS", "(\\Flagged)")[0] == "OK"
        typ, data = b.store("1", "+FLAGS", "(\\Answered)")
        assert typ == "OK" and b"\\Flagged" in data[0] and b"\\Answered" in data[0]
        assert a.noop()[0] == "OK"  # A hears of B's flag (untagged FETCH) and keeps it
        typ, data = a.fetch("1", "(FLAGS)")
        assert b"\\Flagged" in data[0] and b"\\Answered" in data[0]

        # An EXPUNGE in B removes what A marked, though B was never told of the flag.
        assert a.store("2", "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
        typ, data = b.expunge()
        assert typ == "OK" and data == [b"2"]
        typ, _ = a.noop()
        assert a.untagged_responses.pop("EXPUNGE") == [b"2"]
        assert a.search(None, "ALL")[1] == [b"1"] and b.search(None, "ALL")[1] == [b"1"]
    finally:
        a.logout()
        b.logout()


def test_racing_deliveries_and_imap_sessions_share_one_uid_map(server):
    srv, ports = server
    n_threads, per_thread = 5, 10
    subjects = [f"race-{t}-{i}" for t in range(n_threads) for i in range(per_thread)]
    a, b = imap_pair(srv, ports["imap"])
    errors = []

    def sender(t: int) -> None:
        try:
            deliver(ports["smtp"], subjects[t * per_thread:(t + 1) * per_thread])
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    senders = [threading.Thread(target=sender, args=(t,)) for t in range(n_threads)]
    for th in senders:
        th.start()

    uid_of: dict[bytes, int] = {}  # subject -> UID, as every session saw it, all the time
    subject_of: dict[int, bytes] = {}
    pattern = re.compile(rb"UID (\d+)")

    def observe(client: imaplib.IMAP4) -> int:
        assert client.noop()[0] == "OK"
        typ, data = client.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        seen = 0
        for item in data:
            if not isinstance(item, tuple):
                continue
            uid = int(pattern.search(item[0]).group(1))
            subject = item[1].strip()
            assert uid_of.setdefault(subject, uid) == uid  # a message keeps its UID
            assert subject_of.setdefault(uid, subject) == subject  # a UID names one message
            seen += 1
        return seen

    deadline = time.monotonic() + 60
    rounds = 0
    while rounds < 400 and time.monotonic() < deadline:
        rounds += 1
        observe(a)
        observe(b)
        if not any(th.is_alive() for th in senders) and len(uid_of) >= len(subjects):
            break
    for th in senders:
        th.join(30)
    assert not errors
    assert observe(a) == observe(b) == len(subjects)
    assert sorted(s.decode().split(": ", 1)[1] for s in uid_of) == sorted(subjects)
    uids = sorted(uid_of.values())
    assert len(set(uids)) == len(subjects) and uids == list(range(uids[0], uids[0] + len(subjects)))
    typ, data = a.status("INBOX", "(UIDNEXT MESSAGES)")
    assert typ == "OK"
    assert f"UIDNEXT {uids[-1] + 1}".encode() in data[0] and f"MESSAGES {len(subjects)}".encode() in data[0]
    a.logout()
    b.logout()


# -- the store itself, without sockets ---------------------------------------------------------
def test_maildrop_lock_is_exclusive_and_released_on_every_path(tmp_path):
    from stalwart.mailstore import Maildir

    md = Maildir(str(tmp_path / "m"))
    md.ensure()
    first, second = md.maildrop_lock(), md.maildrop_lock()
    assert first.acquire() and first.held
    assert not second.acquire() and not second.held  # a second descriptor in one process conflicts too
    first.release()
    first.release()  # idempotent
    assert second.acquire()
    second.release()
    # Released before the pool job ran (the connection went away): the job must not take it.
    gone = md.maildrop_lock()
    gone.release()
    assert not gone.acquire() and not gone.held
    third = md.maildrop_lock()
    assert third.acquire()
    third.release()


def _toggle_flags(path: str, seconds: float) -> None:
    from stalwart.mailstore import Maildir

    md = Maildir(path)
    _, _, msgs = md.snapshot()
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end and i < 100000:
        i += 1
        md.change_flags(msgs, add=frozenset({"\\Seen"}) if i % 2 else frozenset(),
                        remove=frozenset() if i % 2 else frozenset({"\\Seen"}))


def test_flag_renames_in_other_processes_never_change_a_uid(tmp_path):
    """Renames of listed messages race the scan that rebuilds the UID map: the shared/exclusive
    lock on uidlist.lock keeps every message under its UID (module docstring of maildir.py)."""
    import multiprocessing

    from stalwart.mailstore import Maildir

    path = str(tmp_path / "m")
    md = Maildir(path)
    for i in range(30):
        md.deliver(b"Subject: %d\r\n\r\nx\r\n" % i)
    _, _, msgs = md.snapshot()
    expected = [(m.uid, m.basename) for m in msgs]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_toggle_flags, args=(path, 1.5)) for _ in range(2)]
    for p in procs:
        p.start()
    snapshots = 0
    try:
        end = time.monotonic() + 1.5
        while time.monotonic() < end and snapshots < 5000:
            _validity, uidnext, now = md.snapshot()
            assert [(m.uid, m.basename) for m in now] == expected and uidnext == 31
            snapshots += 1
    finally:
        for p in procs:
            p.join(30)
    # flock is not fair: the two renamers' shared locks can keep the scan's exclusive one waiting,
    # so how many snapshots fit in the window depends on scheduling; the UID check above is the test.
    assert snapshots >= 3 and all(p.exitcode == 0 for p in procs)


# -- the POP3 core, without sockets --------------------------------------------------------------
def _pop3_core(tmp_path):
    from mailcore import ctx, services

    from stalwart.protocols.pop3 import Pop3Session

    return Pop3Session(ctx(protocol="pop3", tls_active=True), services=services(tmp_path))


def test_pop3_core_in_use_then_retry_after_the_holder_closes(tmp_path):
    from mailcore import drive, replies

    from stalwart.mailstore import MailStore

    MailStore(str(tmp_path)).maildir("jane").deliver(b"Subject: x\r\n\r\ny\r\n")
    first, second = _pop3_core(tmp_path), _pop3_core(tmp_path)
    login = [b"USER jane\r\nPASS jane-secret\r\n"]
    assert replies(drive(first, login)).endswith(b"+OK jane has 1 messages.\r\n")
    out = replies(drive(second, login + [b"STAT\r\n"]))
    assert out.endswith(b"-ERR [IN-USE] Maildrop already locked by another session.\r\n-ERR Not authenticated.\r\n")
    assert second.lock is None and not second.closed  # still in AUTHORIZATION
    first.connection_closed()  # the driver's hook: peer gone, timeout or shutdown
    first.connection_closed()
    assert replies(drive(second, login + [b"STAT\r\n"])).endswith(b"+OK jane has 1 messages.\r\n+OK 1 17\r\n")
    # QUIT releases before the farewell: a third session logs in at once.
    assert replies(drive(second, [b"QUIT\r\n"])) == b"+OK Stalwart POP3 bids you farewell.\r\n"
    assert not second.lock.held
    third = _pop3_core(tmp_path)
    assert replies(drive(third, login)).endswith(b"+OK jane has 1 messages.\r\n")
    third.connection_closed()


def test_pop3_core_connection_gone_while_the_lock_job_runs(tmp_path):
    from mailcore import drive, replies

    from stalwart.protocols.base import Blocking

    core = _pop3_core(tmp_path)
    core.receive_data(b"USER jane\r\nPASS jane-secret\r\n")
    job = None
    for _ in range(20):  # the password check, then the maildrop job
        ev = core.next_event()
        if isinstance(ev, Blocking):
            if ev.fn.__name__ == "_open_maildrop":
                job = ev
                break
            core.blocking_done(ev.fn(*ev.args), None)
    assert job is not None
    core.connection_closed()  # the connection ended before the pool ran the job
    assert job.fn(*job.args) is None  # the lock is not taken for a session that is gone
    other = _pop3_core(tmp_path)
    assert replies(drive(other, [b"USER jane\r\nPASS jane-secret\r\n"])).endswith(b"+OK jane has 0 messages.\r\n")
    other.connection_closed()
