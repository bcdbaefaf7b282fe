"""SMTP sessions per second: connect, EHLO, MAIL, RCPT, DATA (1 KiB), QUIT — stalwartd vs aiosmtpd.

Every server runs in this same invocation on loopback under the same client
(one process, uvloop when installed, lock-step: each command waits for its reply, as smtplib does),
so the ratios hold even though absolute figures on a shared 2-core machine drift. The peers:

* ``aiosmtpd-maildir``: aiosmtpd (pip) with its ``Mailbox`` handler writing each message into a
  Maildir (Python's ``mailbox.Maildir.add``: tmp/, ``fsync`` of the file on the event loop, then
  link into new/; the directory is not fsynced, so the new name is not durable before the ``250``);
* ``aiosmtpd-sink``: aiosmtpd with a handler that accepts and discards (its protocol cost alone);
* ``stalwartd xN``: the real server with N workers, every message fsynced into the recipient's
  Maildir before the ``250`` (file and directory), plus its full connection pipeline; deliveries go
  through the ``commit`` kernel (``STALWART_NO_EXTENSIONS=1`` measures its Python twin instead);
* ``postfix``: Postfix ``smtpd`` when ``--postfix HOST:PORT`` names one already running; it must
  accept ``user@bench.test``. ``bench/postfix_peer.sh`` makes this machine's Debian Postfix such a
  peer on 127.0.0.1:2528: the ``250`` after the queue file is fsynced, then the discard transport.

All servers are started first and then take turns, ``--rounds`` times, so background load on a
shared machine hits them alike; each figure is the median of its rounds.

Usage: ``python bench/smtp_sessions.py [--seconds 12] [--rounds 4] [--concurrency 32] [--workers 2]``
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import free_port, wait_port

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_HEAD = b"From: bench@client.test\r\nTo: user@bench.test\r\nSubject: bench\r\n\r\n"
BODY = _HEAD + b"x" * (1024 - len(_HEAD) - 2) + b"\r\n"  # a 1 KiB message
assert len(BODY) == 1024

AIOSMTPD = r'''
import asyncio, sys, mailbox
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
class Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"
port, kind, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
handler = Mailbox(path) if kind == "maildir" else Sink()
try:
    import uvloop
    loop = uvloop.new_event_loop()
except ImportError:
    loop = asyncio.new_event_loop()
ctl = Controller(handler, hostname="127.0.0.1", port=port, loop=loop, ready_timeout=20)
ctl.start()
print("ready", flush=True)
sys.stdin.read()
ctl.stop()
'''


class SmtpClient(asyncio.Protocol):
    """One lock-step session: a reply's last line (``ddd `` + CRLF) triggers the next command."""

    STEPS = [b"EHLO client.test\r\n", b"MAIL FROM:<bench@client.test>\r\n", b"RCPT TO:<user@bench.test>\r\n",
             b"DATA\r\n", BODY + b".\r\n", b"QUIT\r\n"]
    EXPECT = [b"220", b"250", b"250", b"250", b"354", b"250", b"221"]

    def __init__(self, done: asyncio.Future):
        self.done = done
        self.buf = b""
        self.step = 0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        while True:
            nl = self.buf.find(b"\n")
            if nl < 0:
                return
            line, self.buf = self.buf[:nl + 1], self.buf[nl + 1:]
            if len(line) >= 4 and line[3:4] == b"-":
                continue  # a continuation line of a multi-line reply
            if not line.startswith(self.EXPECT[self.step]):
                self._finish(False)
                return
            if self.step == len(self.STEPS):
                self._finish(True)
                return
            self.transport.write(self.STEPS[self.step])
            self.step += 1

    def _finish(self, ok: bool):
        if not self.done.done():
            self.done.set_result(ok)
        self.transport.close()

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(False)


async def load(port: int, seconds: float, concurrency: int) -> tuple[float, int, int]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    ok = failed = 0

    async def one_client():
        nonlocal ok, failed
        while loop.time() < deadline:
            done = loop.create_future()
            try:
                await loop.create_connection(lambda: SmtpClient(done), "127.0.0.1", port)
                good = await asyncio.wait_for(done, 30)
            except (OSError, asyncio.TimeoutError):
                good = False
            if good:
                ok += 1
            else:
                failed += 1

    start = loop.time()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return ok / (loop.time() - start), ok, failed


def _run(port: int, seconds: float, concurrency: int) -> tuple[float, int, int]:
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(load(port, seconds, concurrency))


def measure(port: int, seconds: float, concurrency: int, procs: int = 1) -> tuple[float, int, int]:
    """Sessions/s against ``port``: ``procs`` client processes share ``concurrency`` sessions, so
    one Python client process is not the ceiling being measured."""
    _run(port, 0.5, concurrency)  # warm-up
    if procs <= 1:
        return _run(port, seconds, concurrency)
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(procs, mp_context=ctx) as pool:
        parts = list(pool.map(_run, [port] * procs, [seconds] * procs, [max(1, concurrency // procs)] * procs))
    return sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts)


@contextlib.contextmanager
def aiosmtpd_server(kind: str):
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([sys.executable, "-c", AIOSMTPD, str(port), kind, os.path.join(tmp, "Maildir")],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            proc.stdout.readline()
            wait_port(port)
            yield port, None
        finally:
            proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def stalwartd_server(workers: int):
    from stalwart.accounts import hash_password

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "config.json")
        with open(cfg, "w") as fh:
            json.dump({"SystemSettings": {"defaultHostname": "bench.test", "threadPoolSize": workers},
                       "NetworkListener": [{"name": "smtp", "protocol": "smtp", "bind": [f"127.0.0.1:{port}"]}],
                       "Domain": [{"name": "bench.test"}],
                       "Account": [{"name": "user", "secret": hash_password("x", ln=4),
                                    "emails": ["user@bench.test"]}]}, fh)
        proc = subprocess.Popen([sys.executable, "-m", "stalwart.cli", "--config", cfg, "--data-dir",
                                 os.path.join(tmp, "data"), "--log-level", "warn"])
        try:
            wait_port(port)
            time.sleep(0.5)  # every worker ready
            yield port, os.path.join(tmp, "data", "mail", "user", "new")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=12.0, help="measuring time per server, over all rounds")
    ap.add_argument("--rounds", type=int, default=4, help="servers take turns this many times (median kept)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--client-procs", type=int, default=1, help="client processes sharing the sessions")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--postfix", metavar="HOST:PORT", help="also measure a running Postfix smtpd")
    args = ap.parse_args()
    servers = {"aiosmtpd-maildir": lambda: aiosmtpd_server("maildir"),
               "aiosmtpd-sink": lambda: aiosmtpd_server("sink"),
               "stalwartd x1": lambda: stalwartd_server(1),
               f"stalwartd x{args.workers}": lambda: stalwartd_server(args.workers)}
    rates: dict[str, list[float]] = {name: [] for name in servers}
    totals: dict[str, list[int]] = {name: [0, 0] for name in servers}
    with contextlib.ExitStack() as stack:
        ports = {name: stack.enter_context(make()) for name, make in servers.items()}
        if args.postfix:
            ports["postfix"] = (int(args.postfix.rpartition(":")[2]), None)
            rates["postfix"], totals["postfix"] = [], [0, 0]
        # Servers take turns in every round, so background load on a shared machine hits them alike.
        for _ in range(args.rounds):
            for name, (port, _) in ports.items():
                rate, ok, failed = measure(port, args.seconds / args.rounds, args.concurrency, args.client_procs)
                rates[name].append(rate)
                totals[name][0] += ok
                totals[name][1] += failed
        stored = {name: len(os.listdir(d)) for name, (_, d) in ports.items() if d}
    median = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in rates.items():
        extra = f"   stored={stored[name]}" if name in stored else ""
        print(f"{name:18} {median[name]:8.0f} sessions/s (median of {', '.join(f'{x:.0f}' for x in r)})"
              f"   ok={totals[name][0]} failed={totals[name][1]}{extra}", flush=True)
    for ours in (f"stalwartd x{args.workers}", "stalwartd x1"):
        for peer in ("aiosmtpd-maildir", "aiosmtpd-sink", "postfix"):
            if peer in median:
                print(f"ratio {ours}/{peer} = {median[ours] / median[peer]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
