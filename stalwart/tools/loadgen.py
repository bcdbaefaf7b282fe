"""Bounded connect-greet-quit load against a line protocol listener (SMTP by default).

Used by the zero-drop tests and by ``bench/connrate.py``; also runnable by an operator::

    python -m stalwart.tools.loadgen 127.0.0.1:2525 --seconds 10 --concurrency 50

Every loop is bounded in time and count, and only loopback-style targets are meant for it.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    ok: int = 0
    failures: collections.Counter = field(default_factory=collections.Counter)
    elapsed: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0


async def _session(host: str, port: int, greeting: bytes, quit_cmd: bytes, reply: bytes, timeout: float) -> str | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"
    except (asyncio.TimeoutError, OSError) as exc:
        return "connect-timeout" if isinstance(exc, asyncio.TimeoutError) else f"connect-{type(exc).__name__}"
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            return "eof-before-greeting"
        if not line.startswith(greeting):
            return "bad-greeting"
        writer.write(quit_cmd)
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            return "eof-before-reply"
        if not line.startswith(reply):
            return "bad-reply"
        return None
    except ConnectionResetError:
        return "reset"
    except asyncio.TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error-{type(exc).__name__}"
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def run_load(host: str, port: int, seconds: float, concurrency: int = 20, max_sessions: int = 10**7,
                   greeting: bytes = b"220 ", quit_cmd: bytes = b"QUIT\r\n", reply: bytes = b"221 ",
                   timeout: float = 10.0, stop: asyncio.Event | None = None) -> LoadResult:
    """Run ``concurrency`` clients until ``seconds`` pass, ``max_sessions`` ran, or ``stop`` is set."""
    result = LoadResult()
    start = time.monotonic()
    deadline = start + seconds
    started = 0

    async def client() -> None:
        nonlocal started
        while time.monotonic() < deadline and started < max_sessions and not (stop and stop.is_set()):
            started += 1
            err = await _session(host, port, greeting, quit_cmd, reply, timeout)
            if err is None:
                result.ok += 1
            else:
                result.failures[err] += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.elapsed = time.monotonic() - start
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stalwart.tools.loadgen")
    parser.add_argument("target", help="HOST:PORT of an SMTP listener")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--max-sessions", type=int, default=10**6)
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    res = asyncio.run(run_load(host.strip("[]"), int(port), args.seconds, args.concurrency, args.max_sessions))
    print(f"{res.ok} sessions in {res.elapsed:.1f} s = {res.rate:.0f}/s; failures: {dict(res.failures) or 0}")
    return 0 if not res.failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
