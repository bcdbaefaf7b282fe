"""SASL mechanisms every mail protocol here offers: PLAIN (RFC 4616) and LOGIN
(draft-murchison-sasl-login), decoded from the base64 the protocols carry them in (RFC 4954 §4,
RFC 3501 §6.2.2, RFC 5034 §4, RFC 5804 §2.1)."""
from __future__ import annotations

import base64
import binascii

from ..errors import RemoteProtocolError

MECHANISMS = ("PLAIN", "LOGIN")
#: the server challenges of the LOGIN mechanism, base64 of "Username:" and "Password:"
LOGIN_USERNAME = "VXNlcm5hbWU6"
LOGIN_PASSWORD = "UGFzc3dvcmQ6"
_MAX = 4096  # far above any real credential; bounds what one response can make us decode


class SaslError(RemoteProtocolError):
    """The client's SASL response cannot be decoded (RFC 4954 §4: ``501 5.5.2``)."""


class SaslCancelled(RemoteProtocolError):
    """The client sent ``*`` to abort the exchange (RFC 4954 §4: ``501 5.7.0``)."""


def b64decode(data: bytes | str) -> bytes:
    """Strict base64 of one SASL response; ``=`` alone is the empty response (RFC 4954 §4)."""
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    data = data.strip()
    if data == b"*":
        raise SaslCancelled("authentication cancelled")
    if data == b"=":
        return b""
    if len(data) > _MAX:
        raise SaslError("SASL response too long")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise SaslError("SASL response is not valid base64") from None


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError("credentials are not UTF-8") from None


def decode_plain(response: bytes) -> tuple[str, str]:
    """RFC 4616 §2: ``[authzid] NUL authcid NUL passwd`` → (login, password).

    An authorization identity other than the login itself is refused: nobody may act for
    another account here."""
    parts = response.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        raise SaslError("malformed PLAIN response")
    authzid, authcid, passwd = (_text(p) for p in parts)
    if authzid and authzid != authcid:
        raise SaslError("authorization identity differs from the login")
    return authcid, passwd


def encode_plain(login: str, password: str) -> str:
    """The base64 PLAIN response a client sends (for tests and tools)."""
    return base64.b64encode(b"\0" + login.encode() + b"\0" + password.encode()).decode()


def decode_login_field(response: bytes) -> str:
    """One step of LOGIN: the user name or the password."""
    return _text(response)


class SaslExchange:
    """The server side of one PLAIN (RFC 4616) or LOGIN exchange, whatever the protocol framing.

    Feed each base64 client response to :meth:`step`: it returns the next challenge to send (the
    base64 prompt LOGIN asks for the password with) or the ``(login, password)`` pair once the
    exchange is complete. Raises :class:`SaslCancelled` (``*``) or :class:`SaslError`.
    """

    __slots__ = ("mechanism", "user")

    def __init__(self, mechanism: str):
        self.mechanism = mechanism
        self.user: str | None = None

    @property
    def first_challenge(self) -> str:
        """What the server sends when the client gave no initial response (PLAIN: empty)."""
        return "" if self.mechanism == "PLAIN" else LOGIN_USERNAME

    def step(self, response: bytes | str) -> tuple[str, str] | str:
        raw = b64decode(response)
        if self.mechanism == "PLAIN":
            return decode_plain(raw)
        if self.user is None:
            self.user = decode_login_field(raw)
            return LOGIN_PASSWORD
        return self.user, decode_login_field(raw)
