"""Maildir store: atomic delivery, UID list stability and locking, flags, Sieve storage, crash safety."""
import multiprocessing
import os
import signal
import smtplib
import threading
import time

import pytest

from harness import Server, free_port, listener
from stalwart.accounts import hash_password
from stalwart.mailstore import Maildir, MailStore, SieveError, SieveStore


def test_deliver_is_atomic_and_named_with_size(tmp_path):
    md = Maildir(str(tmp_path / "m"))
    name = md.deliver(b"Subject: a\r\n\r\nbody\r\n")
    assert name.endswith(",S=20") and os.listdir(tmp_path / "m" / "tmp") == []
    assert (tmp_path / "m" / "new" / name).read_bytes() == b"Subject: a\r\n\r\nbody\r\n"


def test_arrivals_in_one_timestamp_tick_keep_delivery_order(tmp_path):
    # Two deliveries within one kernel timestamp tick share an mtime; the microseconds in Maildir
    # names are not zero-padded, so "M100123" must still come after "M99876" (found as a flaky
    # POP3 test that numbered the second message first).
    md = Maildir(str(tmp_path / "m"))
    md.ensure()
    names = ["1700000000.M99876P7Q9.h,S=3", "1700000000.M100123P7Q10.h,S=3", "1700000001.M5P7Q11.h,S=3"]
    for i, name in enumerate(reversed(names)):
        path = tmp_path / "m" / "new" / name
        path.write_bytes(b"%d\r\n" % i)
        os.utime(path, (1700000000.5, 1700000000.5))
    _, _, msgs = md.snapshot()
    assert [m.basename for m in msgs] == names and [m.uid for m in msgs] == [1, 2, 3]
    # A name with a non-ASCII digit (another writer's, a host name) is just text, never an error.
    odd = tmp_path / "m" / "new" / "1700000002.M7\u00b2P7Q12.h,S=3"
    odd.write_bytes(b"3\r\n")
    _, _, msgs = md.snapshot()
    assert [m.uid for m in msgs] == [1, 2, 3, 4] and msgs[-1].basename == odd.name


def test_uids_ascend_survive_and_are_never_reused(tmp_path):
    md = Maildir(str(tmp_path / "m"))
    for i in range(3):
        md.deliver(b"m%d\r\n" % i)
    validity, nxt, msgs = md.snapshot()
    assert [m.uid for m in msgs] == [1, 2, 3] and nxt == 4
    md.remove([msgs[2]])
    md.deliver(b"m3\r\n")
    v2, nxt2, msgs2 = Maildir(str(tmp_path / "m")).snapshot()  # a new session
    assert v2 == validity and [m.uid for m in msgs2] == [1, 2, 4] and nxt2 == 5
    assert [md.read(m) for m in msgs2] == [b"m0\r\n", b"m1\r\n", b"m3\r\n"]


def test_leftover_tmp_file_is_never_listed(tmp_path):
    md = Maildir(str(tmp_path / "m"))
    md.ensure()
    (tmp_path / "m" / "tmp" / "123.crashed").write_bytes(b"partial")
    assert md.snapshot()[2] == []


def test_corrupt_uid_list_starts_a_new_epoch(tmp_path):
    md = Maildir(str(tmp_path / "m"))
    md.deliver(b"x\r\n")
    validity = md.snapshot()[0]
    (tmp_path / "m" / "uidlist").write_text("garbage\n")
    time.sleep(1.1)
    v2, _, msgs = md.snapshot()
    assert v2 != validity and [m.uid for m in msgs] == [1]


def test_flags_move_to_cur_and_follow_renames(tmp_path):
    md = Maildir(str(tmp_path / "m"))
    md.deliver(b"x\r\n")
    _, _, [msg] = md.snapshot()
    seen = md.set_flags(msg, frozenset({"\\Seen", "\\Flagged"}))
    assert seen.subdir == "cur" and seen.filename.endswith(":2,FS") and seen.flags == {"\\Seen", "\\Flagged"}
    # a stale view (another session renamed it) still finds the message
    assert md.read(msg) == b"x\r\n"
    again = md.set_flags(msg, frozenset())
    assert again.filename.endswith(":2,") and md.snapshot()[2][0].flags == frozenset()
    assert md.remove([msg]) == 1 and md.snapshot()[2] == []


def _snapshot_many(path, n, out):
    md = Maildir(path)
    seen = []
    for _ in range(n):
        md.deliver(b"from %d\r\n" % os.getpid())
        seen.append(tuple((m.uid, m.basename) for m in md.snapshot()[2]))
    out.put(seen)


def test_concurrent_processes_never_share_a_uid(tmp_path):
    path = str(tmp_path / "m")
    Maildir(path).ensure()
    q = multiprocessing.get_context("fork").Queue()
    procs = [multiprocessing.get_context("fork").Process(target=_snapshot_many, args=(path, 15, q)) for _ in range(4)]
    for p in procs:
        p.start()
    views = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    mapping = {}
    for view in views:
        for snap in view:
            for uid, base in snap:
                assert mapping.setdefault(uid, base) == base  # one UID, one message, everywhere
    _, _, final = Maildir(path).snapshot()
    assert [m.uid for m in final] == list(range(1, 61))


def test_store_delivers_per_account_and_reports_errors(tmp_path):
    store = MailStore(str(tmp_path))
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "broken").write_text("not a directory")
    out = store.deliver(b"x\r\n", ["Jane", "broken", "jane"])
    assert out["Jane"] is None and isinstance(out["broken"], OSError)
    assert len(os.listdir(tmp_path / "mail" / "jane" / "new")) == 1


def test_sieve_store(tmp_path):
    s = SieveStore(str(tmp_path / "sieve"))
    assert s.list() == [] and s.active() is None
    s.put("vacation ☀", b"keep;")
    s.put("b", b"discard;")
    s.set_active("b")
    assert s.list() == [("b", True), ("vacation ☀", False)]
    with pytest.raises(SieveError) as info:
        s.delete("b")
    assert info.value.code == "ACTIVE"
    s.rename("b", "c")
    assert s.active() == "c" and s.get("c") == b"discard;"
    s.set_active("")
    s.delete("c")
    for bad in ("", "../x", ".hidden", "a/b", "x\n"):
        with pytest.raises(SieveError):
            s.put(bad, b"keep;")
    with pytest.raises(SieveError) as info:
        s.have_space("x", 10 << 20)
    assert info.value.code == "QUOTA/MAXSIZE"


@pytest.mark.slow
def test_kill_9_during_deliveries_leaves_only_whole_messages(tmp_path):
    """The server is SIGKILLed (master and workers) while clients are in DATA and deliveries are
    being written: every file in new/ is a complete message; partial ones can only be in tmp/."""
    port = free_port()
    cfg = {"SystemSettings": {"defaultHostname": "mx.example.test", "threadPoolSize": 2},
           "NetworkListener": [listener("smtp", "smtp", port)],
           "Domain": [{"name": "example.org"}],
           "Account": [{"name": "jane", "secret": hash_password("x", ln=4), "emails": ["jane@example.org"]}]}
    srv = Server(tmp_path, cfg).start()
    body = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 300 + b"THE END\r\n"
    stop = threading.Event()
    accepted = []

    def client():
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                    s.sendmail("a@b.test", ["jane@example.org"], body)
                    accepted.append(1)
            except (OSError, smtplib.SMTPException):
                return

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    pids = srv.workers()
    for pid in pids + [srv.pid]:
        os.kill(pid, signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join(30)
    srv.proc.wait(10)
    srv.proc.stdout.close()
    srv.proc.stderr.close()
    new = tmp_path / "data" / "mail" / "jane" / "new"
    files = os.listdir(new)
    assert len(files) >= len(accepted) > 0  # every 250 is on disk (and maybe a few not yet answered)
    for name in files:
        data = (new / name).read_bytes()
        assert data.endswith(b"THE END\r\n") and int(name.rsplit(",S=", 1)[1]) == len(data)


def test_directory_fsyncs_are_shared_but_never_skipped(monkeypatch):
    """Group commit: each caller returns only after an fsync that started after it asked, and
    concurrent callers share fsyncs."""
    from stalwart import fileio as mod

    clock = {"n": 0}
    started: list[int] = []
    lock = threading.Lock()

    def slow_fsync(path):
        with lock:
            clock["n"] += 1
            started.append(clock["n"])
            mark = clock["n"]
        time.sleep(0.02)
        return mark

    monkeypatch.setattr(mod, "fsync_dir", slow_fsync)
    sync = mod.DirSync()
    results = []

    def caller():
        with lock:
            clock["n"] += 1
            asked = clock["n"]
        sync.sync("/x/new")
        results.append((asked, max(started)))

    threads = [threading.Thread(target=caller) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 20
    assert all(last_fsync > asked for asked, last_fsync in results)
    assert len(started) < 20  # shared


def test_messages_vanished_elsewhere_cost_one_listing_per_call(tmp_path, monkeypatch):
    """Review finding: every message of a session's view that another session had expunged cost a
    full listing of cur/ and new/ in EXPUNGE, FETCH and STORE (2000 of 20000 took 19 s). Now one
    call lists the mailbox at most twice whatever how many vanished, and a message that the first
    listing missed (being renamed by another session right then) still gets its second look."""
    from stalwart.protocols.imap.jobs import fetch_job

    path = tmp_path / "m"
    md, other = Maildir(str(path)), Maildir(str(path))
    md.ensure()
    for i in range(3000):  # written directly: 3000 fsynced deliveries would only slow the test down
        (path / "cur" / f"{1700000000 + i}.M{i}P1Q{i}.h,S=1:2,S").write_bytes(b"%d" % i)
    _, _, view = md.snapshot()
    assert len(view) == 3000
    assert other.remove(view[:500]) == 500  # another session's POP3 QUIT
    marked = other.change_flags(view[500:600], add=frozenset({"\\Deleted"}))  # another session's STORE
    assert all(m is not None and m.filename.endswith(":2,ST") for m in marked)

    real_listdir = os.listdir
    hidden = marked[-1].filename
    calls = []

    def listdir(p):
        names = real_listdir(p)
        calls.append(p)
        if len(calls) <= 2 and hidden in names:  # the first look misses it, as a rename mid-listing can
            names.remove(hidden)
        return names

    monkeypatch.setattr(os, "listdir", listdir)
    t = time.perf_counter()
    gone = md.expunge(view)  # this session's EXPUNGE, on its stale view
    took = time.perf_counter() - t
    assert sorted(gone) == [m.uid for m in view[500:600]]  # \Deleted set elsewhere counts, the hidden one too
    assert len(calls) == 4 and took < 1.0, (len(calls), took)  # new/ and cur/, twice

    calls.clear()
    t = time.perf_counter()
    out = fetch_job(md, view[:700], True, False)  # FETCH 1:700 BODY[] on the stale view
    took = time.perf_counter() - t
    assert [m is None for m, _ in out] == [True] * 600 + [False] * 100
    assert [data for _, data in out[600:]] == [b"%d" % i for i in range(600, 700)]
    assert len(calls) == 2 and took < 1.0, (len(calls), took)

    calls.clear()
    t = time.perf_counter()
    flagged = md.change_flags(view, add=frozenset({"\\Flagged"}))  # STORE 1:* +FLAGS (\Flagged)
    took = time.perf_counter() - t
    assert [m is None for m in flagged] == [True] * 600 + [False] * 2400
    assert all(m.filename.endswith(":2,FS") for m in flagged[600:])
    assert len(calls) == 2 and took < 1.0, (len(calls), took)
    monkeypatch.undo()
    assert [m.uid for m in md.snapshot()[2]] == [m.uid for m in view[600:]]
