"""The PROXY protocol error, shared by the compiled parser and its twin so both raise one class.

Reasons are the ones ``network.proxy-error`` carries (spec/network.md §6 "We do better"); the two
that come from the driver rather than the parser (``timeout``, ``eof``) are listed for completeness.
"""
from __future__ import annotations

from stalwart.errors import RemoteProtocolError

BAD_SIGNATURE = "bad-signature"
BAD_VERSION = "bad-version"
BAD_COMMAND = "bad-command"
BAD_FAMILY = "bad-family"
BAD_ADDRESS = "bad-address"
TOO_LONG = "too-long"
BAD_TLV = "bad-tlv"
BAD_CRC = "bad-crc"
TIMEOUT = "timeout"
EOF = "eof"

# Index order is the compiled parser's status code: it returns -(index + 1) for a failure.
PARSER_REASONS = (BAD_SIGNATURE, BAD_VERSION, BAD_COMMAND, BAD_FAMILY, BAD_ADDRESS, TOO_LONG, BAD_TLV,
                  BAD_CRC)


class ProxyError(RemoteProtocolError):
    """A PROXY header was invalid. ``reason`` is one of the spec's reason codes; nothing is ever
    written back to the peer (``reply`` is empty), the connection is closed (network.md §6)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"invalid PROXY header: {reason}", reply=b"", close=True)

    def __reduce__(self):
        return (type(self), (self.reason,))
