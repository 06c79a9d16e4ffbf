"""admission.py without a server: parsing, verdicts per mode, warnings, rendering."""

from __future__ import annotations

import ast
import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.conftest import DATA
from tests.integration.traffic import admission, recorded
from webhook.core.allowlist import MODES, Allowlist, AnnotatedVerdict
from webhook.serve import admission as adm
from webhook.serve.join import JoinResult, Pending

ALLOWLIST = Allowlist.from_yaml('agents: ["kubectl/*"]\ndenied: [{product: peirates}]', source="test")
KUBECTL = "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07"


def join(*agents: str | None) -> JoinResult:
    key = ("dev-alice", "1003", "", "configmaps", "", "team", "", "create")
    return JoinResult(tuple(Pending(f"id{i}", a, key, float(i), False) for i, a in enumerate(agents)))


def request(seq: int = 1405, **changes: Any) -> adm.AdmissionRequest:
    body = admission(seq)
    body["request"].update(changes)
    return adm.parse_review(json.dumps(body).encode()).request


def warn_header(text: str) -> str:
    """What kube-apiserver sends for one admission warning (k8s.io/apimachinery NewWarningHeader)."""
    quoted = "".join("\\" + ch if ch in '"\\' else ch for ch in text)
    return f'299 - "{quoted}"'


# --- parsing -------------------------------------------------------------------------------


def test_parses_the_recorded_review_without_touching_the_object() -> None:
    review = adm.parse_review(json.dumps(admission(1405)).encode())
    assert review.api_version == "admission.k8s.io/v1"
    assert review.request.uid == "969442ec-d0f8-4d3f-a6c1-e1dca5f86423"
    assert review.request.user_info.username == "dev-alice"
    assert not hasattr(review.request, "object")


def test_v1beta1_is_accepted() -> None:
    body = admission(1405)
    body["apiVersion"] = "admission.k8s.io/v1beta1"
    assert adm.parse_review(json.dumps(body).encode()).api_version == "admission.k8s.io/v1beta1"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"kind": "Pod", "apiVersion": "admission.k8s.io/v1", "request": {}}', "kind"),
        (b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v2"}', "apiVersion"),
        (b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}', "request"),
    ],
)
def test_malformed_reviews_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(adm.ReviewError, match=reason):
        adm.parse_review(body)


def test_missing_or_empty_uid_is_an_error() -> None:
    body = admission(1405)
    del body["request"]["uid"]
    with pytest.raises(adm.ReviewError, match=r"request\.uid"):
        adm.parse_review(json.dumps(body).encode())
    body["request"]["uid"] = ""
    with pytest.raises(adm.ReviewError, match=r"request\.uid"):
        adm.parse_review(json.dumps(body).encode())


def test_a_huge_embedded_object_of_any_shape_is_fine() -> None:
    body = admission(1568)
    body["request"]["object"] = {"weird": [1, "x" * 100_000, {"nested": None}]}
    body["request"]["oldObject"] = "not even an object"
    assert adm.parse_review(json.dumps(body).encode()).request.name == "p1"


RECORDED_SEQS = [r.seq for r in recorded() if r.route == "/validate"]


def whole_parse(body: bytes) -> adm.AdmissionReview | str:
    """pydantic on the whole body, the reference the skimming parser must agree with."""
    try:
        return adm.AdmissionReview.model_validate_json(body)
    except ValidationError as exc:
        return str(exc.errors(include_url=False)[0]["loc"])


def padded(body: bytes) -> bytes:
    """The same review, made long enough to be skimmed (an unknown top-level key is ignored)."""
    assert body.endswith(b"}")
    return body[:-1] + b', "zz-padding": "' + b"x" * adm.SKIM_FROM + b'"}'


def skimmed_parse(body: bytes) -> adm.AdmissionReview | str:
    try:
        return adm.parse_review(padded(body))
    except adm.ReviewError as exc:
        return str(exc)


@pytest.mark.parametrize(
    "body",
    [
        b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":' * 2000,
        b"[" * 100_000 + b"]" * 100_000,
        b"\xef\xbb\xbf{}",
        b'{"a":' + b"9" * 100_000 + b"}",
    ],
)
def test_bodies_the_skim_cannot_take_still_get_a_review_error(body: bytes) -> None:
    with pytest.raises(adm.ReviewError, match=r"body is not JSON|invalid AdmissionReview"):
        adm.parse_review(body)


def nested(depth: int, shape: str) -> Any:
    """A JSON value ``depth`` levels deep, built without recursion (json.dumps would recurse)."""
    opening, closing = ("[", "]") if shape == "list" else ('{"a":', "}")
    return orjson.Fragment((opening * depth + "0" + closing * depth).encode())


@pytest.mark.parametrize("depth", [200, 1000, 100_000])
@pytest.mark.parametrize("shape", ["list", "map"])
@pytest.mark.parametrize("where", ["object", "oldObject"])
@pytest.mark.parametrize("pad", [0, adm.SKIM_FROM], ids=["small", "large"])
def test_an_object_nested_at_any_depth_still_gives_the_header(
    depth: int, shape: str, where: str, pad: int
) -> None:
    """The verdict needs only the header: nesting inside the objects never costs it (issue 12, 4)."""
    body = admission(1405)
    body["request"][where] = {"data": nested(depth, shape), "pad": "x" * pad, "s": '\\"}]{['}
    review = adm.parse_review(orjson.dumps(body))
    reference = adm.parse_review(json.dumps(admission(1405)).encode())
    # dryRun, written after the objects, may go unread: it is only logged.
    assert review.request.model_dump(exclude={"dry_run"}) == reference.request.model_dump(exclude={"dry_run"})


def test_a_deep_object_written_before_the_header_is_skipped_too() -> None:
    """Not the apiserver's order: every value is skipped in one pass, the header still read."""
    body = admission(1405)
    request = body.pop("request")
    request.pop("object")
    body = {"request": {"object": nested(10_000, "map"), **request}, **body}  # the apiserver's limit
    assert adm.parse_review(orjson.dumps(body)).request.name == request.get("name", "")


def test_skipping_a_crafted_body_is_bounded() -> None:
    """Past the budget a body not in the apiserver's order is refused (400), not read for seconds."""
    body = admission(1405)
    request = body.pop("request")
    request.pop("object")
    body = {"request": {"object": nested(100_000, "map"), **request}, **body}
    with pytest.raises(adm.ReviewError, match="body is not JSON"):
        adm.parse_review(orjson.dumps(body))


def test_nesting_outside_the_objects_is_still_refused() -> None:
    body = admission(1405)
    body["request"]["userInfo"] = nested(1000, "map")
    with pytest.raises(adm.ReviewError, match="body is not JSON"):
        adm.parse_review(orjson.dumps(body))


@pytest.mark.parametrize("seq", RECORDED_SEQS)
def test_skimmed_parse_equals_the_whole_parse_on_every_recorded_review(seq: int) -> None:
    body = json.dumps(admission(seq)).encode()
    assert adm.parse_review(padded(body)) == whole_parse(body)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_REQUEST_KEYS = [
    "uid",
    "operation",
    "userInfo",
    "name",
    "namespace",
    "resource",
    "subResource",
    "sub_resource",
    "requestResource",
    "requestSubResource",
    "dryRun",
    "object",
    "oldObject",
    "options",
]


@given(
    top=st.dictionaries(st.sampled_from(["apiVersion", "api_version", "kind", "request", "extra"]), _JSON),
    request_changes=st.dictionaries(st.sampled_from(_REQUEST_KEYS), _JSON, max_size=4),
    request_is_object=st.booleans(),
)
def test_skimmed_parse_agrees_with_the_whole_parse_on_any_review(
    top: dict[str, Any], request_changes: dict[str, Any], request_is_object: bool
) -> None:
    """Same review or an error about the same field, whatever the shape of the body."""
    body = admission(1405)
    body.update(top)
    if request_is_object:
        body["request"] = {**admission(1405)["request"], **request_changes}
    raw = json.dumps(body).encode()
    reference = whole_parse(raw)
    ours = skimmed_parse(raw)
    if isinstance(reference, adm.AdmissionReview):
        assert ours == reference
    else:
        assert isinstance(ours, str)
        where = ".".join(str(p) for p in ast.literal_eval(reference)) or "review"
        assert where in ours


def test_lookup_uses_request_resource_and_subresource() -> None:
    exec_lookup = adm.lookup_of(request(1581))
    assert (exec_lookup.operation, exec_lookup.resource, exec_lookup.subresource) == (
        "CONNECT",
        "pods",
        "exec",
    )
    converted = request(
        1405,
        resource={"group": "apps", "version": "v1", "resource": "deployments"},
        requestResource={"group": "extensions", "version": "v1beta1", "resource": "deployments"},
    )
    assert adm.lookup_of(converted).group == "extensions"


# --- verdicts ------------------------------------------------------------------------------


def test_listed_agent_is_allowed_with_annotations_only() -> None:
    outcome = adm.decide(request(), join(KUBECTL), ALLOWLIST, adm.Policy(mode="enforce"))
    assert outcome.allowed and outcome.warnings == ()
    assert outcome.annotations == {
        "user-agent-verdict": "listed",
        "user-agent": KUBECTL,
        "allowlist-hash": ALLOWLIST.hash,
    }


def test_warn_mode_warns_with_the_escaped_agent() -> None:
    outcome = adm.decide(request(), join("python-requests/2.31.0"), ALLOWLIST, adm.Policy(mode="warn"))
    assert outcome.allowed
    assert outcome.warnings == (
        'user agent "python-requests/2.31.0" is not on this cluster\'s allowlist; this request was recorded',
    )
    assert outcome.annotations["user-agent-verdict"] == "unlisted"


def test_observe_mode_only_annotates() -> None:
    outcome = adm.decide(request(), join("curl/8"), ALLOWLIST, adm.Policy(mode="observe"))
    assert outcome.allowed and outcome.warnings == ()
    assert outcome.annotations["user-agent-verdict"] == "unlisted"


def test_enforce_denies_unlisted_and_denied_agents_with_a_clear_message() -> None:
    policy = adm.Policy(mode="enforce")
    unlisted = adm.decide(request(), join("curl/8"), ALLOWLIST, policy)
    assert not unlisted.allowed
    assert (
        unlisted.message is not None
        and 'user agent "curl/8" is not on this cluster\'s allowlist' in unlisted.message
    )
    denied = adm.decide(request(), join("peirates/v0.0.0"), ALLOWLIST, policy)
    assert not denied.allowed and denied.annotations["user-agent-verdict"] == "denied"
    assert denied.message is not None and "known-bad" in denied.message


@pytest.mark.parametrize(
    ("user", "groups", "policy"),
    [
        ("admin", ["system:masters"], adm.Policy(mode="enforce")),
        ("system:node:n1", ["system:nodes"], adm.Policy(mode="enforce")),
        ("dev-alice", ["devs"], adm.Policy(mode="enforce", exempt_users=frozenset({"dev-alice"}))),
        ("dev-alice", ["devs"], adm.Policy(mode="enforce", exempt_groups=frozenset({"devs"}))),
    ],
)
def test_enforce_spares_exempt_users_and_groups(user: str, groups: list[str], policy: adm.Policy) -> None:
    req = request(userInfo={"username": user, "uid": "1", "groups": groups})
    outcome = adm.decide(req, join("curl/8"), ALLOWLIST, policy)
    assert outcome.allowed and outcome.exempt
    assert outcome.annotations["user-agent-verdict"] == "unlisted"
    assert outcome.warnings


def test_replaced_exempt_groups_no_longer_spare_the_defaults() -> None:
    req = request(userInfo={"username": "admin", "uid": "1", "groups": ["system:masters"]})
    policy = adm.Policy(mode="enforce", exempt_groups=frozenset({"breakglass"}))
    assert not adm.decide(req, join("curl/8"), ALLOWLIST, policy).allowed


def test_unknown_is_always_allowed_without_warning() -> None:
    for mode in MODES:
        outcome = adm.decide(request(), None, ALLOWLIST, adm.Policy(mode=mode))
        assert outcome.allowed and outcome.warnings == ()
        assert outcome.annotations == {"user-agent-verdict": "unknown", "allowlist-hash": ALLOWLIST.hash}
    before_load = adm.decide(request(), join("curl/8"), None, adm.Policy(mode="enforce"))
    assert before_load.allowed and before_load.verdict == "unknown"


def test_dry_run_gets_the_same_verdict() -> None:
    dry = adm.decide(request(dryRun=True), join("curl/8"), ALLOWLIST, adm.Policy(mode="enforce"))
    wet = adm.decide(request(dryRun=False), join("curl/8"), ALLOWLIST, adm.Policy(mode="enforce"))
    assert (dry.verdict, dry.allowed, dry.message) == (wet.verdict, wet.allowed, wet.message)


def test_ambiguous_join_answers_the_worst_verdict_and_says_so() -> None:
    outcome = adm.decide(request(), join(KUBECTL, "peirates/1", "curl/8"), ALLOWLIST, adm.Policy())
    assert outcome.verdict == "denied" and outcome.agent == "peirates/1"
    assert outcome.annotations["user-agent-join"].startswith("ambiguous: 3 pending requests with 3 different")
    plain = adm.decide(request(), join(KUBECTL), ALLOWLIST, adm.Policy())
    assert "user-agent-join" not in plain.annotations


SCOPED = Allowlist.from_yaml('agents: [{glob: "kc-scoped/*", users: ["dev-alice"]}]', source="test")


def _joined_as(authenticated: str, groups: tuple[str, ...] = ()) -> JoinResult:
    """One pending request whose RequestReceived names ``authenticated`` (for an impersonated
    write: the impersonator; the review names the impersonated user)."""
    key = ("dev-alice", "", "", "configmaps", "", "team", "", "create")
    return JoinResult(
        (Pending("id", "kc-scoped/v1.20.2", key, 0.0, False, user=authenticated, groups=groups),)
    )


def test_scopes_match_the_authenticated_user_not_the_impersonated_one() -> None:
    """README: scopes match the authenticated user. mallory writing as dev-alice is not dev-alice."""
    enforce = adm.Policy(mode="enforce")
    as_alice = request(userInfo={"username": "dev-alice", "groups": ["system:authenticated"]})
    borrowed = adm.decide(as_alice, _joined_as("mallory", ("devs",)), SCOPED, enforce)
    assert borrowed.verdict == "unlisted" and not borrowed.allowed
    own = adm.decide(as_alice, _joined_as("dev-alice", ("devs",)), SCOPED, enforce)
    assert own.verdict == "listed" and own.allowed


def test_enforce_settles_only_where_a_verdict_can_deny() -> None:
    alice = adm.UserInfo(username="dev-alice", groups=["devs"])
    masters = adm.UserInfo(username="admin", groups=["system:masters"])
    assert adm.Policy(mode="enforce").can_deny(alice)
    assert not adm.Policy(mode="enforce").can_deny(masters)
    assert not adm.Policy(mode="warn").can_deny(alice)


def test_missing_agent_is_unlisted_with_a_plain_warning() -> None:
    outcome = adm.decide(request(), join(None), ALLOWLIST, adm.Policy())
    assert outcome.verdict == "unlisted"
    assert outcome.annotations["user-agent"] == "<none>"
    assert outcome.warnings == ("this request sent no User-Agent; requests without one are recorded",)


def test_spoofing_agent_is_escaped_everywhere() -> None:
    agent = 'kubectl/v1.30.0 \u202e(evil) \u200b"\\\x1b[31m'
    outcome = adm.decide(request(), join(agent), ALLOWLIST, adm.Policy(mode="enforce"))
    texts = [*outcome.warnings, outcome.message or "", *outcome.annotations.values()]
    for text in texts:
        assert not any(ch in text for ch in "\u202e\u200b\x1b")
    assert outcome.annotations["user-agent"] == 'kubectl/v1.30.0 \\u202e(evil) \\u200b\\"\\\\\\x1b[31m'


@given(st.text(min_size=1, max_size=2000))
def test_warnings_stay_short_and_printable(agent: str) -> None:
    verdicts: tuple[AnnotatedVerdict, ...] = ("unlisted", "denied")
    for verdict in verdicts:
        text = adm.warning_text(verdict, agent)
        assert len(text) <= adm.WARNING_MAX
        assert not text.startswith("Warning:")
        assert all(ch.isprintable() for ch in text)


# --- rendering -----------------------------------------------------------------------------


def test_render_answers_in_the_request_version_with_its_uid() -> None:
    outcome = adm.decide(request(), join("curl/8"), ALLOWLIST, adm.Policy(mode="enforce"))
    for version in adm.API_VERSIONS:
        doc = orjson.loads(adm.render(version, "uid-1", outcome))
        assert doc["apiVersion"] == version and doc["kind"] == "AdmissionReview"
        response = doc["response"]
        assert response["uid"] == "uid-1" and response["allowed"] is False
        assert response["status"]["code"] == 403
        assert response["warnings"] == list(outcome.warnings)
        assert response["auditAnnotations"]["user-agent-verdict"] == "unlisted"


def test_allowed_response_has_no_status_and_no_empty_warnings() -> None:
    doc = orjson.loads(adm.render("admission.k8s.io/v1", "u", adm.unknown("abc")))
    assert doc["response"] == {
        "uid": "u",
        "allowed": True,
        "auditAnnotations": {"user-agent-verdict": "unknown", "allowlist-hash": "abc"},
    }


def test_warning_header_is_what_kubectl_prints() -> None:
    """The recorded capture: the apiserver quoted the warning into the header, kubectl printed it."""
    recorded_header = (DATA / "kubectl-output" / "s09-alice-pyrequests-create-cm-allowed.out").read_text()
    assert f"WARNING-HEADER: {warn_header('capture: user agent check (test warning)')}\n" in recorded_header
    printed = (DATA / "kubectl-output" / "s01-admin-kubectl-create-cm.out").read_text().splitlines()[0]
    assert printed == "Warning: capture: user agent check (test warning)"

    outcome = adm.decide(request(1405), join("python-requests/2.34.2"), ALLOWLIST, adm.Policy())
    (warning,) = outcome.warnings
    assert warn_header(warning) == (
        '299 - "user agent \\"python-requests/2.34.2\\" is not on this cluster\'s allowlist; '
        'this request was recorded"'
    )
    assert f"Warning: {warning}" == (
        'Warning: user agent "python-requests/2.34.2" is not on this cluster\'s allowlist; '
        "this request was recorded"
    )


def test_the_admission_caches_are_bounded_by_bytes_and_entries() -> None:
    """Agents are attacker text: the warning and display caches count what they hold."""
    for n in range(5000):
        agent = f"{n:05d}" + "x" * 1019  # the apiserver's 1,024-byte cut, each one new
        adm.warning_text("unlisted", agent)
        adm._shown(agent)
    for name, stats in adm.cache_stats().items():
        assert 0 < stats.entries <= 4096, name
        assert stats.evictions > 0, name
        assert 1024 * stats.entries <= stats.bytes <= 8 * 1024 * 1024, name
