"""The per-provider lock between ``stalwart-cli acme …`` and the renewal helper (stalwart.services.acme.lock):
a rollover waits for a renewal in progress, a renewal waiting for the lock orders with the key a
rollover left behind, and a holder that died blocks nobody."""
from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pytest
from acme_util import (
    HAVE_PEBBLE,
    ChallengeHttp,
    cli,
    pebbles,
    register_account,
    wait_for,
)
from certgen import make_cert
from rootcli import needs_root, owners, root_cli

from stalwart.config import parse_bytes
from stalwart.services.acme.client import AcmeClient, AcmeProblem
from stalwart.services.acme.http import HttpClient
from stalwart.services.acme.jws import AccountKey
from stalwart.services.acme.lock import ProviderLock, StateLocked, holder, lock_path
from stalwart.services.acme.renewal import renew
from stalwart.services.acme.state import AcmeState, leaf_serial

needs_pebble = pytest.mark.skipif(not HAVE_PEBBLE, reason="pebble is not installed (scripts/test-deps)")
HOLDER = ("import asyncio, sys, time\n"
          "from stalwart.services.acme.lock import ProviderLock\n"
          "lock = ProviderLock(sys.argv[1], sys.argv[2])\n"
          "asyncio.run(lock.acquire('test holder', 0))\n"
          "print('held', flush=True)\n"
          "time.sleep(60)\n")


@pytest.fixture
def pebble_factory(tmp_path):
    yield from pebbles(tmp_path)


def start_holder(data: str, provider: str) -> subprocess.Popen:
    """Another process holding the provider's lock until it is killed (at most 60 s)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, data, provider], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def acme_config(peb) -> dict:
    return {"AcmeProvider": [{"id": "p", "directory": peb.directory_url, "challengeType": "Http01",
                              "contact": ["admin@example.test"], "caFile": peb.ca_file}],
            "Domain": [{"name": "example.test", "certificateManagement": {
                "@type": "Automatic", "acmeProviderId": "p", "subjectAlternativeNames": ["mail"]}}]}


def write_config(tmp_path, doc: dict) -> str:
    path = str(tmp_path / "config.json")
    with open(path, "w") as fh:
        json.dump(doc, fh)
    return path


def start_renewal(data: str, doc: dict, force: bool = True) -> subprocess.Popen:
    """The renewal helper process exactly as the master's scheduler starts it (request on stdin)."""
    request = os.path.join(data, f"request-{time.monotonic_ns()}.json")
    os.makedirs(data, exist_ok=True)
    with open(request, "w") as fh:
        json.dump({"config": doc, "dataDir": data, "domain": "example.test", "force": force}, fh)
    with open(request) as stdin:
        return subprocess.Popen([sys.executable, "-m", "stalwart.services.acme.helper"], stdin=stdin,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def helper_result(proc: subprocess.Popen, timeout: float = 60) -> dict:
    out, err = proc.communicate(timeout=timeout)
    results = [doc for doc in map(json.loads, filter(str.strip, out.splitlines())) if "ok" in doc]
    assert len(results) == 1, out + err
    return results[0]


def read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def old_key_refused(peb, key: AccountKey, uri: str) -> bool:
    async def go():
        client = AcmeClient(peb.directory_url, key, HttpClient(ca_file=peb.ca_file), account_uri=uri)
        try:
            await client.post(uri, None)
        except AcmeProblem:
            return True
        return False

    return asyncio.run(go())


# -- the lock itself --------------------------------------------------------------------------------

def test_lock_excludes_names_its_holder_and_is_per_provider(tmp_path):
    data = str(tmp_path / "data")
    a1, a2, b = ProviderLock(data, "a"), ProviderLock(data, "a"), ProviderLock(data, "b")
    assert holder(data, "a") is None  # no lock file yet, and none created by asking
    assert not os.path.exists(lock_path(data, "a"))
    assert a1.try_acquire("renewal of example.test")
    info = holder(data, "a")
    assert info["pid"] == os.getpid() and info["what"] == "renewal of example.test"
    assert abs(info["since"] - time.time()) < 5
    assert stat.S_IMODE(os.stat(lock_path(data, "a")).st_mode) == 0o600
    assert not a2.try_acquire("rollover")  # flock is per open file: two holders in one process conflict too
    assert b.try_acquire("rollover of account b")  # another provider is independent
    started = time.monotonic()
    with pytest.raises(StateLocked) as info_exc:
        asyncio.run(a2.acquire("rollover of account a", 0.5))
    assert 0.5 <= time.monotonic() - started < 3
    assert info_exc.value.temporary and info_exc.value.kind == "Locked"
    assert f"pid {os.getpid()} (renewal of example.test" in str(info_exc.value) and "'a'" in str(info_exc.value)
    a1.release()
    b.release()
    assert holder(data, "a") is None and holder(data, "b") is None
    assert read(lock_path(data, "a")) == ""  # a released lock names nobody
    assert a2.try_acquire("rollover")
    a2.release()


def test_waiter_gets_the_lock_when_the_holder_releases(tmp_path):
    data = str(tmp_path / "data")
    first = ProviderLock(data, "p")
    assert first.try_acquire("first")
    told = []

    async def go():
        async def release_later():
            await asyncio.sleep(0.4)
            first.release()

        task = asyncio.create_task(release_later())
        started = time.monotonic()
        async with ProviderLock(data, "p").held("second", 5, told.append):
            waited = time.monotonic() - started
            assert holder(data, "p")["what"] == "second"
        await task
        return waited

    waited = asyncio.run(go())
    assert 0.3 <= waited < 3
    assert len(told) == 1 and told[0]["what"] == "first"  # told once, with the holder's name
    assert holder(data, "p") is None


def test_renewal_gives_up_with_a_temporary_error_naming_the_holder(tmp_path):
    """The helper never waits unboundedly: the scheduler retries a Locked failure with its backoff."""
    data = str(tmp_path / "data")
    cfg = parse_bytes(json.dumps({
        "AcmeProvider": [{"id": "p", "directory": "https://127.0.0.1:9/dir", "challengeType": "Http01",
                          "contact": ["admin@example.test"]}],
        "Domain": [{"name": "example.test", "certificateManagement": {"@type": "Automatic", "acmeProviderId": "p"}}],
    }).encode())
    proc = start_holder(data, "p")
    try:
        with pytest.raises(StateLocked, match=rf"pid {proc.pid} \(test holder"):
            asyncio.run(renew(cfg, "example.test", data, lock_wait=0.3))
    finally:
        proc.kill()
        proc.wait()


# -- `sudo stalwart-cli acme …` on the data directory of a server that runs as another user ----------

@pytest.fixture
def nobody_data(tmp_path):
    """A data directory owned by ``nobody`` (the service user) with two certificates installed, in a
    directory nobody can reach (pytest's own tmp root is 0700)."""
    user = pwd.getpwnam("nobody")
    top = tempfile.mkdtemp(prefix="acme-owner-", dir="/tmp")
    try:
        os.chmod(top, 0o755)
        data = os.path.join(top, "data")
        state = AcmeState(data)
        for _ in range(2):
            cert, key, _serial = make_cert(["mail.example.test"])
            state.install("example.test", cert.encode(), key.encode())
        for path in owners(data):
            os.chown(os.path.join(data, path), user.pw_uid, user.pw_gid)
        config = write_config(tmp_path, {  # root-only, like /etc: read before the CLI switches
            "AcmeProvider": [{"id": "p", "directory": "https://127.0.0.1:9/dir", "challengeType": "Http01",
                              "contact": ["admin@example.test"]}],
            "Domain": [{"name": "example.test", "certificateManagement": {
                "@type": "Automatic", "acmeProviderId": "p", "subjectAlternativeNames": ["mail"]}}]})
        yield data, config, user
    finally:
        shutil.rmtree(top)


def renew_as(user, data: str) -> int:
    """What the server's renewal helper does, in a forked child that became ``user`` like the master
    does (no supplementary groups, no capabilities): take the lock, install a new certificate.
    Returns the new certificate's serial."""
    cert, key, serial = make_cert(["mail.example.test"])
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)

            async def renewal():
                async with ProviderLock(data, "p").held("renewal of example.test", 0):
                    AcmeState(data).install("example.test", cert.encode(), key.encode())

            asyncio.run(renewal())
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported through the exit status
            print(f"renewal as {user.pw_name}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the renewal as nobody did not finish in 30 s")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0, "the renewal as nobody failed (see stderr)"
    return serial


@needs_root
def test_root_cli_acts_as_the_owner_of_the_data_directory(nobody_data):
    """`sudo stalwart-cli acme rollback` creates locks/ and rewrites certs/ as the user the server runs
    as: afterwards that user still takes the lock and installs the next certificate."""
    data, config, user = nobody_data
    acme = os.path.join(data, "acme")
    assert not os.path.exists(os.path.join(acme, "locks"))
    out = root_cli("+setuid,+setgid,+dac_read_search", data, "acme", "rollback", "example.test", "--config", config)
    assert out.returncode == 0, out.stderr
    assert f"acting as nobody:nogroup (uid {user.pw_uid}, gid {user.pw_gid}), the owner of {data}" in out.stderr
    assert "restored the certificate" in out.stdout
    found = owners(acme)
    # What the rollback made: the lock directory and file, the rolled-back archive; and the served file.
    for made in ("locks", "locks/p.lock", "certs/.history/example.test/rolled-back", "certs/example.test.pem"):
        assert made in found, sorted(found)
    assert len(os.listdir(os.path.join(acme, "certs/.history/example.test/rolled-back"))) == 1
    assert {path: owner for path, owner in found.items() if owner != (user.pw_uid, user.pw_gid)} == {}
    serial = renew_as(user, data)
    assert leaf_serial(AcmeState(data).certificate("example.test")) == f"{serial:x}"
    assert owners(acme)["certs/example.test.pem"] == (user.pw_uid, user.pw_gid)


@needs_root
def test_root_cli_refuses_when_it_cannot_become_the_owner(nobody_data):
    """A root without CAP_SETUID/CAP_SETGID (confined) touches nothing and says what to do instead."""
    data, config, _user = nobody_data
    before = owners(data)
    out = root_cli("+dac_read_search", data, "acme", "rollback", "example.test", "--config", config)
    assert out.returncode == 1, out.stderr
    assert f"{data} belongs to nobody:nogroup" in out.stderr
    assert "cannot switch to that user (Operation not permitted); run the command as that user" in out.stderr
    assert out.stdout == "" and owners(data) == before  # no lock taken, nothing rolled back


# -- against pebble ---------------------------------------------------------------------------------

@needs_pebble
def test_dead_holder_does_not_block(pebble_factory, tmp_path):
    """flock dies with its process: after SIGKILL of the holder its text is still in the lock file,
    but neither `acme status`'s probe nor a CLI rollover believes it."""
    data = str(tmp_path / "data")
    peb = pebble_factory()
    state = AcmeState(data)
    key, uri = register_account(peb.directory_url, peb.ca_file, data)
    config = write_config(tmp_path, acme_config(peb))
    proc = start_holder(data, "p")
    try:
        assert holder(data, "p")["pid"] == proc.pid
        started = time.monotonic()
        out = cli(data, "acme", "rollover", "p", "--config", config, "--wait", "1")
        assert out.returncode == 1 and 1 <= time.monotonic() - started < 15
        assert f"waiting up to 1 s for pid {proc.pid} (test holder" in out.stderr
        assert f"locked by pid {proc.pid} (test holder" in out.stderr and "gave up after 1 s" in out.stderr
        assert state.read_account("p", peb.directory_url)[0].thumbprint == key.thumbprint  # untouched
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert f'"pid": {proc.pid}' in read(lock_path(data, "p"))  # the dead holder's text stays behind …
    assert holder(data, "p") is None  # … and is not believed
    started = time.monotonic()
    out = cli(data, "acme", "rollover", "p", "--config", config, "--wait", "1")
    assert out.returncode == 0, out.stderr
    assert "waiting" not in out.stderr and time.monotonic() - started < 15
    new_key = state.read_account("p", peb.directory_url)[0]
    assert new_key.thumbprint != key.thumbprint and new_key.thumbprint in out.stdout
    assert old_key_refused(peb, key, uri)


@needs_pebble
@pytest.mark.slow
def test_rollover_waits_for_a_running_renewal(pebble_factory, tmp_path):
    """A renewal helper is mid-order (pebble's HTTP-01 request is held back); `acme rollover` waits
    for it, names it, then rolls the key; the next renewal orders with the new key, which pebble
    accepts while it refuses the old one."""
    data = str(tmp_path / "data")
    web = ChallengeHttp(data)
    try:
        peb = pebble_factory(http_port=web.port, env={"PEBBLE_AUTHZREUSE": "0"})  # every order is validated
        doc = acme_config(peb)
        config = write_config(tmp_path, doc)
        cfg = parse_bytes(json.dumps(doc).encode())
        assert asyncio.run(renew(cfg, "example.test", data))["status"] == "issued"  # the account exists
        state = AcmeState(data)
        old_key, uri = state.read_account("p", peb.directory_url)

        web.gate.clear()
        web.requested.clear()
        renewal = start_renewal(data, doc)
        wait_for(web.requested.is_set, 30, "pebble's validation request")
        assert holder(data, "p")["pid"] == renewal.pid and holder(data, "p")["what"] == "renewal of example.test"
        err_path = str(tmp_path / "rollover.err")
        with open(err_path, "w") as err:
            rollover = subprocess.Popen(
                [sys.executable, "-c", "import sys; from stalwart.cli import cli_main; sys.exit(cli_main())",
                 "--data-dir", data, "acme", "rollover", "p", "--config", config, "--wait", "30"],
                stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            # Not just any stderr: the config's warnings come first, the waiting message after them.
            wait_for(lambda: "waiting up to" in read(err_path), 15, "the rollover's waiting message")
            assert f"waiting up to 30 s for pid {renewal.pid} (renewal of example.test" in read(err_path)
            time.sleep(1.0)
            assert rollover.poll() is None  # still waiting while the order is in progress
            assert state.read_account("p", peb.directory_url)[0].thumbprint == old_key.thumbprint
            web.gate.set()
            result = helper_result(renewal)
            assert result["ok"] and result["result"]["status"] == "issued", result
            out, _ = rollover.communicate(timeout=30)
            assert rollover.returncode == 0, read(err_path)
        finally:
            web.gate.set()
            for proc in (renewal, rollover):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        new_key, same_uri = state.read_account("p", peb.directory_url)
        assert same_uri == uri and new_key.thumbprint != old_key.thumbprint and new_key.thumbprint in out
        assert state.certificate("example.test").fingerprint == result["result"]["fingerprint"]
        assert old_key_refused(peb, old_key, uri)
        after = helper_result(start_renewal(data, doc))  # signs with the rolled key
        assert after["ok"] and after["result"]["status"] == "issued", after
    finally:
        web.close()


@needs_pebble
@pytest.mark.slow
def test_waiting_renewal_rereads_the_account(pebble_factory, tmp_path):
    """A renewal that started while the lock was held orders with the key written meanwhile: it
    reads the account only once it holds the lock (reading it earlier would sign with a key
    pebble no longer accepts)."""
    data = str(tmp_path / "data")
    web = ChallengeHttp(data)
    try:
        peb = pebble_factory(http_port=web.port)
        doc = acme_config(peb)
        assert asyncio.run(renew(parse_bytes(json.dumps(doc).encode()), "example.test", data))["status"] == "issued"
        state = AcmeState(data)
        old_key, uri = state.read_account("p", peb.directory_url)
        lock = ProviderLock(data, "p")
        assert lock.try_acquire("test rollover")
        try:
            renewal = start_renewal(data, doc)
            time.sleep(1.5)
            assert renewal.poll() is None and holder(data, "p")["pid"] == os.getpid()
            new_key = AccountKey.generate()

            async def roll():  # the rollover, done by hand under the lock this test holds
                client = AcmeClient(peb.directory_url, old_key, HttpClient(ca_file=peb.ca_file), account_uri=uri)
                await client.change_key(new_key)

            asyncio.run(roll())
            _k, _u, contact = state.load_account("p", peb.directory_url)
            state.save_account("p", peb.directory_url, new_key, uri, contact)
        finally:
            lock.release()
        result = helper_result(renewal)
        assert result["ok"] and result["result"]["status"] == "issued", result
        assert old_key_refused(peb, old_key, uri)
        assert state.read_account("p", peb.directory_url)[0].thumbprint == new_key.thumbprint  # not written back
    finally:
        web.close()
