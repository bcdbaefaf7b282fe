"""Accounts and domains: configuration objects, password hashes, SASL decoding and the directory."""
from .directory import AccountEntry, Directory
from .model import Account, Domain, validate_accounts
from .passwords import hash_password, parse_hash, verify_password

__all__ = ["Account", "AccountEntry", "Directory", "Domain", "hash_password", "parse_hash",
           "validate_accounts", "verify_password"]
