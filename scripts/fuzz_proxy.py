#!/usr/bin/env python3
"""Coverage-guided fuzzing of the PROXY protocol parser (network.md §6) with atheris.

Every input goes to the compiled parser and to its pure-Python twin. Invariants:

* the only exception either may raise is ``ProxyError``, with one of the parser reason codes;
* both give the same outcome: need-more, the same reason, or headers with equal fields;
* an accepted header consumed between 1 and ``len(data)`` bytes, and re-parsing exactly those
  bytes gives the same header (trailing bytes never change the result);
* every proper prefix of an accepted header is need-more or an error, never a different header;
* ``looks_like_proxy`` agrees between the twins and is True for every accepted header.

The twin is instrumented, so coverage feedback follows the rules as the twin states them; the
compiled parser is checked against it on the same inputs. Usage:

    python scripts/fuzz_proxy.py [CORPUS_DIR] -max_total_time=120

Without a corpus directory a temporary one is seeded with builder output. Not run in CI.
"""
from __future__ import annotations

import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    from stalwart._fast import proxy_py as PY

from stalwart._fast import load
from stalwart._fast.proxy_errors import PARSER_REASONS, ProxyError

C = load("proxy", compiled=True)


def outcome(mod, data):
    try:
        h = mod.parse(data)
    except ProxyError as exc:
        if exc.reason not in PARSER_REASONS:
            raise AssertionError(f"unknown reason {exc.reason!r}") from exc
        return ("error", exc.reason)
    return ("need", None) if h is None else ("ok", h.as_dict())


def check(data: bytes) -> None:
    got = outcome(C, data)
    twin = outcome(PY, data)
    if got != twin:
        raise AssertionError(f"twins disagree on {data!r}: compiled {got!r}, twin {twin!r}")
    if C.looks_like_proxy(data) is not PY.looks_like_proxy(data):
        raise AssertionError(f"looks_like_proxy disagrees on {data!r}")
    if got[0] != "ok":
        return
    consumed = got[1]["consumed"]
    if not 0 < consumed <= len(data):
        raise AssertionError(f"consumed {consumed} of {len(data)} bytes")
    if outcome(C, data[:consumed]) != got:
        raise AssertionError(f"trailing bytes changed the header: {data!r}")
    if C.looks_like_proxy(data) is not True:
        raise AssertionError(f"accepted header not recognised by looks_like_proxy: {data!r}")
    for i in range(consumed):
        if outcome(C, data[:i])[0] == "ok":
            raise AssertionError(f"prefix of {i} bytes already accepted: {data!r}")


def test_one_input(data: bytes) -> None:
    check(data)
    # The same bytes inside a bytearray (the driver's receive buffer) must parse identically.
    if outcome(C, bytearray(data)) != outcome(C, data):
        raise AssertionError(f"bytearray input differs: {data!r}")


def seeds() -> list[bytes]:
    ssl = PY.ssl_tlv(0x07, 0, version="TLSv1.3", cn="cn", cipher="TLS_AES_128_GCM_SHA256", sig_alg="SHA256",
                     key_alg="RSA2048")
    return [
        PY.build_v1("192.0.2.1", "198.51.100.7", 56324, 25),
        PY.build_v1("2001:db8::1", "2001:db8::25", 56324, 993),
        PY.build_v1("::ffff:192.0.2.1", "::1", 0, 65535),
        PY.build_v1(),
        b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n",
        PY.build_v2("LOCAL"),
        PY.build_v2("PROXY", "192.0.2.1", "198.51.100.7", 56324, 25),
        PY.build_v2("PROXY", "2001:db8::1", "2001:db8::25", 1, 2,
                    tlvs=[(0x01, b"h2"), (0x02, b"mail.example"), (0x05, b"id"), ssl, (0x30, b"ns"),
                          (0x04, b"\0\0"), (0xE0, b"app")], crc=True),
        PY.build_v2(family="UNIX", source=b"/run/a", destination=b"/run/b", tlvs=[(0x04, b"")]),
    ]


def main() -> None:
    argv = list(sys.argv)
    if len(argv) < 2 or argv[1].startswith("-"):
        corpus = tempfile.mkdtemp(prefix="fuzz_proxy_")
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
