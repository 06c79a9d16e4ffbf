"""Certificates for the e2e harness, made with the product's own `webhook.tools.certs`.

Only the service-account signing key pair (RSA, which `webhook.tools.certs` does not make) is local.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from webhook.tools.certs import CertPair, issue, make_ca, write_pair

__all__ = ["CertPair", "KeyPair", "issue", "make_ca", "write_keypair", "write_service_account_keys"]


@dataclass(frozen=True)
class KeyPair:
    """Paths of a PEM certificate and its PEM private key."""

    cert: Path
    key: Path


def write_keypair(pair: CertPair, directory: Path, stem: str) -> KeyPair:
    """Writes `<stem>.crt` (0644) and `<stem>.key` (0600) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = KeyPair(directory / f"{stem}.crt", directory / f"{stem}.key")
    write_pair(pair, paths.cert, paths.key)
    return paths


def write_service_account_keys(directory: Path) -> KeyPair:
    """Writes the RSA key pair the apiserver signs service-account tokens with (`sa.pub`, `sa.key`)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    paths = KeyPair(directory / "sa.pub", directory / "sa.key")
    paths.cert.write_bytes(pub)
    paths.key.write_bytes(private)
    paths.key.chmod(0o600)
    return paths
