"""The OpenAI-compatible client against a local server: request shapes, headers, reuse, failures."""
from __future__ import annotations

import asyncio
import base64
import json
import time
from unittest import mock

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from stalwart.config import parse_bytes
from stalwart.config.types import dec_hook
from stalwart.errors import ConfigError
from stalwart.services.ai import (AiError, AiModelClient, AiModels, AiResponseError, AiStatusError, AiTimeout,
                                  AiTransportError)
from stalwart.services.ai.client import MAX_IN_FLIGHT, build_headers
from stalwart.services.ai.config import AiModel, SpamLlmDisable, SpamLlmEnable
from stalwart.services.license import EnterpriseRequired
from test_ai_support import FakeOpenAi

BEARER = {"@type": "Bearer", "bearerToken": {"@type": "Value", "secret": "sk-test"}}


def model(url: str, **fields) -> AiModel:
    doc = {"name": "m", "url": url, "model": "test-model", "httpAuth": BEARER, **fields}
    return msgspec.convert(doc, AiModel, dec_hook=dec_hook)


def allow() -> None:
    return None


def client_for(url: str, gate=allow, **fields) -> AiModelClient:
    return AiModelClient(model(url, **fields), "$.AiModel[0]", gate=gate)


@pytest.fixture
def srv():
    with FakeOpenAi() as server:
        yield server


def test_defaults_and_config_paths():
    cfg = parse_bytes(json.dumps({"AiModel": [{"name": "m", "url": "http://x/", "model": "g",
                                               "httpAuth": {"@type": "Unauthenticated"}}]}).encode())
    m = cfg.AiModel[0]
    assert (m.model_type, m.timeout, m.temperature, m.allow_invalid_certs, m.http_headers, m.id) == \
        ("Chat", 120000, 0.7, False, {}, "0")
    assert isinstance(cfg.SpamLlm, SpamLlmDisable)
    with pytest.raises(ConfigError) as exc:
        parse_bytes(json.dumps({"AiModel": [{"name": "m", "url": "http://x/", "model": "g", "temperature": 1.5,
                                             "httpAuth": {"@type": "Unauthenticated"}}]}).encode())
    assert exc.value.path == "$.AiModel[0].temperature"
    with pytest.raises(ConfigError) as exc:
        parse_bytes(json.dumps({"AiModel": [{"name": "m", "url": "http://x/", "model": "g"}]}).encode())
    assert "httpAuth" in str(exc.value)
    llm = parse_bytes(json.dumps({"AiModel": [{"name": "m", "url": "http://x/", "model": "g",
                                               "httpAuth": {"@type": "Unauthenticated"}}],
                                  "SpamLlm": {"@type": "Enable", "modelId": "0", "prompt": "p",
                                              "confidence": {"High": True, "Low": True}}}).encode()).SpamLlm
    assert isinstance(llm, SpamLlmEnable)
    assert (llm.temperature, llm.separator, llm.response_pos_category, llm.response_pos_confidence,
            llm.response_pos_explanation) == (0.5, ",", 0, 1, 2)
    assert llm.categories == ["Unsolicited", "Commercial", "Harmful", "Legitimate"]
    assert llm.confidence == ["High", "Low"]


def test_chat_request_shape_and_headers(srv):
    c = client_for(srv.url("/v1/chat/completions"), httpHeaders={" X-Org ": " acme ", "Authorization": "nope"})
    answer = asyncio.run(c.ask("hello there"))
    assert answer.text == srv.reply
    assert answer.usage == {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    assert answer.event_keys()["TotalTokens"] == 14
    req = srv.requests[-1]
    assert req.method == "POST" and req.path == "/v1/chat/completions"
    assert req.json() == {"model": "test-model", "messages": [{"role": "user", "content": "hello there"}],
                          "temperature": 0.7}
    assert req.headers["content-type"] == "application/json"
    assert req.headers["x-org"] == "acme"
    assert req.headers["authorization"] == "Bearer sk-test"  # httpAuth replaces the user header
    assert "user-agent" not in req.headers


def test_text_request_shape_and_temperature_clamp(srv):
    c = client_for(srv.url("/v1/completions"), modelType="Text", temperature=0.2)
    answer = asyncio.run(c.ask("complete me", temperature=7))
    assert answer.text == srv.reply
    assert srv.requests[-1].json() == {"model": "test-model", "prompt": "complete me", "temperature": 1.0,
                                       "max_tokens": 1024}


def test_header_assembly_order_and_basic_auth():
    m = model("http://127.0.0.1:1/", httpAuth={"@type": "Basic", "username": "u",
                                                "secret": {"@type": "Value", "secret": "p:w"}},
              httpHeaders={"content-type": "application/json; charset=utf-8", "X-A": "1"})
    headers = build_headers(m, "$.AiModel[0]")
    assert headers == [("content-type", "application/json; charset=utf-8"), ("X-A", "1"),
                       ("Authorization", "Basic " + base64.b64encode(b"u:p:w").decode())]
    unauth = model("http://127.0.0.1:1/", httpAuth={"@type": "Unauthenticated"})
    assert build_headers(unauth, "$") == [("Content-Type", "application/json")]


@pytest.mark.parametrize("headers, needle", [({"Bad Name": "x"}, "Invalid header name"),
                                             ({"X-Ok": "a\r\nInjected: 1"}, "Invalid header value"),
                                             ({"X-Ok": "caf\u00e9"}, "Invalid header value"),
                                             ({"Host": "evil"}, "set by the HTTP client"),
                                             ({"content-length": "0"}, "set by the HTTP client")])
def test_invalid_header_is_a_build_error(headers, needle):
    with pytest.raises(ConfigError) as exc:
        client_for("http://127.0.0.1:1/", httpHeaders=headers)
    assert needle in exc.value.message and exc.value.path == "$.AiModel[0].httpHeaders"


def test_missing_secret_disables_the_model(monkeypatch):
    monkeypatch.delenv("STALWART_TEST_NO_SUCH_VAR", raising=False)
    auth = {"@type": "Bearer",
            "bearerToken": {"@type": "EnvironmentVariable", "variableName": "STALWART_TEST_NO_SUCH_VAR"}}
    cfg = parse_bytes(json.dumps({"AiModel": [{"name": "m", "url": "http://x/", "model": "g", "httpAuth": auth},
                                              {"name": "ok", "url": "http://x/", "model": "g",
                                               "httpAuth": {"@type": "Unauthenticated"}}]}).encode())

    class On:
        def require(self):
            return None

        def active(self):
            return True

    models = AiModels.build(cfg, On())
    assert list(models.by_name) == ["ok"]
    assert models.errors[0].path == "$.AiModel[0].httpAuth.bearerToken"
    assert models.get("") is models.by_name["ok"]


def test_connection_reuse(srv):
    c = client_for(srv.url("/v1/chat/completions"))

    async def run():
        for _ in range(5):
            await c.ask("again")

    asyncio.run(run())
    assert c.http.connections_opened == 1
    assert len({r.peer for r in srv.requests}) == 1


def test_server_closing_each_connection_still_works(srv):
    c = client_for(srv.url("/close"))

    async def run():
        return [await c.ask("x") for _ in range(3)]

    assert len(asyncio.run(run())) == 3
    assert c.http.connections_opened == 3


def test_slow_server_times_out_within_the_model_timeout(srv):
    c = client_for(srv.url("/slow"), timeout=300)
    started = time.monotonic()
    with pytest.raises(AiTimeout) as exc:
        asyncio.run(c.ask("x"))
    assert time.monotonic() - started < 1.5
    assert "did not answer within 300 ms" in str(exc.value)


def test_500_is_retried_once_then_reported(srv):
    c = client_for(srv.url("/500"), timeout=5000)
    with pytest.raises(AiStatusError) as exc:
        asyncio.run(c.ask("x"))
    assert exc.value.status == 500
    assert str(exc.value).startswith(f"OpenAPI request to {srv.url('/500')} failed with code 500 "
                                     "(Internal Server Error): ")
    assert "model overloaded" in str(exc.value)
    assert len(srv.requests) == 2


def test_503_then_success_uses_the_retry(srv):
    c = client_for(srv.url("/flaky"), timeout=5000)
    answer = asyncio.run(c.ask("x"))
    assert answer.attempts == 2 and answer.text == srv.reply


def test_retry_after_beyond_the_timeout_is_not_waited_for(srv):
    c = client_for(srv.url("/429"), timeout=2000)
    started = time.monotonic()
    with pytest.raises(AiStatusError) as exc:
        asyncio.run(c.ask("x"))
    assert exc.value.status == 429 and len(srv.requests) == 1
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("path, needle", [("/malformed", "malformed JSON"),
                                          ("/nochoices", "did not contain any choices"),
                                          ("/nocontent", "empty completion")])
def test_unusable_2xx_answers(srv, path, needle):
    c = client_for(srv.url(path))
    with pytest.raises(AiResponseError) as exc:
        asyncio.run(c.ask("x"))
    assert needle in str(exc.value) and "'m'" in str(exc.value)


def test_minimal_answer_is_accepted(srv):
    srv.reply = "just this"
    assert asyncio.run(client_for(srv.url("/minimal")).ask("x")).text == "just this"


def test_self_signed_tls_needs_allow_invalid_certs():
    with FakeOpenAi(tls=True) as srv:
        strict = client_for(srv.url("/v1/chat/completions"), timeout=3000)
        with pytest.raises(AiTransportError) as exc:
            asyncio.run(strict.ask("x"))
        assert "TLS" in str(exc.value) or "certificate" in str(exc.value).lower()
        lax = client_for(srv.url("/v1/chat/completions"), allowInvalidCerts=True)
        assert asyncio.run(lax.ask("x")).text == srv.reply


def test_connection_refused_is_a_transport_error():
    from harness import free_port

    c = client_for(f"http://127.0.0.1:{free_port()}/v1/chat/completions", timeout=2000)
    started = time.monotonic()
    with pytest.raises(AiTransportError) as exc:
        asyncio.run(c.ask("x"))
    assert "cannot connect" in str(exc.value)
    assert time.monotonic() - started < 1.5


def test_gate_refuses_before_any_request(srv):
    def closed():
        raise EnterpriseRequired("License is expired")

    c = client_for(srv.url("/v1/chat/completions"), gate=closed)
    with pytest.raises(EnterpriseRequired) as exc:
        asyncio.run(c.ask("x"))
    assert "only available in the Enterprise edition" in str(exc.value)
    assert srv.requests == []


def test_at_most_eight_requests_in_flight_per_model(srv):
    srv.slow_seconds = 0.3
    c = client_for(srv.url("/slow"), timeout=10000)
    seen = {"now": 0, "max": 0}
    real = c.http.request

    async def counting(*args, **kwargs):
        seen["now"] += 1
        seen["max"] = max(seen["max"], seen["now"])
        try:
            return await real(*args, **kwargs)
        finally:
            seen["now"] -= 1

    c.http.request = counting

    async def run():
        return await asyncio.gather(*(c.ask(str(i)) for i in range(MAX_IN_FLIGHT + 4)))

    answers = asyncio.run(run())
    assert len(answers) == MAX_IN_FLIGHT + 4
    assert seen["max"] == MAX_IN_FLIGHT
    assert srv.max_active <= MAX_IN_FLIGHT


@pytest.mark.parametrize("doc, path", [
    ({"AiModel": [{"name": "m", "url": "ftp://x/", "model": "g", "httpAuth": {"@type": "Unauthenticated"}}]},
     "$.AiModel[0].url"),
    ({"AiModel": [{"name": "m", "url": "http://x/", "model": "g", "httpAuth": {"@type": "Unauthenticated"}},
                  {"name": "m", "url": "http://y/", "model": "g", "httpAuth": {"@type": "Unauthenticated"}}]},
     "$.AiModel[1].name"),
    ({"SpamLlm": {"@type": "Enable", "modelId": "nope", "prompt": "p"}}, "$.SpamLlm.modelId"),
    ({"AiModel": [{"name": "m", "url": "http://x/", "model": "g", "httpAuth": {"@type": "Unauthenticated"}}],
      "SpamLlm": {"@type": "Enable", "modelId": "m", "prompt": "p", "categories": ["a", " A "]}},
     "$.SpamLlm.categories"),
])
def test_cross_object_validation(doc, path):
    from stalwart.services.ai.config import validate

    with pytest.raises(ConfigError) as exc:
        validate(parse_bytes(json.dumps(doc).encode()))  # parse_bytes raises once loader.validate calls it
    assert exc.value.path == path


def test_pooled_connection_dropped_by_the_server_is_replaced_once():
    """A server that drops a kept-alive connection when the next request arrives (its idle timer
    fired just then): the request goes once more on a fresh connection."""
    import socket
    import threading

    body = json.dumps({"choices": [{"message": {"content": "fresh"}}]}).encode()
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    served = []

    def read_request(conn) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int([ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0])
        while len(rest) < length:
            rest += conn.recv(65536)
        return True

    def handle(conn):
        with conn:
            if read_request(conn):
                served.append("answered")
                conn.sendall(reply)
            if read_request(conn):
                served.append("dropped")  # closes without an answer

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept_loop():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    try:
        c = client_for(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=5000)

        async def run():
            return [await c.ask("a"), await c.ask("b")]

        first, second = asyncio.run(run())
        assert (first.text, second.text) == ("fresh", "fresh")
        assert second.attempts == 1  # replaced inside the HTTP client, not by the model-level retry
        assert served == ["answered", "dropped", "answered"]
        assert c.http.connections_opened == 2
    finally:
        listener.close()


def test_sieve_llm_prompt_rules(srv):
    cfg = parse_bytes(json.dumps({"AiModel": [{"name": "m", "url": srv.url("/v1/chat/completions"), "model": "g",
                                               "httpAuth": {"@type": "Unauthenticated"}}]}).encode())
    state = {"on": True}

    class Gate:
        def require(self):
            if not state["on"]:
                raise EnterpriseRequired("License is expired")

        def active(self):
            return state["on"]

    models = AiModels.build(cfg, Gate())

    async def run(*args, **kw):
        return await models.llm_prompt(*args, **kw)

    assert asyncio.run(run("", "hi", 5)) == srv.reply  # the only model, temperature clamped
    assert srv.requests[-1].json()["temperature"] == 1.0
    assert asyncio.run(run("m", "hi", "warm")) == srv.reply
    assert srv.requests[-1].json()["temperature"] == 0.7
    assert asyncio.run(run("m", 3)) is False
    assert asyncio.run(run("other", "hi")) is False
    assert asyncio.run(run("m", "hi", trusted=False)) is False
    assert asyncio.run(run("m", "hi", trusted=False, may_interact=True)) == srv.reply
    sent = len(srv.requests)
    state["on"] = False
    assert asyncio.run(run("m", "hi")) is False
    assert len(srv.requests) == sent


class _RawServer:
    """Answers every connection with ``self.reply`` (raw bytes), then closes it."""

    def __init__(self):
        import socket
        import threading

        self.reply = b""
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(2)
                    conn.recv(65536)
                    conn.sendall(self.reply)
                except OSError:
                    pass


_raw = None

_HTTP_PIECES = st.sampled_from([b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 500 Oops\r\n", b"HTTP/1.0 204 \r\n",
                                b"Content-Length: 5\r\n", b"Content-Length: -1\r\n", b"Transfer-Encoding: chunked\r\n",
                                b"\r\n", b"5\r\nhello\r\n0\r\n\r\n", b'{"choices":[{"text":"x"}]}', b"\x00\xff",
                                b"Retry-After: soon\r\n", b"HTTP/9 999 x\r\n"])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(_HTTP_PIECES, st.binary(max_size=40)), max_size=8))
def test_any_server_bytes_give_an_answer_or_an_ai_error(pieces):
    global _raw
    if _raw is None:
        _raw = _RawServer()
    _raw.reply = b"".join(pieces)
    c = client_for(f"http://127.0.0.1:{_raw.port}/v1/chat/completions", timeout=1000)
    try:
        with mock.patch("stalwart.services.ai.client.RETRY_DELAY", 0.001):  # keep the property fast
            answer = asyncio.run(c.ask("x"))
    except AiError:
        return
    assert isinstance(answer.text, str) and answer.text


def test_retry_after_forms():
    import email.utils

    from stalwart.services.ai.client import retry_after
    from stalwart.services.ai.http import HttpResponse

    def resp(value):
        return HttpResponse(503, "x", [("retry-after", value)] if value is not None else [], b"")

    assert retry_after(resp("3")) == 3.0
    assert retry_after(resp(None)) is None and retry_after(resp("soon")) is None
    later = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= retry_after(resp(later)) <= 61
    assert retry_after(resp(email.utils.formatdate(time.time() - 60, usegmt=True))) == 0.0


def test_malformed_host_name_is_a_transport_error():
    c = client_for("http://a..b/v1/chat/completions", timeout=2000)
    with pytest.raises(AiTransportError):
        asyncio.run(c.ask("x"))
