"""Download one table resource (spec/services.md §3 "Resource: download").

* ``http``/``https``: the configured headers and ``Authorization``, ``User-Agent: Stalwart/1.0.0``;
  status must be 2xx. The whole request, headers and body, must finish within ``timeout`` (a
  server that trickles bytes is cut off at the deadline, not after each idle read).
* ``file://<path>`` is read from disk.
* ``maxSize`` applies to the bytes received **and** to the decompressed size, for every scheme
  ("We do better"): reading stops at the limit and the resource is refused as too large, so a
  compression bomb never reaches memory. ``.gz``/``.gzip`` URLs are gunzipped.
* The body must be UTF-8.
"""
from __future__ import annotations

import http.client
import os
import ssl
import time
import urllib.parse
import zlib

from ...errors import StalwartError

CHUNK = 256 * 1024
MAX_REDIRECTS = 5


class FetchError(StalwartError):
    """A resource could not be fetched or decoded; the message is logged with the URL."""


def fetch_text(url: str, headers: dict[str, str], timeout: float, max_size: int) -> str:
    """The decoded text of ``url``; raises :class:`FetchError`."""
    deadline = time.monotonic() + timeout
    path = urllib.parse.urlsplit(url).path.lower()
    gz = path.endswith((".gz", ".gzip"))
    sink = _Sink(max_size, gz)
    if url.lower().startswith("file:"):
        _read_file(url, sink)
    else:
        _read_http(url, headers, deadline, sink)
    data = sink.finish()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FetchError(f"Resource is not valid UTF-8 (byte {exc.start})") from None


class _Sink:
    """Collects a body, gunzipping on the way, and refuses it past ``max_size`` bytes."""

    def __init__(self, max_size: int, gz: bool):
        self.max_size = max_size
        self.raw = 0
        self.parts: list[bytes] = []
        self.size = 0
        self.inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if gz else None

    def feed(self, data: bytes) -> None:
        self.raw += len(data)
        if self.raw > self.max_size:
            raise FetchError(f"Resource too large (more than {self.max_size} bytes)")
        if self.inflater is None:
            self._add(data)
            return
        try:
            while data:
                # Bounded output per step: a small input can never inflate past the limit in memory.
                out = self.inflater.decompress(data, self.max_size - self.size + 1)
                self._add(out)
                data = self.inflater.unconsumed_tail
                if self.inflater.eof:
                    break
        except zlib.error as exc:
            raise FetchError(f"Resource is not valid gzip: {exc}") from None

    def _add(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_size:
            raise FetchError(f"Resource too large (more than {self.max_size} bytes once decompressed)")
        self.parts.append(data)

    def finish(self) -> bytes:
        if self.inflater is not None:
            try:
                self._add(self.inflater.flush())
            except zlib.error as exc:
                raise FetchError(f"Resource is not valid gzip: {exc}") from None
            if not self.inflater.eof:
                raise FetchError("Resource is not valid gzip: truncated stream")
        return b"".join(self.parts)


def _read_file(url: str, sink: _Sink) -> None:
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                sink.feed(chunk)
    except OSError as exc:
        raise FetchError(f"cannot read {path}: {exc.strerror or exc}") from None


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError("Request timed out")
    return left


def _read_http(url: str, headers: dict[str, str], deadline: float, sink: _Sink) -> None:
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise FetchError(f"unsupported URL {url!r}")
        port = parts.port
        try:
            if scheme == "https":
                conn = http.client.HTTPSConnection(parts.hostname, port, timeout=_remaining(deadline),
                                                   context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(parts.hostname, port, timeout=_remaining(deadline))
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            try:
                conn.request("GET", target, headers={"Accept-Encoding": "identity", **headers})
                conn.sock.settimeout(_remaining(deadline))
                resp = conn.getresponse()
                if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                    url = urllib.parse.urljoin(url, resp.getheader("Location"))
                    moved = urllib.parse.urlsplit(url)
                    if (moved.scheme.lower(), moved.hostname, moved.port) != (scheme, parts.hostname, port):
                        # Credentials are for the configured origin only, never for where it points.
                        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                    continue
                if not 200 <= resp.status < 300:
                    raise FetchError(f"HTTP status {resp.status} {resp.reason}")
                length = resp.getheader("Content-Length")
                if length and length.isdigit() and int(length) > sink.max_size:
                    raise FetchError(f"Resource too large ({length} bytes, more than {sink.max_size})")
                while True:
                    conn.sock.settimeout(_remaining(deadline))
                    chunk = resp.read1(CHUNK)
                    if not chunk:
                        break
                    sink.feed(chunk)
                    _remaining(deadline)
                return
            finally:
                conn.close()
        except TimeoutError:
            raise FetchError("Request timed out") from None
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(f"request failed: {exc}") from None
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")


def file_signature(path: str) -> tuple[int, int, int] | None:
    """``(inode, size, mtime_ns)`` of a file, or None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
