"""The master's side of ASN and GeoIP: when to refresh which table (spec/services.md §3 "Storage and
refresh" and "We do better: Independent refresh, Last good data survives restarts").

:class:`GeoRefresher` is driven by the master's loop (``tick()`` about once a second) and never
blocks it: downloads and parsing run in a helper process (``refresh.py``) whose JSON lines are read
without blocking. Each table kind (``asn``, ``country``) has its own schedule:

* at start, a table file left by an earlier run is served at once; it is due again at
  ``built_at + expires``, or now when its source list changed (the file carries a fingerprint);
* after a success: due again after ``expires``;
* after a failure (nothing usable read): the last good table stays; retried after 60 s, doubling up
  to ``expires``;
* ``Mmdb`` files are checked every ``expires`` and read again only when their modification time
  changed.
"""
from __future__ import annotations

import ipaddress
import json
import mmap
import os
import signal
import subprocess
import sys
import time

import msgspec

from ... import events
from ..._fast import load as load_kernel
from ...config.types import enc_hook
from ...fileio import read_available
from .config import Asn, AsnDisabled, AsnDns, AsnMmdb, AsnResource
from .dns import DnsLookupError, DnspythonTxt
from .refresh import KINDS, TABLE_DIR, sources, table_path
from .service import GeoService
from .tables import fingerprint

rangetable = load_kernel("rangetable")

CONTROL_DNS_TIMEOUT = 2.0  # s: a lookup from the control socket runs in the master's loop
RETRY_FIRST = 60.0  # s after a failed refresh, doubling up to `expires`
HELPER_GRACE = 30.0  # s beyond the sum of the URL timeouts before a helper is killed


class _KindState:
    __slots__ = ("due", "failures", "fingerprint", "mtime")

    def __init__(self):
        self.due = 0.0
        self.failures = 0
        self.fingerprint = 0
        self.mtime = 0


class GeoRefresher:
    """Schedules table builds and runs them in a helper process. One per master."""

    def __init__(self, data_dir: str, clock=time.time):
        self.data_dir = data_dir
        self.clock = clock
        self.cfg: Asn = AsnDisabled()
        self.state = {kind: _KindState() for kind in KINDS}
        self.proc: subprocess.Popen | None = None
        self.proc_kinds: list[str] = []
        self.proc_mtimes: dict[str, int] = {}
        self.proc_deadline = 0.0
        self.buf = b""
        self.results: dict[str, bool] = {}
        self.service = GeoService(self.cfg, data_dir)

    # -- configuration -------------------------------------------------------------------------
    def configure(self, config) -> None:
        """Take a new configuration (start and every reload): the whole ``Config`` (its ``Asn``,
        and ``DnsResolver`` for the ``Dns`` variant's control lookups) or an ``Asn`` object alone
        (DNS then through dnspython with the OS settings). Keeps the schedule of tables whose
        sources did not change."""
        whole = hasattr(config, "Asn")
        cfg = config.Asn if whole else config
        old = self.cfg
        self.cfg = cfg
        if self.proc is None:
            _remove_temporaries(os.path.join(self.data_dir, TABLE_DIR))
        self.service.close()
        if whole:
            self.service = GeoService.for_config(config, self.data_dir, sync_timeout=CONTROL_DNS_TIMEOUT)
        else:
            self.service = GeoService(cfg, self.data_dir, DnspythonTxt(timeout=CONTROL_DNS_TIMEOUT))
        if not isinstance(cfg, (AsnResource, AsnMmdb)):
            self._stop_helper()
            return
        now = self.clock()
        for kind, st in self.state.items():
            srcs = sources(cfg, kind)
            fp = fingerprint(srcs)
            if not srcs:
                # The operator removed this kind's sources: its old table must not keep answering.
                st.due, st.fingerprint = float("inf"), fp
                try:
                    os.unlink(table_path(self.data_dir, kind))
                except OSError:
                    pass
                continue
            if fp == st.fingerprint and type(old) is type(cfg) and st.due != float("inf"):
                if _expires(old) != _expires(cfg) and st.failures == 0:
                    st.due = min(st.due, now + _expires(cfg))
                continue
            st.fingerprint, st.failures = fp, 0
            st.due = self._due_from_file(kind, fp, cfg, now)

    def _due_from_file(self, kind: str, fp: int, cfg: Asn, now: float) -> float:
        """When a table left by an earlier run (last good data) needs refreshing."""
        path = table_path(self.data_dir, kind)
        try:
            with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                hdr = rangetable.read_header(mapped)
        except (OSError, ValueError):  # missing, empty or damaged: build it now
            return now
        if hdr["fingerprint"] != fp:
            return now
        built = hdr["built_at"]
        if isinstance(cfg, AsnMmdb):
            self.state[kind].mtime = _mtime(sources(cfg, kind)[0])
            if self.state[kind].mtime // 10**9 >= built:  # changed since (or while) it was read
                return now
        return built + _expires(cfg)

    # -- the loop ------------------------------------------------------------------------------
    def tick(self) -> None:
        """Called from the master's loop: collect a finished helper, start one when a table is due."""
        if self.proc is not None:
            self._poll_helper()
            return
        if not isinstance(self.cfg, (AsnResource, AsnMmdb)):
            return
        now = self.clock()
        if isinstance(self.cfg, AsnMmdb):
            # Every `expires`: a database file whose modification time did not change since its
            # table was built needs nothing; only a changed (or never read) file is read again.
            for kind, st in self.state.items():
                srcs = sources(self.cfg, kind)
                if srcs and st.due <= now and st.failures == 0 and st.mtime and _mtime(srcs[0]) == st.mtime:
                    st.due = now + _expires(self.cfg)
        due = [k for k, st in self.state.items() if st.due <= now]
        if due:
            self._start_helper(due)

    def _start_helper(self, kinds: list[str]) -> None:
        req = {"config": msgspec.to_builtins(self.cfg, enc_hook=enc_hook), "dataDir": self.data_dir,
               "kinds": kinds}
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stalwart.services.geo.refresh"],
                # Its own session: a Ctrl-C or group signal meant for stalwartd does not reach it;
                # the master stops it (close(), or the time budget below).
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
            self.proc.stdin.write(json.dumps(req).encode())
            self.proc.stdin.close()
        except OSError as exc:
            events.emit("resource.error", level="error", Reason=f"cannot start the GeoIP refresh helper: {exc}")
            self.proc = None
            for kind in kinds:
                self._finished(kind, False)
            return
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.proc_kinds = list(kinds)
        # Modification times as the helper starts reading: a change during the read is seen next time.
        self.proc_mtimes = {k: _mtime(sources(self.cfg, k)[0]) for k in kinds} if isinstance(self.cfg, AsnMmdb) else {}
        self.results = {}
        self.buf = b""
        budget = HELPER_GRACE
        if isinstance(self.cfg, AsnResource):
            urls = sum(len(sources(self.cfg, k)) for k in kinds)
            budget += urls * self.cfg.timeout / 1000.0
        else:
            budget += 600.0
        self.proc_deadline = time.monotonic() + budget

    def _poll_helper(self) -> None:
        proc = self.proc
        data, eof = read_available(proc.stdout.fileno())
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            self._handle_line(line)
        if not eof and time.monotonic() > self.proc_deadline:
            events.emit("resource.error", level="error", Reason="GeoIP refresh helper overran its time budget")
            self._stop_helper()
            eof = True
        if eof:
            self._collect()

    def _handle_line(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            return
        if "event" in msg:
            events.emit(msg["event"], level=msg.get("level"), **msg.get("keys", {}))
        elif "result" in msg:
            self.results[msg["result"]] = bool(msg.get("ok"))

    def _collect(self) -> None:
        if self.proc is not None:
            self.proc.stdout.close()
            try:
                self.proc.wait(timeout=1.0)  # the master's own reaper may have taken it already
            except (subprocess.TimeoutExpired, ChildProcessError):
                pass
        self.proc = None
        for kind in self.proc_kinds:
            self._finished(kind, self.results.get(kind, False))
        self.proc_kinds = []

    def _finished(self, kind: str, ok: bool) -> None:
        st = self.state[kind]
        if st.due == float("inf"):
            return
        now = self.clock()
        expires = _expires(self.cfg)
        if ok:
            st.failures = 0
            st.due = now + expires
            if isinstance(self.cfg, AsnMmdb):
                st.mtime = self.proc_mtimes.get(kind, 0)
        else:
            st.failures += 1
            st.due = now + min(RETRY_FIRST * 2 ** (st.failures - 1), expires)

    def refresh_now(self) -> list[str]:
        """Make every configured table due now (``stalwart-cli geo refresh``)."""
        kinds = []
        for kind, st in self.state.items():
            if st.due != float("inf") and isinstance(self.cfg, (AsnResource, AsnMmdb)):
                st.due = 0.0
                kinds.append(kind)
        return kinds

    def schedule(self) -> dict:
        now = self.clock()
        return {kind: None if st.due == float("inf") else {"dueIn": max(0, int(st.due - now)),
                                                           "failures": st.failures}
                for kind, st in self.state.items()}

    def _stop_helper(self) -> None:
        if self.proc is not None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._collect()

    def close(self) -> None:
        self._stop_helper()
        self.service.close()

    # -- control socket ------------------------------------------------------------------------
    def command(self, action: str, req: dict) -> dict:
        """``geo.lookup`` (``address``), ``geo.status`` and ``geo.refresh`` from the control socket."""
        if action == "lookup":
            text = req.get("address")
            try:
                packed = ipaddress.ip_address(text.strip() if isinstance(text, str) else "").packed
            except ValueError:
                return {"ok": False, "error": f"{text!r} is not an IP address"}
            if not self.service.enabled:
                return {"ok": False, "error": "ASN and GeoIP lookups are disabled (Asn is Disabled)"}
            try:
                info = self.service.resolve_sync(packed)
            except DnsLookupError as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True, "address": str(ipaddress.ip_address(packed)), "source": _kind(self.cfg),
                    "found": info is not None, **(info.as_dict() if info else {})}
        if action == "status":
            return {"ok": True, "source": _kind(self.cfg), "tables": self.service.status(),
                    "schedule": self.schedule() if self.service.tables else {},
                    "refreshing": self.proc_kinds}
        if action == "refresh":
            kinds = self.refresh_now()
            if not kinds:
                return {"ok": False, "error": f"nothing to refresh for Asn type {_kind(self.cfg)}"}
            return {"ok": True, "message": f"refreshing {', '.join(kinds)}"}
        return {"ok": False, "error": f"unknown geo command {action!r}"}


def _remove_temporaries(directory: str) -> None:
    """Half-written tables of a helper that was killed (``<kind>.table.tmp<pid>``)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if ".table.tmp" in name:
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass


def _kind(cfg: Asn) -> str:
    return type(cfg).__struct_config__.tag


def _expires(cfg: Asn) -> float:
    return getattr(cfg, "expires", 86400000) / 1000.0


def _mtime(path: str) -> int:
    """Modification time in nanoseconds, 0 when the file cannot be read."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


__all__ = ["AsnDisabled", "AsnDns", "GeoRefresher"]
