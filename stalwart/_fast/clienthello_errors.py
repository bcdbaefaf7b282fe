"""The ClientHello peek error, shared by the compiled peek and its twin so both raise one class.

Every reason is a "TLS garbage" outcome (tls.md §2 "We do better", security.md §4): the driver reports
each as ``tls.handshake-error`` Reason ``not-tls`` and counts it as scanning; the finer reason here is
for the event's details and for tests.
"""
from __future__ import annotations

from stalwart.errors import RemoteProtocolError

NOT_TLS = "not-tls"  # the first byte is not 0x16, a TLS handshake record
BAD_RECORD = "bad-record"  # a record header is invalid: version, length, content type
NOT_CLIENT_HELLO = "not-client-hello"  # the first handshake message is not a ClientHello
MALFORMED = "malformed"  # a length overruns its container, a field breaks its RFC constraints
TOO_LARGE = "too-large"  # the ClientHello is larger, or spread over more records, than allowed

# Index order is the compiled peek's status code: it returns -(index + 1) for a failure.
REASONS = (NOT_TLS, BAD_RECORD, NOT_CLIENT_HELLO, MALFORMED, TOO_LARGE)
_MESSAGES = {reason: f"invalid TLS ClientHello: {reason}" for reason in REASONS}


class ClientHelloError(RemoteProtocolError):
    """The first bytes on an implicit-TLS connection are not a well-formed TLS ClientHello.
    ``reason`` is one of :data:`REASONS`; nothing is written back (``reply`` is empty), the
    connection is closed (security.md §4 "TLS garbage")."""

    def __init__(self, reason: str):
        self.reason = reason
        # One is raised per rejected connection: the message is prepared once per reason.
        super().__init__(_MESSAGES.get(reason) or f"invalid TLS ClientHello: {reason}", b"", True)

    def __reduce__(self):
        return (type(self), (self.reason,))
