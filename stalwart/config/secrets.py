"""Secret-bearing values (spec/README.md "Secrets") and their resolution rules.

Resolution happens every time the owning object is built (start, reload), never cached, and the
resolved value is never logged: ``repr`` of every form masks it.
"""
from __future__ import annotations

import os

import msgspec

from ..errors import ConfigError


class _Base(msgspec.Struct, tag_field="@type", forbid_unknown_fields=True, rename="camel"):
    pass


class SecretValue(_Base, tag="Value"):
    secret: str

    def __repr__(self) -> str:
        return "SecretValue(secret=***)"


class SecretTextValue(_Base, tag="Text"):
    secret: str

    def __repr__(self) -> str:
        return "SecretTextValue(secret=***)"


class PublicTextValue(_Base, tag="Text"):
    value: str


class FromEnvironment(_Base, tag="EnvironmentVariable"):
    variable_name: str


class FromFile(_Base, tag="File"):
    file_path: str


class NoSecret(_Base, tag="None"):
    pass


SecretKey = SecretValue | FromEnvironment | FromFile
SecretKeyOptional = NoSecret | SecretValue | FromEnvironment | FromFile
SecretText = SecretTextValue | FromEnvironment | FromFile
SecretTextOptional = NoSecret | SecretTextValue | FromEnvironment | FromFile
PublicText = PublicTextValue | FromEnvironment | FromFile


def resolve(value: _Base, path: str) -> str | None:
    """Return the secret's text (None for the ``None`` form); errors carry ``path``."""
    if isinstance(value, NoSecret):
        return None
    if isinstance(value, (SecretValue, SecretTextValue)):
        return value.secret
    if isinstance(value, PublicTextValue):
        return value.value
    if isinstance(value, FromEnvironment):
        name = value.variable_name.strip()
        if not name:
            raise ConfigError(path, "Variable name cannot be empty")
        got = os.environ.get(name)
        if not got:
            raise ConfigError(path, f"Environment variable '{name}' not found")
        return got
    if isinstance(value, FromFile):
        fpath = value.file_path.strip()
        if not fpath:
            raise ConfigError(path, "File path cannot be empty")
        try:
            with open(fpath, encoding="utf-8") as fh:
                text = fh.read().rstrip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(path, f"Failed to read secret from file '{fpath}': {exc}") from None
        if not text:
            raise ConfigError(path, f"Secret in file '{fpath}' is empty")
        return text
    raise ConfigError(path, "unknown secret form")
