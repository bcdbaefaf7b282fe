"""ACME (RFC 8555) certificate issuance and renewal (spec/tls.md §6-§7)."""
