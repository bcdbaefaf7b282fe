"""The embedded licence trust root and the test-only hook that replaces it.

spec/services.md §6 "We do better": licences are verified with **this project's own** Ed25519 public
key; the matching private key is never committed. Operators who issue their own licences
(``scripts/issue-license``) replace :data:`PUBLIC_KEY_HEX` in their build.

Tests sign licences with a key they generate and install it with :func:`use_test_key`, a context
manager that only changes the current process. There is deliberately no environment variable or
configuration field for it: a switch a running server reads would let anyone trust their own keys.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

PUBLIC_KEY_HEX = "000aacdfe659171074c1bd0b83e19109f7d7eb3707514b94ccbfca54d0106861"


class _Trust:
    """Holds the key on an instance, so the test hook swaps one attribute and restores it."""

    def __init__(self) -> None:
        self.key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(PUBLIC_KEY_HEX))


_trust = _Trust()


def public_key() -> Ed25519PublicKey:
    return _trust.key


@contextlib.contextmanager
def use_test_key(key: Ed25519PublicKey) -> Iterator[Ed25519PublicKey]:
    """Test-only: verify licences with ``key`` inside the ``with`` block, in this process."""
    saved = _trust.key
    _trust.key = key
    try:
        yield key
    finally:
        _trust.key = saved
