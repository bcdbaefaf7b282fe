#!/usr/bin/env python3
"""Coverage-guided fuzzing of the ClientHello peek (tls.md §2, §7.5) with atheris.

Every input goes to the compiled peek and to its pure-Python twin. Invariants:

* the only exception either may raise is ``ClientHelloError``, with one of the reasons;
* both give the same outcome: need-more, the same reason, or hellos with equal fields;
* the outcome never changes as bytes arrive: every prefix of the input is need-more or already
  the input's outcome (an error is final, an accepted hello stays the same);
* ``peek_with_hint`` gives the same hint in both, past the prefix, and no prefix shorter than a
  hint answers;
* a bytearray holding the same bytes gives the same outcome as bytes;
* ``classify`` agrees between the twins.

The twin is instrumented, so coverage feedback follows the rules as the twin states them; the
compiled peek is checked against it on the same inputs. Usage:

    python scripts/fuzz_clienthello.py [CORPUS_DIR] -max_total_time=120

Without a corpus directory a temporary one is seeded with ClientHellos from Python's ``ssl`` and
from the builders. Not run in CI.
"""
from __future__ import annotations

import os
import ssl
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    from stalwart._fast import clienthello_py as PY

from stalwart._fast import load
from stalwart._fast.clienthello_errors import REASONS, ClientHelloError

C = load("clienthello", compiled=True)


def outcome(mod, data):
    try:
        h = mod.peek(data)
    except ClientHelloError as exc:
        if exc.reason not in REASONS:
            raise AssertionError(f"unknown reason {exc.reason!r}") from exc
        return ("error", exc.reason)
    return ("need", None) if h is None else ("ok", h.as_dict())


def check(data: bytes) -> None:
    got = outcome(C, data)
    twin = outcome(PY, data)
    if got != twin:
        raise AssertionError(f"twins disagree on {data!r}: compiled {got!r}, twin {twin!r}")
    if outcome(C, bytearray(data)) != got:
        raise AssertionError(f"bytearray input differs: {data!r}")
    if C.classify(data) != PY.classify(data):
        raise AssertionError(f"classify disagrees on {data!r}")
    # Prefixes: the compiled peek only (it is cheap); a few hundred at most per input. The hint of a
    # prefix that needs more must be past it, and no prefix shorter than the hint may answer.
    step = max(1, len(data) // 300)
    hold_until = 0
    for k in range(0, len(data) + 1, step):
        part = outcome(C, data[:k])
        if part[0] != "need":
            if part != got:
                raise AssertionError(f"prefix of {k} bytes gave {part!r}, the whole input {got!r}: {data!r}")
            if k < hold_until:
                raise AssertionError(f"prefix of {k} bytes answered before the hint {hold_until}: {data!r}")
            continue
        want = C.peek_with_hint(data[:k])[1]
        if want <= k or want != PY.peek_with_hint(data[:k])[1]:
            raise AssertionError(f"bad hint {want} for a prefix of {k} bytes: {data!r}")
        hold_until = max(hold_until, want)


def test_one_input(data: bytes) -> None:
    check(data)


def python_hello(sni, alpn=None, maximum=None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if maximum:
        ctx.maximum_version = maximum
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def seeds() -> list[bytes]:
    return [
        python_hello("mail.example.com"),
        python_hello(None, ["acme-tls/1"]),
        python_hello("www.example.org", ["h2", "http/1.1"], ssl.TLSVersion.TLSv1_2),
        PY.build("a.example", [b"acme-tls/1"], fragment=40),
        PY.build("192.0.2.1", (), ()),
        PY.build("2001:db8::1", [b"h2"], (0x0A0A, 0x0304), extra=[(0x0A0A, b""), (41, b"\0\0")]),
        PY.to_records(PY.client_hello_message(None, session_id=bytes(32))),
        b"EHLO mail.example.com\r\n",
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n",
    ]


def main() -> None:
    argv = list(sys.argv)
    if len(argv) < 2 or argv[1].startswith("-"):
        corpus = tempfile.mkdtemp(prefix="fuzz_clienthello_")
        for i, seed in enumerate(seeds()):
            with open(os.path.join(corpus, f"seed{i}"), "wb") as fh:
                fh.write(seed)
        argv.insert(1, corpus)
    for seed in seeds():  # the seeds themselves must pass before fuzzing starts
        check(seed)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
