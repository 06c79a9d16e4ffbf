from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from webhook.core import useragent


def test_kubectl_agent_is_split_into_products_and_comment() -> None:
    ua = useragent.parse("kubectl/v1.30.2 (linux/amd64) kubernetes/3968350")
    assert ua.products == (
        useragent.Product("kubectl", "v1.30.2"),
        useragent.Product("kubernetes", "3968350"),
    )
    assert ua.comments == ("linux/amd64",)
    assert ua.well_formed


def test_client_go_shape_is_recognised() -> None:
    cg = useragent.parse("kube-scheduler/v1.20.2 (linux/arm64) kubernetes/faecb19").client_go
    assert cg == useragent.ClientGo("kube-scheduler", "v1.20.2", "linux", "arm64", "faecb19")
    assert not cg.unversioned


def test_unversioned_client_go_build_is_flagged_unversioned() -> None:
    cg = useragent.parse("peirates/v0.0.0 (linux/amd64) kubernetes/$Format").client_go
    assert cg is not None and cg.binary == "peirates" and cg.unversioned


def test_non_client_go_agents_have_no_client_go_fields() -> None:
    assert useragent.parse("python-requests/2.31.0").client_go is None
    assert useragent.parse("Go-http-client/1.1").client_go is None
    browser = useragent.parse("Mozilla/5.0 (X11; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/115.0")
    assert [p.name for p in browser.products] == ["Mozilla", "Gecko", "Firefox"]
    assert browser.comments == ("X11; Linux x86_64; rv:109.0",)


def test_nested_comments_and_unclosed_comment() -> None:
    assert useragent.parse("a/1 (x (y) z)").comments == ("x (y) z",)
    unclosed = useragent.parse("a/1 (never closed")
    assert not unclosed.well_formed
    assert unclosed.primary == useragent.Product("a", "1")


def test_apiserver_truncated_agent_is_marked() -> None:
    agent = "A" * 1024 + useragent.TRUNCATION_MARK
    assert useragent.parse(agent).truncated
    assert not useragent.parse("kubectl/v1").truncated


def test_display_escapes_bidi_zero_width_and_controls() -> None:
    shown = useragent.display("kubectl/v1.30.0 \u202e(evil) \u200b\x1b[31m\r\n")
    assert shown == "kubectl/v1.30.0 \\u202e(evil) \\u200b\\x1b[31m\\x0d\\x0a"


def test_display_escapes_quotes_and_backslashes_so_quoting_is_safe() -> None:
    assert useragent.display('x" injected \\') == 'x\\" injected \\\\'


def test_display_caps_length_and_marks_the_cut() -> None:
    shown = useragent.display("A" * 5000, max_len=50)
    assert len(shown) == 50 and shown.endswith("...")


def test_display_of_missing_agent() -> None:
    assert useragent.display(None) == "<none>"


def test_unicode_letters_are_not_unsafe() -> None:
    assert not useragent.has_unsafe_chars("client/1.0 (日本語; Ünïcode)")
    assert useragent.has_unsafe_chars("client/1.0\u2066")
    assert useragent.has_unsafe_chars("client/1.0\u00a0x")


def test_version_tuple() -> None:
    assert useragent.version_tuple("v1.30.2") == (1, 30, 2)
    assert useragent.version_tuple("2.31.0-rc1") == (2, 31, 0)
    assert useragent.version_tuple("3.63") == (3, 63)
    assert useragent.version_tuple("$Format") is None


@given(st.text(max_size=600), st.integers(min_value=3, max_value=300))
def test_display_is_always_inert_and_bounded(agent: str, cap: int) -> None:
    shown = useragent.display(agent, max_len=cap)
    assert len(shown) <= cap
    for ch in shown:
        assert ch != "\ufffd"
        assert ch == " " or unicodedata.category(ch) not in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"}


@given(st.text(max_size=300))
def test_parse_never_raises(agent: str) -> None:
    ua = useragent.parse(agent)
    assert ua.raw == agent


def test_display_escapes_invisible_and_look_alike_characters() -> None:
    shown = useragent.display("\u212aubectl/v1\u034f\u3164\ufe0f \uff4b \u2800")
    assert shown == "\\u212aubectl/v1\\u034f\\u3164\\ufe0f \\uff4b \\u2800"
    assert useragent.display("client/1.0 (日本語; Ünïcode)") == "client/1.0 (日本語; Ünïcode)"


# --- cut: the apiserver's 1,024-byte limit ------------------------------------------------------


def test_cut_keeps_agents_up_to_1024_bytes_and_cuts_longer_ones_as_the_apiserver_does() -> None:
    assert useragent.cut("a" * 1024) == "a" * 1024
    assert useragent.cut("a" * 1025) == "a" * 1024 + "...TRUNCATED"
    assert useragent.cut("é" * 512) == "é" * 512  # 1,024 bytes, 512 characters


def test_cut_splitting_a_character_leaves_one_replacement_per_byte_like_go() -> None:
    # Go slices bytes (ua[:1024]); encoding/json writes each invalid byte as U+FFFD.
    assert useragent.cut("a" * 1023 + "€€") == "a" * 1023 + "\ufffd...TRUNCATED"
    assert useragent.cut("a" * 1022 + "€€") == "a" * 1022 + "\ufffd\ufffd...TRUNCATED"
    assert useragent.cut("a" * 1021 + "€€") == "a" * 1021 + "€...TRUNCATED"
    assert useragent.cut("a" * 1021 + "😀😀") == "a" * 1021 + "\ufffd" * 3 + "...TRUNCATED"


def test_cut_is_idempotent_so_an_event_the_apiserver_cut_reads_back_unchanged() -> None:
    for agent in ("a" * 1021 + "😀😀", "a" * 1022 + "😀😀", "a" * 1023 + "€€", "b" * 5000):
        once = useragent.cut(agent)
        assert useragent.cut(once) == once
