"""webhook.startup: one way for serve and tail to read the allowlist flags and open the sinks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from webhook.core.allowlist import default_allowlist
from webhook.sinks.base import ClusterSink, JsonLinesSink
from webhook.startup import SettingsError, allowlist_flags, open_allowlist, open_sinks


def test_a_configmap_name_alone_is_in_the_pod_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "ua")
    assert allowlist_flags(None, "allowlist") == (None, ("ua", "allowlist"))
    assert allowlist_flags(None, "other/allowlist") == (None, ("other", "allowlist"))
    monkeypatch.delenv("POD_NAMESPACE")
    with pytest.raises(SettingsError, match=r"^--allowlist-configmap 'allowlist': expected NAMESPACE/NAME"):
        allowlist_flags(None, "allowlist")


def test_one_allowlist_source_at_most() -> None:
    assert allowlist_flags("a.yaml", None) == (Path("a.yaml"), None)
    with pytest.raises(SettingsError, match="not both"):
        allowlist_flags("a.yaml", "ns/cm")


def test_a_broken_allowlist_file_is_fatal_and_none_is_the_built_in(tmp_path: Path) -> None:
    broken = tmp_path / "allowlist.yaml"
    broken.write_text("agents:\n  - {product: kubectl, minVersion: banana}\n")
    with pytest.raises(SettingsError, match="banana"):
        open_allowlist(broken, None)
    with pytest.raises(SettingsError, match="cannot read"):
        open_allowlist(tmp_path / "missing.yaml", None)
    builtin = open_allowlist(None, None)
    assert builtin.current() is default_allowlist() and builtin.wait_first(0)
    builtin.start()
    builtin.stop()


def test_sinks_are_opened_with_one_wording() -> None:
    ((spec, sink),) = open_sinks(["stdout"])
    assert spec.label == "stdout" and isinstance(sink, JsonLinesSink)
    with pytest.raises(SettingsError, match=r"^--sink unknown sink 'carrier-pigeon'"):
        open_sinks(["carrier-pigeon:coo"])
    with pytest.raises(SettingsError, match=r"^--sink http sink needs an http\(s\) URL"):
        open_sinks(["http:ftp://x"])
    with pytest.raises(SettingsError, match=r"^--sink falcosidekick sink needs an http\(s\) URL"):
        open_sinks(["falcosidekick:sidekick:2801"])


def test_url_sinks_hide_their_url_and_a_cluster_name_wraps_every_sink() -> None:
    opened = open_sinks(
        ["falcosidekick:http://sidekick:2801/?token=s3cret", "otlp:https://otel:4318", "stdout"],
        cluster_name="prod-eu-1",
    )
    assert [spec.label for spec, _ in opened] == [
        "falcosidekick:http://sidekick/...",
        "otlp:https://otel/...",
        "stdout",
    ]
    assert all(isinstance(sink, ClusterSink) and sink.cluster_name == "prod-eu-1" for _, sink in opened)
    assert not any(isinstance(sink, ClusterSink) for _, sink in open_sinks(["stdout"]))


def test_an_otlp_sink_without_its_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.proto.collector.logs.v1", None)  # not installed
    needs = r"^--sink otlp:http://c/\.\.\.: .*pip install 'ua-sentinel\[otlp\]'"
    with pytest.raises(SettingsError, match=needs):
        open_sinks(["otlp:http://c:4318"])
