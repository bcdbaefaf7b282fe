"""The master's control socket: ``<data-dir>/stalwartd.sock``, one JSON request line, one reply line.

``stalwart-cli`` talks to it. The master serves it from its own loop with non-blocking sockets, so a
slow or stuck client can never stall supervision: a client that has not sent a full request within
``REQUEST_TIMEOUT`` seconds is dropped.
"""
from __future__ import annotations

import json
import os
import socket
import time

from ..errors import ControlError

SOCKET_NAME = "stalwartd.sock"
REQUEST_TIMEOUT = 5.0
MAX_REQUEST = 64 * 1024


def socket_path(data_dir: str) -> str:
    return os.path.join(os.path.abspath(data_dir), SOCKET_NAME)


class ControlServer:
    def __init__(self, path: str):
        self.path = path
        if os.path.exists(path):
            # A socket left by a crashed master: refuse to steal one that still answers.
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)
            else:
                probe.close()
                raise ControlError(f"another stalwartd is running with control socket {path}")
            finally:
                probe.close()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old)
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.clients: dict[socket.socket, tuple[bytearray, float]] = {}

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> socket.socket | None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        conn.setblocking(False)
        self.clients[conn] = (bytearray(), time.monotonic())
        return conn

    def read(self, conn: socket.socket) -> dict | None:
        """Read what is available; returns the request once a full line arrived."""
        buf, _ = self.clients[conn]
        try:
            data = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if not data:
            self.drop(conn)
            return None
        buf += data
        if b"\n" not in buf:
            if len(buf) > MAX_REQUEST:
                self.reply(conn, {"ok": False, "error": "request too large"})
            return None
        line = bytes(buf.split(b"\n", 1)[0])
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("command"), str):
                raise ValueError
        except ValueError:
            self.reply(conn, {"ok": False, "error": "requests are one JSON object with a 'command'"})
            return None
        return req

    def reply(self, conn: socket.socket, body: dict) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(REQUEST_TIMEOUT)
            conn.sendall(json.dumps(body).encode() + b"\n")
        except OSError:
            pass
        self.drop(conn)

    def drop(self, conn: socket.socket) -> None:
        self.clients.pop(conn, None)
        conn.close()

    def expire(self) -> list[socket.socket]:
        now = time.monotonic()
        stale = [c for c, (_, t) in self.clients.items() if now - t > REQUEST_TIMEOUT]
        for conn in stale:
            self.drop(conn)
        return stale

    def close(self) -> None:
        for conn in list(self.clients):
            self.drop(conn)
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def request(data_dir: str, command: str, timeout: float = 120.0, **args) -> dict:
    """Send one command to the master of ``data_dir`` and return its reply."""
    path = socket_path(data_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except OSError as exc:
            raise ControlError(f"cannot reach stalwartd at {path}: {exc.strerror or exc} "
                               "(is it running with this --data-dir?)") from None
        sock.sendall(json.dumps({"command": command, **args}).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ControlError("stalwartd closed the control connection without a reply")
            buf += chunk
        return json.loads(buf.split(b"\n", 1)[0])
    except socket.timeout:
        raise ControlError(f"stalwartd did not answer within {timeout:.0f} s") from None
    finally:
        sock.close()
