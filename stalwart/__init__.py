"""stalwart: the network core of a mail server (listeners, TLS, PROXY protocol, auto-ban)."""

__version__ = "0.1.0"
