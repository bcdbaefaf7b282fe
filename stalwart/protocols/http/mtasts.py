"""This server's inbound MTA-STS policy (RFC 8461): the policy text served at
``https://mta-sts.<domain>/.well-known/mta-sts.txt`` and the two DNS records that announce it.

One :class:`PublishedPolicy` per configuration load, computed from the ``MtaSts`` singleton:

* ``mode: disable`` publishes nothing (no route answer, no records);
* the ``mx`` patterns are ``MtaSts.mxHosts``, else the hosts the ``mx`` records name
  (``SystemSettings.mailExchangers``, a missing host name being the default host name);
* the policy ``id`` (RFC 8461 §3.1, 1-32 alphanumerics) is the first 8 bytes of SHA-256 over the
  mode, ``max_age`` and the sorted patterns, as an unsigned decimal: every worker, the DNS publisher
  and ``stalwart-cli dns-records`` compute the same id on any host and after any restart, and it
  changes exactly when what a sender enforces changes (reordering ``mxHosts`` is no change).

The policy is the same for every local domain; the route answers only for a ``Host`` of the form
``mta-sts.<a configured Domain>`` (a configuration without Domain objects publishes no policy page).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ...config import Config
from ...config import hostname as config_hostname
from .autoconfig import local_domains
from .messages import Request, Response, problem

POLICY_PATH = "/.well-known/mta-sts.txt"
POLICY_LABEL = "mta-sts."
TEXT_UTF8 = "text/plain; charset=utf-8"


def policy_id(mode: str, max_age: int, mx: tuple[str, ...]) -> str:
    """Decimal unsigned 64-bit digest of what the policy enforces (at most 20 digits, §3.1)."""
    canonical = "\n".join(["STSv1", mode, str(max_age), *sorted(mx)]).encode()
    return str(int.from_bytes(hashlib.sha256(canonical).digest()[:8], "big"))


def policy_text(mode: str, max_age: int, mx: tuple[str, ...]) -> bytes:
    """RFC 8461 §3.2: ``key: value`` lines ending in CRLF, ``version`` first, ``max_age`` in seconds."""
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {p}" for p in mx), f"max_age: {max_age}"]
    return "".join(line + "\r\n" for line in lines).encode()


@dataclass(frozen=True, slots=True)
class PublishedPolicy:
    mode: str  # "enforce" | "testing"
    max_age: int  # seconds
    mx: tuple[str, ...]

    @property
    def id(self) -> str:
        return policy_id(self.mode, self.max_age, self.mx)

    @property
    def text(self) -> bytes:
        return policy_text(self.mode, self.max_age, self.mx)


def mx_patterns(cfg: Config) -> tuple[str, ...]:
    """``MtaSts.mxHosts``, or the hosts of the ``mx`` records (services.md §2.6) in their order."""
    if cfg.MtaSts.mx_hosts:
        return tuple(cfg.MtaSts.mx_hosts)
    host = config_hostname(cfg)
    return tuple(dict.fromkeys(str(mx.hostname or host).lower() for mx in cfg.SystemSettings.mail_exchangers))


def active_policy(cfg: Config) -> PublishedPolicy | None:
    """The policy this configuration publishes; None when the mode is ``disable`` or no MX is known."""
    sts = cfg.MtaSts
    mx = mx_patterns(cfg)
    if sts.mode == "disable" or not mx:
        return None
    return PublishedPolicy(sts.mode, int(sts.max_age) // 1000, mx)


def dns_rows(cfg: Config, domain: str) -> list[tuple[str, str, str]]:
    """services.md §2.6 ``mtaSts``: ``mta-sts.D.`` CNAME ``H.`` and ``_mta-sts.D.`` TXT ``v=STSv1; id=…``
    (TXT in zone-file presentation, quoted, as :func:`..dns.records` gives it); none without a policy."""
    policy = active_policy(cfg)
    if policy is None:
        return []
    d = domain.strip().rstrip(".").lower()
    return [(f"mta-sts.{d}.", "CNAME", f"{config_hostname(cfg)}."),
            (f"_mta-sts.{d}.", "TXT", f'"v=STSv1; id={policy.id}"')]


def policy_domain(host: bytes | None) -> str | None:
    """The domain of a ``Host: mta-sts.<domain>[:port]`` header, lower-case; None for any other host."""
    if not host:
        return None
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return None
    text = text.rsplit(":", 1)[0].rstrip(".")
    if not text.startswith(POLICY_LABEL):
        return None
    return text[len(POLICY_LABEL):] or None


class MtaStsRoute:
    """``GET``/``HEAD`` ``/.well-known/mta-sts.txt`` (RFC 8461 §3.3) for one configuration load."""

    def __init__(self, cfg: Config):
        policy = active_policy(cfg)
        self.domains = local_domains(cfg) or set()
        # no-cache: a sender that sees a new TXT id must get the new text, not a cached copy (§3.3)
        self.response = None if policy is None else Response(200, policy.text, TEXT_UTF8,
                                                             [("Cache-Control", "no-cache")])

    def respond(self, req: Request) -> Response:
        if req.method not in ("GET", "HEAD"):
            resp = problem(405)
            resp.headers = [*resp.headers, ("Allow", "GET, HEAD")]
            return resp
        if self.response is None or policy_domain(req.header(b"host")) not in self.domains:
            return problem(404)
        return self.response
