"""How fast is a blocked client turned away? stalwartd vs a minimal accept-and-close server.

Loopback is always on the allow list (security.md §2), so the blocked clients arrive the way they
do in production behind a load balancer: from a trusted proxy address (127.0.0.3) with a PROXY v1
header whose source lies in a blocked /16. stalwartd must read and parse the header, look the
address up and close without writing. The peer, measured in the same run, is the least a server
can do: an asyncio (uvloop) server that closes every connection in ``connection_made``.

Usage: ``python bench/blocked_rate.py [--seconds 6] [--concurrency 50] [--workers 2]``
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from benchlib import free_port, wait_port

MINIMAL = r'''
import asyncio, sys
class P(asyncio.Protocol):
    def connection_made(self, t):
        t.close()
async def main(port):
    srv = await asyncio.get_running_loop().create_server(P, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    await srv.serve_forever()
try:
    import uvloop
    uvloop.install()
except ImportError:
    pass
asyncio.run(main(int(sys.argv[1])))
'''


async def turned_away(port: int, seconds: float, concurrency: int, send_header: bool) -> tuple[int, int]:
    """Connections that ended with EOF and no byte from the server, and ones that got data."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + seconds
    refused = answered = 0

    async def client(i: int) -> None:
        nonlocal refused, answered
        n = 0
        while time.monotonic() < deadline:
            n += 1
            s = socket.socket()
            s.setblocking(False)
            s.bind(("127.0.0.3", 0))
            try:
                await loop.sock_connect(s, ("127.0.0.1", port))
                if send_header:
                    src = f"192.0.{i % 256}.{n % 250 + 1}"
                    await loop.sock_sendall(s, f"PROXY TCP4 {src} 127.0.0.1 40000 25\r\n".encode())
                data = await asyncio.wait_for(loop.sock_recv(s, 64), 10)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            finally:
                s.close()
            if data:
                answered += 1
            else:
                refused += 1

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return refused, answered


def run(port: int, seconds: float, concurrency: int, header: bool) -> tuple[float, int]:
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(turned_away(port, 1.0, concurrency, header))  # warm-up
    start = time.monotonic()
    refused, answered = runner(turned_away(port, seconds, concurrency, header))
    return refused / (time.monotonic() - start), answered


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    port = free_port()
    peer = subprocess.Popen([sys.executable, "-c", MINIMAL, str(port)], stdout=subprocess.PIPE)
    try:
        peer.stdout.readline()
        wait_port(port)
        peer_rate, _ = run(port, args.seconds, args.concurrency, header=False)
    finally:
        peer.terminate()
        peer.wait(10)

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "config.json")
        with open(cfg, "w") as fh:
            json.dump({"SystemSettings": {"threadPoolSize": args.workers, "maxConnections": 100000,
                                          "proxyTrustedNetworks": ["127.0.0.3"]},
                       "BlockedIp": [{"address": "192.0.0.0/16", "reason": "manual"}],
                       "NetworkListener": [{"name": "smtp", "protocol": "smtp", "bind": [f"127.0.0.1:{port}"],
                                            "maxConnections": None}]}, fh)
        proc = subprocess.Popen([sys.executable, "-m", "stalwart.cli", "--config", cfg, "--data-dir",
                                 os.path.join(tmp, "data"), "--log-level", "error"])
        try:
            wait_port(port)
            time.sleep(0.5)
            rate, answered = run(port, args.seconds, args.concurrency, header=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    print(f"accept-and-close (uvloop, 1 process)     {peer_rate:9.0f} conn/s")
    print(f"stalwartd x{args.workers}: PROXY + block + close   {rate:9.0f} conn/s   answered={answered}")
    print(f"ratio stalwartd/accept-and-close = {rate / peer_rate:.2f}")
    return 0 if answered == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
