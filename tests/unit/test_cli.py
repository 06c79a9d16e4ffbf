"""The ua-sentinel command as a user runs it: a real child process, real files."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from tests.conftest import AUDIT_LOGS
from tests.unit.test_detector import EXPECTED


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "webhook", *args], input=stdin, capture_output=True, timeout=120, check=False
    )


def allowlist(tmp_path: Path) -> str:
    path = tmp_path / "allowlist.yaml"
    path.write_text('agents:\n  - "kubectl/*"\n  - "kube-*"\n')
    return str(path)


def findings(stdout: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_replay_of_recorded_logs_prints_the_expected_findings(tmp_path: Path) -> None:
    result = cli("replay", "--allowlist", allowlist(tmp_path), *map(str, AUDIT_LOGS))
    assert result.returncode == 0, result.stderr
    got = {(f["user"]["name"], f["user_agent"].get("original")) for f in findings(result.stdout)}  # type: ignore[index, union-attr]
    assert got == EXPECTED
    assert (
        b"1630 lines" in result.stderr and b"0 malformed" in result.stderr and b"9 findings" in result.stderr
    )


def test_replay_reads_gzip_and_stdin(tmp_path: Path) -> None:
    rotated = tmp_path / "audit-2026-11-27T18-10-45.450.log.gz"
    rotated.write_bytes(gzip.compress(AUDIT_LOGS[0].read_bytes()))
    result = cli(
        "replay", "--allowlist", allowlist(tmp_path), str(rotated), "-", stdin=AUDIT_LOGS[1].read_bytes()
    )
    assert result.returncode == 0, result.stderr
    assert len(findings(result.stdout)) == len(EXPECTED)


def test_malformed_lines_are_counted_with_line_numbers_and_skipped(tmp_path: Path) -> None:
    good = [line for path in AUDIT_LOGS for line in path.read_bytes().splitlines()]
    forbid = next(line for line in good if b'"forbid"' in line and b"python-requests/2.25.1" in line)
    log = tmp_path / "audit.log"
    log.write_bytes(
        b"\n".join(
            [
                good[0],
                good[1][: len(good[1]) // 2],  # truncated JSON
                b"\x00\x01\xfe\xffbinary junk 403",
                b'{"padding":"' + b"x" * (5 * 1024 * 1024) + b'"',  # a 5 MB line, not one JSON object
                forbid,
                b"",
            ]
        )
    )
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    result = cli("replay", "--allowlist", allowlist(tmp_path), str(empty), str(log))
    assert result.returncode == 0, result.stderr
    assert [f["user_agent"]["original"] for f in findings(result.stdout)] == ["python-requests/2.25.1"]  # type: ignore[index]
    err = result.stderr.decode()
    assert "3 malformed skipped" in err
    assert f"{log}:2: " in err and f"{log}:3: " in err and f"{log}:4: " in err
    assert "Traceback" not in err


def test_malformed_line_numbers_count_from_one_in_each_file(tmp_path: Path) -> None:
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    first.write_bytes(AUDIT_LOGS[1].read_bytes() + b"junk\n")
    second.write_bytes(b"junk\n")
    lines = AUDIT_LOGS[1].read_bytes().count(b"\n")
    result = cli("replay", str(first), str(second))
    assert result.returncode == 0, result.stderr
    err = result.stderr.decode()
    assert f"{first}:{lines + 1}: not a JSON object line" in err
    assert f"{second}:1: not a JSON object line" in err


def _refusal(agent: str, timestamp: str) -> bytes:
    good = [line for path in AUDIT_LOGS for line in path.read_bytes().splitlines()]
    forbid = next(line for line in good if b'"forbid"' in line and b"python-requests/2.25.1" in line)
    event = json.loads(forbid)
    event.update(userAgent=agent, stageTimestamp=timestamp, requestReceivedTimestamp=timestamp)
    return json.dumps(event, separators=(",", ":")).encode()


def test_an_event_with_an_out_of_range_time_is_counted_and_the_others_still_found(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(
        b"\n".join(
            [
                _refusal("curl/1", "2026-11-27T18:00:00.000000Z"),
                _refusal("curl/2", "9999-12-31T23:59:59.999999Z"),
                _refusal("curl/3", "0001-01-01T00:00:00+01:00"),
                _refusal("curl/4", "2026-11-27T18:00:01.000000Z"),
                b"",
            ]
        )
    )
    result = cli("replay", "--allowlist", allowlist(tmp_path), str(log))
    assert result.returncode == 0, result.stderr
    assert [f["user_agent"]["original"] for f in findings(result.stdout)] == ["curl/1", "curl/4"]  # type: ignore[index]
    err = result.stderr.decode()
    assert "2 malformed skipped" in err and "Traceback" not in err
    assert f"{log}:2: event skipped: timestamp out of range" in err
    assert f"{log}:3: event skipped: timestamp out of range" in err


def test_a_truncated_gzip_is_reported_and_the_next_files_still_read(tmp_path: Path) -> None:
    first = tmp_path / "audit-1.log.gz"
    refusal = _refusal("curl/1", "2026-11-27T18:00:00.000000Z")
    packed = gzip.compress(refusal + b"\n" + b"x" * 100_000 + b"\n", compresslevel=0)  # stored: cut anywhere
    first.write_bytes(packed[: len(packed) // 2])
    second = tmp_path / "audit.log"
    second.write_bytes(_refusal("curl/2", "2026-11-27T18:00:01.000000Z") + b"\n")
    result = cli("replay", "--allowlist", allowlist(tmp_path), str(first), str(second))
    assert result.returncode == 0, result.stderr
    assert [f["user_agent"]["original"] for f in findings(result.stdout)] == ["curl/1", "curl/2"]  # type: ignore[index]
    err = result.stderr.decode()
    assert "1 files cut short" in err and "Traceback" not in err
    assert [line for line in err.splitlines() if str(first) in line] == [
        f"  {first}:2: data breaks off, rest of the file skipped: "
        "Compressed file ended before the end-of-stream marker was reached"
    ]


def test_a_refusal_padded_past_the_line_limit_is_still_a_finding(tmp_path: Path) -> None:
    """``GET .../secrets?`` + 700,000 ``&`` (written ``\\u0026``): a 4.2 MB line, refused."""
    event = json.loads(_refusal("curl/padded", "2026-11-27T18:00:00.000000Z"))
    event["requestURI"] = "/api/v1/namespaces/default/secrets?" + "&" * 700_000
    padded = json.dumps(event, separators=(",", ":")).replace("&", "\\u0026").encode()
    assert len(padded) > 4 * 1024 * 1024
    log = tmp_path / "audit.log"
    log.write_bytes(_refusal("curl/1", "2026-11-27T17:59:59.000000Z") + b"\n" + padded + b"\n")
    result = cli("replay", "--allowlist", allowlist(tmp_path), str(log))
    assert result.returncode == 0, result.stderr
    found = findings(result.stdout)
    assert [f["user_agent"]["original"] for f in found] == ["curl/1", "curl/padded"]  # type: ignore[index]
    uri = found[1]["kubernetes"]["audit"]["requestURI"]  # type: ignore[index]
    assert uri.startswith("/api/v1/namespaces/default/secrets?&&&") and len(uri) <= 4096
    assert f"2 lines ({log.stat().st_size} bytes) read, 0 malformed" in result.stderr.decode()


def test_replay_of_a_missing_file_is_a_one_line_error(tmp_path: Path) -> None:
    result = cli("replay", str(tmp_path / "nope.log"))
    assert result.returncode == 1
    assert result.stderr.decode().count("\n") == 1
    assert "nope.log" in result.stderr.decode() and "Traceback" not in result.stderr.decode()


def test_replay_with_a_broken_allowlist_names_the_entry(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text('agents:\n  - "kubectl/*"\n  - regex: "(unclosed"\n')
    result = cli("replay", "--allowlist", str(bad), str(AUDIT_LOGS[1]))
    assert result.returncode == 1
    assert "agents[1]: regex '(unclosed' is not valid RE2 syntax" in result.stderr.decode()


def test_replay_with_default_allowlist_marks_scripting_clients_high(tmp_path: Path) -> None:
    result = cli("replay", *map(str, AUDIT_LOGS))
    assert result.returncode == 0, result.stderr
    by_agent = {f["user_agent"].get("original"): f for f in findings(result.stdout)}  # type: ignore[union-attr]
    assert by_agent["python-requests/2.34.2"]["ua_sentinel"]["severity"] == "high"  # type: ignore[index]
    assert (
        by_agent["kc-renamed/v1.32.4 (linux/amd64) kubernetes/4cb5f07"]["ua_sentinel"]["severity"] == "medium"
    )  # type: ignore[index]


def test_check_prints_verdict_and_deciding_entry(tmp_path: Path) -> None:
    result = cli(
        "check", "--allowlist", allowlist(tmp_path), "kubectl/v1.30.2 (linux/amd64) kubernetes/3968350"
    )
    out = result.stdout.decode()
    assert result.returncode == 0
    assert "verdict:   listed" in out and "agents[0] (glob 'kubectl/*')" in out
    spoof = cli("check", "--allowlist", allowlist(tmp_path), "kubectl/v1.30.0 \u202e(evil)").stdout.decode()
    assert "verdict:   unlisted" in spoof and "\\u202e" in spoof and "\u202e" not in spoof
    denied = cli("check", "peirates/v0.0.0 (linux/amd64) kubernetes/$Format").stdout.decode()
    assert "verdict:   denied" in denied and "product 'peirates'" in denied


def test_certs_writes_a_ca_and_serving_pair_with_private_keys(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    result = cli("certs", "--out", str(out), "--dns", "ua-sentinel.svc", "--ip", "127.0.0.1")
    assert result.returncode == 0, result.stderr
    assert (out / "tls.key").stat().st_mode & 0o777 == 0o600
    assert (out / "ca.key").stat().st_mode & 0o777 == 0o600
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    leaf = x509.load_pem_x509_certificate((out / "tls.crt").read_bytes())
    leaf.verify_directly_issued_by(ca)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["ua-sentinel.svc"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_usage_errors_exit_2() -> None:
    assert cli("replay").returncode == 2
    assert cli("no-such-command").returncode == 2


# --- Ordinary mistakes end in one line on stderr, never a traceback (issue 12, items 14 and 15) ---


def one_line_error(result: subprocess.CompletedProcess[bytes], code: int) -> str:
    """The error as one line; serve and tail may log JSON records (one per line) before it."""
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert err.endswith("\n"), err
    said = [line for line in err.splitlines() if not line.startswith('{"ts":')]
    assert len(said) == 1, err
    return said[0]


def closed_pipe() -> int:
    """The write end of a pipe whose read end is already closed: every write fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    return write


@pytest.mark.parametrize(
    "args",
    [
        ["check", "kubectl/v1.30.2"],
        ["replay", *map(str, AUDIT_LOGS)],
        ["suggest", "--audit-log", str(AUDIT_LOGS[1]), "--min-requests", "1"],
        ["apiserver-config", "--service-ip", "10.0.0.1", "--certs-dir", "{certs}"],
        ["--help"],
    ],
    ids=["check", "replay", "suggest", "apiserver-config", "help"],
)
def test_a_closed_stdout_ends_quietly_with_status_141(tmp_path: Path, args: list[str]) -> None:
    if "{certs}" in args:
        assert cli("certs", "--out", str(tmp_path)).returncode == 0
        args = [str(tmp_path) if a == "{certs}" else a for a in args]
    stdout = closed_pipe()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "webhook", *args], stdout=stdout, stderr=subprocess.PIPE, timeout=120
        )
    finally:
        os.close(stdout)
    err = result.stderr.decode()
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    assert result.returncode in (141, 0 if args == ["--help"] else 141)


def test_a_full_disk_on_stdout_is_one_line() -> None:
    with open("/dev/full", "wb") as full:
        result = subprocess.run(
            [sys.executable, "-m", "webhook", "check", "kubectl/v1"],
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    assert "No space left on device" in one_line_error(result, 1)


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["certs", "--out", "{tmp}", "--days", "999999999"], "--days"),
        (["certs", "--out", "{tmp}", "--days", "0"], "--days"),
        (["replay", "--window", "nan", "x.log"], "--window"),
        (["replay", "--window", "1e308", "x.log"], "--window"),
        (["replay", "--burst-window", "inf", "x.log"], "--burst-window"),
        (["replay", "--workers", "many", "x.log"], "--workers"),
        (["replay", "--baseline-days", "-1", "x.log"], "--baseline-days"),
        (["suggest", "--audit-log", "x.log", "--max-forbidden-share", "nan"], "--max-forbidden-share"),
        (["suggest", "--audit-log", "x.log", "--days", "99999999999"], "--days"),
        (["apiserver-config", "--service-ip", "10.0.0.1", "--port", "70000"], "--port"),
        (["serve", "--tls-cert", "c", "--tls-key", "k", "--port", "99999"], "--port"),
        (["serve", "--tls-cert", "c", "--tls-key", "k", "--join-wait", "inf"], "--join-wait"),
        (
            ["serve", "--tls-cert", "c", "--tls-key", "k", "--cert-reload-interval", "nan"],
            "--cert-reload-interval",
        ),
        (["tail", "--state", "{tmp}", "--metrics-port", "99999", "x.log"], "--metrics-port"),
        (["tail", "--state", "{tmp}", "--poll-interval", "0", "x.log"], "--poll-interval"),
        (["tail", "--state", "{tmp}", "--grace", "-inf", "x.log"], "--grace"),
        (["check", "--bogus", "x"], "--bogus"),
        (["replay"], "AUDIT_LOG"),
    ],
)
def test_a_bad_flag_value_is_a_one_line_usage_error(tmp_path: Path, args: list[str], flag: str) -> None:
    result = cli(*(str(tmp_path) if a == "{tmp}" else a for a in args))
    assert flag in one_line_error(result, 2)


def _bad_file(tmp_path: Path, kind: str) -> str:
    """A path that cannot be read as a file: missing, a directory, or a socket (ENXIO even for root)."""
    path = tmp_path / kind
    if kind == "directory":
        path.mkdir()
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()
    return str(path)


@pytest.mark.parametrize("kind", ["missing", "directory", "socket"])
@pytest.mark.parametrize(
    "args",
    [
        ["check", "--allowlist", "{bad}", "x"],
        ["replay", "{bad}"],
        ["replay", "--allowlist", "{bad}", "{log}"],
        ["replay", "--baseline", "{bad}/new/baseline.db", "{log}"],
        ["suggest", "--audit-log", "{bad}"],
        ["suggest", "--audit-log", "{log}", "--allowlist", "{bad}"],
        ["apiserver-config", "--service-ip", "10.0.0.1", "--certs-dir", "{bad}"],
        ["serve", "--tls-cert", "{bad}", "--tls-key", "{bad}"],
        ["tail", "--state", "{bad}/state", "--allowlist", "{bad}", "{log}"],
    ],
    ids=lambda a: " ".join(a[:2]) if isinstance(a, list) else a,
)
def test_a_bad_file_is_a_one_line_error(tmp_path: Path, args: list[str], kind: str) -> None:
    bad = _bad_file(tmp_path, kind)
    given = [a.replace("{bad}", bad).replace("{log}", str(AUDIT_LOGS[1])) for a in args]
    one_line_error(cli(*given), 1)


def test_certs_never_write_through_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    out = tmp_path / "certs"
    out.mkdir()
    for name in ("ca.key.tmp", "tls.key.tmp", "ca.crt.tmp", "tls.key"):
        (out / name).symlink_to(victim)
    result = cli("certs", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "untouched\n"
    for key in ("ca.key", "tls.key"):
        assert not (out / key).is_symlink()
        assert (out / key).stat().st_mode & 0o777 == 0o600
        assert b"PRIVATE KEY" in (out / key).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["ca.crt", "ca.key", "tls.crt", "tls.key", "ca.key.tmp", "tls.key.tmp", "ca.crt.tmp"]
    )


@pytest.mark.parametrize("kind", ["directory", "socket"])
def test_a_baseline_that_is_not_a_database_file_is_a_one_line_error(tmp_path: Path, kind: str) -> None:
    result = cli("replay", "--baseline", _bad_file(tmp_path, kind), str(AUDIT_LOGS[1]))
    assert "baseline database" in one_line_error(result, 1)


def test_the_replay_summary_escapes_what_a_malformed_line_chose(tmp_path: Path) -> None:
    """The file name and the line are the attacker's: ESC]0;...BEL retitles a terminal. The reason
    names the field by its place in the schema (``annotations.*``), never by the key the line chose."""
    event = json.loads(AUDIT_LOGS[1].read_bytes().splitlines()[0])
    event["annotations"] = {"\x1b]0;pwned\x07\u202e": 1}
    log = tmp_path / "audit\x1b[2J.log"
    log.write_text(json.dumps(event) + "\n" + "403 \x1b[41m junk\n")
    result = cli("replay", str(log))
    assert result.returncode == 0, result.stderr
    err = result.stderr.decode()
    assert "2 malformed skipped" in err
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err
    assert "audit\\x1b[2J.log:1: invalid audit event: annotations.*: " in err and "pwned" not in err


@pytest.mark.parametrize("kind", ["file", "socket"])
def test_certs_into_something_that_is_not_a_directory_is_a_one_line_error(tmp_path: Path, kind: str) -> None:
    out = tmp_path / kind
    if kind == "file":
        out.write_text("x")
    else:
        _bad_file(tmp_path, kind)
    assert str(out) in one_line_error(cli("certs", "--out", str(out)), 1)


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "--user", "u", "kubectl/v1.30.0"],
        ["replay", "--workers", "2", "--window", "60", "--format", "eks", "a.log"],
        ["certs", "--out", "d", "--days", "30"],
        ["apiserver-config", "--service-ip", "10.0.0.9", "--port", "8443"],
        ["serve", "--tls-cert", "c", "--tls-key", "k", "--log-level", "debug"],
        ["tail", "--state", "s", "--source", "cloudwatch:/aws/eks/c/cluster", "--log-level", "warning"],
        ["suggest", "--audit-log", "a.log", "--format", "gke"],
    ],
)
def test_a_command_parses_alike_with_only_its_own_arguments_built(argv: list[str]) -> None:
    """main builds only the named command's arguments (the others' defaults import modules it
    never uses); what it parses and the top-level help are those of the whole parser."""
    from webhook.cli import _command, build_parser

    assert _command(argv) == argv[0]
    whole, own = build_parser(), build_parser(argv[0])
    assert vars(own.parse_args(argv)) == vars(whole.parse_args(argv))
    assert own.format_help() == whole.format_help()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint-namespace", "ns"], "--checkpoint-namespace needs --checkpoint-configmap"),
        (["--checkpoint-configmap", "Bad_Name"], "--checkpoint-configmap: 'Bad_Name' is not a Kubernetes"),
        (
            ["--checkpoint-configmap", "ok", "--checkpoint-namespace", "x."],
            "--checkpoint-namespace: 'x.' is not",
        ),
    ],
)
def test_tail_checkpoint_configmap_mistakes_are_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    result = cli("tail", "--state", str(tmp_path / "state"), *args, str(log))
    assert result.returncode == 1, result.stderr
    assert message in result.stderr.decode() and result.stderr.decode().count("\n") == 1
    assert not (tmp_path / "state").exists()
