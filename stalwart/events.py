"""Structured events: ``<group>.<name>`` ids with PascalCase keys (spec/README.md "Events and logs").

A line looks like
``2026-11-24T05:40:00.123Z INFO  [1234] network.listen-start ListenerId="smtp" LocalIp=0.0.0.0 LocalPort=25``.
One :class:`EventLog` per process; the master configures it and workers inherit it across fork.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

LEVELS = {"trace": 0, "debug": 10, "info": 20, "warn": 30, "error": 40, "off": 100}

# Default level of each event id; anything not listed is "info".
EVENT_LEVELS = {
    "network.accept-error": "warn",
    "network.listen-error": "error",
    "network.proxy-error": "info",
    "network.set-opt-error": "warn",
    "network.timeout": "debug",
    "network.closed": "debug",
    "limit.concurrent-connection": "warn",
    "server.reload-error": "error",
    "server.worker-exit": "warn",
    "server.startup-error": "error",
    "server.worker-hung": "error",
    # per handshake: a fresh install with only the self-signed certificate would log every connection
    "tls.certificate-not-found": "debug",
    "tls.no-certificates-available": "debug",
    "smtp.connection-start": "debug",
    "smtp.connection-end": "debug",
    "imap.connection-start": "debug",
    "imap.connection-end": "debug",
    "pop3.connection-start": "debug",
    "pop3.connection-end": "debug",
    "http.connection-start": "debug",
    "http.connection-end": "debug",
    "manage-sieve.connection-start": "debug",
    "manage-sieve.connection-end": "debug",
}


class Sensitive:
    """A value subscribers may read (``.value``) but no log line ever shows: printed as ``***``.

    Sessions attach credentials to ``auth.failed`` this way so the security layer can recognise a
    repeated stale password (security.md §3) without the password reaching a log.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__


def _fmt(v: Any) -> str:
    if isinstance(v, Sensitive):
        return "***"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    s = str(v)
    if s and all(c.isalnum() or c in ".:-_/[]" for c in s):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class EventLog:
    def __init__(self, level: str = "info", path: str | None = None):
        self.threshold = LEVELS[level]
        self.path = path
        self._stream: TextIO = sys.stderr
        # event id -> callbacks(event, keys). Sessions report what happened as events; the security
        # layer subscribes and decides (STYLE.md), so neither reaches into the other.
        self._subscribers: dict[str, list[Callable[[str, dict[str, Any]], None]]] = {}
        self.reopen()

    def subscribe(self, event: str, callback: Callable[[str, dict[str, Any]], None]) -> None:
        """Call ``callback(event, keys)`` for every emitted ``event``, whatever the log level."""
        self._subscribers.setdefault(event, []).append(callback)

    def unsubscribe(self, event: str, callback: Callable[[str, dict[str, Any]], None]) -> None:
        callbacks = self._subscribers.get(event, [])
        if callback in callbacks:
            callbacks.remove(callback)

    def reopen(self) -> None:
        """(Re)open the log file: SIGUSR1 after rotation."""
        if self.path:
            old = self._stream
            self._stream = open(self.path, "a", buffering=1, encoding="utf-8")
            if old is not sys.stderr:
                old.close()

    def enabled(self, event: str) -> bool:
        return LEVELS[EVENT_LEVELS.get(event, "info")] >= self.threshold

    def emit(self, event: str, level: str | None = None, **keys: Any) -> None:
        callbacks = self._subscribers.get(event)
        if callbacks:
            for callback in list(callbacks):
                try:
                    callback(event, keys)
                except Exception as exc:  # noqa: BLE001 - a subscriber must never break the emitter
                    self.emit("server.subscriber-error", level="error", Details=event, Reason=repr(exc))
        lvl = level or EVENT_LEVELS.get(event, "info")
        if LEVELS[lvl] < self.threshold:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        fields = " ".join(f"{k}={_fmt(v)}" for k, v in keys.items())
        line = f"{stamp} {lvl.upper():5} [{os.getpid()}] {event}" + (f" {fields}" if fields else "") + "\n"
        try:
            self._stream.write(line)
            self._stream.flush()
        except (OSError, ValueError):
            pass


_log = EventLog()


def configure(level: str = "info", path: str | None = None) -> EventLog:
    global _log
    _log = EventLog(level, path)
    return _log


def log() -> EventLog:
    return _log


def emit(event: str, level: str | None = None, **keys: Any) -> None:
    _log.emit(event, level, **keys)


def subscribe(event: str, callback: Callable[[str, dict[str, Any]], None]) -> None:
    _log.subscribe(event, callback)
