"""``replay --report`` and ``suggest --report`` opened in a real headless Chromium (Debian's
``chromium``): the page renders without a console error, the screenshot shows the chart, and
agents holding markup or bidi characters are shown as text, never run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import png
import pytest

from tests.e2e.tools import ToolError, ensure_chromium
from tests.integration.browser import Browser
from tests.integration.test_table_output import ALLOWLIST, SAMPLE, _refusal

ROOT = Path(__file__).resolve().parents[2]
FIRST_SERIES = (0xC0, 0x39, 0x2B)  # charts.js's first colour, the most refused agent
HOSTILE = [
    "<script>window.__pwned=1</script>",
    '"><img src=x onerror="window.__pwned=2">',
    "kubectl/v1.30.0 \u202e(evil)",
    "</script><script>window.__pwned=3</script>",
]


@pytest.fixture(scope="session")
def chromium() -> Path:
    try:
        return ensure_chromium(sys.stderr)
    except ToolError as exc:
        pytest.fail(f"could not get chromium: {exc}", pytrace=False)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        check=False,
    )


def _replay_report(tmp_path: Path, *logs: str, allowlist: str | None = None) -> Path:
    page = tmp_path / "hunt.html"
    extra = ["--allowlist", allowlist] if allowlist else []
    done = _cli("replay", "-o", "json", *extra, "--report", str(page), *logs)
    assert done.returncode == 0, done.stderr
    assert f"wrote {page}" in done.stderr
    return page


def _hostile_log(tmp_path: Path) -> tuple[str, str]:
    log = tmp_path / "hostile.log"
    log.write_text("".join(_refusal(agent, n) + "\n" for n, agent in enumerate(HOSTILE * 3, 1)))
    allowlist = tmp_path / "allowlist.yaml"
    allowlist.write_text(ALLOWLIST)
    return str(log), str(allowlist)


def _chart_pixels(page: Browser, canvas_id: str, colour: tuple[int, int, int]) -> int:
    """Pixels of ``colour`` inside the canvas's box on the screenshot."""
    box = page.evaluate(
        f"(() => {{ const r = document.getElementById({json.dumps(canvas_id)}).getBoundingClientRect();"
        " return [r.left, r.top, r.width, r.height]; })()"
    )
    left, top, width, height = (round(v) for v in box)
    assert width > 300 and height > 200, box
    shot_width, shot_height, rows, _ = png.Reader(bytes=page.screenshot()).asRGBA8()
    assert top + height <= shot_height and left + width <= shot_width, (box, shot_width, shot_height)
    found = 0
    for y, row in enumerate(rows):
        if top <= y < top + height:
            for x in range(left, left + width):
                if tuple(row[4 * x : 4 * x + 3]) == colour:
                    found += 1
    return found


def test_replay_report_renders_without_errors_and_the_screenshot_shows_the_chart(
    chromium: Path, tmp_path: Path
) -> None:
    page_file = _replay_report(tmp_path, *SAMPLE)
    with Browser(chromium) as page:
        page.open(page_file)
        assert page.evaluate("document.body.getAttribute('data-charts-ready')") == "1"
        assert page.problems == []
        assert _chart_pixels(page, "timeline", FIRST_SERIES) > 500  # bars drawn, not a blank canvas
        assert "DejaVu Sans" in page.evaluate("getComputedStyle(document.body).fontFamily")  # CSS applied
        text = page.evaluate("document.getElementById('read').innerText")
        assert "1630" in text and "2026-11-27T18:09:37Z" in text
        agents = page.evaluate(
            "[...document.querySelectorAll('#agents tr')].slice(1).map(r => r.cells[1].innerText)"
        )
        assert {"listed", "unlisted", "denied"} <= set(agents)
        by_rule = page.evaluate("document.getElementById('by-rule').innerText")
        assert "known-bad-agent" in by_rule and "unusual-agent-forbidden" in by_rule
        # self-contained: nothing was or could be fetched
        assert page.evaluate("performance.getEntriesByType('resource').length") == 0
        assert page.evaluate("document.querySelectorAll('[src], [href], link, iframe').length") == 0
        csp = page.evaluate("document.querySelector('meta[http-equiv=\"Content-Security-Policy\"]').content")
        assert csp.startswith("default-src 'none';")


def test_agents_holding_markup_or_bidi_are_shown_escaped_and_never_run(
    chromium: Path, tmp_path: Path
) -> None:
    log, allowlist = _hostile_log(tmp_path)
    page_file = _replay_report(tmp_path, log, allowlist=allowlist)
    with Browser(chromium) as page:
        page.open(page_file)
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert page.problems == []  # no blocked script either: nothing tried to run
        assert page.evaluate("document.querySelectorAll('img, [onerror]').length") == 0
        assert page.evaluate("document.scripts.length") == 3  # the chart data, Chart.js, charts.js
        cells = page.evaluate("[...document.querySelectorAll('#agents td.agent')].map(td => td.textContent)")
        assert "<script>window.__pwned=1</script>" in cells
        assert '\\"><img src=x onerror=\\"window.__pwned=2\\">' in cells
        assert "kubectl/v1.30.0 \\u202e(evil)" in cells  # visibly escaped
        assert not page.evaluate("document.body.innerText.includes('\\u202e')")
        assert _chart_pixels(page, "timeline", FIRST_SERIES) > 100


def test_suggest_report_renders_the_proposal_and_its_chart(chromium: Path, tmp_path: Path) -> None:
    page_file = tmp_path / "suggest.html"
    args = [arg for log in SAMPLE for arg in ("--audit-log", log)]
    done = _cli("suggest", *args, "--min-requests", "5", "--report", str(page_file))
    assert done.returncode == 0, done.stderr
    with Browser(chromium) as page:
        page.open(page_file)
        assert page.evaluate("document.body.getAttribute('data-charts-ready')") == "1"
        assert page.problems == []
        assert _chart_pixels(page, "products", (0x27, 0xAE, 0x60)) > 500  # "allowed" bars
        proposal = page.evaluate("document.getElementById('proposal').innerText")
        assert "kubectl/*" in proposal
        assert "agents:" in page.evaluate("document.getElementById('yaml').innerText")
        assert "\u202e" not in page.evaluate("document.body.innerText")


def test_without_jinja2_the_report_is_one_line_before_any_reading(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "jinja2"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no jinja2 here')\n")
    env = {"PYTHONPATH": f"{shadow.parent}:{ROOT}", "PATH": "/usr/bin:/bin"}
    done = _cli("replay", "--report", str(tmp_path / "r.html"), *SAMPLE, env=env)
    assert done.returncode == 1
    assert done.stdout == ""  # refused before reading: no finding printed
    assert done.stderr.splitlines() == [
        "ua-sentinel replay: --report needs Jinja2: pip install 'ua-sentinel[report]'"
    ]
