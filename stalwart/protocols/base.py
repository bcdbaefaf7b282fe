"""The session interface every listener protocol implements: a sans-IO core.

A core never touches a socket, a clock or asyncio. The driver (``stalwart.net.driver``) feeds it
bytes with :meth:`SessionCore.receive_data` and acts on what :meth:`SessionCore.next_event` returns:

* :class:`Send` — write these bytes; ``close=True`` closes the connection after them;
* :class:`StartTls` — write ``reply`` in clear, discard any bytes already received (pipelined
  plaintext after STARTTLS must never be read as if it came through TLS: CVE-2011-0411), run the
  handshake, then call :meth:`SessionCore.tls_started`;
* ``NEED_DATA`` — nothing more until more bytes arrive.

Timeouts and shutdown are decided by the driver, which asks the core for the right line
(:meth:`timeout_reply`, :meth:`shutdown_reply`) and whether now is a point where the protocol allows
interrupting (:attr:`interruptible`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


@dataclass(slots=True)
class Send:
    data: bytes
    close: bool = False


@dataclass(slots=True)
class StartTls:
    reply: bytes


Event = Send | StartTls | _NeedData


@dataclass(slots=True)
class SessionContext:
    """What a core knows about its connection. Filled by the driver before the session starts."""

    hostname: str
    listener: str
    protocol: str
    remote_ip: str
    remote_port: int
    local_port: int
    tls_available: bool = False  # the listener can do STARTTLS (useTls and not implicit)
    tls_active: bool = False
    tls_version: str | None = None
    tls_cipher: str | None = None
    extra: dict = field(default_factory=dict)


class SessionCore(ABC):
    """Base class of protocol cores. Subclasses implement :meth:`receive_data` and :attr:`idle_timeout_ms`."""

    #: event group of this protocol: ``<group>.connection-start``
    event_group: ClassVar[str] = "session"

    def __init__(self, ctx: SessionContext):
        self.ctx = ctx
        self._events: list[Event] = []
        self.closed = False
        #: set by the driver when the server is shutting down or retiring this worker: a core that
        #: answers one more request (HTTP) says it will close (``Connection: close``)
        self.draining = False

    # -- called by the driver --------------------------------------------------------------
    def greeting(self) -> bytes:
        """Bytes to send when the session starts (b"" for client-speaks-first protocols)."""
        return b""

    @abstractmethod
    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the peer; ``b""`` means the peer closed its side."""

    def next_event(self) -> Event:
        if self._events:
            return self._events.pop(0)
        return NEED_DATA

    def tls_started(self, version: str, cipher: str) -> None:
        """The STARTTLS handshake completed; the protocol resets its state as its RFC says."""
        self.ctx.tls_active = True
        self.ctx.tls_version = version
        self.ctx.tls_cipher = cipher

    @property
    def interruptible(self) -> bool:
        """True between commands: a shutdown line may be written now."""
        return True

    @property
    @abstractmethod
    def idle_timeout_ms(self) -> int:
        """Milliseconds of silence after which the driver calls :meth:`timeout_reply`."""

    def timeout_reply(self) -> bytes:
        """The idle-timeout line (network.md §8); the driver closes after writing it."""
        return b""

    def shutdown_reply(self) -> bytes:
        """The shutdown / drain line (network.md §8); the driver closes after writing it."""
        return b""

    # -- helpers for subclasses ----------------------------------------------------------------
    def _send(self, data: bytes, close: bool = False) -> None:
        self._events.append(Send(data, close))
        if close:
            self.closed = True
