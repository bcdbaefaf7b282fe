"""Accounts and domains: configuration objects, password hashes, SASL decoding and the directory."""
# stalwart.config.model imports .model (Domain, Account derive from its _Member): load the config
# package first so that import order is the same whichever package a caller imports first.
from .. import config as _config  # noqa: F401  isort: skip
from .directory import AccountEntry, Directory
from .model import Account, Domain, validate_accounts
from .passwords import hash_password, parse_hash, verify_password

__all__ = ["Account", "AccountEntry", "Directory", "Domain", "hash_password", "parse_hash",
           "validate_accounts", "verify_password"]
