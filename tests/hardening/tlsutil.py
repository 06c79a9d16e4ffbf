"""Client certificates the test PKI does not hand out: expired, and forged (right name, wrong key)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.integration.server import PKI, KeyPair


def _ca_key(pki: PKI, name: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key((pki.directory / f"{name}.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def client_cert(
    pki: PKI,
    out: Path,
    *,
    ca: str = "client-ca",
    expired: bool = False,
    forged: bool = False,
    name: str = "intruder",
) -> KeyPair:
    """A client certificate "issued" by ``ca`` (file stem in the PKI directory).

    ``expired``: validity ended yesterday. ``forged``: issuer name is the CA's, but it is signed by
    a key of our own (what someone who read the CA certificate, not its key, can make).
    """
    issuer = x509.load_pem_x509_certificate((pki.directory / f"{ca}.crt").read_bytes())
    signer = ec.generate_private_key(ec.SECP256R1()) if forged else _ca_key(pki, ca)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    start, end = (
        (now - dt.timedelta(days=10), now - dt.timedelta(days=1))
        if expired
        else (
            now - dt.timedelta(minutes=5),
            now + dt.timedelta(days=1),
        )
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(signer, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    pair = KeyPair(out / f"{name}.crt", out / f"{name}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pair
