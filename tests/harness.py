"""Start a real ``stalwartd`` on ephemeral loopback ports and stop it by PID."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Server:
    """One stalwartd master process with its own data dir, config file and log file."""

    def __init__(self, tmp_path, config: dict, extra_args: list[str] | None = None, env: dict | None = None):
        self.dir = str(tmp_path)
        os.makedirs(self.dir, exist_ok=True)
        self.data_dir = os.path.join(self.dir, "data")
        self.config_path = os.path.join(self.dir, "config.json")
        self.log_path = os.path.join(self.dir, "stalwartd.log")
        self.extra_args = extra_args or []
        # The server runs this checkout's code, whatever the environment has installed (an editable
        # install of another copy would otherwise be imported, since the server's cwd is its own dir).
        path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, "PYTHONPATH": path, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.write_config(config)

    def write_config(self, config: dict | str) -> None:
        text = config if isinstance(config, str) else json.dumps(config, indent=1)
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, self.config_path)

    def start(self, wait: bool = True, timeout: float = 20.0) -> Server:
        before = self.log().count("server.ready")
        cmd = [sys.executable, "-m", "stalwart.cli", "--config", self.config_path, "--data-dir", self.data_dir,
               "--log-file", self.log_path, "--log-level", "info", *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env, cwd=self.dir)
        if wait:
            self.wait_log("server.ready", timeout=timeout, count=before + 1)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def wait_log(self, needle: str, timeout: float = 20.0, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if text.count(needle) >= count:
                return text
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"stalwartd exited with {self.proc.returncode}: "
                                     f"{self.proc.stderr.read().decode()}\n{text}")
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not logged within {timeout} s:\n{self.log()}")

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def reload(self, config: dict | str | None = None, expect: str = "server.reload-complete") -> None:
        n = self.log().count(expect)
        if config is not None:
            self.write_config(config)
        self.signal(signal.SIGHUP)
        self.wait_log(expect, count=n + 1)

    def workers(self) -> list[int]:
        """PIDs of the master's live children."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as fh:
                return [int(x) for x in fh.read().split()]
        except FileNotFoundError:
            return []

    def stop(self, timeout: float = 40.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in self.workers():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()
        return self.proc.returncode


def listener(name: str, protocol: str, port: int, **extra) -> dict:
    return {"name": name, "protocol": protocol, "bind": [f"127.0.0.1:{port}"], **extra}


def recv_line(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        buf += chunk
    return buf


def client_ctx():
    """A TLS client context that accepts the server's self-signed test certificates."""
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
