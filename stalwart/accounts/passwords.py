"""Password hashes in a self-describing text format, verified in constant time.

Two schemes from :mod:`hashlib`, written like the PHC string format so a hash names its own
algorithm and cost and old hashes keep verifying after the defaults change:

* ``$scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt>$<hash>`` — RFC 7914 scrypt (the default);
* ``$pbkdf2-sha256$i=<iterations>$<salt>$<hash>`` — RFC 8018 §5.2 PBKDF2 with HMAC-SHA-256.

Salt and hash are unpadded standard base64. :func:`verify_password` compares with
:func:`hmac.compare_digest`; a malformed stored hash never matches and never raises.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

#: RFC 7914 §2 recommends N = 2^14, r = 8, p = 1 for interactive logins (about 16 MiB, tens of ms)
SCRYPT_LN = 14
SCRYPT_R = 8
SCRYPT_P = 1
#: OWASP 2023 guidance for PBKDF2-HMAC-SHA256
PBKDF2_ITERATIONS = 600_000
SALT_BYTES = 16
HASH_BYTES = 32
_MAX_LN = 20  # 2^20 * 128 * r bytes: refuse hashes that would make one login cost gigabytes
_MAX_ITERATIONS = 10_000_000

_SCRYPT_RE = re.compile(r"^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$")
_PBKDF2_RE = re.compile(r"^\$pbkdf2-sha256\$i=(\d{1,8})\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$")


class PasswordHashError(ValueError):
    """A stored hash is not in one of the supported formats."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


@dataclass(frozen=True, slots=True)
class HashSpec:
    """A parsed hash: the scheme, its cost parameters, salt and expected digest."""

    scheme: str
    params: tuple[int, ...]
    salt: bytes
    digest: bytes

    def derive(self, password: bytes) -> bytes:
        if self.scheme == "scrypt":
            ln, r, p = self.params
            n = 1 << ln
            return hashlib.scrypt(password, salt=self.salt, n=n, r=r, p=p, dklen=len(self.digest),
                                  maxmem=256 * n * r * p + (1 << 20))
        return hashlib.pbkdf2_hmac("sha256", password, self.salt, self.params[0], dklen=len(self.digest))

    @property
    def cost_key(self) -> tuple:
        """Hashes with equal cost keys take the same time to verify."""
        return (self.scheme, self.params, len(self.digest))


def parse_hash(encoded: str) -> HashSpec:
    """Parse a stored hash; :class:`PasswordHashError` names what is wrong."""
    try:
        m = _SCRYPT_RE.match(encoded)
        if m:
            ln, r, p = int(m.group(1)), int(m.group(2)), int(m.group(3))
            if not (1 <= ln <= _MAX_LN and 1 <= r <= 32 and 1 <= p <= 16):
                raise PasswordHashError("scrypt parameters out of range")
            return HashSpec("scrypt", (ln, r, p), _unb64(m.group(4)), _unb64(m.group(5)))
        m = _PBKDF2_RE.match(encoded)
        if m:
            i = int(m.group(1))
            if not 1000 <= i <= _MAX_ITERATIONS:
                raise PasswordHashError("PBKDF2 iteration count out of range")
            return HashSpec("pbkdf2-sha256", (i,), _unb64(m.group(2)), _unb64(m.group(3)))
    except binascii.Error:
        raise PasswordHashError("salt or hash is not valid base64") from None
    raise PasswordHashError("not a $scrypt$ or $pbkdf2-sha256$ password hash")


def hash_password(password: str, scheme: str = "scrypt", *, ln: int = SCRYPT_LN,
                  iterations: int = PBKDF2_ITERATIONS) -> str:
    """Hash ``password`` (UTF-8) with a fresh random salt into the self-describing format."""
    salt = os.urandom(SALT_BYTES)
    if scheme == "scrypt":
        spec = HashSpec("scrypt", (ln, SCRYPT_R, SCRYPT_P), salt, b"\0" * HASH_BYTES)
        return f"$scrypt$ln={ln},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(spec.derive(password.encode()))}"
    if scheme == "pbkdf2-sha256":
        spec = HashSpec("pbkdf2-sha256", (iterations,), salt, b"\0" * HASH_BYTES)
        return f"$pbkdf2-sha256$i={iterations}${_b64(salt)}${_b64(spec.derive(password.encode()))}"
    raise ValueError(f"unknown password scheme {scheme!r}")


def verify_password(password: str | bytes, spec: HashSpec) -> bool:
    """True when ``password`` matches; the comparison takes the same time wherever they differ."""
    pw = password.encode("utf-8", "surrogateescape") if isinstance(password, str) else password
    return hmac.compare_digest(spec.derive(pw), spec.digest)


def decoy_like(spec: HashSpec | None) -> HashSpec:
    """A hash nobody can match with the same cost as ``spec``: verified for unknown users so that
    an unknown login and a wrong password take the same time."""
    if spec is None:
        spec = HashSpec("scrypt", (SCRYPT_LN, SCRYPT_R, SCRYPT_P), b"", b"\0" * HASH_BYTES)
    # A random digest: no password derives it (2^-256), and the salt is fresh per process.
    return HashSpec(spec.scheme, spec.params, os.urandom(SALT_BYTES), os.urandom(len(spec.digest)))
