"""The commit kernel (durable tmp -> final publication off the GIL) and the Committer over it,
on the compiled kernel and its twin."""
import asyncio
import errno
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernels import kernel_fixture

from stalwart._fast import load
from stalwart.mailstore import MailStore
from stalwart.mailstore.committer import Committer
from stalwart.mailstore.maildir import Maildir

commit = kernel_fixture("commit")


def test_compiled_kernel_is_really_compiled():
    assert load("commit", compiled=True).__file__.endswith(".so")


def wait_all(q, tokens, timeout=20.0):
    """Drain until every token came back: {token: errno}; each token exactly once. A job is
    published (renamed) exactly when it succeeded, in these tests (no directory fsync fails)."""
    got: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while set(got) != set(tokens):
        left = deadline - time.monotonic()
        assert left > 0, f"missing {set(tokens) - set(got)}"
        select.select([q.fileno()], [], [], left)
        for token, err, published in q.drain():
            assert token not in got, "a token came back twice"
            assert published == (err == 0)
            got[token] = err
    return got


def mailbox(tmp_path, name="m"):
    d = tmp_path / name
    for sub in ("tmp", "new"):
        (d / sub).mkdir(parents=True)
    return d


def job(d, i, data):
    return (os.fsencode(d / "tmp" / str(i)), os.fsencode(d / "new" / str(i)), os.fsencode(d / "new"), data)


def test_jobs_land_whole_in_final_and_leave_nothing_in_tmp(commit, tmp_path):
    d = mailbox(tmp_path)
    q = commit.CommitQueue(4)
    try:
        bodies = {i: os.urandom(i * 37 % 5000) for i in range(300)}
        for i, body in bodies.items():
            q.submit(i, *job(d, i, body))
        assert wait_all(q, bodies) == {i: 0 for i in bodies}
    finally:
        q.close()
    assert os.listdir(d / "tmp") == []
    for i, body in bodies.items():
        assert (d / "new" / str(i)).read_bytes() == body
        assert (d / "new" / str(i)).stat().st_mode & 0o777 == 0o600


def test_many_directories_at_once(commit, tmp_path):
    """More directories in flight than the group-commit table holds (256 in the kernel): jobs
    beyond it fsync on their own, none is lost."""
    boxes = [mailbox(tmp_path, f"m{i}") for i in range(300)]
    q = commit.CommitQueue(8)
    try:
        for i, d in enumerate(boxes):
            q.submit(i, *job(d, i, b"x%d" % i))
        assert set(wait_all(q, range(300)).values()) == {0}
    finally:
        q.close()
    for i, d in enumerate(boxes):
        assert (d / "new" / str(i)).read_bytes() == b"x%d" % i


def test_errors_come_back_as_errno_and_clean_up(commit, tmp_path):
    d = mailbox(tmp_path)
    (d / "tmp" / "taken").write_bytes(b"someone else's")
    q = commit.CommitQueue(2)
    try:
        q.submit(1, os.fsencode(tmp_path / "nodir" / "x"), os.fsencode(d / "new" / "x"), os.fsencode(d / "new"), b"a")
        q.submit(2, os.fsencode(d / "tmp" / "taken"), os.fsencode(d / "new" / "t"), os.fsencode(d / "new"), b"b")
        # the rename fails (the target directory is a file): the written tmp file is removed
        (tmp_path / "notadir").write_bytes(b"")
        q.submit(3, os.fsencode(d / "tmp" / "r"), os.fsencode(tmp_path / "notadir" / "r"), os.fsencode(d / "new"), b"c")
        got = wait_all(q, [1, 2, 3])
    finally:
        q.close()
    assert got == {1: errno.ENOENT, 2: errno.EEXIST, 3: errno.ENOTDIR}
    assert (d / "tmp" / "taken").read_bytes() == b"someone else's"  # EEXIST never removes the other file
    assert sorted(os.listdir(d / "tmp")) == ["taken"]
    assert os.listdir(d / "new") == []


def test_bad_calls_are_refused_alike(commit, tmp_path):
    """Both twins refuse the same calls with the same exceptions, checked in the same order."""
    d = mailbox(tmp_path)
    q = commit.CommitQueue(1)
    with pytest.raises(ValueError):
        q.submit(1, b"a\0b", b"c", b"d", b"e")
    for bad in (("str path", b"c", b"d", b"e"), (b"a", b"c", b"d", bytearray(b"e")), (b"a", b"c", None, b"e")):
        with pytest.raises(TypeError):
            q.submit(1, *bad)
    for token in ("x", 1.0, None):
        with pytest.raises(TypeError):
            q.submit(token, *job(d, 1, b"x"))
    for token in (1 << 63, -(1 << 63) - 1, 1 << 70):
        with pytest.raises(OverflowError):
            q.submit(token, *job(d, 1, b"x"))
    q.submit(7, *job(d, 7, b"x"))
    with pytest.raises(ValueError, match="already queued"):
        q.submit(7, *job(d, 8, b"y"))  # token 7 is still queued or not drained
    assert wait_all(q, [7]) == {7: 0}
    q.submit(7, *job(d, 9, b"z"))  # drained: the token may be used again
    assert wait_all(q, [7]) == {7: 0}
    q.close()
    q.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        q.submit(8, *job(d, 10, b"w"))
    with pytest.raises(ValueError, match="closed"):
        q.submit(None, None, None, None, None)  # closed is said first, whatever the arguments
    for threads in (0, -1):
        with pytest.raises(ValueError):
            commit.CommitQueue(threads)
    for threads in (2.5, "2", None):
        with pytest.raises(TypeError):
            commit.CommitQueue(threads)


def test_a_forked_child_cannot_use_the_parents_queue(commit, tmp_path):
    d = mailbox(tmp_path)
    q = commit.CommitQueue(1)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 3
            try:
                q.submit(1, *job(d, 1, b"x"))
                code = 1
            except ValueError as exc:
                code = 0 if "forked child" in str(exc) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        q.submit(2, *job(d, 2, b"y"))  # the parent's queue still works
        assert wait_all(q, [2]) == {2: 0}
    finally:
        q.close()


def test_a_dropped_queue_finishes_its_jobs_and_frees_them(commit, tmp_path):
    """Review finding: dropped in a reference cycle, the kernel's GC clear freed the buffers its
    threads were still writing (EFAULT, messages lost). Now the jobs own their references and the
    queue finishes them before anything is freed."""
    import gc

    d = mailbox(tmp_path)
    q = commit.CommitQueue(2)
    holder = {"q": q}
    holder["self"] = holder  # only cyclic garbage keeps the queue alive
    for i in range(200):
        q.submit(i, *job(d, i, bytes([i % 256]) * 50_000))
    del q, holder
    gc.collect()
    names = os.listdir(d / "new")
    assert len(names) == 200
    for name in names:
        assert (d / "new" / name).read_bytes() == bytes([int(name) % 256]) * 50_000
    assert os.listdir(d / "tmp") == []


def test_close_finishes_what_was_queued(commit, tmp_path):
    d = mailbox(tmp_path)
    q = commit.CommitQueue(2)
    for i in range(200):
        q.submit(i, *job(d, i, b"m%d" % i))
    q.close()  # returns once every queued job is done; the results are still there to drain
    got = {token: (err, published) for token, err, published in q.drain()}
    assert got == {i: (0, True) for i in range(200)}
    assert len(os.listdir(d / "new")) == 200


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 3), st.binary(max_size=3000), st.booleans()), min_size=1, max_size=40))
def test_any_mix_of_good_and_failing_jobs(commit, tmp_path_factory, plan):
    """Whatever the mix of directories, sizes and failures: each job answers once, a success is
    exactly its bytes in final, a failure leaves no file behind in tmp/ or final."""
    root = tmp_path_factory.mktemp("mix")
    boxes = [mailbox(root, f"b{i}") for i in range(4)]
    q = commit.CommitQueue(3)
    try:
        for token, (box, data, fail) in enumerate(plan):
            tmp, final, directory, data = job(boxes[box], token, data)
            if fail:
                tmp = os.fsencode(root / "missing" / str(token))
            q.submit(token, tmp, final, directory, data)
        got = wait_all(q, range(len(plan)))
    finally:
        q.close()
    for token, (box, data, fail) in enumerate(plan):
        final = boxes[box] / "new" / str(token)
        if fail:
            assert got[token] == errno.ENOENT and not final.exists()
        else:
            assert got[token] == 0 and final.read_bytes() == data
    assert all(os.listdir(b / "tmp") == [] for b in boxes)


# -- Committer: the event-loop side ---------------------------------------------------------------
def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("compiled", [False, True], ids=["py", "c"])
def test_committer_delivers_through_the_kernel_and_creates_new_mailboxes(tmp_path, compiled):
    import concurrent.futures

    store = MailStore(str(tmp_path / "data"))
    store.maildir("old").ensure()

    async def main():
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            c = Committer(asyncio.get_running_loop(), pool, 2, kernel=load("commit", compiled=compiled))
            try:
                # "Old" and "old" are one mailbox; "fresh" has no directories yet (thread path)
                out = await store.deliver_async(c, b"Subject: hi\r\n\r\nbody\r\n", ["Old", "old", "fresh"])
                many = await asyncio.gather(*(c.deliver(store.maildir("old"), b"%d" % i) for i in range(50)))
            finally:
                c.close()
            return out, many

    out, many = run(main())
    assert out == {"Old": None, "old": None, "fresh": None}
    assert len(set(many)) == 50
    old, fresh = Maildir(str(tmp_path / "data" / "mail" / "old")), Maildir(str(tmp_path / "data" / "mail" / "fresh"))
    assert len(os.listdir(os.path.join(old.path, "new"))) == 51
    assert [open(os.path.join(fresh.path, "new", n), "rb").read() for n in os.listdir(os.path.join(fresh.path, "new"))] \
        == [b"Subject: hi\r\n\r\nbody\r\n"]
    for n in many:
        assert os.path.exists(os.path.join(old.path, "new", n))


def test_committer_falls_back_to_a_thread_when_closed_under_it(tmp_path):
    """Review finding: gather() starts the per-mailbox deliveries a loop pass later; a worker closing
    the committer in between made them fail (451). They now take the thread path."""
    import concurrent.futures

    store = MailStore(str(tmp_path / "data"))
    store.maildir("u").ensure()

    async def main():
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            c = Committer(asyncio.get_running_loop(), pool, 1)
            pending = asyncio.ensure_future(store.deliver_async(c, b"late", ["u"]))
            c.close()
            return await pending

    assert run(main()) == {"u": None}
    assert len(os.listdir(tmp_path / "data" / "mail" / "u" / "new")) == 1


def test_committer_reports_a_storage_error_per_mailbox(tmp_path):
    import concurrent.futures

    store = MailStore(str(tmp_path / "data"))
    store.maildir("good").ensure()
    bad = store.maildir("bad")
    bad.ensure()
    os.rmdir(os.path.join(bad.path, "new"))
    open(os.path.join(bad.path, "new"), "wb").close()  # new/ is a file: the rename fails

    async def main():
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            c = Committer(asyncio.get_running_loop(), pool, 2)
            try:
                return await store.deliver_async(c, b"x", ["good", "bad"])
            finally:
                c.close()

    out = run(main())
    assert out["good"] is None
    assert isinstance(out["bad"], OSError) and out["bad"].errno == errno.ENOTDIR
    assert os.listdir(os.path.join(bad.path, "tmp")) == []


KILLER = r'''
import os, select, sys
from stalwart._fast import load
q = load("commit", compiled=sys.argv[2] == "c").CommitQueue(4)
d = sys.argv[1]
print("go", flush=True)
i = 0
while True:
    i += 1
    q.submit(i, f"{d}/tmp/{i}".encode(), f"{d}/new/{i}".encode(), f"{d}/new".encode(), (b"%08d" % i) * 512)
    if i % 64 == 0:
        select.select([q.fileno()], [], [], 1)
        q.drain()
'''


@pytest.mark.parametrize("kind", ["py", "c"])
def test_sigkill_mid_stream_leaves_only_whole_messages(tmp_path, kind):
    """A process killed while its threads write: every file in new/ is complete (4 KiB of its own
    number), so a reader never sees half a message."""
    d = mailbox(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", KILLER, str(d), kind], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline() == b"go\n"
        deadline = time.monotonic() + 20
        while len(os.listdir(d / "new")) < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    names = os.listdir(d / "new")
    assert len(names) >= 50
    for name in names:
        assert (d / "new" / name).read_bytes() == (b"%08d" % int(name)) * 512


def test_smtp_delivery_falls_back_to_a_thread_once_the_committer_is_gone(tmp_path):
    """The core chose the committer path, then the worker uninstalled it (stopping): the message
    is still delivered, through a thread."""
    from stalwart.mailstore import committer
    from stalwart.protocols.smtp import deliver_async

    store = MailStore(str(tmp_path / "data"))
    assert committer.current() is None
    out = run(deliver_async(store, b"Received: x;\r\n\t", b"Subject: s\r\n\r\nb\r\n", ["u"]))
    assert out == {"u": None}
    (name,) = os.listdir(tmp_path / "data" / "mail" / "u" / "new")
    assert (tmp_path / "data" / "mail" / "u" / "new" / name).read_bytes().endswith(b"Subject: s\r\n\r\nb\r\n")


class _FailAfterRename:
    """A kernel whose every job was renamed into new/ and then failed its directory fsync with
    ENOENT (the mailbox was removed in that gap)."""

    class CommitQueue:
        def __init__(self, threads):
            self.efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self.done = []

        def fileno(self):
            return self.efd

        def submit(self, token, tmp, final, directory, data):
            self.done.append((token, errno.ENOENT, True))
            os.eventfd_write(self.efd, 1)

        def drain(self):
            done, self.done = self.done, []
            return done

        def close(self):
            os.close(self.efd)


def test_enoent_after_the_rename_is_an_error_not_a_second_copy(tmp_path):
    """Review finding: only a missing tmp/ or new/ before the rename means "create the mailbox and
    deliver"; after it the message is in new/ already, so a retry would store it twice."""
    import concurrent.futures

    store = MailStore(str(tmp_path / "data"))

    async def main():
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            c = Committer(asyncio.get_running_loop(), pool, 1, kernel=_FailAfterRename)
            try:
                return await store.deliver_async(c, b"x", ["u"])
            finally:
                c.close()

    out = run(main())
    assert isinstance(out["u"], OSError) and out["u"].errno == errno.ENOENT
    assert not os.path.exists(tmp_path / "data" / "mail" / "u")  # the thread path never ran


@pytest.mark.slow
def test_every_acknowledged_message_is_in_new_after_sigkill_under_load(tmp_path):
    """The real server under concurrent SMTP load, master and workers killed with SIGKILL: every
    message that got its 250 is in new/, whole, and new/ holds nothing half-written."""
    import smtplib
    import threading

    from harness import Server, free_port, listener

    from stalwart.accounts import hash_password

    port = free_port()
    srv = Server(tmp_path / "srv", {
        "SystemSettings": {"defaultHostname": "mx.example.test", "threadPoolSize": 2},
        "NetworkListener": [listener("smtp", "smtp", port)],
        "Domain": [{"name": "example.org"}],
        "Account": [{"name": "jane", "secret": hash_password("pw", ln=4), "emails": ["jane@example.org"]},
                    {"name": "bob", "secret": hash_password("pw", ln=4), "emails": ["bob@example.org"]}],
    }).start()
    acked: list[bytes] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(n):
        for i in range(2000):  # bounded; stopped by the kill long before
            if stop.is_set():
                return
            tag = b"c%d-m%d" % (n, i)
            body = b"Subject: " + tag + b"\r\n\r\n" + tag * 200 + b"\r\n"
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                    if s.sendmail("a@remote.test", ["jane@example.org", "bob@example.org"], body) == {}:
                        with lock:
                            acked.append(tag)
            except (OSError, smtplib.SMTPException):
                return  # the server is gone

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while len(acked) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        for pid in [srv.pid, *srv.workers()]:
            os.kill(pid, signal.SIGKILL)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
        srv.proc.wait(10)
        srv.stop()
    assert len(acked) >= 300
    for account in ("jane", "bob"):
        new = Path(srv.data_dir) / "mail" / account / "new"
        stored = {}
        for name in os.listdir(new):
            data = (new / name).read_bytes()
            head, _, rest = data.partition(b"\r\nSubject: ")
            tag = rest.split(b"\r\n", 1)[0]
            assert rest == tag + b"\r\n\r\n" + tag * 200 + b"\r\n", f"{name} is not whole"
            stored[tag] = name
        missing = [t for t in acked if t not in stored]
        assert missing == [], f"{len(missing)} acknowledged messages missing in {account}'s new/"
