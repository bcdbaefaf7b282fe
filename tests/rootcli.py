"""Running ``stalwart-cli`` as a confined root against a data directory owned by the service user."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root, and setpriv (util-linux) to confine it")


def owners(top: str) -> dict[str, tuple[int, int]]:
    out = {}
    for root, dirs, files in os.walk(top):
        for name in [root] + [os.path.join(root, n) for n in dirs + files]:
            st = os.lstat(name)
            out[os.path.relpath(name, top)] = (st.st_uid, st.st_gid)
    return out


def root_cli(caps: str, data: str, *args: str) -> subprocess.CompletedProcess:
    """``stalwart-cli`` as root holding only the capabilities ``caps``, kept across its own setuid
    (no_setuid_fixup). This test venv's interpreter lives under /root (0700): once the CLI is nobody
    it still imports lazily from there, which dac_read_search allows; it grants no write access."""
    cli_path = os.path.join(os.path.dirname(sys.executable), "stalwart-cli")
    return subprocess.run(["setpriv", "--securebits", "+no_setuid_fixup", "--bounding-set", f"-all,{caps}",
                           cli_path, "--data-dir", data, *args], capture_output=True, text=True, timeout=30)
