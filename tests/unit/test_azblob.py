"""Which endpoint and credential the azblob source talks to (the real SDK client, no network)."""

from __future__ import annotations

import pytest

from webhook.errors import SetupError
from webhook.inputs.azblob import ENDPOINT_ENV, AzureBlobSource
from webhook.inputs.source import SourceSpecError, parse_source

TARGET = "prodaudit/insights-logs-kube-audit-admin"


@pytest.fixture(autouse=True)
def _no_azure_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)


def test_without_a_connection_string_workload_identity_reaches_the_public_endpoint() -> None:
    source = AzureBlobSource(TARGET)
    assert source.client.url == "https://prodaudit.blob.core.windows.net/insights-logs-kube-audit-admin"
    assert type(source.client.credential).__name__ == "DefaultAzureCredential"
    assert source.label == f"azblob:{TARGET}"


def test_the_endpoint_can_be_a_sovereign_cloud(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENDPOINT_ENV, "https://prodaudit.blob.core.chinacloudapi.cn")
    source = AzureBlobSource(TARGET)
    assert source.client.url == "https://prodaudit.blob.core.chinacloudapi.cn/insights-logs-kube-audit-admin"


def test_a_connection_string_is_used_when_set_and_must_name_the_account(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = "a2V5"  # base64 of "key": the client only signs with it
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        f"DefaultEndpointsProtocol=https;AccountName=prodaudit;AccountKey={key};EndpointSuffix=core.windows.net",
    )
    source = AzureBlobSource(TARGET)
    assert type(source.client.credential).__name__ == "SharedKeyCredentialPolicy"  # the account key signs
    with pytest.raises(SetupError, match="is for the account 'prodaudit', not 'other'"):
        AzureBlobSource("other/insights-logs-kube-audit")


def test_the_prefix_after_the_container_selects_one_cluster() -> None:
    spec = parse_source(f"azblob:{TARGET}/resourceId=/SUBSCRIPTIONS/S/RESOURCEGROUPS/RG/")
    assert spec.kind == "azblob"
    source = AzureBlobSource(spec.target)
    assert (source.account, source.container) == ("prodaudit", "insights-logs-kube-audit-admin")
    assert source.prefix == "resourceId=/SUBSCRIPTIONS/S/RESOURCEGROUPS/RG/"


@pytest.mark.parametrize("text", ["azblob:UPPER/insights-logs-kube-audit", "azblob:ab/c", "azblob:acct/x--y"])
def test_names_outside_azures_rules_are_refused(text: str) -> None:
    with pytest.raises(SourceSpecError, match="needs a storage account and container"):
        parse_source(text)
