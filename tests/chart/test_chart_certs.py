"""The three certificate modes. In helm mode the generated certificates are parsed and checked
with `cryptography`: the serving chain the apiserver verifies, and the audit client chain the
service verifies."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from .conftest import AUDIT_CA, CERT_MANAGER, FULLNAME, NAMESPACE, SECRET_MODE, SERVING_CA, Render, webhook

SERVICE_DNS = f"{FULLNAME}.{NAMESPACE}.svc"


def secret_cert(secret: dict[str, Any], key: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(secret["data"][key]))


def dns_names(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )


def usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


# --- helm mode (default) ---------------------------------------------------------------------


def test_helm_mode_serving_certificate_chains_to_the_webhook_ca_bundle(render: Render) -> None:
    rendered = render()
    tls = rendered.one("Secret", f"{FULLNAME}-tls")
    assert tls["type"] == "kubernetes.io/tls" and set(tls["data"]) == {"ca.crt", "tls.crt", "tls.key"}
    ca_bundle = webhook(render)["clientConfig"]["caBundle"]
    assert ca_bundle == tls["data"]["ca.crt"]
    ca = x509.load_pem_x509_certificate(base64.b64decode(ca_bundle))
    serving = secret_cert(tls, "tls.crt")
    serving.verify_directly_issued_by(ca)
    assert SERVICE_DNS in dns_names(serving)  # the name the apiserver dials for /validate
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages(serving)
    assert serving.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=3000)
    deployment = rendered.one("Deployment")["spec"]["template"]["spec"]
    (certs_volume,) = [v for v in deployment["volumes"] if v["name"] == "certs"]
    assert certs_volume["projected"]["sources"][0]["secret"]["name"] == tls["metadata"]["name"]


def test_helm_mode_audit_client_certificate_has_its_own_ca(render: Render) -> None:
    rendered = render()
    client = rendered.one("Secret", f"{FULLNAME}-audit-client")
    assert set(client["data"]) == {"ca.crt", "tls.crt", "tls.key"}
    client_ca = secret_cert(client, "ca.crt")
    cert = secret_cert(client, "tls.crt")
    cert.verify_directly_issued_by(client_ca)
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages(cert)
    # The serving certificate (which Helm also marks clientAuth) must not open /audit.
    serving_ca = secret_cert(rendered.one("Secret", f"{FULLNAME}-tls"), "ca.crt")
    assert client_ca.subject != serving_ca.subject
    assert client_ca.public_key().public_numbers() != serving_ca.public_key().public_numbers()  # type: ignore[union-attr]


def test_helm_mode_puts_a_pinned_cluster_ip_in_the_serving_certificate(render: Render) -> None:
    tls = render({"service": {"clusterIP": "10.96.0.200"}}).one("Secret", f"{FULLNAME}-tls")
    ips = (
        secret_cert(tls, "tls.crt")
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value.get_values_for_type(x509.IPAddress)
    )
    assert ips == [ipaddress.ip_address("10.96.0.200")]


def test_helm_mode_validity_is_configurable(render: Render) -> None:
    tls = render({"certs": {"helm": {"validityDays": 30}}}).one("Secret", f"{FULLNAME}-tls")
    left = secret_cert(tls, "tls.crt").not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=29) < left <= dt.timedelta(days=30)


# --- cert-manager mode -----------------------------------------------------------------------


def test_cert_manager_mode_injects_the_ca_into_the_webhook(render: Render) -> None:
    rendered = render({"certs": {"mode": "cert-manager"}}, api_versions=CERT_MANAGER)
    assert not rendered.all("Secret")  # cert-manager writes them
    vwc = rendered.one("ValidatingWebhookConfiguration")
    (hook,) = vwc["webhooks"]
    assert "caBundle" not in hook["clientConfig"]
    namespace, name = vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
    assert namespace == NAMESPACE
    serving = rendered.one("Certificate", name)
    assert SERVICE_DNS in serving["spec"]["dnsNames"]
    assert serving["spec"]["usages"] == ["server auth", "digital signature", "key encipherment"]
    issuer = rendered.one("Issuer", serving["spec"]["issuerRef"]["name"])
    ca = rendered.one("Certificate", issuer["spec"]["ca"]["secretName"])
    assert ca["spec"]["isCA"] is True and ca["spec"]["privateKey"]["rotationPolicy"] == "Never"
    deployment = rendered.one("Deployment")["spec"]["template"]["spec"]
    (certs_volume,) = [v for v in deployment["volumes"] if v["name"] == "certs"]
    sources = [s[kind]["name"] for s in certs_volume["projected"]["sources"] for kind in s]
    assert serving["spec"]["secretName"] in sources


def test_cert_manager_mode_issues_the_audit_client_under_a_separate_ca(render: Render) -> None:
    rendered = render({"certs": {"mode": "cert-manager"}}, api_versions=CERT_MANAGER)
    client = rendered.one("Certificate", f"{FULLNAME}-audit-client")
    assert client["spec"]["usages"] == ["client auth", "digital signature", "key encipherment"]
    serving = rendered.one("Certificate", f"{FULLNAME}-tls")
    assert client["spec"]["issuerRef"]["name"] != serving["spec"]["issuerRef"]["name"]
    client_issuer = rendered.one("Issuer", client["spec"]["issuerRef"]["name"])
    assert rendered.one("Certificate", client_issuer["spec"]["ca"]["secretName"])["spec"]["isCA"] is True


def test_cert_manager_mode_with_your_issuer(render: Render) -> None:
    ref = {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    values = {"certs": {"mode": "cert-manager", "certManager": {"issuerRef": ref}}}
    rendered = render(values, api_versions=CERT_MANAGER)
    assert rendered.one("Certificate", f"{FULLNAME}-tls")["spec"]["issuerRef"] == ref
    assert f"{FULLNAME}-ca" not in {c["metadata"]["name"] for c in rendered.all("Certificate")}


def test_cert_manager_mode_needs_cert_manager(render_error: Any) -> None:
    error = render_error({"certs": {"mode": "cert-manager"}})
    assert "cert-manager.io/v1" in error and "install cert-manager" in error


# --- secret mode -----------------------------------------------------------------------------


def test_secret_mode_uses_your_secret_and_ca_bundle(render: Render) -> None:
    rendered = render(SECRET_MODE)
    assert not rendered.all("Secret")
    assert base64.b64decode(webhook(render, SECRET_MODE)["clientConfig"]["caBundle"]) == SERVING_CA.cert_pem
    spec = rendered.one("Deployment")["spec"]["template"]["spec"]
    (certs_volume,) = [v for v in spec["volumes"] if v["name"] == "certs"]
    sources = certs_volume["projected"]["sources"]
    assert sources[0]["secret"]["name"] == "my-webhook-tls"
    audit_ca = rendered.one("ConfigMap", sources[1]["configMap"]["name"])
    assert audit_ca["data"]["ca.crt"].strip() == AUDIT_CA.cert_pem.decode().strip()


def test_secret_mode_says_what_is_missing(render_error: Any) -> None:
    assert "certs.secret.name" in render_error({"certs": {"mode": "secret"}})
    no_bundle = {"certs": {"mode": "secret", "secret": {"name": "x"}}}
    assert "certs.secret.caBundle" in render_error(no_bundle)
    bundle = SERVING_CA.cert_pem.decode()
    no_audit_ca = {"certs": {"mode": "secret", "secret": {"name": "x", "caBundle": bundle}}}
    assert "certs.secret.auditClientCA" in render_error(no_audit_ca)


def test_secret_mode_refuses_base64_where_pem_is_expected(render_error: Any) -> None:
    values = {"certs": {"mode": "secret", "secret": {"name": "x", "caBundle": "TFMwdExTMUNSVWRKVGk="}}}
    assert "/certs/secret/caBundle" in render_error(values)
