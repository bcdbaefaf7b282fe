"""Full TLS 1.3 handshakes per second: stalwartd vs a minimal Python ``ssl`` server (and nginx).

Each client thread loops: connect, full handshake (no session resumption), close. The same client
measures, in the same run and one after the other:

* ``python-min``: one process, uvloop (or asyncio) ``create_server(ssl=ctx)`` that does nothing else;
* ``stalwartd xN``: an implicit-TLS SMTP listener with N workers and the whole pipeline (slot, guard,
  SNI selection, session start);
* ``nginx``: a native reference, when ``nginx`` is installed (``apt-get install nginx-light``).

for an ECDSA P-256 and an RSA 2048 certificate. Ratios hold on a shared machine; absolute numbers
do not. Usage: ``python bench/tls_handshakes.py [--seconds 5] [--threads 8] [--workers 2]``
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import free_port, wait_port

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from certgen import make_cert  # noqa: E402

MINIMAL = r'''
import asyncio, ssl, sys
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t
async def main(port, crt, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    srv = await asyncio.get_running_loop().create_server(P, "127.0.0.1", port, ssl=ctx, backlog=1024)
    print("ready", flush=True)
    await srv.serve_forever()
try:
    import uvloop
    uvloop.install()
except ImportError:
    pass
asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
'''

NGINX = """
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_session_tickets off;
        ssl_session_cache off;
        location / {{ return 200 "ok"; }}
    }}
}}
"""


def measure(port: int, seconds: float, threads: int) -> tuple[float, int]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    counts = [0] * threads
    fails = [0] * threads
    deadline = time.monotonic() + seconds

    def run(i: int) -> None:
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                    with ctx.wrap_socket(raw, server_hostname="bench.test"):
                        counts[i] += 1
            except OSError:
                fails[i] += 1

    start = time.monotonic()
    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.monotonic() - start), sum(fails)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    for kind in ("ECDSA P-256", "RSA 2048"):
        with tempfile.TemporaryDirectory() as tmp:
            cert, key, _ = make_cert(["bench.test"], rsa_key=kind.startswith("RSA"))
            crt_path, key_path = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
            with open(crt_path, "w") as fh:
                fh.write(cert)
            with open(key_path, "w") as fh:
                fh.write(key)
            results = {}

            port = free_port()
            peer = subprocess.Popen([sys.executable, "-c", MINIMAL, str(port), crt_path, key_path], stdout=subprocess.PIPE)
            try:
                peer.stdout.readline()
                results["python-min x1"] = measure(port, args.seconds, args.threads)
            finally:
                peer.terminate()
                peer.wait(10)

            port = free_port()
            cfg = os.path.join(tmp, "config.json")
            with open(cfg, "w") as fh:
                json.dump({"SystemSettings": {"defaultHostname": "bench.test", "threadPoolSize": args.workers},
                           "Certificate": [{"certificate": {"@type": "File", "filePath": crt_path},
                                            "privateKey": {"@type": "File", "filePath": key_path}}],
                           "NetworkListener": [{"name": "smtps", "protocol": "smtp", "tlsImplicit": True,
                                                "tlsDisableProtocols": ["tls12"], "bind": [f"127.0.0.1:{port}"]}]}, fh)
            proc = subprocess.Popen([sys.executable, "-m", "stalwart.cli", "--config", cfg, "--data-dir",
                                     os.path.join(tmp, "data"), "--log-level", "error"])
            try:
                wait_port(port)
                time.sleep(0.5)
                results[f"stalwartd x{args.workers}"] = measure(port, args.seconds, args.threads)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)

            nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
            if nginx:
                port = free_port()
                conf = os.path.join(tmp, "nginx.conf")
                with open(conf, "w") as fh:
                    fh.write(NGINX.format(workers=args.workers, dir=tmp, port=port, crt=crt_path, key=key_path))
                ng = subprocess.Popen([nginx, "-c", conf, "-g", "daemon off;"], stderr=subprocess.DEVNULL)
                try:
                    wait_port(port)
                    results[f"nginx x{args.workers}"] = measure(port, args.seconds, args.threads)
                finally:
                    ng.send_signal(signal.SIGQUIT)
                    ng.wait(20)
            print(f"-- TLS 1.3 full handshakes, {kind}")
            for name, (rate, failed) in results.items():
                print(f"{name:16} {rate:8.0f} handshakes/s   failed={failed}")
            base = results["python-min x1"][0]
            sd = results[f"stalwartd x{args.workers}"][0]
            print(f"ratio stalwartd/python-min = {sd / base:.2f}")
            if f"nginx x{args.workers}" in results:
                print(f"ratio stalwartd/nginx      = {sd / results[f'nginx x{args.workers}'][0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
