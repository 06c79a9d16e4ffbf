"""Findings: the cluster a finding comes from, and the ECS names Elastic files it under."""

from __future__ import annotations

import pytest

from tests.conftest import AUDIT_LOGS
from webhook.core.allowlist import Allowlist
from webhook.core.audit import parse_event
from webhook.core.findings import DATASET, Finding
from webhook.detect.detector import Detector
from webhook.sinks.base import ClusterSink

ALLOWLIST = 'agents:\n  - "kubectl/*"\n'


@pytest.fixture(scope="module")
def finding() -> Finding:
    detector = Detector(Allowlist.from_yaml(ALLOWLIST))
    lines = (line for path in AUDIT_LOGS for line in path.read_bytes().splitlines())
    return next(f for line in lines for f in detector.process(parse_event(line)))


def test_a_cluster_name_is_ecs_orchestrator_cluster_and_keeps_the_id(finding: Finding) -> None:
    stamped = finding.in_cluster("prod-eu-1")
    assert stamped.to_dict()["orchestrator"] == {"type": "kubernetes", "cluster": {"name": "prod-eu-1"}}
    assert stamped.id == finding.id and stamped.event == finding.event
    assert "orchestrator" not in finding.to_dict() and finding.in_cluster(None) is finding


def test_the_text_people_read_names_the_cluster_escaped(finding: Finding) -> None:
    assert finding.in_cluster("prod-eu-1").one_line().startswith("cluster prod-eu-1: unusual-agent-forbidden")
    shaped = finding.in_cluster("prod\u202e\x1b[2J").one_line()
    assert "\u202e" not in shaped and "\x1b" not in shaped and "\\u202e" in shaped
    assert not finding.one_line().startswith("cluster")


def test_event_dataset_and_data_stream_agree_as_ecs_asks(finding: Finding) -> None:
    data = finding.to_dict()
    assert data["data_stream"] == {"type": "logs", "dataset": DATASET, "namespace": "default"}
    assert data["event"]["dataset"] == DATASET
    assert "-" not in DATASET and DATASET.lower() == DATASET and len(DATASET) <= 100


def test_the_cluster_sink_stamps_what_it_hands_on(finding: Finding) -> None:
    class Collect:
        def __init__(self) -> None:
            self.got: list[Finding] = []

        def deliver(self, finding: Finding) -> None:
            self.got.append(finding)

        def close(self) -> None:
            return None

    inner = Collect()
    ClusterSink(inner, "prod-eu-1").deliver(finding)
    assert [f.cluster_name for f in inner.got] == ["prod-eu-1"]
