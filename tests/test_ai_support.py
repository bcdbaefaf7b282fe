"""A local OpenAI-compatible HTTP server for the AI and licence tests (no tests of its own).

It speaks the chat-completions and completions formats on loopback, over plain HTTP or TLS with a
self-signed certificate, with keep-alive, and misbehaves on request: slow, 500, 429, malformed
JSON, minimal answers. It also serves licence renewals. Every request is recorded.
"""
from __future__ import annotations

import json
import os
import ssl
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from certgen import make_cert


class Recorded:
    def __init__(self, method: str, path: str, headers: dict, body: bytes, peer: tuple):
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.peer = peer

    def json(self):
        return json.loads(self.body)


def chat_answer(content, model="test-model", **extra) -> dict:
    doc = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": model,
           "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}
    doc.update(extra)
    return doc


def text_answer(text, model="test-model") -> dict:
    return {"id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": "length", "logprobs": None}]}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is observable

    def log_message(self, *args):
        pass

    def handle(self):
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client under test gave up (a timeout test) or was cancelled

    def _send(self, status: int, body: bytes, ctype="application/json", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _record(self) -> Recorded:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        rec = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                       self.client_address)
        self.server.owner.requests.append(rec)
        return rec

    def do_GET(self):
        rec = self._record()
        owner = self.server.owner
        if rec.path.startswith("/api/license/"):
            status, body = owner.license_answer(rec)
            self._send(status, body, ctype="text/plain")
        else:
            self._send(404, b"not found", ctype="text/plain")

    def do_POST(self):
        rec = self._record()
        owner = self.server.owner
        path = rec.path
        count = sum(1 for r in owner.requests if r.path == path)
        prompt = ""
        try:
            doc = rec.json()
            prompt = doc["messages"][0]["content"] if "messages" in doc else doc.get("prompt", "")
        except (ValueError, KeyError, IndexError, TypeError):
            doc = None
        reply = owner.reply(prompt) if callable(owner.reply) else owner.reply
        if path == "/v1/chat/completions":
            self._send(200, json.dumps(chat_answer(reply)).encode())
        elif path == "/v1/completions":
            self._send(200, json.dumps(text_answer(reply)).encode())
        elif path == "/slow":
            with owner.lock:
                owner.active += 1
                owner.max_active = max(owner.max_active, owner.active)
            time.sleep(owner.slow_seconds)
            with owner.lock:
                owner.active -= 1
            self._send(200, json.dumps(chat_answer(reply)).encode())
        elif path == "/500":
            self._send(500, b'{"error": {"message": "model overloaded"}}')
        elif path == "/flaky":  # 503 once, then fine
            if count == 1:
                self._send(503, b"try again", headers=[("Retry-After", "0")])
            else:
                self._send(200, json.dumps(chat_answer(reply)).encode())
        elif path == "/429":
            self._send(429, b"slow down", headers=[("Retry-After", "120")])
        elif path == "/malformed":
            self._send(200, b'{"choices": [{"message": {"content": "unterminated')
        elif path == "/minimal":
            self._send(200, json.dumps({"choices": [{"message": {"content": reply}, "finish_reason": None}]}).encode())
        elif path == "/nocontent":
            self._send(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": None}}]}).encode())
        elif path == "/nochoices":
            self._send(200, json.dumps({"id": "x", "choices": []}).encode())
        elif path == "/close":  # answers, then closes the connection (no keep-alive)
            self.close_connection = True
            self._send(200, json.dumps(chat_answer(reply)).encode(), headers=[("Connection", "close")])
        else:
            self._send(404, b"not found", ctype="text/plain")


class _Server(ThreadingHTTPServer):
    request_queue_size = 64
    daemon_threads = True


class FakeOpenAi:
    """``with FakeOpenAi(tls=False) as srv: srv.url("/v1/chat/completions")``."""

    def __init__(self, tls: bool = False):
        self.tls = tls
        self.requests: list[Recorded] = []
        self.reply = "Legitimate, High, A normal message"
        self.slow_seconds = 3.0
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.license_status = 200
        self.license_body = b""
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def license_answer(self, rec: Recorded) -> tuple[int, bytes]:
        body = self.license_body(rec) if callable(self.license_body) else self.license_body
        return self.license_status, body

    def __enter__(self) -> "FakeOpenAi":
        server = _Server(("127.0.0.1", 0), _Handler)
        server.owner = self
        if self.tls:
            cert, key, _ = make_cert(["localhost"])
            with tempfile.TemporaryDirectory() as tmp:
                cpath, kpath = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
                with open(cpath, "w") as fh:
                    fh.write(cert)
                with open(kpath, "w") as fh:
                    fh.write(key)
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(cpath, kpath)
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"
