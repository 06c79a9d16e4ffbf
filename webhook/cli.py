"""``ua-sentinel`` command line: parses arguments and hands off to library functions.

Only this module prints to stderr or exits. Exit status: 0 when the command ran (findings
are not errors), 1 for an I/O or configuration error (one line on stderr), 2 for usage errors.
Each subcommand is an ``_add_<name>`` function that registers its parser and a ``_run_<name>``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from webhook import __version__, useragent
from webhook.allowlist import Allowlist, AllowlistError, default_allowlist
from webhook.detect import Detector, DetectorConfig

__all__ = ["CliError", "load_allowlist", "main"]

Runner = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit status 1."""


def load_allowlist(path: str | None) -> Allowlist:
    """The allowlist file, or the built-in default when no path is given."""
    if path is None:
        return default_allowlist()
    try:
        return Allowlist.from_file(path)
    except AllowlistError as exc:
        raise CliError(str(exc)) from None


def _allowlist_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allowlist",
        metavar="FILE",
        help="allowlist YAML (agents:/denied:); default: the built-in allowlist",
    )


def _add_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "replay",
        help="find unusual-agent-forbidden in existing audit logs",
        description="Read audit logs (JSON lines, plain or .gz, in the given order; - for stdin) and "
        "write one finding per line (JSON) to stdout; a summary goes to stderr.",
    )
    _allowlist_arg(parser)
    parser.add_argument(
        "--window",
        type=float,
        default=DetectorConfig().window.total_seconds(),
        metavar="SECONDS",
        help="aggregate refusals of one user+agent+source over this long (default: %(default)s)",
    )
    parser.add_argument("logs", nargs="+", metavar="AUDIT_LOG")
    parser.set_defaults(run=_run_replay)


def _run_replay(args: argparse.Namespace) -> int:
    import datetime as dt

    from webhook.findings import JsonLinesSink
    from webhook.replay import replay

    if args.window <= 0:
        raise CliError("--window must be positive")
    allowlist = load_allowlist(args.allowlist)
    detector = Detector(allowlist, config=DetectorConfig(window=dt.timedelta(seconds=args.window)))
    sink = JsonLinesSink()
    try:
        report = replay(args.logs, detector, sink)
    except OSError as exc:
        raise CliError(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}") from None
    finally:
        sink.close()
    print(report.summary(), file=sys.stderr)
    return 0


def _add_check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "check",
        help="print the verdict for one agent",
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
    print(f"entry:     {decision.entry or '(none)'}")
    print(f"reason:    {decision.reason}")
    for label in decision.expired:
        print(f"expired:   {label}")
    print(f"allowlist: {allowlist.source} (hash {allowlist.hash})")
    return 0


def _add_certs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "certs",
        help="write a local CA and serving certificate",
        description="Write ca.crt, ca.key, tls.crt and tls.key (keys 0600) into DIR.",
    )
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--dns", action="append", metavar="NAME", help="DNS name (repeatable)")
    parser.add_argument("--ip", action="append", metavar="IP", help="IP address (repeatable)")
    parser.add_argument("--days", type=int, default=365)
    parser.set_defaults(run=_run_certs)


def _run_certs(args: argparse.Namespace) -> int:
    from webhook.certs import write_serving_set

    if args.days <= 0:
        raise CliError("--days must be positive")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ua-sentinel",
        description="Flag Kubernetes API requests whose user agent is not on the cluster's allowlist.",
    )
    parser.add_argument("--version", action="version", version=f"ua-sentinel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_replay, _add_check, _add_certs):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Runner = args.run
    try:
        code = run(args)
    except CliError as exc:
        print(f"ua-sentinel {args.command}: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
