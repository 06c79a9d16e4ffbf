"""The block search must select exactly the lines the per-line test selects (a superset of the
lines that can give a finding), whatever the agents' JSON spelling."""

from __future__ import annotations

import pickle

import pytest
import re2

from webhook.core.allowlist import Allowlist, default_allowlist
from webhook.core.audit import parse_event
from webhook.detect.prefilter import BLOCK_FORMS, REFUSAL_FORM, STATIC_NEEDLES, VERDICT_NEEDLE, Prefilter

DEFAULT = default_allowlist()


def line(agent_json: bytes, code: int = 200, spaced: bool = False) -> bytes:
    """An event line with ``agent_json`` written as is between the agent's quotes."""
    sep = b": " if spaced else b":"
    return (
        b'{"kind"' + sep + b'"Event","stage"' + sep + b'"ResponseComplete","auditID"' + sep + b'"x",'
        b'"user"' + sep + b'{"username"' + sep + b'"mallory"},"userAgent"' + sep + b'"' + agent_json + b'",'
        b'"responseStatus"' + sep + b'{"code"' + sep + str(code).encode() + b"}}"
    )


def spans(prefilter: Prefilter, lines: list[bytes]) -> list[tuple[int, int]]:
    block = b"".join(raw + b"\n" for raw in lines)
    return prefilter.hit_spans(block, 0, len(block))


def expected(prefilter: Prefilter, lines: list[bytes]) -> list[tuple[int, int]]:
    out, pos = [], 0
    for raw in lines:
        if prefilter.matches(raw):
            out.append((pos, pos + len(raw)))
        pos += len(raw) + 1
    return out


def test_every_needle_has_a_block_form() -> None:
    assert set(BLOCK_FORMS) == set(STATIC_NEEDLES)
    assert VERDICT_NEEDLE.endswith(BLOCK_FORMS[VERDICT_NEEDLE].encode())


@pytest.mark.parametrize("needle", [b'"code":403', b'"code": 403'])
@pytest.mark.parametrize("after", [b",", b"}", b" }", b"\t,", b"\r}", b".0}", b"e0}", b"E+0,", b"]"])
def test_the_refusal_form_matches_wherever_the_needle_ends_a_json_number(needle: bytes, after: bytes) -> None:
    assert (
        re2.search(BLOCK_FORMS[needle].encode(), b'{"a":"b","responseStatus":{' + needle + after) is not None
    )


@pytest.mark.parametrize(
    "text",
    [
        b'"auditID":"0403a1"',
        b'"auditID":"700efe41-d0a8-403e-bd27"',
        b'"auditID":"5eab403e05"',
        b'"t":"2026-11-27T00:00:00.403Z"',
        b'"code":4031}',
    ],
)
def test_the_refusal_form_skips_403_inside_other_tokens(text: bytes) -> None:
    assert re2.search(REFUSAL_FORM.encode(), text) is None


# (raw JSON of the agent, whether the built-in allowlist denies the decoded agent)
TRICKY = [
    (b"curl/8.4.0", True),
    (b"\\u0063url/7.1", True),  # an escaped ASCII letter hides the literal from a byte search
    (b'x\\"nmap\\"', True),  # escaped quotes before the literal
    (b"tools\\\\nmap.exe", True),
    (b"Python-urllib/3.11", True),  # globs ignore case
    (b"kubectl/v1.30.0 \xe2\x80\xae(evil)", False),  # raw UTF-8
    (b"kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07", False),
    (b'kubectl\\"/v1', False),
]


@pytest.mark.parametrize(("agent_json", "denied"), TRICKY)
def test_the_decoded_verdict_of_each_tricky_agent(agent_json: bytes, denied: bool) -> None:
    agent = parse_event(line(agent_json)).user_agent
    assert (DEFAULT.decide(agent, user="mallory").verdict == "denied") is denied


@pytest.mark.parametrize("spaced", [False, True])
def test_a_block_selects_every_line_with_a_denied_or_escaped_agent(spaced: bool) -> None:
    prefilter = Prefilter(DEFAULT)
    lines = [line(agent, spaced=spaced) for agent, _ in TRICKY]
    lines += [line(b"kubelet/v1.20.2", code=403, spaced=spaced), line(b"kubelet/v1.20.2", spaced=spaced)]
    got = spans(prefilter, lines)
    assert got == expected(prefilter, lines)
    must = {i for i, (agent, denied) in enumerate(TRICKY) if denied or b"\\" in agent or not agent.isascii()}
    assert set(selected(prefilter, lines)) == must | {len(TRICKY)}


def selected(prefilter: Prefilter, lines: list[bytes]) -> list[int]:
    """Indexes of the lines the block search selects."""
    starts = [sum(len(raw) + 1 for raw in lines[:i]) for i in range(len(lines))]
    return [starts.index(a) for a, _ in spans(prefilter, lines)]


def test_a_line_is_selected_once_however_many_needles_it_holds() -> None:
    prefilter = Prefilter(DEFAULT)
    both = line(b"curl/8", code=403)[:-1] + b',"annotations":{"w/user-agent-verdict":"denied"}}'
    assert selected(prefilter, [line(b"kubelet/1"), both]) == [1]


@pytest.mark.parametrize("spaced", [False, True])
def test_refusals_are_selected_in_compact_and_spaced_blocks(spaced: bool) -> None:
    lines = [line(b"kubelet/1", spaced=True), line(b"kubelet/1", code=403, spaced=True), line(b"x", code=403)]
    assert selected(Prefilter(), lines) == [1, 2]


def test_without_denied_entries_only_the_needles_select() -> None:
    prefilter = Prefilter(Allowlist.from_yaml("agents: [kubectl/*]"))
    assert prefilter.source is None
    assert selected(prefilter, [line(b"curl/8"), line(b"curl/8", code=403)]) == [1]


def test_a_pickled_prefilter_selects_the_same_lines() -> None:
    prefilter = Prefilter(DEFAULT)
    lines = [line(agent) for agent, _ in TRICKY]
    assert spans(pickle.loads(pickle.dumps(prefilter)), lines) == spans(prefilter, lines)


@pytest.mark.parametrize("allowlist", [DEFAULT, Allowlist.from_yaml("agents: [kubectl/*]")])
def test_verdict_lines_are_selected_with_and_without_denied_entries(allowlist: Allowlist) -> None:
    verdict = line(b"kubelet/1")[:-1] + b',"annotations":{"w.example/user-agent-verdict":"unlisted"}}'
    lines = [line(b"kubelet/1"), verdict, line(b"curl/8"), line(b"kubelet/2", code=403)]
    denied = [2] if allowlist is DEFAULT else []
    assert selected(Prefilter(allowlist), lines) == sorted([1, 3, *denied])


@pytest.mark.parametrize("agent", [b"(x) peirates/1.0", b"@peirates/1.0", b"[kdigger/2", b"(linux) PEIRATES"])
def test_a_denied_product_after_junk_the_parser_skips_is_selected(agent: bytes) -> None:
    assert DEFAULT.decide(parse_event(line(agent)).user_agent, user="mallory").verdict == "denied"
    assert selected(Prefilter(DEFAULT), [line(b"kubelet/1"), line(agent)]) == [1]
    assert Prefilter(DEFAULT).matches(line(agent))


@pytest.mark.parametrize("end", [b"", b"\r"])
def test_a_refusal_spelled_with_space_before_the_colon_is_selected_whatever_the_line_end(end: bytes) -> None:
    refusal = line(b"kubelet/1", code=403).replace(b'"code":403', b'"code" : 403') + end
    assert Prefilter().matches(refusal)
    assert Prefilter(DEFAULT).matches(line(b"x").replace(b'"userAgent":', b'"userAgent" : ') + end) is False
    assert Prefilter(DEFAULT).matches(line(b"curl/8").replace(b'"userAgent":', b'"userAgent" : ') + end)
