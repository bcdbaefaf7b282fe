"""``HttpAuth`` (spec/README.md "HttpAuth"): credentials for outbound HTTP requests.

Shared by every object that fetches over HTTP (``Asn`` resources, ``AiModel`` endpoints). The
``Authorization`` value is built here, once, from secrets resolved at build time; callers place it
last so it replaces any user-supplied ``Authorization`` header.
"""
from __future__ import annotations

import base64
import re

import msgspec

from ..errors import ConfigError
from .secrets import SecretKey, resolve

# RFC 9110 §5.5: a field value holds no control characters; a token must also be ASCII.
_BAD_TOKEN = re.compile(r"[\x00-\x1f\x7f]|[^\x00-\x7f]")


class _Auth(msgspec.Struct, tag_field="@type", rename="camel", forbid_unknown_fields=True, kw_only=True):
    pass


class Unauthenticated(_Auth, tag="Unauthenticated"):
    """No ``Authorization`` header."""


class BasicAuth(_Auth, tag="Basic"):
    """``Authorization: Basic base64(username ":" secret)`` (RFC 7617 §2)."""

    username: str
    secret: SecretKey


class BearerAuth(_Auth, tag="Bearer"):
    """``Authorization: Bearer <token>`` (RFC 6750 §2.1)."""

    bearer_token: SecretKey


HttpAuth = Unauthenticated | BasicAuth | BearerAuth


def authorization(auth: HttpAuth, path: str) -> str | None:
    """The ``Authorization`` value for ``auth`` (None: send none). ``path`` is the JSON path of the
    ``httpAuth`` field, for errors; secrets are resolved now and never logged."""
    if isinstance(auth, BasicAuth):
        secret = resolve(auth.secret, f"{path}.secret") or ""
        return "Basic " + base64.b64encode(f"{auth.username}:{secret}".encode()).decode()
    if isinstance(auth, BearerAuth):
        token = resolve(auth.bearer_token, f"{path}.bearerToken") or ""
        if _BAD_TOKEN.search(token):
            raise ConfigError(f"{path}.bearerToken", "Invalid bearer token (control or non-ASCII characters)")
        return f"Bearer {token}"
    return None
