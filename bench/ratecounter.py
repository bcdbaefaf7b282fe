"""Auto-ban costs: counter increments per second, and banned clients turned away per second.

1. Sliding-window counter increments from Python, in one run:
   * the shared-memory table (``stalwart._fast.ratecounter``, compiled), one hot key and 10 000 keys;
   * its pure-Python twin (what ``STALWART_NO_EXTENSIONS=1`` runs), on fewer increments;
   * a Python ``dict`` in one process (``d[k] = d.get(k, 0) + 1``): no window, no sharing, the floor;
   * Redis ``INCR`` over loopback (``redis-server`` from Debian on an ephemeral port, one round trip
     per increment as a counter check needs its answer, spoken as raw RESP so no client library
     overhead is charged to Redis).
   Targets (issue 6): within 3x of the dict, at least 20x Redis.
2. Connections per second at which stalwartd turns away a client whose /16 the auto-ban layer
   banned (trusted proxy 127.0.0.3 + PROXY v1 header, as in ``bench/blocked_rate.py``), against a
   minimal accept-and-close uvloop server measured in the same run.

Usage: ``python bench/ratecounter.py [--increments 2000000] [--seconds 5] [--skip-server]``
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from stalwart._fast import load  # noqa: E402

PERIOD = 86_400_000


def bench_table(mod, keys: list[bytes], n: int) -> float:
    table = mod.RateCounter(mmap.mmap(-1, mod.size_for(32768)), 32768)
    hit = table.hit
    now = int(time.monotonic() * 1000)
    m = len(keys)
    reps, rest = divmod(n, m)
    start = time.perf_counter()
    for _ in range(reps):
        for k in keys:
            hit(k, now, PERIOD)
    for k in keys[:rest]:
        hit(k, now, PERIOD)
    return n / (time.perf_counter() - start)


def bench_dict(keys: list[bytes], n: int) -> float:
    d: dict[bytes, int] = {}
    get = d.get
    m = len(keys)
    reps, rest = divmod(n, m)
    start = time.perf_counter()
    for _ in range(reps):
        for k in keys:
            d[k] = get(k, 0) + 1
    for k in keys[:rest]:
        d[k] = get(k, 0) + 1
    return n / (time.perf_counter() - start)


def bench_redis(keys: list[bytes], seconds: float, max_ops: int = 200_000) -> float | None:
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            cmds = [b"*2\r\n$4\r\nINCR\r\n$%d\r\n%s\r\n" % (len(k), k) for k in keys]
            done = 0
            start = time.perf_counter()
            end = start + seconds
            while done < max_ops and time.perf_counter() < end:
                for cmd in cmds[:1000]:
                    sock.sendall(cmd)
                    reply = sock.recv(64)
                    if not reply.startswith(b":"):
                        raise RuntimeError(f"unexpected Redis reply {reply!r}")
                done += min(1000, len(cmds))
            return done / (time.perf_counter() - start)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def counters(n: int, seconds: float) -> None:
    compiled = load("ratecounter", compiled=True)
    twin = load("ratecounter", compiled=False)
    hot = [b"\x04\x01\x20" + bytes([192, 0, 2, 7])]
    many = [b"\x04\x01\x20" + i.to_bytes(4, "big") for i in range(10_000)]
    rows = []
    for label, keys in (("1 hot key", hot), ("10 000 keys", many)):
        d = bench_dict(keys, n)
        c = bench_table(compiled, keys, n)
        p = bench_table(twin, keys, max(10_000, n // 100))
        r = bench_redis(keys, seconds)
        rows.append((label, c, p, d, r))
    print(f"{'keys':12} {'shared table':>14} {'twin':>10} {'dict':>12} {'Redis INCR':>11}   table/dict  table/Redis")
    for label, c, p, d, r in rows:
        rs = f"{r:11.0f}" if r else f"{'n/a':>11}"
        rr = f"{c / r:10.0f}x" if r else "       n/a"
        print(f"{label:12} {c:12.0f}/s {p:8.0f}/s {d:10.0f}/s {rs}/s   {c / d:8.2f}x {rr}")


def turn_away(seconds: float, workers: int) -> None:
    import blocked_rate

    port = blocked_rate.free_port()
    peer = subprocess.Popen([sys.executable, "-c", blocked_rate.MINIMAL, str(port)], stdout=subprocess.PIPE)
    try:
        peer.stdout.readline()
        blocked_rate.wait_port(port)
        peer_rate, _ = blocked_rate.run(port, seconds, 50, header=False)
    finally:
        peer.terminate()
        peer.wait(10)

    port = blocked_rate.free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "config.json")
        with open(cfg, "w") as fh:
            json.dump({"SystemSettings": {"threadPoolSize": workers, "maxConnections": 100000,
                                          "proxyTrustedNetworks": ["127.0.0.3"]},
                       "Security": {"scanBanRate": {"count": 1, "period": 60000}, "ipv4BanPrefix": 16},
                       "NetworkListener": [{"name": "smtp", "protocol": "smtp", "bind": [f"127.0.0.1:{port}"],
                                            "useTls": False, "maxConnections": None}]}, fh)
        proc = subprocess.Popen([sys.executable, "-m", "stalwart.cli", "--config", cfg, "--data-dir",
                                 os.path.join(tmp, "data"), "--log-level", "error"])
        try:
            blocked_rate.wait_port(port)
            time.sleep(0.5)
            # Two garbage commands from 192.0.9.9 trip the scan category: 192.0.0.0/16 is banned.
            for _ in range(2):
                s = socket.socket()
                s.bind(("127.0.0.3", 0))
                s.settimeout(5)
                s.connect(("127.0.0.1", port))
                s.sendall(f"PROXY TCP4 192.0.9.9 127.0.0.1 40000 {port}\r\nGARBAGE\r\n".encode())
                try:
                    while s.recv(4096):
                        pass
                except (ConnectionResetError, socket.timeout):
                    pass
                s.close()
            time.sleep(0.5)
            rate, answered = blocked_rate.run(port, seconds, 50, header=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    print(f"accept-and-close (uvloop, 1 process)          {peer_rate:9.0f} conn/s")
    print(f"stalwartd x{workers}: PROXY + ban check + close     {rate:9.0f} conn/s   answered={answered}")
    print(f"ratio stalwartd/accept-and-close = {rate / peer_rate:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--increments", type=int, default=2_000_000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-server", action="store_true", help="only the counter part")
    args = ap.parse_args()
    counters(args.increments, args.seconds)
    if not args.skip_server:
        turn_away(args.seconds, args.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
