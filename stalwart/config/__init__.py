"""Configuration model: msgspec structs for every object, loading, validation, defaults."""
from .defaults import default_bytes
from .loader import hostname, load, parse_bytes, to_json, worker_count
from .model import Config

__all__ = ["Config", "default_bytes", "hostname", "load", "parse_bytes", "to_json", "worker_count"]
