"""One error root for the whole project.

``RemoteProtocolError`` means the peer sent something wrong and carries the reply it deserves as
data; ``LocalProtocolError`` means we misused a core. Internal exception text never reaches a client:
drivers write ``reply`` only.
"""
from __future__ import annotations


class StalwartError(Exception):
    """Root of every exception this project raises on purpose."""


class ConfigError(StalwartError):
    """A configuration value is invalid. ``path`` is the JSON path of the field (``$.A[0].b``)."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class BindError(StalwartError):
    """A listening socket could not be created, configured or bound."""

    def __init__(self, listener: str, address: str, reason: str):
        self.listener = listener
        self.address = address
        self.reason = reason
        super().__init__(f"listener {listener!r}: cannot bind {address}: {reason}")


class RemoteProtocolError(StalwartError):
    """The peer violated the protocol. ``reply`` is the bytes to send before closing (may be b"")."""

    def __init__(self, message: str, reply: bytes = b"", close: bool = True):
        self.reply = reply
        self.close = close
        super().__init__(message)


class LocalProtocolError(StalwartError):
    """A protocol core was driven incorrectly by our own code."""


class ControlError(StalwartError):
    """The control socket could not be reached or answered with an error."""
