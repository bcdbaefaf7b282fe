"""Replaced ACME certificates are kept (``certs/.history/<domain>/``, never served) and
``stalwart-cli acme rollback DOMAIN`` puts the previous one back in service."""
from __future__ import annotations

import json
import os
import stat
import time

import pytest
from cryptography import x509

from acme_util import HAVE_PEBBLE, cli, pebbles, presented_chain, server_config, wait_for
from certgen import make_cert
from harness import Server, free_port
from stalwart import events
from stalwart.services.acme.lock import ProviderLock
from stalwart.services.acme.state import HISTORY_KEEP, AcmeState, RollbackError
from stalwart.tls.certs import read_directory

NAMES = ["mail.example.test"]


@pytest.fixture
def pebble_factory(tmp_path):
    yield from pebbles(tmp_path)


def install_new(state: AcmeState, **kwargs) -> int:
    cert, key, serial = make_cert(NAMES, **kwargs)
    state.install("example.test", cert.encode(), key.encode())
    return serial


def current_serial(state: AcmeState) -> int:
    return x509.load_pem_x509_certificates(state.certificate("example.test").chain_pem)[0].serial_number


def offline_config(tmp_path) -> str:
    path = str(tmp_path / "config.json")
    with open(path, "w") as fh:
        json.dump({"AcmeProvider": [{"id": "p", "directory": "https://127.0.0.1:9/dir", "challengeType": "Http01",
                                     "contact": ["admin@example.test"]}],
                   "Domain": [{"name": "example.test", "certificateManagement": {
                       "@type": "Automatic", "acmeProviderId": "p", "subjectAlternativeNames": ["mail"]}}]}, fh)
    return path


def test_install_keeps_the_last_replaced_certificates_unserved(tmp_path):
    state = AcmeState(str(tmp_path / "data"))
    serials = [install_new(state) for _ in range(HISTORY_KEEP + 2)]
    assert current_serial(state) == serials[-1]
    history = state.history("example.test")
    assert [int(h.serial, 16) for h in history] == serials[-2:-2 - HISTORY_KEEP:-1]  # newest first
    assert all(h.cert is not None and abs(h.archived_at - time.time()) < 60 for h in history)
    directory = state.history_dir("example.test")
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(h.path).st_mode) == 0o600 for h in history)
    # The TLS store reads certs/ only: the history is never served.
    assert [src[0] for src in read_directory(state.cert_dir())] == ["file:example.test"]
    # Installing the certificate that is already installed archives nothing.
    with open(state.cert_path("example.test"), "rb") as fh:
        text = fh.read()
    state.install("example.test", text, text)
    assert [h.serial for h in state.history("example.test")] == [h.serial for h in history]


def test_install_goes_ahead_when_the_old_certificate_cannot_be_archived(tmp_path):
    """Archiving is best effort: a failure is reported and the newly issued certificate is served
    anyway (failing would keep the old one in service and order again at each retry)."""
    state = AcmeState(str(tmp_path / "data"))
    old = install_new(state)
    history = state.history_dir("example.test")
    os.makedirs(os.path.dirname(history))
    with open(history, "w") as fh:  # a file where the domain's history directory belongs
        fh.write("in the way")
    seen = []

    def record(_event, keys):
        seen.append(keys)

    events.subscribe("acme.archive-error", record)
    try:
        new = install_new(state)
    finally:
        events.log().unsubscribe("acme.archive-error", record)
    assert new != old and current_serial(state) == new
    assert [src[0] for src in read_directory(state.cert_dir())] == ["file:example.test"]
    assert len(seen) == 1 and seen[0]["Hostname"] == "example.test" and seen[0]["Path"] == history
    assert "FileExistsError" in seen[0]["Reason"] and history in seen[0]["Reason"]
    with open(history) as fh:
        assert fh.read() == "in the way"  # nothing else was touched
    assert state.history("example.test") == []


def test_rollback_goes_back_one_certificate_at_a_time(tmp_path):
    state = AcmeState(str(tmp_path / "data"))
    a, b, c = (install_new(state) for _ in range(3))
    entry, replaced = state.rollback("example.test")
    assert int(entry.serial, 16) == b and current_serial(state) == b
    assert x509.load_pem_x509_certificates(replaced.chain_pem)[0].serial_number == c
    # What was taken out of service is kept aside, not offered to the next rollback.
    rolled = os.path.join(state.history_dir("example.test"), "rolled-back")
    assert len(os.listdir(rolled)) == 1 and os.listdir(rolled)[0].endswith(f"-{c:x}.pem")
    assert [int(h.serial, 16) for h in state.history("example.test")] == [a]
    state.rollback("example.test")
    assert current_serial(state) == a and state.history("example.test") == []
    with pytest.raises(RollbackError, match="no earlier certificate of example.test .*history is empty"):
        state.rollback("example.test")
    assert current_serial(state) == a  # untouched by the failed rollback


def test_rollback_skips_expired_certificates(tmp_path):
    state = AcmeState(str(tmp_path / "data"))
    good = install_new(state)
    install_new(state, days=-1, not_before_days=-10)  # served for a while, expired now
    install_new(state)
    assert len(state.history("example.test")) == 2
    entry, _ = state.rollback("example.test")
    assert int(entry.serial, 16) == good and current_serial(state) == good
    with pytest.raises(RollbackError, match=r"\(1 in history, none valid now\)"):
        state.rollback("example.test")  # only the expired one is left
    assert current_serial(state) == good


def test_cli_rollback_without_a_running_server(tmp_path):
    data = str(tmp_path / "data")
    state = AcmeState(data)
    first = install_new(state)
    install_new(state)
    config = offline_config(tmp_path)
    out = cli(data, "acme", "rollback", "example.test", "--config", config)
    assert out.returncode == 0, out.stderr
    assert f"restored the certificate with serial {first:x}" in out.stdout
    assert "no running server to reload" in out.stdout
    assert current_serial(state) == first
    out = cli(data, "acme", "rollback", "example.test", "--config", config)
    assert out.returncode == 1 and "history is empty" in out.stderr
    out = cli(data, "acme", "rollback", "other.test", "--config", config)
    assert out.returncode == 1 and "no Domain named 'other.test'" in out.stderr
    out = cli(data, "acme", "rollback", "example.test", "--config", config, "--wait", "-1")
    assert out.returncode == 2 and "between 0 and 3600" in out.stderr


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_PEBBLE, reason="pebble is not installed (scripts/test-deps)")
def test_two_issuances_then_rollback_serves_the_first_again(pebble_factory, tmp_path):
    """pebble issues twice for one domain; the first certificate is in the history, shown by
    `acme status`, and `acme rollback` makes the listener present its serial again."""
    http_port, tls_port = free_port(), free_port()
    peb = pebble_factory(http_port=http_port, tls_port=tls_port)
    provider = {"id": "pebble", "directory": peb.directory_url, "challengeType": "Http01",
                "contact": ["admin@example.test"], "caFile": peb.ca_file}
    domain = {"name": "example.test", "certificateManagement": {"@type": "Automatic", "acmeProviderId": "pebble",
                                                                 "subjectAlternativeNames": ["mail"]}}
    srv = Server(tmp_path / "srv", server_config(http_port, tls_port, provider, domain)).start()
    state = AcmeState(srv.data_dir)

    def served() -> int:
        return presented_chain(tls_port, "mail.example.test")[0].serial_number

    try:
        srv.wait_log("acme.certificate-issued", timeout=60)
        first = current_serial(state)
        wait_for(lambda: served() == first, 10, "the first certificate served")
        assert state.history("example.test") == []  # nothing was replaced yet
        out = cli(srv.data_dir, "acme", "renew", "example.test")
        assert out.returncode == 0, out.stderr
        srv.wait_log("acme.certificate-issued", timeout=60, count=2)
        second = current_serial(state)
        assert second != first
        wait_for(lambda: served() == second, 10, "the renewed certificate served")
        assert [int(h.serial, 16) for h in state.history("example.test")] == [first]
        status = json.loads(cli(srv.data_dir, "acme", "status", "--json").stdout)["example.test"]
        assert [int(h["serial"], 16) for h in status["history"]] == [first] and status["lockedBy"] is None
        assert status["pendingKeySince"] is None
        text = cli(srv.data_dir, "acme", "status").stdout
        assert f"previous: serial {first:x}" in text, text

        out = cli(srv.data_dir, "acme", "rollback", "example.test", "--config", srv.config_path)
        assert out.returncode == 0, out.stderr
        assert f"serial {first:x}" in out.stdout and "reload-certificates: " in out.stdout, out.stdout
        assert current_serial(state) == first
        wait_for(lambda: served() == first, 10, "the first certificate served again")
        assert state.history("example.test") == []
        rolled = os.listdir(os.path.join(state.history_dir("example.test"), "rolled-back"))
        assert [int(n[:-4].rsplit("-", 1)[1], 16) for n in rolled] == [second]
        # `acme status` names whoever holds the provider's lock.
        lock = ProviderLock(srv.data_dir, "pebble")
        assert lock.try_acquire("test holder")
        try:
            status = json.loads(cli(srv.data_dir, "acme", "status", "--json").stdout)["example.test"]
            assert status["lockedBy"]["pid"] == os.getpid() and status["lockedBy"]["what"] == "test holder"
            assert f"locked by pid {os.getpid()} (test holder" in cli(srv.data_dir, "acme", "status").stdout
        finally:
            lock.release()
    finally:
        srv.stop()
