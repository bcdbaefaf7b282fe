"""Message classification by an AI model, for the SMTP DATA stage (spec/services.md §4.2).

:func:`classify` takes the received message and a :class:`Classifier` (the ``SpamLlm`` settings
bound to their model) and always returns a :class:`Classification`: the category and confidence
the model gave, or a fail-open result that says why there is none (timeout, model error, licence,
unrecognised answer). It never raises for anything the message, the model or the network does, and
it returns within :attr:`Classifier.budget` (``min(model timeout, 30 s)``), so DATA is never stalled.

What goes to the model ("We do better"): the raw ``Subject`` and the first ``text/plain`` part (else
the first ``text/html`` part as text), quoted lines removed, cut to 16 KiB at a UTF-8 boundary, as
``<prompt>\\n\\nSubject: <subject>\\n\\n<body>``. The answer is split on ``separator`` (a whole
string); the explanation runs from its index to the end of the answer.
"""
from __future__ import annotations

import email.header
import email.parser
import email.policy
import html.parser
import re
import time

from ... import events
from ...errors import StalwartError
from .client import AiError, AiModelClient, AiTimeout
from .config import SpamLlmEnable

HEADER_NAME = "X-Spam-LLM"
BUDGET_CAP = 30.0  # s: classification never holds DATA longer than this
BODY_LIMIT = 16 * 1024  # bytes of message text sent to the model
PARSE_LIMIT = 512 * 1024  # bytes of the message parsed: text parts come before large attachments
EXPLANATION_LIMIT = 255  # bytes
FOLD_WIDTH = 78  # RFC 5322 §2.1.1 recommended line length

_WS = re.compile(r"\s+")


class Classifier:
    """``SpamLlm`` settings bound to their model client. Build once per configuration."""

    __slots__ = ("client", "prompt", "temperature", "separator", "pos_category", "pos_confidence",
                 "pos_explanation", "categories", "confidence", "budget")

    def __init__(self, settings: SpamLlmEnable, client: AiModelClient):
        self.client = client
        self.prompt = settings.prompt
        self.temperature = settings.temperature
        self.separator = settings.separator
        self.pos_category = settings.response_pos_category
        self.pos_confidence = settings.response_pos_confidence
        self.pos_explanation = settings.response_pos_explanation
        self.categories = frozenset(c.strip().upper() for c in settings.categories if c.strip())
        self.confidence = frozenset(c.strip().upper() for c in settings.confidence if c.strip())
        self.budget = min(client.model.timeout / 1000.0, BUDGET_CAP)


class Classification:
    """The outcome for one message. ``status`` is ``classified``, ``failed`` or ``skipped``."""

    __slots__ = ("status", "category", "confidence", "explanation", "reason", "model", "elapsed_ms")

    def __init__(self, status: str, *, category: str | None = None, confidence: str | None = None,
                 explanation: str | None = None, reason: str | None = None, model: str = "",
                 elapsed_ms: int = 0):
        self.status = status
        self.category = category
        self.confidence = confidence
        self.explanation = explanation
        self.reason = reason
        self.model = model
        self.elapsed_ms = elapsed_ms

    @property
    def tag(self) -> str | None:
        """``LLM_<CATEGORY>_<CONFIDENCE>`` or ``LLM_<CATEGORY>`` for the spam score (§4.2)."""
        if self.category is None:
            return None
        return f"LLM_{self.category}" + (f"_{self.confidence}" if self.confidence else "")

    def header(self) -> bytes:
        """The header to prepend to the delivered message, CRLF-terminated; ``b""`` when skipped.

        ``X-Spam-LLM: COMMERCIAL; confidence=MEDIUM (Promotional offer for printer ink)`` or, failing
        open, ``X-Spam-LLM: UNCLASSIFIED; reason=timeout (model "m" did not answer within 30000 ms)``.
        """
        if self.status == "skipped":
            return b""
        if self.status == "classified":
            value = self.category or ""
            if self.confidence:
                value += f"; confidence={self.confidence}"
            note = self.explanation
        else:
            code = self.reason_code()
            value = f"UNCLASSIFIED; reason={code}"
            note = (self.reason or "").removeprefix(f"{code}: ")
        if note:
            value += " (" + _comment(cut_utf8(_WS.sub(" ", note).strip(), EXPLANATION_LIMIT)) + ")"
        return _fold(f"{HEADER_NAME}: {value}").encode("ascii") + b"\r\n"

    def reason_code(self) -> str:
        reason = self.reason or ""
        for code in ("timeout", "licence", "answer", "error"):
            if reason.startswith(code + ":"):
                return code
        return "error"

    def __repr__(self) -> str:
        return (f"Classification({self.status}, category={self.category}, confidence={self.confidence}, "
                f"reason={self.reason!r})")


def _comment(text: str) -> str:
    """``text`` as RFC 5322 §3.2.2 comment content: quoted-pairs for ``( ) \\``, RFC 2047 if not ASCII."""
    if text.isascii():
        return re.sub(r"([()\\])", r"\\\1", text)
    return email.header.Header(text, "utf-8").encode(linesep=" ", maxlinelen=FOLD_WIDTH)


def _fold(line: str) -> str:
    """Fold at spaces so that lines stay near :data:`FOLD_WIDTH` (RFC 5322 §2.2.3)."""
    if len(line) <= FOLD_WIDTH:
        return line
    out, current = [], ""
    for word in line.split(" "):
        if current and len(current) + 1 + len(word) > FOLD_WIDTH:
            out.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    out.append(current)
    return "\r\n ".join(out)


class _HtmlText(html.parser.HTMLParser):
    """Visible text of an HTML part: no script, style or head content."""

    _SKIP = {"script", "style", "head", "title"}
    _BREAK = {"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP:
            self.skip += 1
        elif tag in self._BREAK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self._SKIP and self.skip:
            self.skip -= 1

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _HtmlText()
    try:
        parser.feed(markup)
        parser.close()
    except (AssertionError, ValueError):
        pass  # malformed markup: keep what was extracted
    return "".join(parser.parts)


def _part_text(part) -> str:
    payload = part.get_payload(decode=True) or b""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def extract_text(message: bytes) -> tuple[str, str | None]:
    """The raw Subject and the message text, or None when there is no text part (§4.2)."""
    msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(message[:PARSE_LIMIT])
    subject = msg.get("Subject")
    subject = _WS.sub(" ", str(subject)).strip() if subject is not None else ""
    plain = html = None
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain" and plain is None and not _is_attachment(part):
            plain = part
            break
        if ctype == "text/html" and html is None and not _is_attachment(part):
            html = part
    if plain is not None:
        return subject, _part_text(plain)
    if html is not None:
        return subject, html_to_text(_part_text(html))
    return subject, None


def _is_attachment(part) -> bool:
    return (part.get("Content-Disposition") or "").strip().lower().startswith("attachment")


def prepare_body(text: str) -> str:
    """Quoted lines removed, cut to :data:`BODY_LIMIT` bytes at a UTF-8 boundary."""
    kept = [ln for ln in text.splitlines() if not ln.lstrip().startswith(">")]
    return cut_utf8("\n".join(kept).strip(), BODY_LIMIT)


def cut_utf8(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def build_prompt(classifier: Classifier, subject: str, body: str) -> str:
    return f"{classifier.prompt}\n\nSubject: {subject}\n\n{body}"


def parse_answer(classifier: Classifier, answer: str) -> tuple[str | None, str | None, str | None]:
    """Category, confidence and explanation from the model's answer (§4.2 "We do better")."""
    sep = classifier.separator
    parts: list[tuple[str, int]] = []  # (trimmed part, offset of the part in the answer)
    offset = 0
    for raw in answer.split(sep):
        trimmed = raw.strip()
        if trimmed:
            parts.append((trimmed, offset + (len(raw) - len(raw.lstrip()))))
        offset += len(raw) + len(sep)

    def at(index: int | None) -> str | None:
        return parts[index][0].upper() if index is not None and index < len(parts) else None

    category = at(classifier.pos_category)
    if category not in classifier.categories:
        category = None
    confidence = at(classifier.pos_confidence)
    if confidence not in classifier.confidence:
        confidence = None
    explanation = None
    idx = classifier.pos_explanation
    if idx is not None and idx < len(parts):
        text = _WS.sub(" ", answer[parts[idx][1]:]).strip()
        explanation = cut_utf8(text, EXPLANATION_LIMIT) or None
    return category, confidence, explanation


async def classify(message: bytes, classifier: Classifier) -> Classification:
    """Ask the classifier's model about ``message``; fail open on any problem (§4.2).

    Returns within ``classifier.budget`` seconds plus the local parsing time.
    """
    from ..license.state import EnterpriseRequired

    name = classifier.client.name
    started = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    def failed(reason: str) -> Classification:
        result = Classification("failed", reason=reason, model=name, elapsed_ms=elapsed())
        events.emit("ai.classification", level="warn", Id=name, Result="unclassified", Reason=reason,
                    Elapsed=result.elapsed_ms)
        return result

    try:
        subject, text = extract_text(message)
    except (ValueError, LookupError, UnicodeError, TypeError) as exc:
        return failed(f"error: message could not be parsed ({type(exc).__name__})")
    if text is None or not text.strip():
        return Classification("skipped", reason="no text part", model=name)
    prompt = build_prompt(classifier, subject, prepare_body(text))
    try:
        answer = await classifier.client.ask(prompt, classifier.temperature, timeout=classifier.budget)
    except AiTimeout as exc:
        return failed(f"timeout: {exc}")
    except EnterpriseRequired as exc:
        return failed(f"licence: {exc.reason or 'Enterprise licence required'}")
    except AiError as exc:
        return failed(f"error: {exc}")
    except StalwartError as exc:
        return failed(f"error: {exc}")
    except Exception as exc:  # noqa: BLE001 — fail open: a fault here must never cost a message
        events.emit("ai.classification", level="error", Id=name, Reason="internal error",
                    Details=f"{type(exc).__name__}: {exc}")
        return failed(f"error: internal error ({type(exc).__name__})")
    events.emit("ai.llm-response", Id=name, Value=prompt[:200], Details=answer.text[:500],
                Elapsed=answer.elapsed_ms, **answer.event_keys())
    category, confidence, explanation = parse_answer(classifier, answer.text)
    if category is None:
        return failed(f"answer: no category from {sorted(classifier.categories)} in the model's answer")
    result = Classification("classified", category=category, confidence=confidence, explanation=explanation,
                            model=name, elapsed_ms=elapsed())
    events.emit("ai.classification", Id=name, Result=result.tag, Elapsed=result.elapsed_ms)
    return result
