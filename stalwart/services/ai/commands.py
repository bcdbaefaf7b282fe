"""``stalwart-cli ai ask MODEL PROMPT``: test an AI model endpoint from the configuration file.

Runs the same client the server uses (headers, authentication, TLS policy, timeout, retry) straight
from ``--config``, under the same Enterprise gate, and prints the completion on stdout. Timing and
token counts go to stderr with ``--verbose``.
"""
from __future__ import annotations

import asyncio
import sys

from ...errors import ConfigError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def ask(config_path: str | None, data_dir: str | None, model: str, prompt: str,
        temperature: float | None = None, verbose: bool = False, out=None) -> int:
    from ..license.commands import quiet_log

    with quiet_log():
        return _ask(config_path, data_dir, model, prompt, temperature, verbose, out or sys.stdout)


def _ask(config_path: str | None, data_dir: str | None, model: str, prompt: str,
         temperature: float | None, verbose: bool, out) -> int:
    from ..license.commands import load_config, load_state
    from ..license.state import EnterpriseRequired
    from .client import AiError
    from .models import AiModels, UnknownModel

    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        print(f"stalwart-cli: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    state = load_state(cfg, data_dir)
    models = AiModels.build(cfg, state)
    try:
        client = models.get(model)
    except UnknownModel as exc:
        broken = [str(e) for e in models.errors]
        print(f"stalwart-cli: {exc.args[0]}" + "".join(f"\n  {b}" for b in broken), file=sys.stderr)
        return EXIT_USAGE

    async def run():
        try:
            return await client.ask(prompt, temperature)
        finally:
            models.close()

    try:
        answer = asyncio.run(run())
    except EnterpriseRequired as exc:
        print(f"stalwart-cli: AI models are refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except AiError as exc:
        print(f"stalwart-cli: {exc}", file=sys.stderr)
        return EXIT_FAILED
    out.write(answer.text.rstrip("\n") + "\n")
    if verbose:
        tokens = " ".join(f"{k}={v}" for k, v in answer.event_keys().items())
        print(f"model {client.name!r}: {answer.elapsed_ms} ms, {answer.attempts} attempt(s)"
              + (f", {tokens}" if tokens else ""), file=sys.stderr)
    return EXIT_OK
