"""Which listening-socket layout loses no queued connection? Measured, not assumed.

network.md §3 allows two layouts: one socket per address shared by every worker (what stalwartd
does), or one SO_REUSEPORT socket per (address, worker slot) kept by the master, which balances
better but is allowed only if it loses nothing when a worker dies or the worker count drops. A
third, each worker opening its own SO_REUSEPORT socket, is the naive layout the anchors measured.

Two slow-accepting workers (``--delay`` ms per connection) face ``--clients`` connections opened at
once; then either one worker is killed with a non-empty queue (``kill``) or the pool shrinks from
2 to 1 the way a reload lowering ``threadPoolSize`` would (``shrink``). Every client then waits for
its greeting; a reset or EOF is a lost connection. Loopback only, bounded in count and time.

Usage: ``python bench/listener_layout.py [--clients 600] [--delay 2]``
"""
from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import time

from benchlib import free_port


def listen_socket(port: int, reuseport: bool) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(4096)
    return s


def worker(sock: socket.socket | None, port: int, delay: float) -> None:
    """Child body: accept forever, greet, close. ``sock=None``: open a private REUSEPORT socket."""
    if sock is None:
        sock = listen_socket(port, True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        conn, _ = sock.accept()
        conn.sendall(b"220 hi\r\n")
        conn.close()
        time.sleep(delay)


def spawn(sock, port, delay, close=()):
    pid = os.fork()
    if pid == 0:
        for s in close:
            if s is not sock:
                s.close()
        try:
            worker(sock, port, delay)
        finally:
            os._exit(0)
    return pid


def run(layout: str, scenario: str, clients: int, delay: float) -> tuple[int, int]:
    port = free_port()
    master_socks: list[socket.socket] = []
    if layout == "shared":
        master_socks = [listen_socket(port, False)]
        socks = [master_socks[0], master_socks[0]]
    elif layout == "per-slot":
        master_socks = [listen_socket(port, True), listen_socket(port, True)]
        socks = list(master_socks)
    else:  # per-worker: each worker opens its own socket; the master has none
        socks = [None, None]
        probe = listen_socket(port, True)  # reserve the port group until workers are up
    pids = [spawn(socks[i], port, delay, master_socks) for i in range(2)]
    time.sleep(0.3)
    if layout == "per-worker":
        probe.close()
    conns = []
    for _ in range(clients):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        conns.append(c)
    time.sleep(0.1)
    if scenario == "kill":
        os.kill(pids[0], signal.SIGKILL)
        os.waitpid(pids[0], 0)
        # The replacement takes the dead worker's slot (per-slot: its socket; shared: the one socket).
        pids[0] = spawn(socks[0], port, delay, master_socks)
    else:  # shrink 2 -> 1: worker 2 stops; its slot (and, per-slot, its socket) goes away
        os.kill(pids[1], signal.SIGTERM)
        os.waitpid(pids[1], 0)
        if layout == "per-slot":
            master_socks[1].close()
        pids.pop()
    greeted = lost = 0
    deadline = time.monotonic() + 30
    pending = set(conns)
    while pending and time.monotonic() < deadline:
        ready, _, _ = select.select(list(pending)[:1000], [], [], 0.5)
        for c in ready:
            try:
                data = c.recv(64)
            except (ConnectionResetError, ConnectionRefusedError):
                data = b""
            if data.startswith(b"220"):
                greeted += 1
            else:
                lost += 1
            pending.discard(c)
            c.close()
    lost += len(pending)
    for c in pending:
        c.close()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    for s in master_socks:
        s.close()
    return greeted, lost


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=600)
    ap.add_argument("--delay", type=float, default=2.0, help="ms each worker spends per connection")
    args = ap.parse_args()
    print(f"{'layout':12} {'scenario':8} {'greeted':>8} {'lost':>6}")
    for layout in ("shared", "per-slot", "per-worker"):
        for scenario in ("kill", "shrink"):
            greeted, lost = run(layout, scenario, args.clients, args.delay / 1000)
            print(f"{layout:12} {scenario:8} {greeted:8d} {lost:6d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
