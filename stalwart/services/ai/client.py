"""The OpenAI-compatible model client (spec/services.md §4.1 and its "We do better").

Request: ``POST <url>`` with ``Content-Type: application/json``, the model's ``httpHeaders`` and
``Authorization`` from ``httpAuth`` (spec/README.md "HttpAuth": header assembly order). Chat models
send ``{"model", "messages": [{"role": "user", "content"}], "temperature"}``; Text models send
``{"model", "prompt", "temperature", "max_tokens": 1024}`` because ``/v1/completions`` otherwise
stops after 16 tokens.

The answer is parsed leniently: only ``choices[0].message.content`` (Chat) or ``choices[0].text``
(Text) is required. One retry on HTTP 429, 5xx or a transport error, honouring ``Retry-After``, and
only while the model's ``timeout`` allows; at most :data:`MAX_IN_FLIGHT` requests per model per
worker, later callers waiting inside their own time limit.
"""
from __future__ import annotations

import asyncio
import email.utils
import re
import time
from collections.abc import Callable

import msgspec

from ... import events
from ...errors import ConfigError, StalwartError
from ...config.httpauth import authorization
from .config import AiModel
from .http import HttpClient, HttpError, HttpResponse

MAX_IN_FLIGHT = 8  # requests per model per worker (services.md §4 "We do better")
TEXT_MAX_TOKENS = 1024
RETRY_DELAY = 0.25  # s before the single retry when the server gives no Retry-After
ERROR_BODY_LIMIT = 512  # characters of a failed answer's body quoted in the error

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 §5.6.2 field-name
# RFC 9110 §5.5: no CR, LF, NUL or other controls; obs-text (non-ASCII) is refused as well, since
# servers disagree on its charset.
_BAD_VALUE = re.compile(r"[^\x09\x20-\x7e]")
# Framing headers belong to the HTTP client: a second Host or Content-Length would make the
# request ambiguous (RFC 9112 §6.3, request smuggling).
_RESERVED = frozenset({"host", "content-length", "transfer-encoding", "connection", "te", "upgrade"})


class AiError(StalwartError):
    """A model call failed. ``model`` names the AiModel; the message is safe to log."""

    def __init__(self, model: str, message: str):
        self.model = model
        super().__init__(message)


class AiTimeout(AiError):
    """No answer within the time limit."""


class AiTransportError(AiError):
    """Connection, TLS or HTTP framing failure."""


class AiStatusError(AiError):
    """A non-2xx answer. ``status`` and ``body`` are the server's."""

    def __init__(self, model: str, url: str, status: int, reason: str, body: bytes):
        self.status = status
        self.body = body
        text = body.decode("utf-8", "replace")[:ERROR_BODY_LIMIT]
        super().__init__(model, f"OpenAPI request to {url} failed with code {status} ({reason}): {text}")


class AiResponseError(AiError):
    """A 2xx answer that carries no usable completion."""


class AiAnswer:
    """A completion: the text, token usage when the server reported it, and how long it took."""

    __slots__ = ("text", "usage", "elapsed_ms", "attempts")

    def __init__(self, text: str, usage: dict[str, int], elapsed_ms: int, attempts: int):
        self.text = text
        self.usage = usage
        self.elapsed_ms = elapsed_ms
        self.attempts = attempts

    def event_keys(self) -> dict[str, int]:
        """Token counts for ``ai.llm-response`` (services.md §4 "We do better")."""
        names = {"prompt_tokens": "PromptTokens", "completion_tokens": "CompletionTokens",
                 "total_tokens": "TotalTokens"}
        return {names[k]: v for k, v in self.usage.items() if k in names}


def build_headers(model: AiModel, path: str) -> list[tuple[str, str]]:
    """The request headers in assembly order (spec/README.md "HttpAuth").

    Raises :class:`ConfigError` for an invalid header or an unresolvable secret: the model is then
    disabled, so a request is never sent without its configured authentication.
    """
    headers: list[tuple[str, str]] = [("Content-Type", "application/json")]
    for raw_name, raw_value in model.http_headers.items():
        name, value = raw_name.strip(), raw_value.strip()
        if not _TOKEN.match(name):
            raise ConfigError(f"{path}.httpHeaders", f"Invalid header name {raw_name!r}")
        if name.lower() in _RESERVED:
            raise ConfigError(f"{path}.httpHeaders", f"Invalid header {name!r}: it is set by the HTTP client")
        if _BAD_VALUE.search(value):
            raise ConfigError(f"{path}.httpHeaders", f"Invalid header value for {name!r}")
        headers = [(k, v) for k, v in headers if k.lower() != name.lower()]
        headers.append((name, value))
    token = authorization(model.http_auth, f"{path}.httpAuth")
    if token is not None:
        headers = [(k, v) for k, v in headers if k.lower() != "authorization"]
        headers.append(("Authorization", token))
    return headers


def request_body(model: AiModel, prompt: str, temperature: float) -> bytes:
    if model.model_type == "Text":
        doc = {"model": model.model, "prompt": prompt, "temperature": temperature,
               "max_tokens": TEXT_MAX_TOKENS}
    else:
        doc = {"model": model.model, "messages": [{"role": "user", "content": prompt}],
               "temperature": temperature}
    return msgspec.json.encode(doc)


def parse_answer(model: AiModel, body: bytes) -> tuple[str, dict[str, int]]:
    """The first choice's text and the ``usage`` counts; missing optional fields are fine."""
    name = model.name
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise AiResponseError(name, f"model {name!r} answered with malformed JSON: "
                                    f"{body[:ERROR_BODY_LIMIT].decode('utf-8', 'replace')}") from None
    choices = doc.get("choices") if isinstance(doc, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise AiResponseError(name, f"model {name!r} answer did not contain any choices: "
                                    f"{body[:ERROR_BODY_LIMIT].decode('utf-8', 'replace')}")
    first = choices[0]
    message = first.get("message")
    chat = message.get("content") if isinstance(message, dict) else None
    text = first.get("text")
    # Prefer the field of the configured shape, accept the other: some servers answer a chat
    # request in the legacy shape and the reverse.
    content = (chat if model.model_type == "Chat" else text) or chat or text
    if not isinstance(content, str) or not content.strip():
        raise AiResponseError(name, f"model {name!r} returned an empty completion")
    usage: dict[str, int] = {}
    raw_usage = doc.get("usage")
    if isinstance(raw_usage, dict):
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            value = raw_usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                usage[key] = value
    return content, usage


def retry_after(resp: HttpResponse) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 §10.2.3), or None."""
    value = resp.header("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _retryable(resp: HttpResponse) -> bool:
    return resp.status == 429 or 500 <= resp.status <= 599


class AiModelClient:
    """One configured model. ``gate`` raises when the Enterprise licence does not allow AI calls.

    Build it once per configuration generation (start, reload) in each worker; it keeps its
    connections and its in-flight limit across calls.
    """

    def __init__(self, model: AiModel, path: str, gate: Callable[[], None], http: HttpClient | None = None):
        self.model = model
        self.name = model.name
        self.headers = build_headers(model, path)
        self.gate = gate
        self.http = http or HttpClient(verify=not model.allow_invalid_certs)
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._loop is not loop:
            self._slots, self._loop = asyncio.Semaphore(MAX_IN_FLIGHT), loop
        return self._slots

    async def ask(self, prompt: str, temperature: float | None = None, timeout: float | None = None) -> AiAnswer:
        """Send ``prompt`` and return the completion; every failure raises :class:`AiError`.

        ``temperature`` is clamped to [0, 1] (services.md §4.3); ``timeout`` (seconds) may only
        shorten the model's own ``timeout``. The licence is checked at call time (§4 "We do better").
        """
        self.gate()
        limit = self.model.timeout / 1000.0 if timeout is None else min(timeout, self.model.timeout / 1000.0)
        temp = self.model.temperature if temperature is None else min(1.0, max(0.0, float(temperature)))
        body = request_body(self.model, prompt, temp)
        started = time.monotonic()
        deadline = started + limit
        try:
            async with asyncio.timeout(limit):
                async with self._semaphore():
                    text, usage, attempts = await self._send(body, deadline)
        except TimeoutError:
            err: AiError = AiTimeout(self.name, f"model {self.name!r} did not answer within {limit * 1000:.0f} ms")
            self._report(err)
            raise err from None
        except AiError as err:
            self._report(err)
            raise
        return AiAnswer(text, usage, int((time.monotonic() - started) * 1000), attempts)

    async def _send(self, body: bytes, deadline: float) -> tuple[str, dict[str, int], int]:
        url = self.model.url
        for attempt in (1, 2):
            remaining = deadline - time.monotonic()
            try:
                resp = await self.http.request("POST", url, self.headers, body, timeout=max(remaining, 0.001))
            except HttpError as exc:
                if exc.timeout:
                    raise AiTimeout(self.name, f"model {self.name!r}: {exc}") from None
                if attempt == 1 and deadline - time.monotonic() > RETRY_DELAY:
                    await asyncio.sleep(0 if not exc.sent else RETRY_DELAY)
                    continue
                raise AiTransportError(self.name, f"model {self.name!r}: {exc}") from None
            if 200 <= resp.status <= 299:
                text, usage = parse_answer(self.model, resp.body)
                return text, usage, attempt
            if attempt == 1 and _retryable(resp):
                wait = retry_after(resp)
                wait = RETRY_DELAY if wait is None else wait
                if deadline - time.monotonic() > wait:
                    await asyncio.sleep(wait)
                    continue
            raise AiStatusError(self.name, url, resp.status, resp.reason, resp.body)
        raise AssertionError("unreachable: the loop returns or raises")

    def _report(self, err: AiError) -> None:
        events.emit("ai.api-error", level="warn", Id=self.name, Reason="OpenAPI request failed", Details=str(err))

    def close(self) -> None:
        self.http.close()
