"""Message classification in the SMTP DATA stage of a real stalwartd (services.md §4.2).

The server process trusts a licence key generated here through a ``sitecustomize`` module put on
its PYTHONPATH by this test: the package itself has no switch for that (trust.py).
"""
from __future__ import annotations

import os
import smtplib
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness import Server, free_port, listener
from stalwart.accounts import hash_password
from stalwart.services.license import key as lkey
from test_ai_support import FakeOpenAi

MESSAGE = b"From: a@example.net\r\nTo: jane@example.org\r\nSubject: Ink\r\n\r\nCheap printer ink.\r\n"
SITECUSTOMIZE = '''
import os
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from stalwart.services.license import trust
trust._trust.key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(os.environ["STALWART_TEST_LICENCE_PUBKEY"]))
'''


def start(tmp_path, model_url, licence: str | None):
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    now = int(time.time())
    port = free_port()
    doc = {"SystemSettings": {"defaultHostname": "mx.example.org", "threadPoolSize": 1},
           "NetworkListener": [listener("smtp", "smtp", port)],
           "Domain": [{"name": "example.org"}],
           "Account": [{"name": "jane", "secret": hash_password("pw", ln=8), "emails": ["jane@example.org"]}],
           "AiModel": [{"name": "m", "url": model_url, "model": "g", "timeout": 500,
                        "httpAuth": {"@type": "Unauthenticated"}}],
           "SpamLlm": {"@type": "Enable", "modelId": "m", "prompt": "Classify."}}
    if licence == "valid":
        doc["Enterprise"] = {"licenseKey": {"@type": "Value",
                                            "secret": lkey.issue(private, "example.org", 10, now - 60, now + 86400)}}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout's stalwart
    env = {"PYTHONPATH": os.pathsep.join([str(site), root, os.environ.get("PYTHONPATH", "")]),
           "STALWART_TEST_LICENCE_PUBKEY": public.hex()}
    return Server(tmp_path / "srv", doc, env=env).start(), port


def deliver(srv, port) -> tuple[bytes, float]:
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.sendmail("a@example.net", ["jane@example.org"], MESSAGE)
    took = time.monotonic() - started
    new = os.path.join(srv.data_dir, "mail", "jane", "new")
    names = os.listdir(new)
    assert len(names) == 1
    return open(os.path.join(new, names[0]), "rb").read(), took


@pytest.mark.slow
def test_classified_message_carries_the_header(tmp_path):
    with FakeOpenAi() as model:
        model.reply = "Commercial,Medium,Printer ink offer"
        srv, port = start(tmp_path, model.url("/v1/chat/completions"), "valid")
        try:
            message, _ = deliver(srv, port)
        finally:
            srv.stop()
        assert model.requests[-1].json()["messages"][0]["content"].startswith("Classify.\n\nSubject: Ink")
    assert b"\r\nX-Spam-LLM: COMMERCIAL; confidence=MEDIUM (Printer ink offer)\r\n" in message
    assert message.startswith(b"Received: ")


@pytest.mark.slow
def test_slow_model_fails_open_within_its_timeout(tmp_path):
    with FakeOpenAi() as model:
        model.slow_seconds = 5
        srv, port = start(tmp_path, model.url("/slow"), "valid")
        try:
            message, took = deliver(srv, port)
        finally:
            srv.stop()
    assert took < 3
    assert b"X-Spam-LLM: UNCLASSIFIED; reason=timeout" in message


@pytest.mark.slow
def test_without_a_licence_the_model_is_not_asked(tmp_path):
    with FakeOpenAi() as model:
        srv, port = start(tmp_path, model.url("/v1/chat/completions"), None)
        try:
            message, _ = deliver(srv, port)
            log = srv.log()
        finally:
            srv.stop()
        assert model.requests == []
    assert b"X-Spam-LLM: UNCLASSIFIED; reason=licence" in message
    assert "AI features are off" in log
