"""The files and flags `ua-sentinel apiserver-config` hands to a kube-apiserver."""

from __future__ import annotations

import base64
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from webhook.tools import apiserver_config as ac
from webhook.tools import certs
from webhook.tools.audit_policy import ALL_STAGES, Request, level_and_stages, parse_policy

FIXTURE_POLICY = Path(__file__).parents[1] / "data" / "audit-policy.yaml"


@pytest.fixture(scope="module")
def pki() -> dict[str, bytes]:
    serving_ca = certs.make_ca("serving CA")
    client = ac.issue_audit_client(serving_ca.cert_pem, serving_ca.key_pem)
    return {"ca": serving_ca.cert_pem, "cert": client.cert_pem, "key": client.key_pem}


def kubeconfig(pki: dict[str, bytes], **kw: Any) -> dict[str, Any]:
    text = ac.audit_webhook_kubeconfig(
        ca_pem=pki["ca"], client_cert_pem=pki["cert"], client_key_pem=pki["key"], **kw
    )
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def test_policy_is_metadata_for_everything_and_lean_on_reads() -> None:
    policy = parse_policy(ac.AUDIT_POLICY)
    assert {rule.level for rule in policy.rules} == {"Metadata"} and not policy.omit_stages
    everything = frozenset(ALL_STAGES)
    read = Request("alice", (), "get", namespace="team", resource="configmaps")
    exec_over_websocket = Request("alice", (), "get", namespace="team", resource="pods", subresource="exec")
    write = Request("alice", (), "create", namespace="team", resource="configmaps")
    watch = Request("alice", (), "watch", resource="nodes")
    assert level_and_stages(policy, read) == ("Metadata", everything - {"RequestReceived"})
    assert level_and_stages(policy, watch) == ("Metadata", everything - {"RequestReceived"})
    assert level_and_stages(policy, write) == ("Metadata", everything)
    assert level_and_stages(policy, exec_over_websocket) == ("Metadata", everything)
    # The recorded fixtures were captured with Metadata for everything: what the lean policy drops
    # from them is only reads' RequestReceived.
    assert yaml.safe_load(FIXTURE_POLICY.read_text())["rules"] == [{"level": "Metadata"}]


def test_kubeconfig_points_at_the_cluster_ip_with_embedded_credentials(pki: dict[str, bytes]) -> None:
    config = kubeconfig(pki, service_ip="10.96.12.34", tls_server_name="uas.sec.svc")
    (cluster,) = config["clusters"]
    (user,) = config["users"]
    (context,) = config["contexts"]
    assert cluster["cluster"]["server"] == "https://10.96.12.34:443/audit"
    assert cluster["cluster"]["tls-server-name"] == "uas.sec.svc"
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]) == pki["ca"]
    assert base64.b64decode(user["user"]["client-certificate-data"]) == pki["cert"]
    assert base64.b64decode(user["user"]["client-key-data"]) == pki["key"]
    assert context["context"] == {"cluster": cluster["name"], "user": user["name"]}
    assert config["current-context"] == context["name"]


def test_kubeconfig_port_ipv6_and_no_server_name(pki: dict[str, bytes]) -> None:
    config = kubeconfig(pki, service_ip="fd00:10:96::1", port=8443)
    cluster = config["clusters"][0]["cluster"]
    assert cluster["server"] == "https://[fd00:10:96::1]:8443/audit"
    assert "tls-server-name" not in cluster


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"service_ip": "uas.sec.svc"}, "not an IP address"),
        ({"service_ip": "10.0.0.1", "port": 0}, "out of range"),
        ({"service_ip": "10.0.0.1", "port": 70000}, "out of range"),
    ],
)
def test_bad_address_is_refused_with_the_fix(pki: dict[str, bytes], kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kubeconfig(pki, **kw)


def test_swapped_or_wrong_certificates_are_refused(pki: dict[str, bytes]) -> None:
    other = certs.make_ca("other")
    serving_only = certs.issue(other, "server", dns=["x"])  # serverAuth only
    cases = [
        ({"ca": b"not a cert"}, "CA is not a PEM certificate"),
        ({"key": other.key_pem}, "does not belong"),
        ({"key": b"junk"}, "not an unencrypted PEM private key"),
        ({"cert": serving_only.cert_pem, "key": serving_only.key_pem}, "clientAuth"),
    ]
    for override, message in cases:
        with pytest.raises(ValueError, match=message):
            kubeconfig(pki | override, service_ip="10.0.0.1")


def test_flags_are_batch_mode_never_blocking() -> None:
    flags = ac.apiserver_flags(config_dir="/etc/uas/")
    assert flags == [
        "--audit-policy-file=/etc/uas/audit-policy.yaml",
        "--audit-webhook-config-file=/etc/uas/audit-webhook.kubeconfig",
        "--audit-webhook-version=audit.k8s.io/v1",
        "--audit-webhook-mode=batch",
        "--audit-webhook-batch-max-wait=20ms",
        "--audit-webhook-batch-throttle-enable=false",
    ]
    assert not any("blocking" in f for f in flags)
    with_log = ac.apiserver_flags(audit_log_path="/var/log/kubernetes/audit/audit.log")
    assert with_log[len(flags) :] == [
        "--audit-log-path=/var/log/kubernetes/audit/audit.log",
        "--audit-log-format=json",
        "--audit-log-maxsize=100",
        "--audit-log-maxbackup=5",
    ]


def test_render_names_each_file_and_each_part_parses(pki: dict[str, bytes]) -> None:
    config = ac.build(
        service_ip="10.96.0.10",
        ca_pem=pki["ca"],
        client_cert_pem=pki["cert"],
        client_key_pem=pki["key"],
        config_dir="/etc/uas",
    )
    assert set(config.files()) == {"audit-policy.yaml", "audit-webhook.kubeconfig"}
    text = config.render()
    policy, kube, flags = text.split("# ---- ")[1:]
    assert policy.startswith("/etc/uas/audit-policy.yaml ----\n")
    assert kube.startswith("/etc/uas/audit-webhook.kubeconfig ----\n")
    assert yaml.safe_load(policy.split("\n", 1)[1]) == yaml.safe_load(ac.AUDIT_POLICY)
    assert yaml.safe_load(kube.split("\n", 1)[1]) == yaml.safe_load(config.kubeconfig)
    assert flags.split("\n", 1)[1].split() == list(config.flags)


def test_issued_client_certificate_is_for_client_auth_and_signed_by_the_ca() -> None:
    ca = certs.make_ca("local")
    pair = ac.issue_audit_client(ca.cert_pem, ca.key_pem, days=3)
    pair.cert.verify_directly_issued_by(ca.cert)
    usages = pair.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="not an EC key"):
        ac.issue_audit_client(ca.cert_pem, rsa_pem)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook", "apiserver-config", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_cli_issues_the_client_pair_and_writes_owner_only_kubeconfig(tmp_path: Path) -> None:
    ca = certs.make_ca("local")
    certs.write_pair(ca, tmp_path / "ca.crt", tmp_path / "ca.key")
    printed = cli("--service-ip", "10.96.0.7", "--certs-dir", str(tmp_path), cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert "issued" in printed.stderr and (tmp_path / "audit-client.key").exists()
    assert "https://10.96.0.7:443/audit" in printed.stdout
    assert "--audit-webhook-mode=batch" in printed.stdout

    out = tmp_path / "out"
    args = ["--service-ip", "10.96.0.7", "--certs-dir", str(tmp_path), "--out-dir", str(out)]
    written = cli(*args, "--audit-log-path", "/var/log/a.log", cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert "issued" not in written.stderr  # reuses the pair from the first run
    assert stat.S_IMODE((out / "audit-webhook.kubeconfig").stat().st_mode) == 0o600
    loaded = yaml.safe_load((out / "audit-webhook.kubeconfig").read_text())
    cert_data = loaded["users"][0]["user"]["client-certificate-data"]
    assert base64.b64decode(cert_data) == (tmp_path / "audit-client.crt").read_bytes()
    assert (out / "audit-policy.yaml").read_text() == ac.AUDIT_POLICY
    assert written.stdout.splitlines()[-1] == "--audit-log-maxbackup=5"


def test_cli_errors_are_one_line_with_exit_1(tmp_path: Path) -> None:
    no_certs = cli("--service-ip", "10.0.0.1", "--ca", "ca.crt", cwd=tmp_path)
    assert no_certs.returncode == 1
    assert (
        no_certs.stderr == "ua-sentinel apiserver-config: give --certs-dir or --client-cert, --client-key\n"
    )
    missing = cli("--service-ip", "10.0.0.1", "--certs-dir", "nowhere", cwd=tmp_path)
    assert missing.returncode == 1 and "nowhere/ca.crt" in missing.stderr
