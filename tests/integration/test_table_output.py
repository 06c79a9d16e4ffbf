"""``replay`` and ``tail`` as a person at a terminal sees them: a table on a terminal, JSON lines
into a pipe, ``-o`` deciding either way, progress on a terminal's stderr; run under a real
pseudo-terminal."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.terminal import Terminal, run

DATA = Path(__file__).resolve().parents[1] / "data" / "audit"
SAMPLE = [str(DATA / "audit-2026-11-27T18-10-45.450.log"), str(DATA / "audit.log")]
HEADER = ["TIME", "RULE", "SEVERITY", "CLUSTER", "USER", "AGENT", "VERBS/RESOURCES", "COUNT"]
ESCAPE_AGENT = "evil\x1b[2J\x1b]0;pwned\x07\u202egnp.exe"
ALLOWLIST = 'agents: ["kubectl/*"]\n'


def _refusal(agent: str, n: int) -> str:
    return json.dumps(
        {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata",
            "auditID": f"00000000-0000-0000-0000-{n:012d}",
            "stage": "ResponseComplete",
            "requestURI": "/api/v1/namespaces/default/secrets",
            "verb": "list",
            "user": {"username": "mallory", "uid": "1002", "groups": ["system:authenticated"]},
            "sourceIPs": ["10.0.0.9"],
            "userAgent": agent,
            "objectRef": {"resource": "secrets", "namespace": "default", "apiVersion": "v1"},
            "responseStatus": {"metadata": {}, "status": "Failure", "reason": "Forbidden", "code": 403},
            "requestReceivedTimestamp": f"2026-11-27T18:10:{n:02d}.000000Z",
            "stageTimestamp": f"2026-11-27T18:10:{n:02d}.001000Z",
            "annotations": {"authorization.k8s.io/decision": "forbid", "authorization.k8s.io/reason": ""},
        }
    )


def _files(tmp_path: Path) -> tuple[str, str]:
    log = tmp_path / "audit.log"
    log.write_text(_refusal(ESCAPE_AGENT, 1) + "\n" + _refusal("python-requests/2.31.0", 2) + "\n")
    allowlist = tmp_path / "allowlist.yaml"
    allowlist.write_text(ALLOWLIST)
    return str(log), str(allowlist)


def _table_rows(stdout: str) -> list[list[str]]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines and lines[0].split() == HEADER, stdout
    return [line.split() for line in lines[1:]]


def _json_lines(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_replay_on_a_terminal_prints_a_table_with_one_row_per_finding() -> None:
    code, stdout, _ = run("replay", "--workers", "1", *SAMPLE)
    assert code == 0
    piped = _json_lines(run("replay", "--workers", "1", *SAMPLE, stdout_tty=False)[1])
    rows = _table_rows(stdout)
    assert len(rows) == len(piped) == 15
    first = rows[0]
    assert first[:2] == ["2026-11-27", "18:09:37"]  # first seen, to the second
    assert first[2:6] == ["known-bad-agent", "high", "-", "admin"]  # no cluster name: "-"
    assert first[-1] == "1"
    assert "\u202e" not in stdout and "kubectl/v1.30.0 \\u202e(evil)" in stdout


def test_replay_into_a_pipe_writes_json_lines() -> None:
    code, stdout, _ = run("replay", "--workers", "1", *SAMPLE, stdout_tty=False)
    assert code == 0
    findings = _json_lines(stdout)
    assert len(findings) == 15 and "TIME" not in stdout


def test_output_flag_overrides_what_stdout_is(tmp_path: Path) -> None:
    log, allowlist = _files(tmp_path)
    _, on_terminal, _ = run("replay", "-o", "json", "--allowlist", allowlist, log)
    assert [f["user"]["name"] for f in _json_lines(on_terminal)] == ["mallory", "mallory"]  # type: ignore[index]
    _, into_pipe, _ = run("replay", "-o", "table", "--allowlist", allowlist, log, stdout_tty=False)
    assert len(_table_rows(into_pipe)) == 2
    _, wide, _ = run("replay", "-o", "wide", "--allowlist", allowlist, log, stdout_tty=False)
    header, *rows = [line.split() for line in wide.splitlines()]
    assert header == [*HEADER, "VERDICT", "SOURCE", "FINDING", "SEQ"]
    ids = [f["event"]["id"] for f in _json_lines(on_terminal)]  # type: ignore[index]
    assert [row[-2] for row in rows] == ids and {row[-3] for row in rows} == {"10.0.0.9"}


def test_an_agent_holding_terminal_escapes_and_bidi_is_shown_escaped(tmp_path: Path) -> None:
    log, allowlist = _files(tmp_path)
    _, stdout, _ = run("replay", "-o", "wide", "--allowlist", allowlist, log)
    assert "\x1b" not in stdout and "\x07" not in stdout and "\u202e" not in stdout
    assert "evil\\x1b[2J\\x1b]0;pwned\\x07\\u202egnp.exe" in stdout


def test_long_cells_are_cut_with_an_ellipsis_and_columns_stay_aligned(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    agents = ["漢字" * 40, "A" * 200]  # wide characters take two columns each
    log.write_text("".join(_refusal(agent, n) + "\n" for n, agent in enumerate(agents, 1)))
    allowlist = tmp_path / "allowlist.yaml"
    allowlist.write_text(ALLOWLIST)
    _, stdout, _ = run("replay", "--allowlist", str(allowlist), str(log))
    header, *rows = stdout.splitlines()
    count_at = header.index("COUNT") + len("COUNT")
    from wcwidth import wcswidth

    assert len(rows) == 2
    for row in rows:
        assert "…" in row
        assert wcswidth(row) == count_at  # the count column ends where its header does


def test_progress_shows_on_a_terminal_stderr_and_is_cleared_before_the_summary() -> None:
    _, _, stderr = run("replay", "--workers", "1", *SAMPLE, stdout_tty=False)
    assert "replay: file 1/2" in stderr and "replay: file 2/2" in stderr
    assert "MB/s" in stderr and "findings" in stderr
    assert "\r\x1b[Kua-sentinel replay: 1630 lines" in stderr  # the line erased, then the summary
    _, _, piped = run("replay", "--workers", "1", *SAMPLE, stdout_tty=False, stderr_tty=False)
    assert "\x1b" not in piped and "\r" not in piped and piped.startswith("ua-sentinel replay: 1630 lines")


def test_on_one_terminal_every_table_row_starts_on_a_clean_line() -> None:
    """stdout and stderr on one screen: the progress line is erased before each row is printed."""
    term = Terminal("replay", "--workers", "1", *SAMPLE, same_tty=True)
    assert term.finish() == 0
    assert "replay: file 1/2" in term.stdout  # the progress line was drawn
    screen = [line.rsplit("\r", 1)[-1].replace("\x1b[K", "") for line in term.stdout.split("\n")]
    assert screen[0].split() == HEADER
    assert [line.split()[2] for line in screen[1:16]] == [
        "known-bad-agent",
        *["unusual-agent-forbidden"] * 3,
        "known-bad-agent",
        *["unusual-agent-forbidden"] * 2,
        *["known-bad-agent"] * 2,
        *["unusual-agent-forbidden"] * 4,
        *["known-bad-agent"] * 2,
    ]
    assert screen[16].startswith("ua-sentinel replay: 1630 lines")


def test_tail_on_a_terminal_prints_the_table_and_into_a_pipe_json(tmp_path: Path) -> None:
    log, allowlist = _files(tmp_path)
    common = [
        "tail",
        "--from-start",
        "--allowlist",
        allowlist,
        "--baseline-days",
        "0",
        "--poll-interval",
        "0.05",
    ]
    term = Terminal(*common, "--state", str(tmp_path / "state-tty"), log)
    try:
        term.wait_for(lambda t: "python-requests/2.31.0" in t.stdout, "table row on the terminal")
    finally:
        assert term.stop() == 0
    rows = _table_rows(term.stdout)
    assert [row[2] for row in rows] == ["unusual-agent-forbidden"] * 2
    assert "\x1b" not in term.stdout and "evil\\x1b[2J" in term.stdout

    piped = Terminal(*common, "--state", str(tmp_path / "state-pipe"), log, stdout_tty=False)
    try:
        piped.wait_for(lambda t: len(_json_lines(t.stdout)) == 2, "two JSON lines in the pipe")
    finally:
        assert piped.stop() == 0
