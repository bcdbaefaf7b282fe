"""Message classification: prompt building, answer parsing, the header, failing open."""
from __future__ import annotations

import asyncio
import email
import time

import msgspec
from hypothesis import given, settings, strategies as st

from stalwart.config.types import dec_hook
from stalwart.services.ai import AiAnswer, AiModelClient, Classification, Classifier, classify
from stalwart.services.ai.classification import BODY_LIMIT, extract_text, parse_answer, prepare_body
from stalwart.services.ai.config import AiModel, SpamLlmEnable
from stalwart.services.license import EnterpriseRequired
from test_ai_support import FakeOpenAi

PLAIN = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: Cheap  ink\r\n\r\n"
         b"Buy printer ink now.\r\n> quoted reply line\r\nBest prices.\r\n")


def settings_(**fields) -> SpamLlmEnable:
    return msgspec.convert({"@type": "Enable", "modelId": "m", "prompt": "Classify this message.", **fields},
                           SpamLlmEnable)


def make(url: str, gate=lambda: None, timeout: int = 5000, **fields) -> Classifier:
    model = msgspec.convert({"name": "m", "url": url, "model": "test-model", "timeout": timeout,
                             "httpAuth": {"@type": "Unauthenticated"}}, AiModel, dec_hook=dec_hook)
    return Classifier(settings_(**fields), AiModelClient(model, "$.AiModel[0]", gate=gate))


class StubClient:
    """Answers with a fixed text without any network, for the parsing properties."""

    def __init__(self, text: str):
        self.name = "stub"
        self.text = text
        self.model = msgspec.convert({"name": "stub", "url": "http://x/", "model": "x",
                                      "httpAuth": {"@type": "Unauthenticated"}}, AiModel)
        self.prompts: list[str] = []

    async def ask(self, prompt, temperature=None, timeout=None):
        self.prompts.append(prompt)
        return AiAnswer(self.text, {}, 1, 1)


def stub(text: str, **fields) -> Classifier:
    return Classifier(settings_(**fields), StubClient(text))


def test_classified_message_gets_category_confidence_and_header():
    with FakeOpenAi() as srv:
        srv.reply = "Commercial,Medium,Promotional offer for printer ink"
        result = asyncio.run(classify(PLAIN, make(srv.url("/v1/chat/completions"))))
        prompt = srv.requests[-1].json()["messages"][0]["content"]
        temperature = srv.requests[-1].json()["temperature"]
    assert (result.status, result.category, result.confidence) == ("classified", "COMMERCIAL", "MEDIUM")
    assert result.tag == "LLM_COMMERCIAL_MEDIUM"
    assert result.header() == b"X-Spam-LLM: COMMERCIAL; confidence=MEDIUM (Promotional offer for printer ink)\r\n"
    assert prompt == "Classify this message.\n\nSubject: Cheap ink\n\nBuy printer ink now.\nBest prices."
    assert temperature == 0.5


def test_explanation_keeps_later_separators():
    result = asyncio.run(classify(PLAIN, stub("Harmful,High,Asks for bank login, links to lookalike domain")))
    assert result.tag == "LLM_HARMFUL_HIGH"
    assert result.explanation == "Asks for bank login, links to lookalike domain"


def test_multi_character_separator_and_positions():
    c = stub("why: looks like a newsletter || low || commercial", separator="||", responsePosCategory=2,
             responsePosConfidence=1, responsePosExplanation=0)
    result = asyncio.run(classify(PLAIN, c))
    assert (result.category, result.confidence) == ("COMMERCIAL", "LOW")
    assert result.explanation == "why: looks like a newsletter || low || commercial"


def test_category_only_and_unknown_confidence():
    result = asyncio.run(classify(PLAIN, stub(" legitimate , sure ")))
    assert (result.tag, result.confidence, result.explanation) == ("LLM_LEGITIMATE", None, None)
    assert result.header() == b"X-Spam-LLM: LEGITIMATE\r\n"


def test_unrecognised_category_fails_open():
    result = asyncio.run(classify(PLAIN, stub("I cannot help with that")))
    assert result.status == "failed" and result.tag is None
    assert result.header().startswith(b"X-Spam-LLM: UNCLASSIFIED; reason=answer (no category from")


def test_timeout_fails_open_within_the_budget():
    with FakeOpenAi() as srv:
        srv.slow_seconds = 3
        started = time.monotonic()
        result = asyncio.run(classify(PLAIN, make(srv.url("/slow"), timeout=400)))
        took = time.monotonic() - started
    assert took < 1.5
    assert result.status == "failed" and result.reason_code() == "timeout"
    header = result.header()
    _check_header(header)
    assert header.replace(b"\r\n ", b" ") == \
        b"X-Spam-LLM: UNCLASSIFIED; reason=timeout (model 'm' did not answer within 400 ms)\r\n"


def test_budget_is_capped_at_30_seconds():
    assert make("http://127.0.0.1:1/", timeout=120000).budget == 30.0
    assert make("http://127.0.0.1:1/", timeout=2000).budget == 2.0


def test_server_error_fails_open():
    with FakeOpenAi() as srv:
        result = asyncio.run(classify(PLAIN, make(srv.url("/500"))))
    assert result.status == "failed" and result.reason_code() == "error"
    assert b"reason=error (OpenAPI request to" in result.header()


def test_without_a_licence_nothing_is_sent():
    def closed():
        raise EnterpriseRequired("no licence key is configured")

    with FakeOpenAi() as srv:
        result = asyncio.run(classify(PLAIN, make(srv.url("/v1/chat/completions"), gate=closed)))
        assert srv.requests == []
    assert result.reason_code() == "licence"
    assert result.header() == b"X-Spam-LLM: UNCLASSIFIED; reason=licence (no licence key is configured)\r\n"


def test_html_only_and_alternative_parts():
    html = (b"Subject: hi\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            b"<html><head><style>p{}</style></head><body><p>Hello <b>there</b></p><script>x()</script></body></html>")
    assert extract_text(html)[1].strip() == "Hello there"
    alt = (b"Subject: alt\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=B\r\n\r\n"
           b"--B\r\nContent-Type: text/html\r\n\r\n<p>html version</p>\r\n"
           b"--B\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
           b"caf=E9 plain\r\n--B--\r\n")
    assert extract_text(alt) == ("alt", "café plain")


def test_message_without_text_is_skipped_without_a_header():
    msg = (b"Subject: pic\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
           b"--B\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n"
           b"--B\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=a.txt\r\n\r\n"
           b"attached\r\n--B--\r\n")
    c = stub("Legitimate,High,x")
    result = asyncio.run(classify(msg, c))
    assert result.status == "skipped" and result.header() == b"" and c.client.prompts == []


def test_body_is_cut_at_a_utf8_boundary():
    body = prepare_body("é" * BODY_LIMIT)
    assert len(body.encode()) <= BODY_LIMIT and body == "é" * (BODY_LIMIT // 2)


def test_explanation_is_cut_to_255_bytes_and_header_stays_ascii():
    result = asyncio.run(classify(PLAIN, stub("Legitimate,High," + "ü" * 300)))
    assert len(result.explanation.encode()) <= 255
    header = result.header()
    assert header.isascii() and b"=?utf-8?" in header
    parsed = email.message_from_bytes(header + b"\r\nbody")
    assert "LEGITIMATE" in str(parsed["X-Spam-LLM"])


def test_answer_cannot_inject_header_lines():
    result = asyncio.run(classify(PLAIN, stub("Legitimate,High,fine\r\nX-Evil: yes\r\n(paren) \\ end")))
    header = result.header()
    assert b"\r\nX-Evil" not in header
    assert header == b"X-Spam-LLM: LEGITIMATE; confidence=HIGH (fine X-Evil: yes \\(paren\\) \\\\ end)\r\n"


def _check_header(header: bytes) -> None:
    assert header.isascii()
    assert header.endswith(b"\r\n")
    lines = header[:-2].split(b"\r\n")
    assert lines[0].startswith(b"X-Spam-LLM: ")
    assert all(ln.startswith(b" ") for ln in lines[1:])
    assert b"\r" not in b"".join(lines) and b"\n" not in b"".join(lines)


@settings(max_examples=200, deadline=None)
@given(answer=st.text(max_size=400), sep=st.sampled_from([",", "|", " - ", ";;"]))
def test_any_answer_parses_and_gives_a_safe_header(answer, sep):
    c = stub(answer, separator=sep)
    category, confidence, explanation = parse_answer(c, answer)
    assert category is None or category in c.categories
    assert confidence is None or confidence in c.confidence
    assert explanation is None or len(explanation.encode()) <= 255
    result = asyncio.run(classify(PLAIN, c))
    assert isinstance(result, Classification)
    if result.status != "skipped":
        _check_header(result.header())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_any_message_bytes_classify_without_raising(data):
    result = asyncio.run(classify(data, stub("Legitimate,High,ok")))
    assert result.status in ("classified", "failed", "skipped")


def test_an_unexpected_fault_in_the_model_path_still_fails_open():
    class Broken(StubClient):
        async def ask(self, prompt, temperature=None, timeout=None):
            raise RuntimeError("bug")

    result = asyncio.run(classify(PLAIN, Classifier(settings_(), Broken(""))))
    assert result.status == "failed"
    assert result.header() == b"X-Spam-LLM: UNCLASSIFIED; reason=error (internal error \\(RuntimeError\\))\r\n"
