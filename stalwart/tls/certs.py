"""Certificate objects: parsing, checking, name extraction and the self-signed fallback.

* tls.md §3: a ``Certificate`` holds a PEM chain (leaf first) and the first PKCS#8, PKCS#1 or SEC1
  private key (RSA, ECDSA or Ed25519). Names are the union of subject CNs, DNS SANs and IP SANs;
  DNS names are lower-cased IDNA A-labels without a trailing dot, IPs are in canonical text form.
  The private key must match the leaf.
* tls.md §4 "We do better": a certificate is usable when it parses, the key matches, and
  ``notValidBefore <= now < notValidAfter``. Expired ones are skipped with ``tls.certificate-expired``;
  ones that fail to parse are skipped with ``config.build-error`` (the reference's build error); ones
  not yet valid are kept and activate by themselves at ``notValidBefore`` (``config.build-warning``).
* tls.md §5: the self-signed fallback (ECDSA P-256) covers the server host name, ``localhost`` and
  every configured name; it is regenerated when that name set changes and cached in
  ``<data-dir>/tls/selfsigned.pem`` so clients that pinned it see the same certificate after a restart.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import ipaddress
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .. import events
from ..config.secrets import resolve
from ..errors import ConfigError, StalwartError

SELF_SIGNED_ID = "#self-signed"
SELF_SIGNED_VALIDITY = dt.timedelta(days=365)
# A cached fallback closer than this to its end is replaced, so it never lapses while served.
SELF_SIGNED_RENEW_MARGIN = dt.timedelta(days=30)
# Backdating absorbs clients whose clocks run a little behind ours.
SELF_SIGNED_BACKDATE = dt.timedelta(hours=1)

MIN_RSA_BITS = 2048  # rustls/aws-lc-rs and OpenSSL security level 2 both refuse smaller keys
_EC_CURVES = {"secp256r1": "p256", "secp384r1": "p384", "secp521r1": "p521"}

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s*?\n(.*?)-----END \1-----", re.S)
_KEY_LABELS = (b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY")  # PKCS#8, PKCS#1, SEC1
_LABEL_RE = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")


class CertificateError(StalwartError):
    """A Certificate object cannot be used. ``path`` is the JSON path of the offending field."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)


# --- names ------------------------------------------------------------------------------------


def normalize_ip(text: str) -> str | None:
    """Canonical text of an IP literal (IPv6 compressed), or None if ``text`` is not one."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return None


def normalize_dns_name(name: str) -> str | None:
    """Lower-case IDNA A-label form without a trailing dot (tls.md §3), or None if not a DNS name.

    A leading ``*`` label is kept (``*.example.com``); a wildcard anywhere else or inside a label
    (``f*.example.com``) is not supported (tls.md §4) and yields None.
    """
    n = name.strip()
    if n.endswith("."):
        n = n[:-1]
    if not n or len(n) > 253:
        return None
    labels = n.split(".")
    out = []
    for i, label in enumerate(labels):
        if label == "*" and i == 0 and len(labels) > 1:
            out.append("*")
            continue
        if not label.isascii():
            try:
                label = label.encode("idna").decode("ascii")
            except UnicodeError:
                return None
        label = label.lower()
        if not _LABEL_RE.match(label):
            return None
        out.append(label)
    result = ".".join(out)
    return result if len(result) <= 253 else None


def _id_key(cert_id: str) -> tuple:
    """Order of object ids for tie-breaks: numeric ids numerically, then the rest as text."""
    return (0, int(cert_id), "") if cert_id.isdigit() else (1, 0, cert_id)


# --- the parsed form ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class ParsedCertificate:
    """A Certificate whose chain and key parsed and match. Times are Unix seconds (UTC)."""

    id: str
    path: str  # "$.Certificate[i]" (or "" for the self-signed fallback)
    dns_names: tuple[str, ...]  # normalised; wildcards keep their "*." prefix
    ip_addresses: tuple[str, ...]
    not_valid_before: float
    not_valid_after: float
    issuer: str
    subject: str
    key_type: str  # "rsa-2048", "ecdsa-p256", "ed25519", ...
    fingerprint: str  # SHA-256 of the leaf DER, hex
    chain_pem: bytes = field(compare=False)  # normalised PEM, leaf first
    key_pem: bytes = field(compare=False)  # unencrypted PKCS#8 PEM: never log it

    @property
    def subject_alternative_names(self) -> tuple[str, ...]:
        """The server-set ``subjectAlternativeNames`` field: names and IPs, deduplicated and sorted."""
        return tuple(sorted(set(self.dns_names) | set(self.ip_addresses)))

    @property
    def sort_key(self) -> tuple:
        """Preference among certificates claiming one name: latest notValidAfter, then lowest id."""
        return (-self.not_valid_after, _id_key(self.id))

    def usable_at(self, now: float) -> bool:
        return self.not_valid_before <= now < self.not_valid_after

    def describe(self) -> str:
        names = ", ".join(self.subject_alternative_names[:4]) + (", ..." if len(self.subject_alternative_names) > 4 else "")
        return f"Certificate {self.id} ({names}; issuer {self.issuer})"

    def __repr__(self) -> str:
        return (f"ParsedCertificate(id={self.id!r}, names={self.subject_alternative_names!r}, "
                f"not_valid_after={iso_time(self.not_valid_after)}, key={self.key_type})")


def iso_time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _blocks(text: bytes) -> list[tuple[bytes, bytes]]:
    return [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(text)]


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _distinguished_name(name: x509.Name) -> str:
    """``CN=R11, O=Let's Encrypt, C=US``: RFC 4514 order and escaping, joined with ", " (tls.md §3)."""
    return ", ".join(rdn.rfc4514_string() for rdn in reversed(name.rdns))


def _key_type(key: object, path: str) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise CertificateError(path, f"RSA key of {key.key_size} bits is too small (minimum {MIN_RSA_BITS})")
        return f"rsa-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        curve = _EC_CURVES.get(key.curve.name)
        if curve is None:
            raise CertificateError(path, f"ECDSA curve {key.curve.name} is not supported (P-256, P-384, P-521)")
        return f"ecdsa-{curve}"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise CertificateError(path, f"{type(key).__name__.lstrip('_')} keys are not supported (RSA, ECDSA or Ed25519)")


def _load_key(text: bytes, path: str):
    """The first PKCS#8, PKCS#1 or SEC1 block of ``text`` (tls.md §3)."""
    for label, block in _blocks(text):
        if label in _KEY_LABELS:
            try:
                return serialization.load_pem_private_key(block, password=None)
            except (ValueError, TypeError) as exc:
                raise CertificateError(path, f"the {label.decode()} block does not parse: {exc}") from None
            except UnsupportedAlgorithm as exc:
                raise CertificateError(path, f"the {label.decode()} block is not supported: {exc}") from None
        if label == b"ENCRYPTED PRIVATE KEY":
            raise CertificateError(path, "encrypted private keys are not supported")
    raise CertificateError(path, "no PKCS#8, PKCS#1 or SEC1 PEM private key block found")


def _load_chain(text: bytes, path: str) -> list[x509.Certificate]:
    chain = []
    for label, block in _blocks(text):
        if label != b"CERTIFICATE":
            continue
        try:
            chain.append(x509.load_pem_x509_certificate(block))
        except ValueError as exc:
            raise CertificateError(path, f"certificate {len(chain)} of the chain does not parse: {exc}") from None
    if not chain:
        raise CertificateError(path, "no PEM CERTIFICATE block found")
    return chain


def _leaf_names(leaf: x509.Certificate, path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Union of subject CNs, DNS SANs and IP SANs of the leaf, normalised (tls.md §3)."""
    raw_dns: list[str] = []
    ips: set[str] = set()
    for attr in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attr.value if isinstance(attr.value, str) else attr.value.decode("utf-8", "replace")
        ip = normalize_ip(value)
        if ip is not None:
            ips.add(ip)
        else:
            raw_dns.append(value)
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    except ValueError as exc:
        raise CertificateError(path, f"the subjectAltName extension does not parse: {exc}") from None
    if san is not None:
        raw_dns.extend(san.get_values_for_type(x509.DNSName))
        ips.update(str(a) for a in san.get_values_for_type(x509.IPAddress))
    # A CN such as "My Server" is not a host name and could never match an SNI: it is left out.
    dns = {n for n in (normalize_dns_name(v) for v in raw_dns) if n is not None}
    return tuple(sorted(dns)), tuple(sorted(ips))


def parse_certificate(chain_text: str | bytes, key_text: str | bytes, *, cert_id: str = "",
                      path: str = "") -> ParsedCertificate:
    """Parse a PEM chain and its private key; raise :class:`CertificateError` naming the field.

    Checks (tls.md §3 "We do better"): the chain parses, the key parses, is RSA >= 2048 bits,
    ECDSA P-256/384/521 or Ed25519, and its public key equals the leaf's.
    """
    cert_path = f"{path}.certificate" if path else "certificate"
    key_path = f"{path}.privateKey" if path else "privateKey"
    chain = _load_chain(_as_bytes(chain_text), cert_path)
    key = _load_key(_as_bytes(key_text), key_path)
    key_type = _key_type(key, key_path)
    leaf = chain[0]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        leaf_public = leaf.public_key().public_bytes(*spki)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateError(cert_path, f"the leaf's public key is not supported: {exc}") from None
    if key.public_key().public_bytes(*spki) != leaf_public:
        raise CertificateError(key_path, "the private key does not match the leaf certificate's public key")
    dns, ips = _leaf_names(leaf, cert_path)
    return ParsedCertificate(
        id=cert_id,
        path=path,
        dns_names=dns,
        ip_addresses=ips,
        not_valid_before=leaf.not_valid_before_utc.timestamp(),
        not_valid_after=leaf.not_valid_after_utc.timestamp(),
        issuer=_distinguished_name(leaf.issuer),
        subject=_distinguished_name(leaf.subject),
        key_type=key_type,
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
        chain_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain),
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
    )


# --- loading Certificate objects ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Outcome of loading every Certificate object once.

    ``certificates`` holds the usable ones and those not yet valid (they activate by themselves);
    ``digest`` fingerprints the resolved PEM texts so a changed file or variable can be detected
    without keeping secrets around.
    """

    certificates: tuple[ParsedCertificate, ...]
    expired: tuple[ParsedCertificate, ...]
    failed: tuple[CertificateError, ...]
    digest: str


def read_sources(objects: Sequence) -> list[tuple[str, str, str | None, str | None, CertificateError | None]]:
    """Resolve each object's ``certificate`` and ``privateKey`` (text, env or file).

    Returns ``(id, path, chain_text, key_text, error)`` per object, in registry order.
    """
    out = []
    for i, obj in enumerate(objects):
        path = f"$.Certificate[{i}]"
        cert_id = obj.id if obj.id is not None else str(i)
        try:
            chain_text = resolve(obj.certificate, f"{path}.certificate")
            key_text = resolve(obj.private_key, f"{path}.privateKey")
        except ConfigError as exc:
            out.append((cert_id, path, None, None, CertificateError(exc.path, exc.message)))
            continue
        out.append((cert_id, path, chain_text, key_text, None))
    return out


def read_directory(directory: str | None) -> list[tuple[str, str, str | None, str | None, CertificateError | None]]:
    """Certificates installed as files (``*.pem``: chain then key, as ACME writes them to
    ``<data-dir>/acme/certs``), in the :func:`read_sources` shape, sorted by file name. Their id is
    ``file:<name>`` and their path the file's; a missing directory holds none."""
    if directory is None:
        return []
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".pem") and not n.startswith("."))
    except OSError:
        return []
    out = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            out.append((f"file:{name[:-4]}", path, None, None, CertificateError(path, f"unreadable: {exc}")))
            continue
        out.append((f"file:{name[:-4]}", path, text, text, None))
    return out


def sources_digest(sources: Iterable[tuple]) -> str:
    h = hashlib.sha256()
    for cert_id, _path, chain_text, key_text, error in sources:
        for part in (cert_id, chain_text or "", key_text or "", str(error) if error else ""):
            h.update(part.encode("utf-8", "replace"))
            h.update(b"\0")
    return h.hexdigest()


def load_certificates(objects: Sequence, now: float, extra: Sequence[tuple] = ()) -> LoadResult:
    """Parse every Certificate object, then the ``extra`` sources (:func:`read_directory`), logging
    the ones that are skipped (tls.md §4, §8).

    One broken or expired certificate never prevents the others from loading.
    """
    sources = read_sources(objects) + list(extra)
    kept: list[ParsedCertificate] = []
    expired: list[ParsedCertificate] = []
    failed: list[CertificateError] = []
    for cert_id, path, chain_text, key_text, error in sources:
        if error is None:
            try:
                parsed = parse_certificate(chain_text or "", key_text or "", cert_id=cert_id, path=path)
            except CertificateError as exc:
                error = exc
            except Exception as exc:  # noqa: BLE001 - a malformed certificate must not stop the others
                error = CertificateError(path, f"cannot be parsed: {exc!r}")
        if error is not None:
            failed.append(error)
            events.emit("config.build-error", level="error", Path=error.path,
                        Details=f"Certificate {cert_id} skipped: {error.reason}")
            continue
        if parsed.not_valid_after <= now:
            expired.append(parsed)
            events.emit("tls.certificate-expired", level="warn",
                        Details=f"{parsed.describe()} expired at {iso_time(parsed.not_valid_after)}; skipped")
            continue
        if parsed.not_valid_before > now:
            events.emit("config.build-warning", level="warn", Path=path,
                        Details=f"{parsed.describe()} is not valid before {iso_time(parsed.not_valid_before)}; "
                                "it will be served from then on")
        kept.append(parsed)
    return LoadResult(tuple(kept), tuple(expired), tuple(failed), sources_digest(sources))


# --- the self-signed fallback ------------------------------------------------------------------


def self_signed_names(hostname: str, certificates: Iterable[ParsedCertificate]) -> tuple[str, ...]:
    """Names of the fallback: the host name, ``localhost`` and every configured name (tls.md §5)."""
    names = {"localhost"}
    host = normalize_ip(hostname) or normalize_dns_name(hostname)
    if host:
        names.add(host)
    for cert in certificates:
        names.update(cert.dns_names)
        names.update(cert.ip_addresses)
    return tuple(sorted(names))


def generate_self_signed(names: Sequence[str], now: float, hostname: str = "localhost") -> ParsedCertificate:
    """A fresh ECDSA P-256 self-signed certificate for ``names`` (tls.md §5)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime.fromtimestamp(now, dt.timezone.utc).replace(microsecond=0) - SELF_SIGNED_BACKDATE
    host = (normalize_ip(hostname) or normalize_dns_name(hostname) or "localhost")
    # CN is limited to 64 characters; the SANs carry the real names anyway.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host if len(host) <= 64 else "localhost")])
    san: list[x509.GeneralName] = []
    for name in names:
        ip = normalize_ip(name)
        san.append(x509.IPAddress(ipaddress.ip_address(ip)) if ip else x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(start)
        .not_valid_after(start + SELF_SIGNED_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return parse_certificate(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
        cert_id=SELF_SIGNED_ID,
    )


class SelfSignedCache:
    """Keeps one self-signed fallback per name set, in memory and in ``<data_dir>/tls/selfsigned.pem``.

    The file holds the certificate and its PKCS#8 key (mode 0600, written atomically). It is reused
    when its names are exactly the wanted ones and it stays valid for more than
    :data:`SELF_SIGNED_RENEW_MARGIN`; otherwise a new one replaces it.
    """

    def __init__(self, data_dir: str | os.PathLike | None):
        self.path = os.path.join(os.fspath(data_dir), "tls", "selfsigned.pem") if data_dir is not None else None
        self._current: ParsedCertificate | None = None

    def _fits(self, cert: ParsedCertificate | None, names: tuple[str, ...], now: float) -> bool:
        return (cert is not None and cert.subject_alternative_names == tuple(sorted(names))
                and cert.not_valid_before <= now
                and cert.not_valid_after - now > SELF_SIGNED_RENEW_MARGIN.total_seconds())

    def get(self, names: Sequence[str], now: float, hostname: str = "localhost") -> ParsedCertificate:
        wanted = tuple(sorted(set(names)))
        if self._fits(self._current, wanted, now):
            return self._current  # type: ignore[return-value]
        # Workers rebuilding at the same moment take turns, so the first one generates and the
        # others read its file: every worker then serves the same fallback.
        with self._locked():
            cert = self._read()
            if not self._fits(cert, wanted, now):
                cert = generate_self_signed(wanted, now, hostname)
                self._write(cert)
        self._current = cert
        return cert

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self.path is None:
            yield
            return
        fd = None
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # an unwritable data dir: _write reports it; generation still works
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)  # closing releases the lock

    def _read(self) -> ParsedCertificate | None:
        if self.path is None:
            return None
        try:
            with open(self.path, "rb") as fh:
                text = fh.read()
            return parse_certificate(text, text, cert_id=SELF_SIGNED_ID)
        except FileNotFoundError:
            return None
        except (OSError, CertificateError) as exc:
            events.emit("config.build-warning", level="warn", Path=self.path,
                        Details=f"cached self-signed certificate unreadable, generating a new one: {exc}")
            return None

    def _write(self, cert: ParsedCertificate) -> None:
        if self.path is None:
            return
        directory = os.path.dirname(self.path)
        tmp = None
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".selfsigned-", dir=directory)  # created 0600
            with os.fdopen(fd, "wb") as fh:
                fh.write(cert.chain_pem + cert.key_pem)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)  # workers may race here; each rename is atomic
            tmp = None
        except OSError as exc:
            # The fallback still works from memory; only its stability across restarts is lost.
            events.emit("config.build-warning", level="warn", Path=self.path,
                        Details=f"cannot cache the self-signed certificate: {exc}")
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

