"""RFC 2136 RRset replacement: one atomic UPDATE (stalwartd) vs the reference's two (delete, then add).

Against Knot DNS (Debian ``knot``) on an ephemeral loopback port with a TSIG key, one writer replaces
a TXT RRset ``--updates`` times while a reader thread queries it over TCP as fast as it can. Printed:

* updates per second of each method (and the ratio);
* reads that saw **no** record, i.e. the window between the reference's two messages in which the
  name has no TXT at all (a validating CA or a resolver caching NXRRSET sees it too); with one
  message the zone goes from the old set to the new one directly, so this must be 0.

Usage: ``python bench/dns_update.py [--updates 300]``
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import dns.message  # noqa: E402
import dns.query  # noqa: E402

from knot_util import Knot  # noqa: E402
from stalwart import events  # noqa: E402
from stalwart.config import parse_bytes  # noqa: E402
from stalwart.services.dnsproviders import build_updater  # noqa: E402

NAME = "_acme-challenge.example.test"


class Reader(threading.Thread):
    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.stop, self.reads, self.empty = port, False, 0, 0

    def run(self):
        q = dns.message.make_query(NAME + ".", "TXT")
        while not self.stop:
            resp = dns.query.tcp(q, "127.0.0.1", port=self.port, timeout=2)
            self.reads += 1
            if not resp.answer:
                self.empty += 1


async def replace_two_messages(u, value: str) -> None:
    """The reference's set_rrset: delete the RRset, then add the records, as two UPDATEs."""
    await u.set_rrset("example.test", NAME, "TXT", [])
    await u.add_to_rrset("example.test", NAME, "TXT", [value])


async def measure(u, port: int, updates: int, atomic: bool) -> tuple[float, int, int]:
    await u.set_rrset("example.test", NAME, "TXT", ["seed"])
    reader = Reader(port)
    reader.start()
    start = time.perf_counter()
    for i in range(updates):
        if atomic:
            await u.set_rrset("example.test", NAME, "TXT", [f"value-{i}"])
        else:
            await replace_two_messages(u, f"value-{i}")
    elapsed = time.perf_counter() - start
    reader.stop = True
    reader.join(5)
    return updates / elapsed, reader.reads, reader.empty


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--updates", type=int, default=300)
    args = ap.parse_args()
    events.configure("warn")  # one dns.record-created line per update would dominate the output
    with tempfile.TemporaryDirectory() as tmp:
        knot = Knot(os.path.join(tmp, "knot")).start()
        try:
            cfg = parse_bytes(json.dumps({"DnsServer": [knot.server(protocol="tcp")]}).encode())
            u = build_updater(cfg.DnsServer[0])
            rows = {}
            for label, atomic in (("one UPDATE (stalwartd)", True), ("two UPDATEs (reference)", False)):
                rows[label] = asyncio.run(measure(u, knot.port, args.updates, atomic))
        finally:
            knot.stop()
    print(f"{'method':28} {'updates/s':>10} {'reads':>8} {'reads with no TXT':>18}")
    for label, (rate, reads, empty) in rows.items():
        print(f"{label:28} {rate:10.0f} {reads:8d} {empty:18d}")
    one, two = rows["one UPDATE (stalwartd)"], rows["two UPDATEs (reference)"]
    print(f"replacement rate ratio one/two: {one[0] / two[0]:.2f}x; empty reads {one[2]} vs {two[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
