"""Classification latency overhead: what stalwart adds on top of the model's own answer time.

A local endpoint in a separate process answers every chat request at once with a fixed completion,
so what is measured is our side only. Reported per request, same run, same server:

* ``raw floor``     — a hand-written keep-alive request/response over asyncio streams, no parsing;
* ``http.client``   — the standard library's blocking client on a keep-alive connection (a peer);
* ``ask()``         — AiModelClient.ask: headers, JSON body, h11, lenient parse, semaphore, retry logic;
* ``classify()``    — the whole DATA-stage call on a 4 KB message: MIME walk, prompt, ask, answer parse;
* ``local only``    — classify()'s CPU work without the network (extract, prepare, parse answer).

    python bench/ai_classify.py [--requests 2000]
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgspec  # noqa: E402

from stalwart.services.ai.classification import (Classifier, build_prompt, classify, extract_text,  # noqa: E402
                                                 parse_answer, prepare_body)
from stalwart.services.ai.client import AiModelClient  # noqa: E402
from stalwart.config.types import dec_hook  # noqa: E402
from stalwart.services.ai.config import AiModel, SpamLlmEnable  # noqa: E402

ANSWER = json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                     "choices": [{"index": 0, "message": {"role": "assistant",
                                                          "content": "Commercial,Medium,Promotional offer"},
                                  "finish_reason": "stop"}]}).encode()
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(ANSWER)) + ANSWER
MESSAGE = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: Printer ink\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/alternative; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\n"
           + b"Best prices on printer ink this week only.\r\n" * 90
           + b"--B\r\nContent-Type: text/html\r\n\r\n<p>Best prices</p>\r\n--B--\r\n")


def serve(port_q: multiprocessing.Queue) -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                writer.write(RESPONSE)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_q.put(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


def model(port: int) -> AiModel:
    return msgspec.convert({"name": "bench", "url": f"http://127.0.0.1:{port}/v1/chat/completions",
                            "model": "m", "timeout": 10000,
                            "httpAuth": {"@type": "Bearer", "bearerToken": {"@type": "Value", "secret": "k"}}},
                           AiModel, dec_hook=dec_hook)


def per_request(samples: list[float]) -> str:
    p99 = sorted(samples)[int(len(samples) * .99)]
    return f"median {statistics.median(samples) * 1e6:8.1f} µs   p99 {p99 * 1e6:8.1f} µs"


async def raw_floor(port: int, n: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b'{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":0.5}'
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n" % len(body)) + body
    out = []
    for _ in range(n):
        t = time.perf_counter()
        writer.write(req)
        await reader.readexactly(len(RESPONSE))
        out.append(time.perf_counter() - t)
    writer.close()
    return out


def stdlib_client(port: int, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0.5})
    out = []
    for _ in range(n):
        t = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        json.loads(conn.getresponse().read())
        out.append(time.perf_counter() - t)
    conn.close()
    return out


async def ask_loop(client: AiModelClient, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await client.ask("x")
        out.append(time.perf_counter() - t)
    return out


async def classify_loop(classifier: Classifier, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        result = await classify(MESSAGE, classifier)
        assert result.status == "classified", result
        out.append(time.perf_counter() - t)
    return out


def local_only(classifier: Classifier, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subject, text = extract_text(MESSAGE)
        build_prompt(classifier, subject, prepare_body(text))
        parse_answer(classifier, "Commercial,Medium,Promotional offer")
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    n = max(100, min(args.requests, 50_000))
    from stalwart import events
    events.configure("warn")
    q: multiprocessing.Queue = multiprocessing.Queue()
    proc = multiprocessing.Process(target=serve, args=(q,), daemon=True)
    proc.start()
    try:
        port = q.get(timeout=10)
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        client = AiModelClient(model(port), "$.AiModel[0]", gate=lambda: None)
        settings = msgspec.convert({"@type": "Enable", "modelId": "bench", "prompt": "Classify."}, SpamLlmEnable)
        classifier = Classifier(settings, client)

        async def run_async():
            await ask_loop(client, 50)  # warm-up: connection, imports
            return (await raw_floor(port, n), await ask_loop(client, n), await classify_loop(classifier, n))

        started = time.monotonic()
        raw, ask, cls = asyncio.run(run_async())
        std = stdlib_client(port, n)
        local = local_only(classifier, n)
        took = time.monotonic() - started
    finally:
        proc.terminate()
        proc.join(5)
    floor = statistics.median(raw)
    print(f"{n} requests each, loopback endpoint answering at once ({took:.1f} s in all)")
    for label, samples in (("raw floor", raw), ("http.client", std), ("ask()", ask), ("classify()", cls),
                           ("local only", local)):
        ratio = statistics.median(samples) / floor
        print(f"  {label:12} {per_request(samples)}   {ratio:5.2f}x raw floor")
    print(f"  connections opened by ask()/classify(): {client.http.connections_opened}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
