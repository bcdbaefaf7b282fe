"""``stalwart-cli license show``: what the installed licence covers, read offline.

It reads the configuration file (``--config``, else the embedded default) and the renewed key in
the data directory, exactly as the server does at start, and needs no running server.
"""
from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator

from ... import events
from ...errors import ConfigError

EXIT_OK = 0
EXIT_INVALID = 1  # a licence is configured but not in force
EXIT_CONFIG = 2


@contextlib.contextmanager
def quiet_log() -> Iterator[None]:
    """No log lines on the terminal while a command prints its own findings; restored after."""
    log = events.log()
    saved = log.threshold
    log.threshold = events.LEVELS["off"]
    try:
        yield
    finally:
        log.threshold = saved


def load_config(config_path: str | None):
    from ...config import default_bytes, load, parse_bytes

    return load(config_path) if config_path else parse_bytes(default_bytes(), "<embedded default>")


def load_state(cfg, data_dir: str | None):
    from ...config import hostname
    from .state import EnterpriseState

    return EnterpriseState.load(cfg.Enterprise, hostname(cfg), data_dir,
                                account_count=len(getattr(cfg, "Account", ())))


def _left(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    return f"{days} d {rest // 3600} h left" if days else f"{rest // 3600} h {rest % 3600 // 60} min left"


def show(config_path: str | None, data_dir: str | None, as_json: bool = False, out=None) -> int:
    with quiet_log():
        return _show(config_path, data_dir, as_json, out or sys.stdout)


def _show(config_path: str | None, data_dir: str | None, as_json: bool, out) -> int:
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        print(f"stalwart-cli: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    state = load_state(cfg, data_dir)
    status = state.status()
    ai_models = len(cfg.AiModel)
    status["aiModels"] = {"configured": ai_models, "enabled": bool(ai_models) and state.active()}
    if as_json:
        out.write(json.dumps(status, indent=2) + "\n")
    else:
        lic = status.get("license")
        rows = [("edition", status["edition"]), ("hostname", status["hostname"])]
        if lic:
            used = state.account_count
            rows += [("domain", lic["domain"]),
                     ("accounts", f"{used} of {lic['accounts']}" if used is not None else f"up to {lic['accounts']}"),
                     ("valid from", lic["validFrom"]),
                     ("valid to", f"{lic['validTo']} ({_left(lic['secondsLeft'])})" if lic["secondsLeft"]
                      else lic["validTo"]),
                     ("source", "renewed (" + (state.state_path() or "") + ")" if lic["source"] == "renewed"
                      else "configured (Enterprise.licenseKey)")]
        if status.get("reason"):
            rows.append(("not in force", status["reason"]))
        rows.append(("renewal", f"on ({state.renewal_url})" if status["renewal"] else "off (no Enterprise.apiKey)"))
        if ai_models:
            rows.append(("AI models", f"{ai_models} configured, " + ("enabled" if state.active() else
                                                                      "refused: Enterprise edition required")))
        width = max(len(k) for k, _ in rows) + 1
        for k, v in rows:
            out.write(f"{k + ':':<{width}} {v}\n")
    if status.get("reason") and status["edition"] != "enterprise":
        return EXIT_INVALID
    return EXIT_OK
