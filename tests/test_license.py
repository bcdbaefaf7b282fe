"""Enterprise licence keys: format, offline verification, the domain rule, the state and its gate.

Licences are signed with keys generated here and trusted through ``trust.use_test_key``.
"""
from __future__ import annotations

import base64
import json
import os
import struct
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings, strategies as st

from stalwart.config import parse_bytes
from stalwart.services.ai import AiModels
from stalwart.services.license import (AccountLimitExceeded, DomainMismatch, EnterpriseRequired, EnterpriseState,
                                       InvalidDomain, LicenseDecodeError, LicenseError, LicenseExpired,
                                       LicenseNotYetValid, LicenseParametersError, LicenseParseError,
                                       LicenseSignatureError)
from stalwart.services.license import key as lkey
from stalwart.services.license import trust

NOW = 1_800_000_000
DAY = 86400


@pytest.fixture
def signer():
    private = Ed25519PrivateKey.generate()
    with trust.use_test_key(private.public_key()):
        yield private


def issue(private, domain="example.org", accounts=100, valid_from=NOW - DAY, valid_to=NOW + 30 * DAY) -> str:
    return lkey.issue(private, domain, accounts, valid_from, valid_to)


class Clock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_valid_licence_round_trip(signer):
    lic = lkey.validate(issue(signer, "*.example.org", 25), "mx1.example.org", NOW)
    assert (lic.domain, lic.accounts, lic.valid_from, lic.valid_to) == ("*.example.org", 25, NOW - DAY, NOW + 30 * DAY)
    assert lic.describe()["validTo"] == "2027-02-14T08:00:00Z"


def test_layout_matches_the_reference(signer):
    text = issue(signer, "example.org", 7, 1000, 2000)
    blob = base64.b64decode(text)
    assert struct.unpack_from("<QQII", blob) == (1000, 2000, 7, 11)
    assert blob[24:35] == b"example.org" and len(blob) == 24 + 11 + 64


def test_embedded_trust_root_is_the_projects_own_key():
    assert trust.PUBLIC_KEY_HEX != "760ab623596f0b3c9a2fcd7f6be5376848368d0e61db0204778f9c0a98d820c2"
    assert len(bytes.fromhex(trust.PUBLIC_KEY_HEX)) == 32


def test_test_key_hook_is_scoped(signer):
    text = issue(signer)
    lkey.decode(text)
    with trust.use_test_key(Ed25519PrivateKey.generate().public_key()):
        with pytest.raises(LicenseSignatureError):
            lkey.decode(text)
    lkey.decode(text)


@pytest.mark.parametrize("domain", ["mx1.example.org", "example.org", "a.b.example.org", "MX1.Example.ORG."])
@pytest.mark.parametrize("licensed", ["example.org", "*.example.org", "mail.example.org"])
def test_domain_rule_covers_the_registrable_domain(signer, licensed, domain):
    lkey.validate(issue(signer, licensed), domain, NOW)


def test_idna_names_compare_as_a_labels(signer):
    lkey.validate(issue(signer, "bücher.example"), "mx.xn--bcher-kva.example", NOW)


@pytest.mark.parametrize("text, error, message", [
    ("not base64!", LicenseDecodeError, "Failed to decode license key"),
    ("AAAA", LicenseParseError, "Failed to parse license key"),
])
def test_encoding_errors(text, error, message):
    with pytest.raises(error) as exc:
        lkey.validate(text, "mx.example.org", NOW)
    assert str(exc.value) == message


def test_missing_padding_is_a_decode_error(signer):
    text = issue(signer, "example.org")
    text = text.rstrip("=") if text.endswith("=") else text[:-1]
    with pytest.raises(LicenseDecodeError):
        lkey.decode(text)


def test_whitespace_and_trailing_newline_are_tolerated(signer):
    text = issue(signer)
    wrapped = "\n".join(text[i:i + 20] for i in range(0, len(text), 20)) + "\r\n"
    assert lkey.validate(" " + wrapped, "mx.example.org", NOW).domain == "example.org"


@pytest.mark.parametrize("fields", [dict(valid_from=0), dict(valid_to=0), dict(valid_from=NOW, valid_to=NOW),
                                    dict(accounts=0), dict(domain="")])
def test_invalid_parameters(signer, fields):
    with pytest.raises(LicenseParametersError, match="Invalid license key parameters"):
        lkey.decode(issue(signer, **fields))


def test_wrong_key_is_rejected(signer):
    other = Ed25519PrivateKey.generate()
    with pytest.raises(LicenseSignatureError, match="Failed to validate license key"):
        lkey.validate(issue(other), "mx.example.org", NOW)


def test_every_single_byte_change_is_rejected(signer):
    blob = bytearray(base64.b64decode(issue(signer, "example.org")))
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(LicenseError):
            lkey.validate(base64.b64encode(bytes(tampered)).decode(), "mx.example.org", NOW)


def test_extra_accounts_cannot_be_forged(signer):
    blob = bytearray(base64.b64decode(issue(signer, accounts=10)))
    struct.pack_into("<I", blob, 16, 10_000)
    with pytest.raises(LicenseSignatureError):
        lkey.decode(base64.b64encode(bytes(blob)).decode())


def test_expired_and_not_yet_valid(signer):
    text = issue(signer, valid_from=NOW, valid_to=NOW + DAY)
    with pytest.raises(LicenseExpired, match="^License is expired$"):
        lkey.validate(text, "mx.example.org", NOW + DAY)  # valid_to itself is outside
    with pytest.raises(LicenseNotYetValid, match="not yet valid"):
        lkey.validate(text, "mx.example.org", NOW - 1)
    lkey.validate(text, "mx.example.org", NOW)
    lkey.validate(text, "mx.example.org", NOW + DAY - 1)


def test_hostname_not_covered(signer):
    with pytest.raises(DomainMismatch) as exc:
        lkey.validate(issue(signer, "example.org"), "mx.example.net", NOW)
    assert str(exc.value) == 'License issued to domain "example.org" does not match "mx.example.net"'


@pytest.mark.parametrize("host, why", [("localhost", "single label"), ("co.uk", "public suffix"),
                                       ("com", "single label")])
def test_hosts_without_a_registrable_domain(signer, host, why):
    with pytest.raises(InvalidDomain) as exc:
        lkey.validate(issue(signer), host, NOW)
    assert str(exc.value).startswith(f'Invalid domain "{host}"') and why in str(exc.value)
    assert "SystemSettings.defaultHostname" in str(exc.value)


def test_licence_for_a_public_suffix_is_refused(signer):
    with pytest.raises(InvalidDomain, match="public suffix"):
        lkey.validate(issue(signer, "*.co.uk"), "mx.example.co.uk", NOW)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_input_only_raises_licence_errors(data):
    try:
        lkey.validate(base64.b64encode(data).decode(), "mx.example.org", NOW)
    except LicenseError:
        pass


# -- the state in force and the gate ------------------------------------------------------------------


def enterprise(license_text=None, api_key=None, **extra):
    doc = {}
    if license_text is not None:
        doc["licenseKey"] = {"@type": "Value", "secret": license_text}
    if api_key is not None:
        doc["apiKey"] = {"@type": "Value", "secret": api_key}
    doc.update(extra)
    doc = {"Enterprise": doc, "SystemSettings": {"defaultHostname": "mx.example.org"}}
    return parse_bytes(json.dumps(doc).encode())


def test_community_edition_without_a_key():
    state = EnterpriseState.load(enterprise().Enterprise, "mx.example.org", clock=Clock())
    assert not state.active()
    assert state.status() == {"edition": "community", "hostname": "mx.example.org", "renewal": False}
    with pytest.raises(EnterpriseRequired) as exc:
        state.require()
    assert str(exc.value).startswith("This feature is only available in the Enterprise edition. "
                                     "Obtain your trial license at https://license.stalw.art/trial.")


def test_valid_key_turns_enterprise_on_and_expiry_turns_it_off_without_reload(signer):
    clock = Clock()
    state = EnterpriseState.load(enterprise(issue(signer, valid_to=NOW + 10)).Enterprise, "mx.example.org",
                                 clock=clock)
    assert state.active()
    state.require()
    status = state.status()
    assert status["edition"] == "enterprise" and status["license"]["secondsLeft"] == 10
    clock.now = NOW + 10
    assert not state.active()
    with pytest.raises(EnterpriseRequired, match="License is expired"):
        state.require()


def test_invalid_key_keeps_community_edition_with_the_reason(signer):
    state = EnterpriseState.load(enterprise(issue(signer, "example.net")).Enterprise, "mx.example.org",
                                 clock=Clock())
    assert not state.active()
    assert state.status()["reason"] == 'License issued to domain "example.net" does not match "mx.example.org"'


def test_key_from_file_and_environment(signer, tmp_path, monkeypatch):
    path = tmp_path / "licence.txt"
    path.write_text(issue(signer) + "\n")
    cfg = enterprise(licenseKey={"@type": "File", "filePath": str(path)})
    assert EnterpriseState.load(cfg.Enterprise, "mx.example.org", clock=Clock()).active()
    monkeypatch.setenv("STALWART_TEST_LICENCE", issue(signer))
    cfg = enterprise(licenseKey={"@type": "EnvironmentVariable", "variableName": "STALWART_TEST_LICENCE"})
    assert EnterpriseState.load(cfg.Enterprise, "mx.example.org", clock=Clock()).active()
    cfg = enterprise(licenseKey={"@type": "EnvironmentVariable", "variableName": "STALWART_TEST_UNSET_VAR"})
    state = EnterpriseState.load(cfg.Enterprise, "mx.example.org", clock=Clock())
    assert not state.active() and "STALWART_TEST_UNSET_VAR" in state.reason()


def test_account_limit(signer):
    text = issue(signer, accounts=3)
    state = EnterpriseState.load(enterprise(text).Enterprise, "mx.example.org", clock=Clock(), account_count=3)
    assert state.active()
    state.ensure_can_add_account(2)
    with pytest.raises(AccountLimitExceeded) as exc:
        state.ensure_can_add_account(3)
    assert str(exc.value) == "License key is valid but only allows 3 accounts, found 4."
    over = EnterpriseState.load(enterprise(text).Enterprise, "mx.example.org", clock=Clock(), account_count=4)
    assert not over.active()
    assert over.reason() == "License key is valid but only allows 3 accounts, found 4."


def test_renewed_key_in_the_data_dir_wins_only_when_it_lasts_longer(signer, tmp_path):
    configured = issue(signer, valid_to=NOW + 5 * DAY)
    clock = Clock()
    state = EnterpriseState.load(enterprise(configured).Enterprise, "mx.example.org", str(tmp_path), clock=clock)
    assert state.status()["license"]["source"] == "configured"
    state.install(lkey.validate(issue(signer, valid_to=NOW + 60 * DAY), "mx.example.org", NOW))
    assert state.current().valid_to == NOW + 60 * DAY
    assert oct(os.stat(tmp_path / "license.key").st_mode & 0o777) == "0o600"
    # A new process (a worker, or after a restart) picks the renewed key up from the data dir.
    again = EnterpriseState.load(enterprise(configured).Enterprise, "mx.example.org", str(tmp_path), clock=clock)
    assert again.status()["license"]["source"] == "renewed"
    # A stored key that is shorter than the configured one is not used.
    longer = issue(signer, valid_to=NOW + 90 * DAY)
    third = EnterpriseState.load(enterprise(longer).Enterprise, "mx.example.org", str(tmp_path), clock=clock)
    assert third.current().valid_to == NOW + 90 * DAY


def test_ai_models_are_refused_without_a_licence_and_work_with_one(signer):
    from test_ai_support import FakeOpenAi
    import asyncio

    with FakeOpenAi() as srv:
        doc = {"AiModel": [{"name": "m", "url": srv.url("/v1/chat/completions"), "model": "g",
                            "httpAuth": {"@type": "Unauthenticated"}}],
               "SystemSettings": {"defaultHostname": "mx.example.org"}}
        cfg = parse_bytes(json.dumps(doc).encode())
        off = AiModels.build(cfg, EnterpriseState.load(cfg.Enterprise, "mx.example.org", clock=Clock()))
        with pytest.raises(EnterpriseRequired):
            asyncio.run(off.get("m").ask("hi"))
        assert srv.requests == []
        real_now = int(time.time())
        doc["Enterprise"] = {"licenseKey": {"@type": "Value", "secret": issue(signer, valid_from=real_now - DAY,
                                                                              valid_to=real_now + DAY)}}
        cfg = parse_bytes(json.dumps(doc).encode())
        on = AiModels.build(cfg, EnterpriseState.load(cfg.Enterprise, "mx.example.org"))
        assert asyncio.run(on.get("m").ask("hi")).text == srv.reply
