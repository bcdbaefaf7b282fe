"""The session interface every listener protocol implements: a sans-IO core.

A core never touches a socket, a clock or asyncio. The driver (``stalwart.net.driver``) feeds it
bytes with :meth:`SessionCore.receive_data` and acts on what :meth:`SessionCore.next_event` returns:

* :class:`Send` — write these bytes; ``close=True`` closes the connection after them;
* :class:`StartTls` — write ``reply`` in clear, discard any bytes already received (pipelined
  plaintext after STARTTLS must never be read as if it came through TLS: CVE-2011-0411), run the
  handshake, then call :meth:`SessionCore.tls_started`;
* :class:`Blocking` — run ``fn(*args)`` in a thread (disk writes with fsync, password hashing),
  reading from the peer paused meanwhile, then hand the outcome to :meth:`SessionCore.blocking_done`;
* :class:`Delay` — wait that many seconds (reading paused), then call ``blocking_done(None, None)``:
  the pause before an authentication failure reply (security.md §4) without a clock in the core;
* :class:`Timer` — call :meth:`SessionCore.timer_fired` after that many seconds; reading goes on
  meanwhile (IMAP IDLE looks for new mail this way);
* ``NEED_DATA`` — nothing more until more bytes arrive.

The driver sets :attr:`SessionCore.now` (its monotonic clock, seconds) before each
:meth:`SessionCore.receive_data`, so a core that needs the time reads it without owning a clock.

Timeouts and shutdown are decided by the driver, which asks the core for the right line
(:meth:`timeout_reply`, :meth:`shutdown_reply`) and whether now is a point where the protocol allows
interrupting (:attr:`interruptible`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import LocalProtocolError


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


@dataclass(slots=True)
class Blocking:
    """Work that must not run on the event loop: ``fn(*args)`` in a thread.

    The driver pauses reading until the result is handed back through
    :meth:`SessionCore.blocking_done`; a core emits nothing after a ``Blocking`` until then.
    """

    fn: Callable[..., Any]
    args: tuple = ()
    #: "io" (disk: fsync, reads) or "cpu" (password hashing): separate thread pools, so a flood of
    #: logins cannot queue deliveries behind key derivations
    pool: str = "io"


@dataclass(slots=True)
class Awaiting:
    """Work that runs on the event loop itself: the coroutine ``fn(*args)`` (an AI model call).

    Like :class:`Blocking`, reading is paused and the result comes back through
    :meth:`SessionCore.blocking_done`; unlike it, no pool thread is held while the coroutine waits
    on the network, so a slow endpoint cannot starve password hashing and fsync. The coroutine
    must bound its own run time.
    """

    fn: Callable[..., Any]
    args: tuple = ()


@dataclass(slots=True)
class Delay:
    """Resume the core after ``seconds`` through ``blocking_done(None, None)``; reading is paused."""

    seconds: float


@dataclass(slots=True)
class Timer:
    """Call ``core.timer_fired()`` after ``seconds``; unlike :class:`Delay`, reading continues."""

    seconds: float


Event = Send | StartTls | Blocking | Delay | Timer | _NeedData


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
    span_id: int = 0  # the connection's SpanId, for the events a core emits
    started: float = 0.0  # driver clock (seconds) when the connection was accepted
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
        #: the driver's monotonic clock in seconds, set before every :meth:`receive_data`
        self.now = ctx.started

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

    def blocking_done(self, result: Any, error: BaseException | None) -> None:
        """The outcome of the last :class:`Blocking` job: its return value, or the exception it raised."""
        raise LocalProtocolError(f"{type(self).__name__} did not ask for blocking work")

    def timer_fired(self) -> None:
        """A :class:`Timer` this core asked for has expired (:attr:`now` is current)."""

    def connection_closed(self) -> None:
        """The connection is gone, whatever ended it (a closing reply, the peer, a timeout, a
        shutdown, a failed TLS handshake). Called once by the driver; a core releases here what it
        holds outside itself (the POP3 maildrop lock). It must not raise."""

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
