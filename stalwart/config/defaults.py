"""The embedded default configuration: what `stalwartd` runs with no --config.

The standard listener set on the well-known ports, dual-stack. The host name is filled in from the
OS at start-up (spec/network.md §2: an empty defaultHostname means the OS host name).
"""
from __future__ import annotations

import msgspec

DEFAULT_LISTENERS = [
    {"name": "smtp", "protocol": "smtp", "bind": ["[::]:25"]},
    {"name": "submission", "protocol": "smtp", "bind": ["[::]:587"]},
    {"name": "submissions", "protocol": "smtp", "bind": ["[::]:465"], "tlsImplicit": True},
    {"name": "imap", "protocol": "imap", "bind": ["[::]:143"]},
    {"name": "imaps", "protocol": "imap", "bind": ["[::]:993"], "tlsImplicit": True},
    {"name": "pop3", "protocol": "pop3", "bind": ["[::]:110"]},
    {"name": "pop3s", "protocol": "pop3", "bind": ["[::]:995"], "tlsImplicit": True},
    {"name": "sieve", "protocol": "manageSieve", "bind": ["[::]:4190"]},
    {"name": "https", "protocol": "http", "bind": ["[::]:443"], "tlsImplicit": True},
    {"name": "http", "protocol": "http", "bind": ["[::]:8080"]},
]


def default_document() -> dict:
    return {"SystemSettings": {}, "NetworkListener": [dict(x) for x in DEFAULT_LISTENERS]}


def default_bytes() -> bytes:
    return msgspec.json.format(msgspec.json.encode(default_document()), indent=2)
