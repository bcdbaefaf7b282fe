"""Build the ASN and country range tables: the refresh helper process (spec/services.md §3
"Resource: download", "Storage and refresh").

The master never downloads or parses anything itself (a 100 MiB CSV would stall supervision for
seconds): it starts ``python -m stalwart.services.geo.refresh`` with the ``Asn`` object and the
kinds that are due on standard input, and reads one JSON object per line back:

* ``{"event": "resource.download-external", "keys": {...}}`` — an event for the master to log;
* ``{"result": "asn", "ok": true, "ranges": 123, "path": "..."}`` — one per kind asked for.

A kind's table is written (atomically, see ``rangetable_py.write``) only when at least one range was
read, so a failed or empty download never replaces the last good table.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

import msgspec

from ..._fast import load as load_kernel
from ...errors import StalwartError
from .config import Asn, AsnMmdb, AsnResource, request_headers
from .fetch import FetchError, fetch_text
from .tables import ASN, COUNTRY, ParsedTable, fingerprint, flatten, parse_csv

rangetable = load_kernel("rangetable")

TABLE_DIR = "geo"
KINDS = (ASN, COUNTRY)


def table_path(data_dir: str, kind: str) -> str:
    return os.path.join(data_dir, TABLE_DIR, f"{kind}.table")


def sources(cfg: Asn, kind: str) -> list[str]:
    """Where a kind's data comes from: the URLs or the database file; empty when it has none."""
    if isinstance(cfg, AsnResource):
        return list(cfg.asn_urls if kind == ASN else cfg.geo_urls)
    if isinstance(cfg, AsnMmdb):
        path = cfg.asn_database if kind == ASN else cfg.country_database
        return [os.path.abspath(path)] if path else []
    return []


Emit = Callable[..., None]


def build(cfg: Asn, data_dir: str, kind: str, emit: Emit) -> tuple[bool, int]:
    """Fetch and parse every source of ``kind`` and write its table. Returns ``(ok, ranges)``;
    ``ok`` is False when nothing usable was read (the old table, if any, stays)."""
    srcs = sources(cfg, kind)
    table = ParsedTable(kind)
    if isinstance(cfg, AsnResource):
        try:
            headers = request_headers(cfg)
        except StalwartError as exc:
            emit("resource.error", level="error", Reason="Invalid HTTP configuration", Details=str(exc))
            return False, 0
        for url in srcs:
            t0 = time.monotonic()
            try:
                text = fetch_text(url, headers, cfg.timeout / 1000.0, int(cfg.max_size))
            except FetchError as exc:
                emit("resource.error", level="warn", Url=url, Reason=str(exc))
                continue
            stats = parse_csv(text, table, url)
            elapsed = int((time.monotonic() - t0) * 1000)
            emit("resource.download-external", Url=url, Elapsed=elapsed, Details="Downloaded ASN/Geo data",
                 Total=stats.rows, Invalid=stats.invalid)
            if stats.invalid:
                emit("resource.error", level="warn", Url=url, Reason="Invalid ASN/Geo data",
                     Invalid=stats.invalid, Details=stats.first_invalid)
    elif isinstance(cfg, AsnMmdb):
        from maxminddb.errors import InvalidDatabaseError

        from .mmdb import read_database

        for path in srcs:
            t0 = time.monotonic()
            try:
                part = read_database(path, kind)
            except (OSError, ValueError, InvalidDatabaseError) as exc:
                emit("resource.error", level="warn", Path=path, Reason=f"Invalid MaxMind database: {exc}")
                continue
            _merge(table, part)
            emit("resource.download-external", Path=path, Elapsed=int((time.monotonic() - t0) * 1000),
                 Details="Read MaxMind database", Total=len(part))
    if not len(table):
        return False, 0
    v4, v6 = flatten(table.v4), flatten(table.v6)
    path = table_path(data_dir, kind)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rangetable.write(path, v4, v6, table.values, int(time.time()), fingerprint(srcs))
    return True, len(v4) + len(v6)


def _merge(into: ParsedTable, part: ParsedTable) -> None:
    remap = [into.value_id(lab if into.kind == COUNTRY else n, n, lab) for n, lab in part.values]
    into.v4.extend((s, e, remap[v]) for s, e, v in part.v4)
    into.v6.extend((s, e, remap[v]) for s, e, v in part.v6)


def main() -> int:
    """Helper entry point: request on stdin, JSON lines on stdout (see the module docstring)."""
    req = json.loads(sys.stdin.buffer.read())
    cfg = msgspec.convert(req["config"], Asn, dec_hook=_dec_hook)
    out = sys.stdout

    def emit(event: str, level: str | None = None, **keys) -> None:
        out.write(json.dumps({"event": event, "level": level, "keys": keys}) + "\n")
        out.flush()

    for kind in req["kinds"]:
        try:
            ok, n = build(cfg, req["dataDir"], kind, emit)
        except Exception as exc:  # noqa: BLE001 - one bad kind must not hide the other's result
            emit("resource.error", level="error", Reason=f"{kind} table build failed: {type(exc).__name__}: {exc}")
            ok, n = False, 0
        out.write(json.dumps({"result": kind, "ok": ok, "ranges": n}) + "\n")
        out.flush()
    return 0


def _dec_hook(type_, obj):
    from ...config.types import dec_hook

    return dec_hook(type_, obj)


if __name__ == "__main__":
    sys.exit(main())
