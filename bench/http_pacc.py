"""Requests per second for ``GET /.well-known/user-agent-configuration.json`` on keep-alive connections.

``wrk`` (Debian package ``wrk``) drives, in this same invocation, on loopback, one after the other:

* ``h11-min``: the smallest correct h11 server on uvloop, one process, answering every request with
  the very status line, headers and body stalwartd sends for the PACC document (fetched from
  stalwartd first, so both write the same bytes);
* ``stalwartd x1``: the real server with one worker and its full per-request pipeline (forwarded
  address, block check, path normalisation and banned-path globs, routing, problem+json) — the
  like-for-like comparison with the one-process peer;
* ``stalwartd xN``: the same with N workers, for scale.

wrk connects from loopback, which is always on the allow list, so ``Http.rateLimitAnonymous`` does
not apply (allow-listed addresses skip it, http.md §1); everything else of the pipeline runs.

Usage: ``python bench/http_pacc.py [--seconds 3] [--rounds 5] [--connections 50] [--workers 2]``.
Install wrk with ``apt-get install wrk`` first; the bench says so when it is missing.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import free_port, wait_port

PATH = "/.well-known/user-agent-configuration.json"

MINIMAL = r'''
import asyncio, json, sys
import h11
status, headers, body = json.loads(sys.argv[2])
headers = [(k, v) for k, v in headers]
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t
        self.c = h11.Connection(h11.SERVER)
    def data_received(self, data):
        c = self.c
        c.receive_data(data)
        while True:
            try:
                ev = c.next_event()
            except h11.RemoteProtocolError:
                self.t.close()
                return
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                break
            if isinstance(ev, h11.EndOfMessage):
                out = c.send(h11.Response(status_code=status, headers=headers))
                out += c.send(h11.Data(data=body.encode()))
                out += c.send(h11.EndOfMessage())
                self.t.write(out)
                if c.our_state is h11.MUST_CLOSE:
                    self.t.close()
                    return
                c.start_next_cycle()
            elif isinstance(ev, h11.ConnectionClosed):
                self.t.close()
                return
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


def fetch(port: int) -> tuple[int, list[tuple[str, str]], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", PATH)
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    skip = {"content-length"}  # h11 sets it from the body
    return resp.status, [(k, v) for k, v in resp.getheaders() if k.lower() not in skip], body


def wrk(port: int, seconds: float, connections: int) -> tuple[float, int]:
    url = f"http://127.0.0.1:{port}{PATH}"
    out = subprocess.run(["wrk", "-t1", "-c", str(connections), "-d", f"{seconds:.0f}s", url],
                         capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    bad = int(errors.group(1)) if errors else 0
    if sock_err:
        bad += sum(int(x) for x in sock_err.groups())
    return rate, bad


class Stalwartd:
    def __init__(self, workers: int):
        self.workers = workers
        self.port = free_port()
        self.tmp = tempfile.TemporaryDirectory()
        cfg = os.path.join(self.tmp.name, "config.json")
        with open(cfg, "w") as fh:
            json.dump({"SystemSettings": {"defaultHostname": "bench.test", "threadPoolSize": workers},
                       "NetworkListener": [{"name": "http", "protocol": "http",
                                            "bind": [f"127.0.0.1:{self.port}"]}]}, fh)
        self.proc = subprocess.Popen([sys.executable, "-m", "stalwart.cli", "--config", cfg, "--data-dir",
                                      os.path.join(self.tmp.name, "data"), "--log-level", "warn"])
        wait_port(self.port)
        time.sleep(0.5)  # every worker ready

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.tmp.cleanup()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="length of one wrk run")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians are reported)")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    servers = {"stalwartd x1": Stalwartd(1)}
    if args.workers > 1:
        servers[f"stalwartd x{args.workers}"] = Stalwartd(args.workers)
    peer = None
    try:
        reply = fetch(servers["stalwartd x1"].port)
        port = free_port()
        peer = subprocess.Popen([sys.executable, "-c", MINIMAL, str(port), json.dumps(reply)], stdout=subprocess.PIPE)
        peer.stdout.readline()
        wait_port(port)
        same = fetch(port)
        assert same[0] == reply[0] and same[2] == reply[2], "the peer must send the same bytes"
        ports = {"h11-min": port, **{name: srv.port for name, srv in servers.items()}}
        # The servers run side by side and take turns under wrk, round after round, so load from
        # anything else on a shared machine hits every contender alike; medians drop the outliers.
        rates: dict[str, list[float]] = {name: [] for name in ports}
        errors = dict.fromkeys(ports, 0)
        for _ in range(args.rounds):
            for name, p in ports.items():
                rate, bad = wrk(p, args.seconds, args.connections)
                rates[name].append(rate)
                errors[name] += bad
    finally:
        if peer is not None:
            peer.terminate()
            peer.wait(10)
        for srv in servers.values():
            srv.close()
    med = {name: statistics.median(r) for name, r in rates.items()}
    for name in ports:
        print(f"{name:16} {med[name]:9.0f} req/s (median of {args.rounds})   errors={errors[name]}")
    print(f"body {len(reply[2])} bytes, {args.connections} keep-alive connections, wrk -t1, {args.seconds:.0f} s runs")
    for name in servers:
        per_round = [a / b for a, b in zip(rates[name], rates["h11-min"])]
        print(f"ratio {name} / h11-min = {med[name] / med['h11-min']:.2f}"
              f" (per-round median {statistics.median(per_round):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
