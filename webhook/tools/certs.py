"""A local CA and certificates signed by it, for local runs, tests and non-Helm installs.

Production installs use the chart (Helm-generated, cert-manager or your own Secret); this is
the same shape: ``ca.crt``, ``tls.crt``, ``tls.key`` (keys written 0600).

Files are written to a fresh temporary name in the target directory, created with
``O_CREAT|O_EXCL|O_NOFOLLOW`` and mode 0600 from the start, then renamed over the target: a
symlink or file planted at any name we use (``ca.key.tmp``, say) is never followed or reused,
and a key is never readable by others, not even for a moment.

``cryptography`` is imported by the functions that build or encode certificates, not at import:
the command line reads :data:`MAX_DAYS` for every command's parser, and ``check`` or ``replay``
should not pay for loading X.509.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["MAX_DAYS", "CertPair", "issue", "make_ca", "write_file", "write_pair", "write_serving_set"]

DEFAULT_DAYS = 365
MAX_DAYS = 36500
"""Longest validity accepted: 100 years (X.509 and ``datetime`` both end at year 9999)."""


@dataclass(frozen=True, slots=True)
class CertPair:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _name(common_name: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ua-sentinel"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be between 1 and {MAX_DAYS}, not {days}")
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)


def make_ca(common_name: str = "ua-sentinel CA", *, days: int = DEFAULT_DAYS) -> CertPair:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertPair(cert, key)


def issue(
    ca: CertPair,
    common_name: str,
    *,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    client: bool = False,
    days: int = DEFAULT_DAYS,
) -> CertPair:
    """A leaf certificate signed by ``ca``: serving (with SANs) or, with ``client``, client auth."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(min(not_after, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return CertPair(builder.sign(ca.key, hashes.SHA256()), key)


_EXCLUSIVE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically with ``data``, never following a planted symlink (module docstring)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, _EXCLUSIVE, 0o600)  # fails on anything already there, symlink included
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_pair(pair: CertPair, cert_path: Path, key_path: Path) -> None:
    """Write certificate (0644) and key (0600); each file is replaced atomically."""
    write_file(key_path, pair.key_pem, 0o600)
    write_file(cert_path, pair.cert_pem, 0o644)


def write_serving_set(
    out: Path,
    *,
    dns: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1",),
    days: int = DEFAULT_DAYS,
) -> CertPair:
    """Write ``ca.crt``, ``ca.key``, ``tls.crt``, ``tls.key`` into ``out``; return the CA."""
    out.mkdir(parents=True, exist_ok=True)
    ca = make_ca(days=days)
    serving = issue(ca, dns[0] if dns else (ips[0] if ips else "ua-sentinel"), dns=dns, ips=ips, days=days)
    write_pair(ca, out / "ca.crt", out / "ca.key")
    write_pair(serving, out / "tls.crt", out / "tls.key")
    return ca
