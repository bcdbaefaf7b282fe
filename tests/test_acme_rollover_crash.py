"""Account key rollover (RFC 8555 §7.3.5) that survives a crash (stalwart.services.acme.keychange).

The crash is real: ``stalwart-cli acme rollover`` runs in a subprocess and gets SIGKILL while its
keyChange request is held by :class:`GatedProxy`, a TLS-terminating proxy in front of pebble, either
before the request reaches pebble or after pebble accepted it (its answer not yet delivered). The
next renewal (or CLI action) must then ask pebble which key it knows and settle the account file
accordingly; issuance proves the outcome.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import ssl
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from acme_util import HAVE_PEBBLE, ChallengeHttp, cli, pebbles, register_account, wait_for
from stalwart import events
from stalwart.config import parse_bytes
from stalwart.services.acme.client import AcmeClient, AcmeError, AcmeProblem
from stalwart.services.acme.http import HttpClient
from stalwart.services.acme.jws import AccountKey
from stalwart.services.acme.keychange import Settled, settle_pending_key
from stalwart.services.acme.renewal import renew
from stalwart.services.acme.state import AcmeState

needs_pebble = pytest.mark.skipif(not HAVE_PEBBLE, reason="pebble is not installed (scripts/test-deps)")
GATE_TIMEOUT = 30.0  # s: the longest a held request waits for the test
HOP_BY_HOP = {"connection", "transfer-encoding", "content-length", "keep-alive"}


class GatedProxy:
    """HTTPS in front of pebble with pebble's own WFE certificate, so the provider's ``caFile``
    verifies it. The Host header is passed through, so every URL pebble hands out (directory,
    ``Location``, the account URL used as ``kid``) names the proxy and all traffic stays on it.

    ``hold(path, "before")`` holds the next request for ``path`` before pebble sees it, then drops it;
    ``hold(path, "after")`` forwards it and holds pebble's answer when it is a success;
    ``hold(path, "lost")`` forwards it and closes the connection instead of delivering a success (then goes ``down`` when
    ``down_after_lost``). ``reached`` is set when the hold
    starts, ``release`` ends it (at most :data:`GATE_TIMEOUT`). ``down`` closes every connection
    without an answer (the CA unreachable)."""

    def __init__(self, peb):
        self.target = ("127.0.0.1", peb.port)
        self.upstream = ssl.create_default_context(cafile=peb.ca_file)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(peb.ca_file, os.path.join(peb.dir, "wfe.key"))
        self.hold_path: str | None = None
        self.hold_when = ""
        self.reached = threading.Event()
        self.release = threading.Event()
        self.down = False
        self.down_after_lost = False
        self.forwarded: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                self.request = server_ctx.wrap_socket(self.request, server_side=True)
                super().setup()

            def log_message(self, *a):
                pass

            def _relay(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if outer.down:
                    self.close_connection = True
                    return
                path = urlsplit(self.path).path
                held = outer.hold_path == path and not outer.reached.is_set()
                if held and outer.hold_when == "before":
                    outer.reached.set()
                    outer.release.wait(GATE_TIMEOUT)
                    self.close_connection = True  # never forwarded
                    return
                conn = http.client.HTTPSConnection(*outer.target, context=outer.upstream, timeout=30)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        if name.lower() not in HOP_BY_HOP:
                            conn.putheader(name, value)
                    if body or self.command == "POST":
                        conn.putheader("Content-Length", str(len(body)))
                    conn.endheaders(body)
                    resp = conn.getresponse()
                    answer = resp.read()
                    outer.forwarded.append(f"{self.command} {path} {resp.status}")
                    # Only an accepted request is held: pebble refuses a random 5 % with badNonce,
                    # which the client retries.
                    held = held and resp.status < 400
                    if held:
                        outer.reached.set()
                    if held and outer.hold_when == "lost":
                        self.close_connection = True  # pebble answered; the answer never arrives
                        outer.down = outer.down_after_lost
                        return
                    if held:
                        outer.release.wait(GATE_TIMEOUT)  # pebble answered; the client has not heard
                    self.send_response(resp.status)
                    for name, value in resp.getheaders():
                        if name.lower() not in HOP_BY_HOP:
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(answer)
                except OSError:
                    pass  # the client died while held: nobody to answer
                finally:
                    conn.close()
                self.close_connection = True

            do_GET = do_POST = do_HEAD = _relay

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def hold(self, path: str, when: str) -> None:
        self.hold_path, self.hold_when = path, when
        self.reached.clear()
        self.release.clear()

    def close(self) -> None:
        self.release.set()
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def pebble_factory(tmp_path):
    yield from pebbles(tmp_path)


@pytest.fixture
def captured():
    """Events emitted in this process, by id."""
    seen: dict[str, list[dict]] = {}
    ids = ("acme.account-key-recovered", "acme.account-key-pending-discarded", "acme.account-key-unresolved",
           "acme.account-key-changed")
    callbacks = {}
    for event in ids:
        callbacks[event] = lambda ev, keys: seen.setdefault(ev, []).append(keys)
        events.subscribe(event, callbacks[event])
    yield seen
    for event, callback in callbacks.items():
        events.log().unsubscribe(event, callback)


def config_doc(directory: str, ca_file: str) -> dict:
    return {"AcmeProvider": [{"id": "p", "directory": directory, "challengeType": "Http01",
                              "contact": ["admin@example.test"], "caFile": ca_file}],
            "Domain": [{"name": "example.test", "certificateManagement": {
                "@type": "Automatic", "acmeProviderId": "p", "subjectAlternativeNames": ["mail"]}}]}


def account_doc(data: str) -> dict:
    with open(os.path.join(data, "acme", "accounts", "p.json")) as fh:
        return json.load(fh)


def account_of(directory: str, ca_file: str, key: AccountKey) -> str | None:
    """What pebble says about ``key``: its account URL, or None (onlyReturnExisting)."""
    return asyncio.run(AcmeClient(directory, key, HttpClient(ca_file=ca_file)).existing_account())


def refused(directory: str, ca_file: str, key: AccountKey, uri: str) -> bool:
    """Whether pebble refuses a POST-as-GET of the account signed with ``key``."""
    async def go():
        try:
            await AcmeClient(directory, key, HttpClient(ca_file=ca_file), account_uri=uri).post(uri, None)
        except AcmeProblem:
            return True
        return False

    return asyncio.run(go())


def crashed_rollover(proxy: GatedProxy, data: str, config: str, when: str) -> subprocess.Popen:
    """`stalwart-cli acme rollover p`, SIGKILLed while its keyChange request is held ``when``."""
    directory = json.loads(proxy_get(proxy, "/dir"))
    proxy.hold(urlsplit(directory["keyChange"]).path, when)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from stalwart.cli import cli_main; sys.exit(cli_main())",
                             "--data-dir", data, "acme", "rollover", "p", "--config", config, "--wait", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(proxy.reached.is_set, 30, "the held keyChange request")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proxy.release.set()
    assert proc.returncode == -signal.SIGKILL
    return proc


def proxy_get(proxy: GatedProxy, path: str) -> bytes:
    conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=proxy.upstream, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


def write_config(tmp_path, doc: dict) -> str:
    path = str(tmp_path / "config.json")
    with open(path, "w") as fh:
        json.dump(doc, fh)
    return path


# -- the account file, no CA ------------------------------------------------------------------------

def test_pending_key_file_transitions(tmp_path):
    """Stage, promote, discard: each one replace of the 0600 account file; a save of the same
    account keeps the pending key, a new account (or none) drops it."""
    data = str(tmp_path / "data")
    state = AcmeState(data)
    directory = "https://ca.example.test/dir"
    old, new = AccountKey.generate(), AccountKey.generate()
    with pytest.raises(AcmeError, match="no account"):
        state.stage_pending_key("p", directory, new)
    state.save_account("p", directory, old, "https://ca.example.test/acct/1", ["mailto:a@example.test"])
    state.stage_pending_key("p", directory, new, now=1000.0)
    doc = account_doc(data)
    assert doc["pendingKey"] == {"keyPem": new.to_pem().decode(), "stagedAt": 1000.0}
    assert stat.S_IMODE(os.stat(os.path.join(data, "acme", "accounts", "p.json")).st_mode) == 0o600
    assert state.load_account("p", directory)[0].thumbprint == old.thumbprint  # the old key is used meanwhile
    assert state.pending_key("p", directory).thumbprint == new.thumbprint
    assert state.has_pending_key("p", directory) and state.pending_key_staged_at("p", directory) == 1000.0
    with pytest.raises(AcmeError, match="still waiting for the CA's answer"):
        state.stage_pending_key("p", directory, AccountKey.generate())
    state.save_account("p", directory, old, "https://ca.example.test/acct/1", ["mailto:b@example.test"])
    assert state.pending_key("p", directory).thumbprint == new.thumbprint  # a contact update keeps it
    assert state.promote_pending_key("p", directory).thumbprint == new.thumbprint
    doc = account_doc(data)
    assert "pendingKey" not in doc and doc["contact"] == ["mailto:b@example.test"]
    assert state.load_account("p", directory)[0].thumbprint == new.thumbprint
    with pytest.raises(AcmeError, match="no pending key"):
        state.promote_pending_key("p", directory)

    state.stage_pending_key("p", directory, old)
    state.discard_pending_key("p", directory)
    assert state.pending_key("p", directory) is None
    assert not state.has_pending_key("p", directory) and state.pending_key_staged_at("p", directory) is None
    assert state.load_account("p", directory)[0].thumbprint == new.thumbprint
    state.stage_pending_key("p", directory, old)
    state.save_account("p", directory, AccountKey.generate(), None, [])  # deactivated: no account, no pending key
    assert state.pending_key("p", directory) is None


def test_unusable_pending_entry_is_discarded(tmp_path, captured):
    """An entry no rollover wrote (hand-edited) cannot be the CA's key: dropped with a warning, and
    the account key stays. No CA is contacted (the directory does not exist)."""
    data = str(tmp_path / "data")
    state = AcmeState(data)
    directory = "https://127.0.0.1:9/dir"
    old = AccountKey.generate()
    state.save_account("p", directory, old, "https://127.0.0.1:9/acct/1", [])
    path = os.path.join(data, "acme", "accounts", "p.json")
    doc = account_doc(data)
    doc["pendingKey"] = {"keyPem": "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"}
    with open(path, "w") as fh:
        json.dump(doc, fh)
    with pytest.raises(ValueError, match="pendingKey"):
        state.pending_key("p", directory)
    outcome = asyncio.run(settle_pending_key(state, "p", directory, HttpClient(timeout=2)))
    assert outcome is Settled.DISCARDED
    assert "pendingKey" not in account_doc(data)
    assert state.load_account("p", directory)[0].thumbprint == old.thumbprint
    assert [e["Id"] for e in captured["acme.account-key-pending-discarded"]] == ["p"]


# -- against pebble -----------------------------------------------------------------------------------

@needs_pebble
@pytest.mark.slow
def test_crash_after_the_ca_accepted(pebble_factory, tmp_path, captured):
    """SIGKILL after pebble switched the account to the new key: the file still has the old key as
    the account key and the new one as pending. While pebble cannot be reached the renewal keeps
    both (and fails); once it can, the renewal asks pebble, promotes the pending key and issues
    with it. pebble refuses the old key from the crash on."""
    data = str(tmp_path / "data")
    web = ChallengeHttp(data)
    peb = pebble_factory(http_port=web.port)
    proxy = GatedProxy(peb)
    try:
        doc = config_doc(proxy.directory_url, peb.ca_file)
        config = write_config(tmp_path, doc)
        cfg = parse_bytes(json.dumps(doc).encode())
        first = asyncio.run(renew(cfg, "example.test", data))
        assert first["status"] == "issued"  # the account exists
        state = AcmeState(data)
        old_key, uri = state.read_account("p", proxy.directory_url)
        assert uri.startswith(f"https://127.0.0.1:{proxy.port}/")  # everything goes through the proxy

        crashed_rollover(proxy, data, config, "after")
        assert any("/rollover-account-key 200" in f for f in proxy.forwarded), proxy.forwarded
        pending = state.pending_key("p", proxy.directory_url)
        assert pending is not None and pending.thumbprint != old_key.thumbprint
        assert state.read_account("p", proxy.directory_url)[0].thumbprint == old_key.thumbprint
        assert account_of(proxy.directory_url, peb.ca_file, pending) == uri  # pebble switched …
        assert refused(proxy.directory_url, peb.ca_file, old_key, uri)  # … and refuses the key on disk

        proxy.down = True  # the CA unreachable: nothing is decided
        with pytest.raises(AcmeError):
            asyncio.run(renew(cfg, "example.test", data, force=True))
        assert state.pending_key("p", proxy.directory_url).thumbprint == pending.thumbprint
        assert state.read_account("p", proxy.directory_url)[0].thumbprint == old_key.thumbprint
        assert [e["Url"] for e in captured["acme.account-key-unresolved"]] == [uri]
        assert "acme.account-key-recovered" not in captured

        proxy.down = False
        second = asyncio.run(renew(cfg, "example.test", data, force=True))
        assert second["status"] == "issued" and second["fingerprint"] != first["fingerprint"]
        assert [e["Url"] for e in captured["acme.account-key-recovered"]] == [uri]
        key, same_uri = state.read_account("p", proxy.directory_url)
        assert same_uri == uri and key.thumbprint == pending.thumbprint  # the account survived
        assert "pendingKey" not in account_doc(data)
        assert refused(proxy.directory_url, peb.ca_file, old_key, uri)
        assert account_of(proxy.directory_url, peb.ca_file, old_key) is None
    finally:
        proxy.close()
        web.close()


@needs_pebble
@pytest.mark.slow
def test_crash_before_the_ca_got_the_request(pebble_factory, tmp_path, captured):
    """SIGKILL while the keyChange request is held before pebble: pebble never saw the new key, so
    the next CLI action discards it, and the old key keeps working (an order issues with it)."""
    data = str(tmp_path / "data")
    web = ChallengeHttp(data)
    peb = pebble_factory(http_port=web.port)
    proxy = GatedProxy(peb)
    try:
        doc = config_doc(proxy.directory_url, peb.ca_file)
        config = write_config(tmp_path, doc)
        cfg = parse_bytes(json.dumps(doc).encode())
        assert asyncio.run(renew(cfg, "example.test", data))["status"] == "issued"
        state = AcmeState(data)
        old_key, uri = state.read_account("p", proxy.directory_url)

        crashed_rollover(proxy, data, config, "before")
        assert not any("rollover-account-key" in f for f in proxy.forwarded), proxy.forwarded
        pending = state.pending_key("p", proxy.directory_url)
        assert pending is not None and pending.thumbprint != old_key.thumbprint
        assert account_of(proxy.directory_url, peb.ca_file, pending) is None

        # The next CLI action (revoke) settles first: pebble does not know the pending key.
        out = cli(data, "acme", "revoke", "example.test", "--config", config, "--wait", "5")
        assert out.returncode == 0, out.stderr
        assert "acme.account-key-pending-discarded" in out.stderr and uri in out.stderr
        assert "pendingKey" not in account_doc(data)
        assert state.read_account("p", proxy.directory_url) is not None
        assert state.read_account("p", proxy.directory_url)[0].thumbprint == old_key.thumbprint
        assert account_of(proxy.directory_url, peb.ca_file, old_key) == uri
        again = asyncio.run(renew(cfg, "example.test", data, force=True))  # orders with the old key
        assert again["status"] == "issued"
        assert state.read_account("p", proxy.directory_url)[0].thumbprint == old_key.thumbprint
        assert "acme.account-key-recovered" not in captured and "acme.account-key-unresolved" not in captured
    finally:
        proxy.close()
        web.close()


@needs_pebble
def test_lost_answer_is_settled_by_asking_the_ca(pebble_factory, tmp_path):
    """pebble accepts the keyChange but its answer is lost (connection closed): the rollover does not
    guess, it asks pebble which key it knows, finds the new one and completes. When pebble cannot
    be asked either, the rollover fails and leaves the new key pending for the next action."""
    data = str(tmp_path / "data")
    peb = pebble_factory()
    proxy = GatedProxy(peb)
    try:
        state = AcmeState(data)
        key, uri = register_account(proxy.directory_url, peb.ca_file, data)
        config = write_config(tmp_path, config_doc(proxy.directory_url, peb.ca_file))
        directory = json.loads(proxy_get(proxy, "/dir"))
        proxy.hold(urlsplit(directory["keyChange"]).path, "lost")
        out = cli(data, "acme", "rollover", "p", "--config", config, "--wait", "5")
        assert proxy.reached.is_set() and any("/rollover-account-key 200" in f for f in proxy.forwarded), (proxy.forwarded, out.stderr)
        assert out.returncode == 0, out.stderr
        assert "acme.account-key-recovered" in out.stderr
        new_key = state.read_account("p", proxy.directory_url)[0]
        assert new_key.thumbprint != key.thumbprint and new_key.thumbprint in out.stdout
        assert "pendingKey" not in account_doc(data)
        assert account_of(proxy.directory_url, peb.ca_file, new_key) == uri
        assert refused(proxy.directory_url, peb.ca_file, key, uri)

        # Lost again, and the CA unreachable right after: the rollover cannot know, says so and
        # keeps both keys; the next action asks pebble and promotes.
        proxy.hold(urlsplit(directory["keyChange"]).path, "lost")
        proxy.down_after_lost = True
        out = cli(data, "acme", "rollover", "p", "--config", config, "--wait", "5")
        assert proxy.reached.is_set() and proxy.down
        assert out.returncode == 1 and "both kept, the old key is used" in out.stderr, out.stderr
        assert "acme.account-key-unresolved" in out.stderr
        third = state.pending_key("p", proxy.directory_url)
        assert third is not None and state.read_account("p", proxy.directory_url)[0].thumbprint == new_key.thumbprint
        out = cli(data, "acme", "rollover", "p", "--config", config, "--wait", "5")
        assert out.returncode == 1 and "still waiting for the CA's answer" in out.stderr  # never two pending keys
        proxy.down = False
        out = cli(data, "acme", "rollover", "p", "--config", config, "--wait", "5")
        assert out.returncode == 0, out.stderr
        assert "acme.account-key-recovered" in out.stderr  # the key of the lost request, first …
        fourth = state.read_account("p", proxy.directory_url)[0]  # … then a rollover of its own
        assert fourth.thumbprint not in (key.thumbprint, new_key.thumbprint, third.thumbprint)
        assert "pendingKey" not in account_doc(data)
        assert account_of(proxy.directory_url, peb.ca_file, fourth) == uri
        assert account_of(proxy.directory_url, peb.ca_file, third) is None
    finally:
        proxy.close()


@needs_pebble
def test_normal_rollover_leaves_no_pending_key(pebble_factory, tmp_path):
    """Without a crash the rollover stages, pebble accepts, the key is promoted: the file has the
    new key and no pending entry, pebble knows only the new key, twice in a row."""
    data = str(tmp_path / "data")
    peb = pebble_factory()
    state = AcmeState(data)
    key, uri = register_account(peb.directory_url, peb.ca_file, data)
    config = write_config(tmp_path, config_doc(peb.directory_url, peb.ca_file))
    keys = [key]
    for _ in range(2):
        out = cli(data, "acme", "rollover", "p", "--config", config, "--wait", "5")
        assert out.returncode == 0, out.stderr
        doc = account_doc(data)
        assert "pendingKey" not in doc and doc["accountUri"] == uri
        new_key = state.read_account("p", peb.directory_url)[0]
        assert new_key.thumbprint not in {k.thumbprint for k in keys} and new_key.thumbprint in out.stdout
        assert "account-key-recovered" not in out.stderr and "pending-discarded" not in out.stderr
        assert account_of(peb.directory_url, peb.ca_file, new_key) == uri
        for old in keys:
            assert account_of(peb.directory_url, peb.ca_file, old) is None
        keys.append(new_key)
