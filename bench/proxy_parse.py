"""PROXY header parse rate: the compiled parser against its twin and the peers, in one run.

Targets (anchors.md §2, issue 3): at least 10 M headers/s in the compiled parser, at least 20x the
PyPI ``proxy-protocol`` package (its ``unpack()``), measured here rather than quoted. The peers:

* ``proxy-protocol`` (``pip install proxy-protocol``), when importable;
* a hand-written pure-Python parser in this file (``struct`` / ``inet_pton``, returning packed
  addresses like the compiled parser, no validation beyond what those calls do), the floor any
  Python implementation starts from.

Every parser gets the same bytes; the compiled parser is first checked to agree with the peers on
the addresses. Loops are bounded (``--scale`` multiplies them); no network.

Usage: ``python bench/proxy_parse.py [--scale 1.0]``
"""
from __future__ import annotations

import argparse
import socket
import struct
import time

from stalwart._fast import load

C = load("proxy", compiled=True)
PY = load("proxy", compiled=False)

try:
    from proxyprotocol.v1 import ProxyProtocolV1
    from proxyprotocol.v2 import ProxyProtocolV2
except ImportError:  # the peer is optional: the run says so instead of failing
    ProxyProtocolV1 = ProxyProtocolV2 = None

HEADERS = {
    "v1 TCP4": PY.build_v1("192.0.2.1", "198.51.100.7", 56324, 25),
    "v1 TCP6": PY.build_v1("2001:db8::1", "2001:db8::25", 56324, 993),
    "v2 IPv4": PY.build_v2("PROXY", "192.0.2.1", "198.51.100.7", 56324, 25),
    "v2 IPv6": PY.build_v2("PROXY", "2001:db8::1", "2001:db8::25", 56324, 993),
    # what haproxy's send-proxy-v2-ssl with proxy-v2-options crc32c,authority sends
    "v2 IPv4 SSL+CRC": PY.build_v2("PROXY", "192.0.2.1", "198.51.100.7", 56324, 465,
                                   tlvs=[(0x02, b"mail.example.com"),
                                         PY.ssl_tlv(0x01, 0, version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384")],
                                   crc=True),
}

_V2 = struct.Struct(">12sBBH")
_V2_INET = struct.Struct(">4s4sHH")
_V2_INET6 = struct.Struct(">16s16sHH")


def handwritten(data: bytes):
    """The minimal pure-Python parser, returning what the compiled one keeps (packed addresses and
    ports): the cost floor of doing this in Python at all. It validates nothing it does not have to."""
    if data[:1] == b"P":
        end = data.index(b"\r\n", 0, 107)
        _, proto, src, dst, sport, dport = data[:end].split(b" ")
        fam = socket.AF_INET if proto == b"TCP4" else socket.AF_INET6
        return socket.inet_pton(fam, src.decode()), int(sport), socket.inet_pton(fam, dst.decode()), int(dport), end + 2
    _sig, _vc, fam, length = _V2.unpack_from(data)
    src, dst, sport, dport = (_V2_INET if fam == 0x11 else _V2_INET6).unpack_from(data, 16)
    return src, sport, dst, dport, 16 + length


def peer_parser(name: str):
    if ProxyProtocolV1 is None:
        return None
    return (ProxyProtocolV1() if name.startswith("v1") else ProxyProtocolV2()).unpack


def rate(fn, data: bytes, n: int, repeat: int = 5) -> float:
    """Best-of-``repeat`` parses per second over ``n`` calls."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn(data)
        best = min(best, time.perf_counter() - t0)
    return n / best


def check_agreement() -> None:
    for name, data in HEADERS.items():
        h = C.parse(data)
        assert h.as_dict() == PY.parse(data).as_dict(), name
        hw = handwritten(data)
        assert (h.src_addr, h.src_port, h.dst_addr, h.dst_port, h.consumed) == hw, name
        peer = peer_parser(name)
        if peer is not None:
            r = peer(data)
            assert (str(r.source[0]), r.source[1]) == (h.source, h.src_port), name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every loop count")
    args = ap.parse_args()
    check_agreement()
    n_fast, n_slow = int(400_000 * args.scale), int(40_000 * args.scale)
    print(f"{'header':18} {'compiled':>10} {'twin':>10} {'proxy-protocol':>15} {'hand-written':>13}"
          f" {'vs proxy-protocol':>18} {'vs hand-written':>16}   (M headers/s)")
    for name, data in HEADERS.items():
        c = rate(C.parse, data, n_fast)
        t = rate(PY.parse, data, n_slow)
        peer = peer_parser(name)
        p = rate(peer, data, n_slow) if peer is not None else None
        h = rate(handwritten, data, n_slow)
        ps = f"{p / 1e6:15.3f}" if p else f"{'n/a':>15}"
        ratio = f"{c / p:17.1f}x" if p else f"{'n/a':>18}"
        print(f"{name:18} {c / 1e6:10.2f} {t / 1e6:10.3f} {ps} {h / 1e6:13.3f} {ratio} {c / h:15.1f}x")
    if ProxyProtocolV1 is None:
        print("proxy-protocol is not installed (pip install proxy-protocol): peer column skipped")


if __name__ == "__main__":
    main()
