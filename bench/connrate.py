"""Sessions per second (connect, greeting, QUIT, close): stalwartd vs a minimal asyncio server.

Both servers run in this same invocation on loopback, one after the other, under the same client
(stalwart.tools.loadgen, uvloop when installed), so the ratio holds even though absolute figures on
a shared 2-core machine drift. The peers:

* ``asyncio-min``: the smallest correct SMTP greeting server: one process, one asyncio.Protocol,
  stock event loop;
* ``uvloop-min``: the same on uvloop (what stalwartd's workers use when uvloop is installed);
* ``stalwartd``: the real server with ``threadPoolSize`` workers (default 2) and its full
  per-connection pipeline (shared-memory caps, session core, idle sweep).

Usage: ``python bench/connrate.py [--seconds 8] [--concurrency 50] [--workers 2]``
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from benchlib import free_port, wait_port

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stalwart.tools.loadgen import run_load  # noqa: E402

MINIMAL = r'''
import asyncio, sys
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t
        t.write(b"220 bench ESMTP\r\n")
    def data_received(self, d):
        if d.upper().startswith(b"QUIT"):
            self.t.write(b"221 2.0.0 Bye.\r\n")
            self.t.close()
async def main(port):
    srv = await asyncio.get_running_loop().create_server(P, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    await srv.serve_forever()
if sys.argv[2] == "uvloop":
    import uvloop
    uvloop.install()
asyncio.run(main(int(sys.argv[1])))
'''


def measure(port: int, seconds: float, concurrency: int) -> tuple[float, int]:
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    asyncio.run(run_load("127.0.0.1", port, 1.0, concurrency))  # warm-up
    res = runner(run_load("127.0.0.1", port, seconds, concurrency))
    return res.rate, res.failed


def run_minimal(kind: str, seconds: float, concurrency: int) -> tuple[float, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", MINIMAL, str(port), kind], stdout=subprocess.PIPE)
    try:
        proc.stdout.readline()
        wait_port(port)
        return measure(port, seconds, concurrency)
    finally:
        proc.terminate()
        proc.wait(10)


def run_stalwartd(workers: int, seconds: float, concurrency: int) -> tuple[float, int]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "config.json")
        with open(cfg, "w") as fh:
            json.dump({"SystemSettings": {"defaultHostname": "bench.test", "threadPoolSize": workers},
                       "NetworkListener": [{"name": "smtp", "protocol": "smtp", "bind": [f"127.0.0.1:{port}"]}]}, fh)
        proc = subprocess.Popen([sys.executable, "-m", "stalwart.cli", "--config", cfg, "--data-dir",
                                 os.path.join(tmp, "data"), "--log-level", "warn"])
        try:
            wait_port(port)
            time.sleep(0.5)  # every worker ready
            return measure(port, seconds, concurrency)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    results = {}
    for name, fn in (("asyncio-min", lambda: run_minimal("asyncio", args.seconds, args.concurrency)),
                     ("uvloop-min", lambda: run_minimal("uvloop", args.seconds, args.concurrency)),
                     (f"stalwartd x{args.workers}", lambda: run_stalwartd(args.workers, args.seconds, args.concurrency))):
        rate, failed = fn()
        results[name] = rate
        print(f"{name:16} {rate:9.0f} sessions/s   failed={failed}")
    sd = results[f"stalwartd x{args.workers}"]
    print(f"ratio stalwartd/asyncio-min = {sd / results['asyncio-min']:.2f}")
    print(f"ratio stalwartd/uvloop-min  = {sd / results['uvloop-min']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
