"""``ua-sentinel`` command line: parses arguments and hands off to library functions.

Only this module prints to stderr or exits. Exit status: 0 when the command ran (findings
are not errors), 1 for an I/O or configuration error (one line on stderr), 2 for usage errors
(one line on stderr: every numeric flag is range-checked when parsed), 141 when the reader of
stdout went away (``... | head -1``; silent, as a process killed by SIGPIPE, which is what shells
and ``set -o pipefail`` expect). Ordinary mistakes never print a traceback.
Each subcommand is an ``_add_<name>`` function that registers its parser and a ``_run_<name>``;
its help line is in ``_HELP``. ``main`` builds only the named command's arguments (start-up:
the others' defaults and choices import modules that command never uses).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

from webhook import __version__
from webhook.core import useragent
from webhook.core.allowlist import MODES, Allowlist, default_allowlist
from webhook.errors import SetupError

if TYPE_CHECKING:
    from webhook.detect.config import DetectorConfig
    from webhook.inputs.source import SourceSpec
    from webhook.kube.lease import LeaderElectionConfig
    from webhook.tools.audit_policy import Policy

__all__ = ["CliError", "build_parser", "load_allowlist", "main"]

Runner = Callable[[argparse.Namespace], int]


class CliError(SetupError):
    """A problem the user can fix; printed as one line, exit status 1."""


DEFAULT_LEASE = "ua-sentinel-tail"
"""The Lease ``tail --leader-elect`` uses without ``--leader-elect-lease`` (in its own namespace)."""
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for a process a closed pipe stopped."""
_DAY = 86400.0
_DNS_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")


_HELP: Final = {
    "replay": "find unusual-agent-forbidden in existing audit logs",
    "check": "print the verdict for one agent",
    "certs": "write a local CA and serving certificate",
    "apiserver-config": "print the audit policy, audit webhook kubeconfig and flags for the kube-apiserver",
    "serve": "run the admission webhook and audit webhook endpoint (HTTPS)",
    "tail": "follow the apiserver's audit log across rotations and report findings",
    "suggest": "list every agent in audit logs and propose an allowlist",
}
"""Each command's line in ``ua-sentinel --help`` (listed even when its arguments are not built)."""


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (``ua-sentinel check: argument --days: ...``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _ranged(
    convert: Callable[[str], float], low: float, high: float, *, above: bool = False
) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in [low, high] (``above``: strictly above low).

    Out-of-range values are usage errors at parse time, never an OverflowError later
    (``--days 999999999``, ``--window inf``, ``--port 99999``).
    """
    lower = f"above {_shown(low)}" if above else f"at least {_shown(low)}"

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < low or (above and value == low) or value > high:
            raise argparse.ArgumentTypeError(f"{text!r} must be {lower} and at most {_shown(high)}")
        return value

    parse.__name__ = convert.__name__  # argparse names the type in its messages
    return parse


def _shown(number: float) -> str:
    return str(int(number)) if number == int(number) else f"{number:g}"


def _int(low: int, high: int) -> Callable[[str], float]:
    return _ranged(int, low, high)


def _seconds(low: float, high: float, *, above: bool = True) -> Callable[[str], float]:
    return _ranged(float, low, high, above=above)


_PORT = _int(0, 65535)


def load_allowlist(path: str | None) -> Allowlist:
    """The allowlist file, or the built-in default when no path is given."""
    return default_allowlist() if path is None else Allowlist.from_file(path)


def _allowlist_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allowlist",
        metavar="FILE",
        help="allowlist YAML (agents:/denied:); default: the built-in allowlist",
    )


def _live_allowlist_args(parser: argparse.ArgumentParser) -> None:
    """``--allowlist FILE | --allowlist-configmap NS/NAME`` for the long-running commands."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--allowlist", metavar="FILE", help="allowlist YAML, re-read on change (default: built-in)"
    )
    source.add_argument(
        "--allowlist-configmap", metavar="NS/NAME", help="watch key allowlist.yaml of this ConfigMap"
    )


def _output_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        choices=("json", "table", "wide"),
        help="findings on stdout as JSON lines or a table (wide: also verdict, source, id); "
        "default: a table on a terminal, JSON lines otherwise",
    )


def _leader_election_args(parser: argparse.ArgumentParser) -> None:
    """``--leader-elect`` and its Lease: among replicas, only the Lease's holder reads."""
    group = parser.add_argument_group("leader election (one reader among replicas)")
    group.add_argument(
        "--leader-elect",
        action="store_true",
        help="read only while holding a coordination.k8s.io Lease; wait for it first; exit 3 if it is lost",
    )
    group.add_argument(
        "--leader-elect-lease",
        metavar="NS/NAME",
        help="the Lease (NAME alone: in $POD_NAMESPACE; default: own namespace/ua-sentinel-tail)",
    )
    group.add_argument(
        "--leader-elect-lease-duration",
        type=_int(1, 3600),
        default=15,
        metavar="SECONDS",
        help="how long a standby waits after the last renewal it saw (default: %(default)s)",
    )
    group.add_argument(
        "--leader-elect-renew-deadline",
        type=_seconds(0, 3600),
        default=10.0,
        metavar="SECONDS",
        help="the holder gives up when renewal has failed this long (default: %(default)s)",
    )
    group.add_argument(
        "--leader-elect-retry-period",
        type=_seconds(0, 600),
        default=2.0,
        metavar="SECONDS",
        help="between attempts to acquire or renew (default: %(default)s)",
    )


def _checkpoint_configmap_args(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint-configmap``: the checkpoint survives a pod rescheduled without a volume."""
    group = parser.add_argument_group("checkpoint copy (a pod rescheduled without a volume resumes)")
    group.add_argument(
        "--checkpoint-configmap",
        metavar="NAME",
        help="also keep the whole checkpoint (gzip) in this ConfigMap; at start resume from the newer "
        "of it and --state",
    )
    group.add_argument(
        "--checkpoint-namespace",
        metavar="NS",
        help="its namespace (default: $POD_NAMESPACE, else the service account's)",
    )


def _checkpoint_configmap(args: argparse.Namespace) -> tuple[str, str] | None:
    """(namespace, name) of ``--checkpoint-configmap``; None without it."""
    from webhook.kube.client import own_namespace

    name, namespace = args.checkpoint_configmap, args.checkpoint_namespace
    if name is None:
        if namespace is not None:
            raise CliError("--checkpoint-namespace needs --checkpoint-configmap")
        return None
    for flag, value in (("--checkpoint-configmap", name), ("--checkpoint-namespace", namespace)):
        if value is not None and not (
            0 < len(value) <= 253 and set(value) <= _DNS_CHARS and value[0].isalnum() and value[-1].isalnum()
        ):
            raise CliError(f"{flag}: {value!r} is not a Kubernetes object name (a-z, 0-9, '-', '.')")
    return (namespace or own_namespace()), name


def _leader_election(args: argparse.Namespace) -> LeaderElectionConfig | None:
    """The Lease and durations from ``_leader_election_args``; None without ``--leader-elect``."""
    from webhook.kube.client import own_namespace, parse_configmap_ref
    from webhook.kube.lease import LeaderElectionConfig, default_identity

    if not args.leader_elect:
        if args.leader_elect_lease is not None:
            raise CliError("--leader-elect-lease needs --leader-elect")
        return None
    try:
        namespace, name = parse_configmap_ref(args.leader_elect_lease or DEFAULT_LEASE, own_namespace())
    except ValueError as exc:
        raise CliError(f"--leader-elect-lease: {exc}") from None
    return LeaderElectionConfig(
        namespace=namespace,
        name=name,
        identity=default_identity(),
        lease_duration=int(args.leader_elect_lease_duration),
        renew_deadline=args.leader_elect_renew_deadline,
        retry_period=args.leader_elect_retry_period,
    )


def _os_error(exc: OSError) -> CliError:
    """One line naming the file and the system's reason, no traceback."""
    return CliError(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")


def _cluster_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster-name",
        metavar="NAME",
        help="the cluster's name, put on every finding (orchestrator.cluster.name) and its text",
    )


def _rule_args(parser: argparse.ArgumentParser) -> None:
    """Input shape and rule tuning shared by replay and tail (so both find the same)."""
    from webhook.detect.config import DetectorConfig
    from webhook.inputs.formats import FORMATS

    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="k8s",
        help="input shape: k8s (apiserver JSON lines), eks (CloudWatch), gke (Cloud Audit Logs), "
        "aks (diagnostic records) (default: %(default)s)",
    )
    parser.add_argument(
        "--window",
        type=_seconds(0, 30 * _DAY),
        default=DetectorConfig().window.total_seconds(),
        metavar="SECONDS",
        help="aggregate refusals of one user+agent+source over this long (default: %(default)s)",
    )
    parser.add_argument(
        "--burst-threshold",
        type=_int(1, 1_000_000),
        default=DetectorConfig().burst_threshold,
        metavar="N",
        help="forbidden-burst: distinct refused URIs of one user+agent (default: %(default)s)",
    )
    parser.add_argument(
        "--burst-window",
        type=_seconds(0, 30 * _DAY),
        default=DetectorConfig().burst_window.total_seconds(),
        metavar="SECONDS",
        help="forbidden-burst: within this long (default: %(default)s)",
    )
    parser.add_argument(
        "--baseline-days",
        type=_int(0, 3650),
        default=7,
        metavar="N",
        help="new-agent-forbidden: an agent family not refused in the N days before is new; 0 turns "
        "the rule off (default: %(default)s)",
    )


def _detector_config(args: argparse.Namespace) -> DetectorConfig:
    import datetime as dt

    from webhook.detect.config import DetectorConfig

    return DetectorConfig(
        window=dt.timedelta(seconds=args.window),
        burst_threshold=args.burst_threshold,
        burst_window=dt.timedelta(seconds=args.burst_window),
    )


def _add_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "replay",
        help=_HELP["replay"],
        description="Read audit logs (JSON lines, plain or .gz, in the given order; - for stdin) and "
        "write one finding per line (JSON) to stdout; a summary goes to stderr.",
    )
    _allowlist_arg(parser)
    parser.add_argument(
        "--workers",
        type=_int(1, 1024),
        default=os.cpu_count() or 1,
        metavar="N",
        help="processes scanning a large plain file (default: %(default)s, the CPU count)",
    )
    _rule_args(parser)
    parser.add_argument(
        "--baseline",
        metavar="FILE",
        help="SQLite baseline for new-agent-forbidden (created if missing; the rule is off without it)",
    )
    _cluster_arg(parser)
    _output_arg(parser)
    parser.add_argument(
        "--report", metavar="HTML", help="also write a self-contained HTML report here (needs [report])"
    )
    parser.add_argument("logs", nargs="+", metavar="AUDIT_LOG")
    parser.set_defaults(run=_run_replay)


def _run_replay(args: argparse.Namespace) -> int:
    if args.report:
        from webhook.tools.report import require_jinja2

        require_jinja2()  # before reading, not after
    config = _detector_config(args)
    allowlist = load_allowlist(args.allowlist)
    try:
        _start_first_scan(args, config, allowlist)
        return _replay(args, config, allowlist)
    finally:
        from webhook.inputs.scan import stop_started

        stop_started()  # a scan started for a file not read (an error came first)


def _start_first_scan(args: argparse.Namespace, config: DetectorConfig, allowlist: Allowlist) -> bool:
    """Start the scan workers on the first log before importing what only this process needs
    (the Detector, the audit and finding models, the sinks): they scan meanwhile. The
    Detector's own prefilter is the one the scan must use; replay's scan takes these results
    only if it is the same (:func:`webhook.inputs.scan.start_scan`)."""
    if args.format != "k8s":
        return False
    from webhook.detect.prefilter import Prefilter
    from webhook.inputs.scan import start_scan

    prefilter = Prefilter(allowlist if config.known_bad else None)
    return start_scan(args.logs[0], workers=args.workers, prefilter=prefilter)


def _replay(args: argparse.Namespace, config: DetectorConfig, allowlist: Allowlist) -> int:
    from webhook.detect.detector import Detector
    from webhook.sinks.base import Sink
    from webhook.sinks.table import output_sink
    from webhook.tools.replay import Progress, replay

    baseline = None
    if args.baseline and args.baseline_days:
        from webhook.detect.baseline import Baseline

        baseline = Baseline(args.baseline, days=args.baseline_days)
    detector = Detector(allowlist, config=config, baseline=baseline)
    sink: Sink = output_sink(args.output)
    collector = None
    if args.report:
        from webhook.tools.report import ReportCollector

        sink = collector = ReportCollector(sink, allowlist)
    progress = Progress(sys.stderr, len(args.logs)) if sys.stderr.isatty() else None
    try:
        report = replay(
            args.logs,
            detector,
            sink,
            workers=args.workers,
            fmt=args.format,
            progress=progress,
            observe=collector.observe if collector is not None else None,
            cluster_name=args.cluster_name,
        )
    except BrokenPipeError:  # our reader went away: main() ends quietly
        raise
    except OSError as exc:
        raise _os_error(exc) from None
    finally:
        if progress is not None:
            progress.clear()
        sink.close()
        if baseline is not None:
            baseline.close()
    print(report.summary(), file=sys.stderr)
    if collector is not None:
        from webhook.tools.report import render_replay

        _write_report(args.report, render_replay(collector, report, args.logs))
    return 0


def _write_report(path: str, page: str) -> None:
    try:
        Path(path).write_text(page, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"--report {path}: {exc.strerror or exc}") from None
    print(f"wrote {path}", file=sys.stderr)


def _add_check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "check",
        help=_HELP["check"],
        description="Print the verdict (listed / unlisted / denied) for AGENT and the entry that decided it.",
    )
    _allowlist_arg(parser)
    parser.add_argument("agent", metavar="AGENT")
    parser.add_argument("--user", help="user name the request comes from")
    parser.add_argument("--group", action="append", default=[], help="a group of the user (repeatable)")
    parser.add_argument("--namespace", help="namespace of the request")
    parser.set_defaults(run=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    allowlist = load_allowlist(args.allowlist)
    decision = allowlist.decide(args.agent, user=args.user, groups=args.group, namespace=args.namespace)
    print(f"verdict:   {decision.verdict}")
    print(f'agent:     "{useragent.display(args.agent)}"')
    # Entry labels quote the allowlist's own patterns and its path: escaped like the agent.
    print(f"entry:     {useragent.display(decision.entry or '(none)', 1024)}")
    print(f"reason:    {decision.reason}")
    for label in decision.expired:
        print(f"expired:   {useragent.display(label, 1024)}")
    print(f"allowlist: {useragent.display(allowlist.source, 1024)} (hash {allowlist.hash})")
    return 0


def _add_certs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from webhook.tools.certs import MAX_DAYS  # here: the other commands do not load it

    parser = sub.add_parser(
        "certs",
        help=_HELP["certs"],
        description="Write ca.crt, ca.key, tls.crt and tls.key (keys 0600) into DIR.",
    )
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--dns", action="append", metavar="NAME", help="DNS name (repeatable)")
    parser.add_argument("--ip", action="append", metavar="IP", help="IP address (repeatable)")
    parser.add_argument(
        "--days",
        type=_int(1, MAX_DAYS),
        default=365,
        help=f"validity in days, 1 to {MAX_DAYS} (default: %(default)s)",
    )
    parser.set_defaults(run=_run_certs)


def _run_certs(args: argparse.Namespace) -> int:
    from webhook.tools.certs import write_serving_set

    dns = args.dns if args.dns is not None else (["localhost"] if args.ip is None else [])
    ips = args.ip if args.ip is not None else (["127.0.0.1"] if args.dns is None else [])
    try:
        write_serving_set(Path(args.out), dns=dns, ips=ips, days=args.days)
    except ValueError as exc:
        raise CliError(f"bad --ip or --dns: {exc}") from None
    except OSError as exc:
        raise CliError(f"{args.out}: {exc.strerror or exc}") from None
    print(f"wrote {args.out}/ca.crt, tls.crt, tls.key", file=sys.stderr)
    return 0


def _add_apiserver_config(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "apiserver-config",
        help=_HELP["apiserver-config"],
        description="Print (or write with --out-dir) the audit policy and the audit webhook kubeconfig "
        "to put next to the kube-apiserver, then the flags that use them. Certificates: --certs-dir DIR "
        "reads DIR/ca.crt (serving CA) and DIR/audit-client.crt/.key, issuing the client pair from "
        "DIR/ca.key when it is missing; --ca/--client-cert/--client-key override single files. "
        "Already have an audit policy? --policy FILE merges ua-sentinel's needs into it (alone: prints "
        "only the merged policy); --check-policy FILE lists what it hides from ua-sentinel (exit 1 when "
        "anything). --distro NAME prints the setup in that distribution's own format.",
    )
    parser.add_argument("--service-ip", metavar="IP", help="the Service's ClusterIP")
    parser.add_argument(
        "--port", type=_int(1, 65535), default=443, help="the Service's port (default: %(default)s)"
    )
    parser.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="name to check the serving certificate against (e.g. NAME.NAMESPACE.svc) when it has no IP SAN",
    )
    parser.add_argument("--certs-dir", metavar="DIR")
    parser.add_argument("--ca", metavar="FILE", help="CA of the serving certificate")
    parser.add_argument("--client-cert", metavar="FILE", help="the apiserver's audit client certificate")
    parser.add_argument("--client-key", metavar="FILE", help="its key")
    parser.add_argument(
        "--config-dir",
        default="/etc/kubernetes/ua-sentinel",
        metavar="DIR",
        help="where the apiserver will read the files (default: %(default)s)",
    )
    parser.add_argument("--audit-log-path", metavar="PATH", help="also print the log backend flags (tailer)")
    parser.add_argument("--out-dir", metavar="DIR", help="write the two files here instead of printing them")
    parser.add_argument(
        "--policy",
        metavar="FILE",
        help="the audit policy the apiserver has now: keep its rules, add only what ua-sentinel needs",
    )
    parser.add_argument(
        "--check-policy",
        metavar="FILE",
        help="report, per rule, what this policy hides from ua-sentinel; exit 0 when nothing, 1 when blind",
    )
    parser.add_argument(
        "--distro",
        choices=("kubeadm", "k3s", "rke2", "talos", "kind"),
        help="print the flags and mounts in that distribution's own format (with --service-ip and the "
        "certificates, Talos gets the kubeconfig inline)",
    )
    parser.set_defaults(run=_run_apiserver_config)


def _read_policy(path: str) -> Policy:
    """The policy in ``path`` (``-``: stdin), read and checked; a problem is a one-line CliError."""
    from webhook.tools import audit_policy

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return audit_policy.parse_policy(text)
    except audit_policy.PolicyError as exc:
        raise CliError(f"{path}: {exc}") from None


def _policy_command(args: argparse.Namespace) -> tuple[int, str] | None:
    """--check-policy, and --policy without a webhook target: (exit status, stdout), else None."""
    from webhook.tools import policy_check

    if args.check_policy:
        policy = _read_policy(args.check_policy)
        return (1 if policy_check.check(policy) else 0), policy_check.report(policy, args.check_policy)
    if args.policy and not args.service_ip and not args.out_dir and not args.distro:
        return 0, _merged_policy(args.policy)
    return None


def _distro(args: argparse.Namespace, policy: str, kubeconfig: str | None) -> str:
    from webhook.tools import distros

    return distros.render(
        args.distro,
        config_dir=args.config_dir,
        audit_log_path=args.audit_log_path,
        policy=policy,
        kubeconfig=kubeconfig,
    )


def _merged_policy(path: str) -> str:
    from webhook.tools import policy_merge

    policy = _read_policy(path)
    return policy_merge.render(policy, policy_merge.merge(policy), path)


def _run_apiserver_config(args: argparse.Namespace) -> int:
    from webhook.tools import apiserver_config as apiserverconfig
    from webhook.tools import certs

    if (done := _policy_command(args)) is not None:
        code, report = done
        sys.stdout.write(report)
        return code
    policy = _merged_policy(args.policy) if args.policy else apiserverconfig.AUDIT_POLICY
    if args.distro and not args.service_ip:
        sys.stdout.write(_distro(args, policy, None))
        return 0
    if not args.service_ip:
        raise CliError("give --service-ip (or --check-policy FILE, --policy FILE or --distro NAME alone)")
    base = Path(args.certs_dir) if args.certs_dir else None
    given = {"--ca": args.ca, "--client-cert": args.client_cert, "--client-key": args.client_key}
    paths = {flag: Path(path) for flag, path in given.items() if path}
    if base is not None:
        defaults = {"--ca": "ca.crt", "--client-cert": "audit-client.crt", "--client-key": "audit-client.key"}
        paths = {flag: paths.get(flag, base / name) for flag, name in defaults.items()}
    if missing := [flag for flag in given if flag not in paths]:
        raise CliError(f"give --certs-dir or {', '.join(missing)}")
    cert_path, key_path = paths["--client-cert"], paths["--client-key"]
    try:
        if (
            base is not None
            and not args.client_cert
            and not cert_path.exists()
            and (base / "ca.key").exists()
        ):
            ca = (base / "ca.crt").read_bytes(), (base / "ca.key").read_bytes()
            certs.write_pair(apiserverconfig.issue_audit_client(*ca), cert_path, key_path)
            print(f"issued {cert_path} and {key_path} (signed by {base / 'ca.crt'})", file=sys.stderr)
        config = apiserverconfig.build(
            service_ip=args.service_ip,
            port=args.port,
            tls_server_name=args.tls_server_name,
            ca_pem=paths["--ca"].read_bytes(),
            client_cert_pem=cert_path.read_bytes(),
            client_key_pem=key_path.read_bytes(),
            config_dir=args.config_dir,
            audit_log_path=args.audit_log_path,
            policy=policy,
        )
        if args.out_dir is None:
            sys.stdout.write(_distro(args, policy, config.kubeconfig) if args.distro else config.render())
            return 0
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        certs.write_file(out / apiserverconfig.POLICY_FILE, config.policy.encode(), 0o644)
        # Holds the client key: owner-only, and never written through a planted symlink.
        certs.write_file(out / apiserverconfig.KUBECONFIG_FILE, config.kubeconfig.encode(), 0o600)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    except BrokenPipeError:  # our reader went away: main() ends quietly
        raise
    except OSError as exc:
        raise _os_error(exc) from None
    print(f"wrote {out}/{apiserverconfig.POLICY_FILE} and {apiserverconfig.KUBECONFIG_FILE}", file=sys.stderr)
    if args.distro:
        sys.stdout.write(_distro(args, policy, config.kubeconfig))
    else:
        sys.stdout.write("".join(f"{flag}\n" for flag in config.flags))
    return 0


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from webhook.logs import LOG_LEVELS  # here: the other commands do not load it

    parser = sub.add_parser(
        "serve",
        help=_HELP["serve"],
        description="Serve POST /validate (AdmissionReview), POST /audit (audit EventList, batch mode), "
        "/healthz, /readyz and /metrics over TLS. Findings go to stdout as JSON lines, logs to stderr. "
        "Certificate and allowlist files are re-read when they change.",
    )
    parser.add_argument("--tls-cert", required=True, metavar="FILE", help="serving certificate (PEM)")
    parser.add_argument("--tls-key", required=True, metavar="FILE", help="its private key (PEM)")
    parser.add_argument(
        "--client-ca", metavar="FILE", help="/validate and /audit need a client cert signed by it"
    )
    parser.add_argument("--audit-client-ca", metavar="FILE", help="/audit needs a client cert signed by it")
    parser.add_argument(
        "--audit-insecure",
        action="store_true",
        help="accept /audit without a client certificate (anyone who reaches the port can forge audit "
        "events); without it and without a CA, /audit answers 403",
    )
    _live_allowlist_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=_PORT, default=8443, help="port (default: %(default)s; 0: any free)")
    parser.add_argument("--mode", choices=MODES, default="warn")
    parser.add_argument(
        "--join-wait",
        type=_seconds(0, 30, above=False),
        default=0.05,
        metavar="SECONDS",
        help="how long /validate awaits a late RequestReceived audit event (default: %(default)s)",
    )
    parser.add_argument(
        "--join-ttl",
        type=_seconds(0, 3600),
        default=10.0,
        metavar="SECONDS",
        help="how long an unclaimed RequestReceived stays joinable (default: %(default)s)",
    )
    parser.add_argument("--exempt-user", action="append", metavar="USER", help="never denied (repeatable)")
    parser.add_argument(
        "--exempt-group",
        action="append",
        metavar="GROUP",
        help="never denied (repeatable; replaces the default system:masters, system:nodes, "
        "system:serviceaccounts:kube-system)",
    )
    parser.add_argument("--webhook-name", default="ua-sentinel", metavar="NAME", help="for logs")
    parser.add_argument(
        "--sink",
        action="append",
        metavar="SINK",
        help="where findings go: stdout (default) | file:PATH | k8s-events[:NAMESPACE] | http:URL | "
        "slack:URL | falcosidekick:URL | otlp:URL; repeatable",
    )
    _cluster_arg(parser)
    parser.add_argument("--max-body-bytes", type=_int(1024, 2**31), default=8 * 1024 * 1024, metavar="N")
    parser.add_argument("--cert-reload-interval", type=_seconds(0, _DAY), default=5.0, metavar="SECONDS")
    parser.add_argument(
        "--tls-handshake-timeout",
        type=_seconds(0, 600),
        default=10.0,
        metavar="SECONDS",
        help="a new connection is closed unless its TLS handshake is done in time (default: %(default)s)",
    )
    parser.add_argument("--allowlist-reload-interval", type=_seconds(0, _DAY), default=2.0, metavar="SECONDS")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    parser.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from webhook import logs
    from webhook.serve import service as serve

    logs.configure(args.log_level)
    settings = serve.build_settings(
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        client_ca=args.client_ca,
        audit_client_ca=args.audit_client_ca,
        audit_insecure=args.audit_insecure,
        allowlist=args.allowlist,
        allowlist_configmap=args.allowlist_configmap,
        host=args.host,
        port=args.port,
        mode=args.mode,
        join_wait=args.join_wait,
        join_ttl=args.join_ttl,
        exempt_users=args.exempt_user,
        exempt_groups=args.exempt_group,
        webhook_name=args.webhook_name,
        max_body_bytes=args.max_body_bytes,
        cert_interval=args.cert_reload_interval,
        handshake_timeout=args.tls_handshake_timeout,
        allowlist_interval=args.allowlist_reload_interval,
        sinks=args.sink,
        cluster_name=args.cluster_name,
    )
    serve.serve(settings)
    return 0


def _add_tail(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from webhook.logs import LOG_LEVELS  # here: the other commands do not load it

    parser = sub.add_parser(
        "tail",
        help=_HELP["tail"],
        description="Follow PATH (and its rotations: rename, gzip, copy-truncate), or the cloud --source "
        "(EKS: cloudwatch:LOG_GROUP; AKS: eventhub:NAMESPACE/HUB), with a durable checkpoint in --state; "
        "findings go to every --sink at "
        "least once (a repeat carries the same event.id and event.sequence). Without a checkpoint it "
        "starts at the end of PATH (of each stream).",
    )
    _live_allowlist_args(parser)
    parser.add_argument("--state", required=True, metavar="DIR", help="checkpoint and baseline directory")
    parser.add_argument(
        "--sink",
        action="append",
        metavar="SINK",
        help="stdout (default) | file:PATH | k8s-events[:NAMESPACE] | http:URL | slack:URL | "
        "falcosidekick:URL | otlp:URL; repeatable",
    )
    _cluster_arg(parser)
    parser.add_argument(
        "--from-start",
        action="store_true",
        help="without a checkpoint, read the rotated backups and PATH from their start",
    )
    parser.add_argument("--metrics-port", type=_PORT, metavar="PORT", help="serve Prometheus metrics here")
    _rule_args(parser)
    parser.add_argument(
        "--grace",
        type=_seconds(0, _DAY, above=False),
        default=30.0,
        metavar="SECONDS",
        help="when live, close windows this long after they end by the wall clock (default: %(default)s)",
    )
    parser.add_argument(
        "--source",
        action="append",
        type=_source,
        metavar="SOURCE",
        help="cloudwatch:LOG_GROUP (EKS audit streams, needs the aws extra) | eventhub:NAMESPACE/HUB (AKS "
        "diagnostic setting, needs the azure extra) | azblob:ACCOUNT/CONTAINER[/PREFIX] (AKS's archive in a "
        "Storage Account, needs the azure extra) | file:PATH | PATH; repeatable",
    )
    parser.add_argument(
        "--eventhub-consumer-group",
        metavar="NAME",
        help="the Event Hub consumer group to read (default: $AZURE_EVENTHUB_CONSUMER_GROUP, else $Default)",
    )
    parser.add_argument(
        "--source-page-size", type=_int(1, 10_000), default=1000, metavar="N", help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--poll-interval",
        type=_seconds(0, 60),
        default=None,
        metavar="SECONDS",
        help=argparse.SUPPRESS,  # default: 0.2 for a file, 2 for a cloud source (API rate limits)
    )
    parser.add_argument(
        "--checkpoint-interval",
        type=_seconds(0, 3600),
        default=2.0,
        metavar="SECONDS",
        help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--max-backlog",
        type=_int(1, 10_000_000),
        default=10_000,
        metavar="N",
        help="undelivered findings kept per sink before the oldest are dropped (default: %(default)s)",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    _output_arg(parser)
    _leader_election_args(parser)
    _checkpoint_configmap_args(parser)
    parser.add_argument(
        "path", metavar="PATH", nargs="?", help="the live audit log (/var/log/kubernetes/audit/audit.log)"
    )
    parser.set_defaults(run=_run_tail)


def _source(text: str) -> SourceSpec:
    from webhook.inputs.source import SourceSpecError, parse_source  # tail's only: check and replay skip it

    try:
        return parse_source(text)
    except SourceSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--source ")) from None


def _tail_sources(args: argparse.Namespace) -> tuple[str, list[SourceSpec]]:
    """The file to follow ("" for none) and the cloud sources: one file, or cloud sources only."""
    from webhook.inputs.source import parse_source

    specs: list[SourceSpec] = list(args.source or [])
    if args.path is not None:
        specs.insert(0, parse_source(f"file:{args.path}"))
    if not specs:
        raise CliError("tail: give PATH or --source")
    files = [spec.target for spec in specs if spec.kind == "file"]
    clouds = [spec for spec in specs if spec.kind != "file"]
    if len(files) > 1 or (files and clouds):
        raise CliError("tail: one file, or cloud sources; mixing them is not supported yet")
    shapes = {"cloudwatch": "eks", "eventhub": "aks", "pubsub": "gke", "azblob": "aks"}  # what each holds
    for spec in clouds:
        if args.format not in ("k8s", shapes.get(spec.kind)):
            raise CliError(
                f"tail: a {spec.kind} source holds {shapes.get(spec.kind, 'its own')} records, "
                f"not --format {args.format}"
            )
    return (files[0] if files else ""), clouds


def _run_tail(args: argparse.Namespace) -> int:
    from webhook.logs import configure
    from webhook.tail.command import TailOptions, run_tail

    configure(args.log_level)
    config = _detector_config(args)
    path, sources = _tail_sources(args)
    default_poll = 2.0 if sources else 0.2
    options = TailOptions(
        path=path,
        sources=sources,
        page_size=args.source_page_size,
        eventhub_consumer_group=args.eventhub_consumer_group,
        state=args.state,
        allowlist=args.allowlist,
        allowlist_configmap=args.allowlist_configmap,
        sinks=args.sink or ["stdout"],
        cluster_name=args.cluster_name,
        fmt="k8s" if sources else args.format,
        from_start=args.from_start,
        metrics_port=args.metrics_port,
        detector=config,
        baseline_days=args.baseline_days,
        grace=args.grace,
        poll_interval=args.poll_interval if args.poll_interval is not None else default_poll,
        checkpoint_interval=args.checkpoint_interval,
        max_backlog=args.max_backlog,
        output=args.output,
        leader_election=_leader_election(args),
        checkpoint_configmap=_checkpoint_configmap(args),
    )
    return run_tail(options)


def _add_suggest(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from webhook.inputs.formats import FORMATS  # here: the other commands do not load it

    parser = sub.add_parser(
        "suggest",
        help=_HELP["suggest"],
        description="Count every agent in the audit logs (grouped by product: requests, users, allowed "
        "and forbidden) and propose an allowlist.yaml covering what is common and benign. Known-bad "
        "agents are never proposed. Agents are shown escaped.",
    )
    _allowlist_arg(parser)
    parser.add_argument(
        "--audit-log", action="append", required=True, metavar="FILE", help="repeatable; - for stdin"
    )
    parser.add_argument(
        "--days", type=_int(1, 3650), metavar="N", help="only the last N days before the newest event"
    )
    parser.add_argument("--format", choices=FORMATS, default="k8s")
    parser.add_argument(
        "--min-requests", type=_int(0, 10**9), default=20, metavar="N", help="(default: %(default)s)"
    )
    parser.add_argument(
        "--max-forbidden-share",
        type=_ranged(float, 0, 1),
        default=0.25,
        metavar="F",
        help="(default: %(default)s)",
    )
    parser.add_argument("--write", metavar="FILE", help="also write the proposed allowlist.yaml here")
    parser.add_argument(
        "--report", metavar="HTML", help="also write a self-contained HTML report here (needs [report])"
    )
    parser.set_defaults(run=_run_suggest)


def _run_suggest(args: argparse.Namespace) -> int:
    import contextlib

    from webhook.inputs.files import open_log
    from webhook.tools.suggest import propose, render_report, render_yaml, survey

    if args.report:
        from webhook.tools.report import require_jinja2

        require_jinja2()
    allowlist = load_allowlist(args.allowlist)
    try:
        with contextlib.ExitStack() as stack:
            streams = [stack.enter_context(open_log(path)) for path in args.audit_log]
            result = survey(streams, args.format)
    except OSError as exc:
        raise _os_error(exc) from None
    agents = result.agents(args.days)
    proposal = propose(
        agents, allowlist, min_requests=args.min_requests, max_forbidden_share=args.max_forbidden_share
    )
    text = render_yaml(proposal, allowlist)
    print(render_report(result, agents, proposal, allowlist))
    print("\n--- proposed allowlist.yaml ---")
    print(text, end="")
    if args.write:
        try:
            Path(args.write).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CliError(f"{args.write}: {exc.strerror or exc}") from None
    if args.report:
        from webhook.tools.report import render_suggest

        _write_report(args.report, render_suggest(result, agents, proposal, allowlist, text))
    return 0


_ADDERS: Final = {
    "replay": _add_replay,
    "check": _add_check,
    "certs": _add_certs,
    "apiserver-config": _add_apiserver_config,
    "serve": _add_serve,
    "tail": _add_tail,
    "suggest": _add_suggest,
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with ``command`` given, of that one only: the others are
    listed (``--help``, choices in errors) but their arguments are not built, since their
    choices and defaults import modules the command never uses (check: logging, gzip, ...)."""
    parser: argparse.ArgumentParser = _Parser(
        prog="ua-sentinel",
        description="Flag Kubernetes API requests whose user agent is not on the cluster's allowlist.",
    )
    parser.add_argument("--version", action="version", version=f"ua-sentinel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, add in _ADDERS.items():
        if command is None or name == command:
            add(sub)
        else:
            sub.add_parser(name, help=_HELP[name])
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names (its first word; the top level has only flags), if a known one."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return first if first in _ADDERS else None


def _is_baseline_error(exc: Exception) -> bool:
    """A failure of the new-agent-forbidden baseline's SQLite database (--baseline, tail's
    --state). sqlite3 is loaded only by the commands that open one, so check and replay without
    --baseline do not pay for its import."""
    sqlite3 = sys.modules.get("sqlite3")
    return sqlite3 is not None and isinstance(exc, sqlite3.Error)


def main(argv: Sequence[str] | None = None) -> None:
    """Run one command; ordinary failures end in one line on stderr, never a traceback."""
    words = sys.argv[1:] if argv is None else argv
    args = build_parser(_command(words)).parse_args(words)
    run: Runner = args.run
    try:
        code = run(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit where it cannot be caught
    except BrokenPipeError:
        # The reader of stdout went away: stop quietly, as `yes | head -1` does. Point stdout at
        # /dev/null so the interpreter's own flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    except SetupError as exc:
        print(f"ua-sentinel {args.command}: {exc}", file=sys.stderr)
        code = 1
    except OSError as exc:  # writing to stdout or stderr (a full disk), or a file no runner named
        print(f"ua-sentinel {args.command}: {_os_error(exc)}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        if not _is_baseline_error(exc):
            raise
        print(f"ua-sentinel {args.command}: baseline database: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)
