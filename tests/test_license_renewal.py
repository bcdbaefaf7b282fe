"""Licence renewal against a local server with a clock the tests control (services.md §6.4)."""
from __future__ import annotations

import asyncio
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stalwart.config import parse_bytes
from stalwart.services.license import EnterpriseState, LicenseRenewer, next_attempt
from stalwart.services.license import key as lkey
from stalwart.services.license import trust
from stalwart.services.license.renewal import RENEW_THRESHOLD
from test_ai_support import FakeOpenAi

NOW = 1_800_000_000
HOUR = 3600
DAY = 86400
V = NOW + 30 * DAY  # valid_to of the installed licence


class Clock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def signer():
    private = Ed25519PrivateKey.generate()
    with trust.use_test_key(private.public_key()):
        yield private


def issue(private, domain="example.org", valid_from=NOW - DAY, valid_to=V, accounts=50) -> str:
    return lkey.issue(private, domain, accounts, valid_from, valid_to)


def lic(valid_to=V):
    return lkey.LicenseKey(NOW - DAY, valid_to, 10, "example.org", "")


# -- the schedule --------------------------------------------------------------------------------------


def test_first_attempt_four_days_before_expiry():
    assert RENEW_THRESHOLD == 4 * DAY
    assert next_attempt(NOW, lic(), failed=False) == V - 4 * DAY
    assert next_attempt(V - 4 * DAY - 1, lic(), failed=False) == V - 4 * DAY


def test_daily_retries_then_hourly_on_the_last_day():
    times, now = [], V - 4 * DAY
    while now < V + 3 * HOUR:
        times.append(now)
        now = next_attempt(now, lic(), failed=True)
    assert times[:4] == [V - 4 * DAY, V - 3 * DAY, V - 2 * DAY, V - DAY]
    assert times[4:] == [V - DAY + h * HOUR for h in range(1, 24)] + [V + h * HOUR for h in range(0, 3)]


def test_a_daily_retry_never_steps_over_the_start_of_the_last_day():
    start = V - DAY - 2 * HOUR  # 26 h left
    assert next_attempt(start, lic(), failed=True) == V - DAY
    assert next_attempt(V - DAY + 1, lic(), failed=True) == V - DAY + 1 + HOUR


def test_no_usable_licence_retries_hourly():
    assert next_attempt(NOW, None, failed=True) == NOW + HOUR
    assert next_attempt(V + 5 * DAY, lic(), failed=True) == V + 5 * DAY + HOUR


# -- the renewer against a local server --------------------------------------------------------------


def state_for(srv, text=None, api_key="api-secret", data_dir=None, clock=None, hostname="mx.example.org"):
    doc = {"renewalUrl": srv.url("/api/license")}
    if text is not None:
        doc["licenseKey"] = {"@type": "Value", "secret": text}
    if api_key is not None:
        doc["apiKey"] = {"@type": "Value", "secret": api_key}
    cfg = parse_bytes(json.dumps({"Enterprise": doc}).encode())
    return EnterpriseState.load(cfg.Enterprise, hostname, data_dir, clock=clock or Clock())


def test_nothing_before_the_window_then_a_good_renewal_is_installed(signer, tmp_path):
    clock = Clock()
    with FakeOpenAi() as srv:
        state = state_for(srv, issue(signer), data_dir=str(tmp_path), clock=clock)
        renewer = LicenseRenewer(state)
        assert renewer.schedule() == V - 4 * DAY
        assert asyncio.run(renewer.step()) is False and srv.requests == []
        clock.now = V - 4 * DAY
        srv.license_body = issue(signer, valid_to=V + 365 * DAY).encode() + b"\n"
        assert asyncio.run(renewer.step()) is True
        req = srv.requests[-1]
    assert (req.method, req.path) == ("GET", "/api/license/example.org")
    assert req.headers["authorization"] == "Bearer api-secret"
    assert req.headers["user-agent"].startswith("Stalwart/")
    assert state.current().valid_to == V + 365 * DAY and state.active()
    assert renewer.due == V + 365 * DAY - 4 * DAY
    assert (tmp_path / "license.key").read_text().strip() == state.current().text


@pytest.mark.parametrize("status, body, needle", [
    (500, b"internal", "Code: 500 Internal Server Error, Details: internal"),
    (200, b"!!! not a licence !!!", "Failed to decode license renewal: Failed to decode license key"),
    (200, None, "does not match"),  # a licence for another domain
    (200, "short", "does not extend"),  # valid, but ends before the current one
    (200, "tampered", "Failed to validate license key"),
    (200, b"A" * 2000, "exceeds 1024 bytes"),
])
def test_a_bad_answer_never_replaces_a_good_licence(signer, tmp_path, status, body, needle):
    clock = Clock(V - 4 * DAY)
    if body is None:
        body = issue(signer, "example.net", valid_to=V + 365 * DAY).encode()
    elif body == "short":
        body = issue(signer, valid_to=V - DAY).encode()
    elif body == "tampered":
        raw = bytearray(__import__("base64").b64decode(issue(signer, valid_to=V + 365 * DAY)))
        raw[0] ^= 1
        body = __import__("base64").b64encode(bytes(raw))
    with FakeOpenAi() as srv:
        srv.license_status, srv.license_body = status, body
        state = state_for(srv, issue(signer), data_dir=str(tmp_path), clock=clock)
        renewer = LicenseRenewer(state)
        assert asyncio.run(renewer.step()) is False
    assert needle in renewer.last_error
    assert state.current().valid_to == V and state.active()
    assert not (tmp_path / "license.key").exists()
    assert renewer.due == V - 3 * DAY


def test_without_a_licence_the_hostname_domain_is_renewed_at_once(signer, tmp_path):
    clock = Clock()
    with FakeOpenAi() as srv:
        srv.license_body = issue(signer).encode()
        state = state_for(srv, None, data_dir=str(tmp_path), clock=clock, hostname="mail.sub.example.org")
        assert not state.active()
        renewer = LicenseRenewer(state)
        assert renewer.schedule() == NOW
        assert asyncio.run(renewer.step()) is True
        assert srv.requests[-1].path == "/api/license/example.org"
    assert state.active()


def test_no_api_key_means_no_renewal(signer):
    with FakeOpenAi() as srv:
        state = state_for(srv, issue(signer, valid_to=NOW + HOUR), api_key=None)
        renewer = LicenseRenewer(state)
        assert renewer.schedule() is None
        asyncio.run(asyncio.wait_for(renewer.run(), 2))
        assert srv.requests == []


def test_run_loop_attempt_times_follow_the_schedule_and_never_stop(signer, tmp_path):
    """The renewal server is down until the licence has expired; then it answers. Every attempt's
    clock time is recorded: 4, 3, 2, 1 days before expiry, then hourly, then after expiry too."""
    clock = Clock(V - 5 * DAY)
    seen: list[float] = []

    def answer(_rec):
        seen.append(clock.now)
        return issue(signer, valid_to=V + 365 * DAY).encode() if clock.now >= V + 2 * HOUR else b"down"

    async def fake_sleep(seconds: float) -> None:
        assert seconds > 0
        clock.now += seconds
        if len(seen) > 200:
            raise AssertionError("renewal loop ran away")

    with FakeOpenAi() as srv:
        srv.license_body = answer
        srv.license_status = 200
        state = state_for(srv, issue(signer), data_dir=str(tmp_path), clock=clock)
        renewer = LicenseRenewer(state, sleep=fake_sleep)

        async def until_renewed():
            task = asyncio.ensure_future(renewer.run())
            while state.current().valid_to == V:
                await asyncio.sleep(0.01)
            task.cancel()

        asyncio.run(asyncio.wait_for(until_renewed(), 20))
    expected = [V - 4 * DAY, V - 3 * DAY, V - 2 * DAY, V - DAY] + [V - DAY + h * HOUR for h in range(1, 27)]
    assert seen[:len(expected)] == expected
    # After the renewal the loop goes on: the next attempt is 4 days before the new expiry.
    assert seen[len(expected):] in ([], [V + 365 * DAY - 4 * DAY])
    assert state.active() and state.current().valid_to == V + 365 * DAY


def test_unwritable_data_dir_still_installs_in_memory(signer, tmp_path, monkeypatch):
    monkeypatch.setattr("stalwart.services.license.state.STATE_CHECK_INTERVAL", 0.0)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    clock = Clock(V - 4 * DAY)
    with FakeOpenAi() as srv:
        srv.license_body = issue(signer, valid_to=V + 365 * DAY).encode()
        state = state_for(srv, issue(signer), data_dir=str(blocker / "data"), clock=clock)
        assert asyncio.run(LicenseRenewer(state).step()) is True
    assert state.current().valid_to == V + 365 * DAY


def test_deleting_the_state_file_drops_the_renewed_key(signer, tmp_path, monkeypatch):
    monkeypatch.setattr("stalwart.services.license.state.STATE_CHECK_INTERVAL", 0.0)
    (tmp_path / "license.key").write_text(issue(signer, valid_to=V + 365 * DAY))
    with FakeOpenAi() as srv:
        state = state_for(srv, issue(signer), data_dir=str(tmp_path))
    assert state.current().valid_to == V + 365 * DAY
    (tmp_path / "license.key").unlink()
    assert state.current().valid_to == V
