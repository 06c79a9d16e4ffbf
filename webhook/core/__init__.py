"""The vocabulary every other part speaks, with no I/O of its own.

- ``cache``: memoized functions bounded by bytes as well as entries (keys are attacker text).
- ``useragent``: RFC 9110 product tokens, client-go's agent shape, display-safe escaping.
- ``audit``: ``audit.k8s.io/v1`` Event/EventList models, the verbs and annotation names.
- ``allowlist``: the allowlist file, its compiled matcher, the one ``Verdict`` and ``Mode``.
- ``live_allowlist``: the allowlist every reader sees now, swapped only for a good one.
- ``findings``: the Finding schema (ECS names), the rules' descriptions, JSON lines.
"""

__all__ = ["allowlist", "audit", "cache", "findings", "live_allowlist", "useragent"]
