"""Helpers for the mail protocol core tests: a directory with cheap hashes, a mail store in a
temporary directory, and a driver loop that runs Blocking jobs inline."""
from __future__ import annotations

import random
import re

from stalwart import events
from stalwart.accounts import Directory, hash_password, parse_hash
from stalwart.accounts.directory import AccountEntry
from stalwart.mailstore import MailStore
from stalwart.protocols.base import (
    NEED_DATA,
    Blocking,
    Delay,
    Send,
    SessionContext,
    StartTls,
    Timer,
)
from stalwart.protocols.mailcommon import MailServices


def arrival_sorted(names) -> list[str]:
    """Maildir file names in arrival order: digit runs compared as numbers (``M862`` before
    ``M374076`` within one second: the microseconds are not zero-padded, so text order is wrong)."""
    return sorted(names, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"([0-9]+)", n)])


PASSWORDS = {"jane": "jane-secret", "bob": "bob-secret"}


def directory() -> Directory:
    accounts = [
        AccountEntry("jane", ("jane@example.org", "j.doe@example.net"),
                     parse_hash(hash_password("jane-secret", ln=4))),
        AccountEntry("bob", ("bob@example.org",),
                     parse_hash(hash_password("bob-secret", "pbkdf2-sha256", iterations=1000))),
    ]
    return Directory({"example.org", "example.net"}, accounts)


def services(tmp_path, **kw) -> MailServices:
    return MailServices(directory(), MailStore(str(tmp_path)), **kw)


def ctx(**kw) -> SessionContext:
    base = dict(hostname="mx.example.test", listener="l", protocol="smtp", remote_ip="192.0.2.1",
                remote_port=4000, local_port=25, tls_available=True)
    base.update(kw)
    return SessionContext(**base)


def drive(core, chunks, now: float | None = None) -> list:
    """Feed ``chunks``; run every Blocking job inline as the driver would in a thread."""
    out = []
    for chunk in chunks:
        if now is not None:
            core.now = now
        core.receive_data(chunk)
        pump(core, out)
    return out


def pump(core, out: list) -> None:
    for _ in range(100000):
        ev = core.next_event()
        if ev is NEED_DATA:
            return
        if isinstance(ev, Timer):
            continue  # a test fires core.timer_fired() itself when it wants to
        if isinstance(ev, Delay):
            assert 0 < ev.seconds <= 0.5
            core.blocking_done(None, None)  # the driver would resume after ev.seconds
        elif isinstance(ev, Blocking):
            try:
                result, error = ev.fn(*ev.args), None
            except Exception as exc:  # noqa: BLE001 - handed to the core like the driver does
                result, error = None, exc
            core.blocking_done(result, error)
        else:
            out.append(ev)
    raise AssertionError("core produced events forever")


def replies(events) -> bytes:
    return b"".join(e.data if isinstance(e, Send) else e.reply for e in events if isinstance(e, (Send, StartTls)))


def chunkings(data: bytes, seed: int = 7):
    yield [data]
    yield [data[i:i + 1] for i in range(len(data))]
    rnd = random.Random(seed)
    for _ in range(4):
        parts, i = [], 0
        while i < len(data):
            n = rnd.randint(1, 13)
            parts.append(data[i:i + n])
            i += n
        yield parts


def record_events(monkeypatch) -> list[tuple[str, dict]]:
    """Capture events emitted during a test, as (name, keys) pairs (use from an ``emitted`` fixture)."""
    seen: list[tuple[str, dict]] = []
    monkeypatch.setattr(events, "emit", lambda name, level=None, **keys: seen.append((name, keys)))
    return seen


def names(seen) -> list[str]:
    return [n for n, _ in seen]
