"""The real kube-apiserver cuts long agents at 1,024 bytes and appends `...TRUNCATED`;
`useragent.cut` (which every parsed Event goes through) does exactly the same, also when the cut
splits a multi-byte character, and leaves what the apiserver wrote unchanged."""

from __future__ import annotations

import uuid

import httpx

from webhook.core.audit import parse_event
from webhook.core.useragent import cut

from .harness import ControlPlane

AGENTS = {
    "ascii": "probe/1.0 " + "x" * 3000,
    "split-3-byte": "probe/1.0 " + "a" * 1012 + "€" * 10,  # the cut falls inside a euro sign
    "split-4-byte": "probe/1.0 " + "a" * 1011 + "😀" * 10,  # after 3 of an emoji's 4 bytes
    "fits": "probe/1.0 " + "é" * 507,  # 1,024 bytes exactly: kept whole
}


def test_long_agents_are_cut_as_the_apiserver_cuts_them(control_plane: ControlPlane) -> None:
    probe = uuid.uuid4().hex[:8]
    headers = {"Authorization": f"Bearer {control_plane.tokens['mallory']}"}
    with httpx.Client(base_url=control_plane.url, verify=control_plane.ssl_context(), timeout=30) as client:
        for name, agent in AGENTS.items():
            sent = {**headers, "User-Agent": agent.encode()}  # raw UTF-8 bytes, as a Go client sends
            uri = f"/api/v1/namespaces/default/secrets?labelSelector=cut%3D{probe}-{name}"
            assert client.get(uri, headers=sent).status_code == 403
    for name, agent in AGENTS.items():
        uri = f"/api/v1/namespaces/default/secrets?labelSelector=cut%3D{probe}-{name}"
        written = control_plane.wait_for_audit(
            lambda e, uri=uri: e["stage"] == "ResponseComplete" and e["requestURI"] == uri, what=name
        )
        assert written["userAgent"] == cut(agent), name
        assert parse_event(dict(written)).user_agent == written["userAgent"], name  # read back unchanged
