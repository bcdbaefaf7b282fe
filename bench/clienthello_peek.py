"""ClientHello peek rate: the compiled peek against its twin and a hand-written parser, in one run.

Every parser gets the same bytes and is asked for what the driver needs: the SNI and the ALPN list
(the compiled peek builds them lazily, so it is timed both for ``peek()`` alone and for ``peek()``
plus reading ``sni`` and ``alpn``). The peers:

* the pure-Python twin (``clienthello_py``), which checks everything the compiled peek checks;
* a hand-written pure-Python parser in this file (``struct``, one record only, no validation beyond
  what slicing and ``struct`` do), the floor any Python implementation starts from.

Inputs: ClientHellos written by Python's ``ssl`` (through a MemoryBIO, no network), one built over
several records, the worst case the limits allow (128 extensions filling 64 KiB over 4 records), and
the cost of a rejection (a plaintext HTTP request). A second table gives the CPU time for a hello
fed one byte per read, peeking after every byte and peeking only when ``peek_with_hint`` says the
answer can have changed: the figure that bounds a client that dribbles. Loops are bounded
(``--scale`` multiplies them).

Usage: ``python bench/clienthello_peek.py [--scale 1.0]``
"""
from __future__ import annotations

import argparse
import ssl
import struct
import time

from stalwart._fast import load
from stalwart._fast.clienthello_errors import ClientHelloError

C = load("clienthello", compiled=True)
PY = load("clienthello", compiled=False)

_EXT = struct.Struct(">HH")


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


def handwritten(data: bytes):
    """The minimal Python SNI/ALPN sniffer: one record, offsets trusted, returns (sni, alpn)."""
    if len(data) < 5 or data[0] != 0x16:
        raise ValueError("not TLS")
    if len(data) < 5 + ((data[3] << 8) | data[4]):
        return None
    if data[5] != 1:
        raise ValueError("not a ClientHello")
    p = 5 + 4 + 2 + 32
    p += 1 + data[p]
    p += 2 + ((data[p] << 8) | data[p + 1])
    p += 1 + data[p]
    end = p + 2 + ((data[p] << 8) | data[p + 1])
    p += 2
    sni = None
    alpn = []
    while p < end:
        t, n = _EXT.unpack_from(data, p)
        p += 4
        if t == 0:
            sni = data[p + 5:p + n].decode("ascii").lower()
        elif t == 16:
            q = p + 2
            while q < p + n:
                alpn.append(data[q + 1:q + 1 + data[q]])
                q += 1 + data[q]
        p += n
    return sni, tuple(alpn)


def read_fields(mod):
    peek = mod.peek

    def run(data):
        h = peek(data)
        return h.sni, h.alpn
    return run


def rejected(fn):
    def run(data):
        try:
            fn(data)
        except (ClientHelloError, ValueError):
            pass
    return run


def rate(fn, data: bytes, n: int, repeat: int = 5) -> float:
    """Best-of-``repeat`` calls per second over ``n`` calls."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn(data)
        best = min(best, time.perf_counter() - t0)
    return n / best


def dribble_seconds(mod, data: bytes) -> float:
    """CPU seconds to peek after every byte of ``data`` (the buffer grows by one byte per call)."""
    t0 = time.perf_counter()
    for k in range(1, len(data) + 1):
        mod.peek(data[:k])
    return time.perf_counter() - t0


def dribble_hinted(mod, data: bytes) -> tuple[float, int]:
    """CPU seconds and peeks when ``data`` arrives one byte per read and the driver peeks only once
    the buffer reaches the hint."""
    want = 1
    calls = 0
    t0 = time.perf_counter()
    for k in range(1, len(data) + 1):
        if k < want:
            continue
        calls += 1
        h, want = mod.peek_with_hint(data[:k])
        if h is not None:
            break
    return time.perf_counter() - t0, calls


def inputs() -> dict[str, bytes]:
    worst = PY.to_records(PY.client_hello_message([(t, bytes(500)) for t in range(64, 64 + PY.MAX_EXTENSIONS)]))
    return {
        "python tls1.3 sni": python_hello("mail.example.com"),
        "python acme-tls/1": python_hello("mail.example.com", ["acme-tls/1"]),
        "python tls1.2-only": python_hello("mx.example.net", None, ssl.TLSVersion.TLSv1_2),
        "4 records (400 B)": PY.build("mail.example.com", [b"h2", b"http/1.1"], fragment=100,
                                      extra=[(21, bytes(200))]),
        "128 ext, 64 KiB": worst,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every loop count")
    args = ap.parse_args()
    cases = inputs()
    for name, data in cases.items():  # the three agree before anything is timed
        want = C.peek(data)
        assert want.as_dict() == PY.peek(data).as_dict(), name
        if want.records == 1:
            assert handwritten(data) == (want.sni, want.alpn), name
    print(f"{'input':20} {'bytes':>6} {'compiled':>9} {'+sni+alpn':>10} {'twin':>9} {'hand-written':>13}"
          f" {'vs twin':>8} {'vs hand':>8}   (k peeks/s; ratios use +sni+alpn)")
    for name, data in cases.items():
        heavy = len(data) > 10_000
        n_fast = int((2_000 if heavy else 200_000) * args.scale) or 1
        n_slow = int((20 if heavy else 4_000) * args.scale) or 1
        c = rate(C.peek, data, n_fast)
        cf = rate(read_fields(C), data, n_fast)
        t = rate(read_fields(PY), data, n_slow)
        one_record = C.peek(data).records == 1
        h = rate(handwritten, data, n_slow) if one_record else None
        hs = f"{h / 1e3:13.1f}" if h else f"{'n/a':>13}"
        hr = f"{cf / h:7.1f}x" if h else f"{'n/a':>8}"
        print(f"{name:20} {len(data):6} {c / 1e3:9.0f} {cf / 1e3:10.0f} {t / 1e3:9.1f} {hs} {cf / t:7.0f}x {hr}")
    plain = b"GET / HTTP/1.1\r\nHost: mail.example.com\r\n\r\n"
    c = rate(rejected(C.peek), plain, int(400_000 * args.scale) or 1)
    t = rate(rejected(PY.peek), plain, int(100_000 * args.scale) or 1)
    h = rate(rejected(handwritten), plain, int(100_000 * args.scale) or 1)
    print(f"{'reject plain HTTP':20} {len(plain):6} {c / 1e3:9.0f} {'':>10} {t / 1e3:9.1f} {h / 1e3:13.1f}"
          f" {c / t:7.0f}x {c / h:7.1f}x")
    print()
    print("one byte per read: CPU seconds for the whole hello, peeking after every byte / at the hint (peeks)")
    for name in ("python tls1.3 sni", "4 records (400 B)", "128 ext, 64 KiB"):
        data = cases[name]
        c = dribble_seconds(C, data)
        ch, calls = dribble_hinted(C, data)
        th, _ = dribble_hinted(PY, data)
        line = f"  {name:20} {len(data):6} B  compiled {c:8.4f} s / {ch:8.5f} s ({calls} peeks)"
        if len(data) < 10_000:
            line += f"   twin {dribble_seconds(PY, data):8.4f} s / {th:8.5f} s"
        else:
            line += f"   twin       -  / {th:8.5f} s"
        print(line)


if __name__ == "__main__":
    main()
