"""Generate a realistic audit log from the recorded kube-apiserver traffic, reproducibly.

Every line is a recorded event (tests/data/audit/) with fresh auditIDs, advancing timestamps
and, for a share of them, the agent and user of a typical cluster's clients: control-plane
components, kubelets, controllers, people with kubectl and Helm. About 2% are authorization
refusals (403 forbid), a few of them from scanners and scripts. ``--distinct`` makes every
line's agent and user unique (the adversarial-cardinality case).

    python bench/generate.py --lines 1000000 --seed 7 --out /tmp/audit.log
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import uuid
import zlib
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "audit"

# (agent, user, groups, weight) of requests that succeed: a busy cluster's usual clients.
CLIENTS: list[tuple[str, str, list[str], int]] = [
    ("kube-apiserver/v1.20.2 (linux/amd64) kubernetes/faecb19", "system:apiserver", ["system:masters"], 20),
    (
        "kube-controller-manager/v1.20.2 (linux/amd64) kubernetes/faecb19/leader-election",
        "system:kube-controller-manager",
        ["system:authenticated"],
        18,
    ),
    (
        "kube-scheduler/v1.20.2 (linux/amd64) kubernetes/faecb19/leader-election",
        "system:kube-scheduler",
        ["system:authenticated"],
        10,
    ),
    ("kubelet/v1.20.2 (linux/amd64) kubernetes/faecb19", "system:node:worker-1", ["system:nodes"], 22),
    (
        "kube-proxy/v1.20.2 (linux/amd64) kubernetes/faecb19",
        "system:serviceaccount:kube-system:kube-proxy",
        ["system:serviceaccounts"],
        6,
    ),
    (
        "coredns/v1.8.0 (linux/amd64) kubernetes/v1.20.2",
        "system:serviceaccount:kube-system:coredns",
        ["system:serviceaccounts"],
        6,
    ),
    ("kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07", "dev-alice", ["devs", "system:authenticated"], 8),
    ("Helm/3.14.2", "ci-deployer", ["system:authenticated"], 3),
    (
        "argocd-application-controller/v2.10.1 (linux/amd64) kubernetes/a2b3c4d",
        "system:serviceaccount:argocd:argocd-application-controller",
        ["system:serviceaccounts"],
        5,
    ),
    (
        "metrics-server/v0.6.4 (linux/amd64) kubernetes/$Format",
        "system:serviceaccount:kube-system:metrics-server",
        ["system:serviceaccounts"],
        2,
    ),
]

# Refused requests: mostly people and controllers hitting RBAC, some scanners and scripts.
REFUSED: list[tuple[str | None, str, int]] = [
    ("kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07", "dev-alice", 50),
    (
        "kube-controller-manager/v1.20.2 (linux/amd64) kubernetes/faecb19",
        "system:kube-controller-manager",
        20,
    ),
    ("python-requests/2.31.0", "mallory", 8),
    ("curl/7.88.1", "system:anonymous", 8),
    ("peirates/v0.0.0 (linux/amd64) kubernetes/$Format", "mallory", 4),
    ("Go-http-client/1.1", "svc-reporter", 5),
    (None, "mallory", 2),
    ("kubectl/v1.30.0 \u202e(evil) \u200b", "mallory", 1),
]

RESOURCES = ["pods", "secrets", "configmaps", "services", "deployments", "nodes", "namespaces", "leases"]


def _load() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    ok: list[dict[str, Any]] = []
    forbid: list[dict[str, Any]] = []
    for path in sorted(DATA.glob("audit*.log")):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            status = event.get("responseStatus", {}).get("code")
            if (
                status == 403
                and event.get("annotations", {}).get("authorization.k8s.io/decision") == "forbid"
            ):
                forbid.append(event)
            elif status != 401:
                ok.append(event)
    return ok, forbid


def generate(
    lines: int, seed: int, out: Path, *, forbidden_share: float = 0.02, distinct: bool = False
) -> int:
    """Write ``lines`` audit lines to ``out``; returns bytes written."""
    rng = random.Random(seed)
    ok, forbid = _load()
    clients = [c[:3] for c in CLIENTS]
    client_weights = [c[3] for c in CLIENTS]
    refused = [r[:2] for r in REFUSED]
    refused_weights = [r[2] for r in REFUSED]
    clock = dt.datetime(2026, 11, 27, 0, 0, tzinfo=dt.UTC)
    written = 0
    with out.open("w", encoding="utf-8") as handle:
        for i in range(lines):
            clock += dt.timedelta(microseconds=rng.randint(200, 4000))
            stamp = clock.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            if rng.random() < forbidden_share:
                event = dict(rng.choice(forbid))
                agent, user = rng.choices(refused, refused_weights)[0]
                groups = ["system:authenticated"]
                event["objectRef"] = {
                    "resource": rng.choice(RESOURCES),
                    "namespace": rng.choice(["default", "kube-system", "team"]),
                    "apiVersion": "v1",
                }
                event.pop("impersonatedUser", None)
            else:
                event = dict(rng.choice(ok))
                agent, user, groups = rng.choices(clients, client_weights)[0]
            if distinct:
                agent = f"scanner-{i}/{rng.randint(0, 99)}.0 (linux/amd64) kubernetes/{i:x}"
                user = f"user-{i}"
            event["auditID"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            event["user"] = {
                "username": user,
                "uid": str(zlib.crc32(user.encode()) % 100000),
                "groups": groups,
            }
            if agent is None:
                event.pop("userAgent", None)
            else:
                event["userAgent"] = agent
            event["requestReceivedTimestamp"] = stamp
            event["stageTimestamp"] = stamp
            line = json.dumps(event, separators=(",", ":"), ensure_ascii=False) + "\n"
            handle.write(line)
            written += len(line.encode())
    return written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--forbidden-share", type=float, default=0.02)
    parser.add_argument("--distinct", action="store_true", help="every line a new agent and user")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    size = generate(
        args.lines, args.seed, args.out, forbidden_share=args.forbidden_share, distinct=args.distinct
    )
    print(f"wrote {args.lines} lines, {size / 1e6:.1f} MB to {args.out}")


if __name__ == "__main__":
    main()
