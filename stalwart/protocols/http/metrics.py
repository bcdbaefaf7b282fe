"""Server-wide counters for ``GET /metrics``: one shared table, one row per worker slot.

The master creates the table before it forks (like the connection table), so every worker of every
generation adds to it and any worker can read all of it. Each worker slot owns its row, so there is
a single writer per word: an aligned 8-byte store needs no lock, and a reader summing the rows sees
every word whole. Rows outlive the worker processes, so the totals only ever grow, as Prometheus
counters must; a respawned worker goes on in its slot's row.

What is counted: connections given a slot (accepted) and sessions started per listener, refusals per
listener and reason (from ``limit.concurrent-connection``, ``security.ip-blocked``,
``network.proxy-untrusted``, ``network.proxy-error``), TLS handshakes and handshake failures per
listener (``tls.handshake``, ``tls.handshake-error``) and bans per category (``security.*-ban``).
"""
from __future__ import annotations

import mmap
from collections.abc import Iterable
from typing import Any

from ... import events

#: per-listener counters of a row, in word order
LISTENER_COUNTERS = ("accepted", "sessions", "refused_listener_limit", "refused_server_limit", "refused_blocked",
                     "refused_proxy_untrusted", "refused_proxy_error", "tls_handshakes", "tls_failures")
BAN_EVENTS = {"security.authentication-ban": "authFailure", "security.abuse-ban": "rcptToFailure",
              "security.loiter-ban": "loitering", "security.scan-ban": "portScanning"}
BAN_CATEGORIES = tuple(BAN_EVENTS.values())
NAME_BYTES = 64
MAGIC = 0x5354414C4D455452  # "STALMETR"

_ACCEPTED, _SESSIONS, _LIMIT, _SERVER, _BLOCKED, _UNTRUSTED, _PROXY_ERR, _TLS_OK, _TLS_FAIL = range(9)


class MetricsTable:
    """The shared table: a header, a listener-name directory, then one row per worker slot."""

    def __init__(self, max_listeners: int = 256, max_workers: int = 256, buf: Any = None):
        self.max_listeners = max_listeners
        self.max_workers = max_workers
        self.per_listener = len(LISTENER_COUNTERS)
        self.row_words = max_listeners * self.per_listener + len(BAN_CATEGORIES)
        self._names_at = 8
        self._rows_at = (self._names_at + max_listeners * NAME_BYTES) // 8
        size = 8 * (self._rows_at + max_workers * self.row_words)
        # Anonymous and shared: inherited across fork; pages are only touched as slots use them.
        self.buf = buf if buf is not None else mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
        self.words = memoryview(self.buf).cast("B").cast("Q")
        self.bytes = memoryview(self.buf).cast("B")
        if self.words[0] != MAGIC:
            self.words[0] = MAGIC

    def recorder(self, slot: int, listeners: dict[str, int]) -> MetricsRecorder:
        if not 0 <= slot < self.max_workers:
            raise ValueError(f"worker slot {slot} outside the table")
        for name, index in listeners.items():
            if self.name(index) != name:
                # The master gave a freed index to another listener (it frees one only when no
                # worker serves it any more): the new listener starts from zero, not from the
                # totals of the one that had the index before.
                self._clear_column(index)
                self.set_name(index, name)
        return MetricsRecorder(self, slot, listeners)

    def _clear_column(self, index: int) -> None:
        per, base = self.per_listener, self._rows_at + index * self.per_listener
        for slot in range(self.max_workers):
            at = base + slot * self.row_words
            self.words[at:at + per] = memoryview(bytes(8 * per)).cast("Q")

    def set_name(self, index: int, name: str) -> None:
        raw = name.encode("utf-8")[:NAME_BYTES - 1]
        at = self._names_at + index * NAME_BYTES
        self.bytes[at:at + NAME_BYTES] = raw + b"\0" * (NAME_BYTES - len(raw))

    def name(self, index: int) -> str:
        at = self._names_at + index * NAME_BYTES
        raw = bytes(self.bytes[at:at + NAME_BYTES])
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")

    def snapshot(self) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
        """``({listener: {counter: total}}, {ban category: total})`` summed over every row."""
        words, per, rw, base = self.words, self.per_listener, self.row_words, self._rows_at
        listeners: dict[str, dict[str, int]] = {}
        for index in range(self.max_listeners):
            name = self.name(index)
            if not name:
                continue
            totals = [0] * per
            for slot in range(self.max_workers):
                at = base + slot * rw + index * per
                for k in range(per):
                    totals[k] += words[at + k]
            merged = listeners.setdefault(name, dict.fromkeys(LISTENER_COUNTERS, 0))
            for k, key in enumerate(LISTENER_COUNTERS):
                merged[key] += totals[k]
        bans = dict.fromkeys(BAN_CATEGORIES, 0)
        for slot in range(self.max_workers):
            at = base + slot * rw + self.max_listeners * per
            for k, cat in enumerate(BAN_CATEGORIES):
                bans[cat] += words[at + k]
        return listeners, bans


class MetricsRecorder:
    """One worker's writer: its own row only. The driver calls :meth:`accepted` and :meth:`session`;
    everything else arrives as events through :meth:`subscribe`."""

    __slots__ = ("_handlers", "listeners", "per", "row", "table", "words")

    def __init__(self, table: MetricsTable, slot: int, listeners: dict[str, int]):
        self.table = table
        self.words = table.words
        self.row = table._rows_at + slot * table.row_words
        self.per = table.per_listener
        self.listeners = dict(listeners)
        self._handlers = {
            "limit.concurrent-connection": self._on_limit,
            "security.ip-blocked": self._counter(_BLOCKED),
            "network.proxy-untrusted": self._counter(_UNTRUSTED),
            "network.proxy-error": self._counter(_PROXY_ERR),
            "tls.handshake": self._counter(_TLS_OK),
            "tls.handshake-error": self._counter(_TLS_FAIL),
            **{event: self._on_ban for event in BAN_EVENTS},
        }

    def _add(self, index: int, counter: int) -> None:
        at = self.row + index * self.per + counter
        self.words[at] += 1

    def accepted(self, index: int) -> None:
        self._add(index, _ACCEPTED)

    def session(self, index: int) -> None:
        self._add(index, _SESSIONS)

    def _counter(self, counter: int):
        def handler(_event: str, keys: dict) -> None:
            index = self.listeners.get(keys.get("ListenerId"))
            if index is not None:
                self._add(index, counter)
        return handler

    def _on_limit(self, _event: str, keys: dict) -> None:
        index = self.listeners.get(keys.get("ListenerId"))
        if index is not None:
            self._add(index, _SERVER if keys.get("Details") == "server" else _LIMIT)

    def _on_ban(self, event: str, _keys: dict) -> None:
        at = self.row + self.table.max_listeners * self.per + BAN_CATEGORIES.index(BAN_EVENTS[event])
        self.words[at] += 1

    def subscribe(self) -> None:
        for event, handler in self._handlers.items():
            events.subscribe(event, handler)

    def unsubscribe(self) -> None:
        log = events.log()
        for event, handler in self._handlers.items():
            log.unsubscribe(event, handler)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_counters(listeners: dict[str, dict[str, int]], bans: dict[str, int],
                    protocols: Iterable[tuple[str, str]]) -> list[str]:
    """Prometheus counter families from a snapshot; ``protocols`` maps listener names to protocols."""
    proto = dict(protocols)
    lines = ["# HELP stalwart_connections_accepted_total Connections given a slot, per listener.",
             "# TYPE stalwart_connections_accepted_total counter"]
    lines += [f'stalwart_connections_accepted_total{{listener="{_label(n)}"}} {c["accepted"]}'
              for n, c in sorted(listeners.items())]
    lines += ["# HELP stalwart_connections_refused_total Connections or HTTP requests refused, per listener and reason.",
              "# TYPE stalwart_connections_refused_total counter"]
    for n, c in sorted(listeners.items()):
        for key in LISTENER_COUNTERS:
            if key.startswith("refused_"):
                lines.append(f'stalwart_connections_refused_total{{listener="{_label(n)}",reason="{key[8:]}"}} {c[key]}')
    per_protocol: dict[str, int] = {}
    for n, c in listeners.items():
        if n in proto:
            per_protocol[proto[n]] = per_protocol.get(proto[n], 0) + c["sessions"]
    lines += ["# HELP stalwart_sessions_total Protocol sessions started, per protocol.",
              "# TYPE stalwart_sessions_total counter"]
    lines += [f'stalwart_sessions_total{{protocol="{_label(p)}"}} {v}' for p, v in sorted(per_protocol.items())]
    lines += ["# HELP stalwart_tls_handshakes_total TLS handshakes, per listener and result.",
              "# TYPE stalwart_tls_handshakes_total counter"]
    for n, c in sorted(listeners.items()):
        lines.append(f'stalwart_tls_handshakes_total{{listener="{_label(n)}",result="ok"}} {c["tls_handshakes"]}')
        lines.append(f'stalwart_tls_handshakes_total{{listener="{_label(n)}",result="failed"}} {c["tls_failures"]}')
    lines += ["# HELP stalwart_bans_total Addresses banned, per category.", "# TYPE stalwart_bans_total counter"]
    lines += [f'stalwart_bans_total{{category="{cat}"}} {v}' for cat, v in bans.items()]
    return lines
