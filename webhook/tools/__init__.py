"""The one-shot commands and local helpers.

- ``replay``: audit log files through the Detector, in order (``ua-sentinel replay``).
- ``suggest``: every agent in audit logs, and an allowlist that fits them.
- ``report``: ``--report``: replay's and suggest's results as one self-contained HTML page.
- ``apiserver_config``: the audit policy, webhook kubeconfig and flags for a kube-apiserver.
- ``audit_policy``: an audit policy read, checked and matched as the apiserver does.
- ``policy_merge``: an existing audit policy with what ua-sentinel needs added (``--policy``).
- ``policy_check``: what an audit policy hides from ua-sentinel (``--check-policy``).
- ``distros``: the apiserver flags and mounts in kubeadm, k3s, RKE2, Talos and kind formats.
- ``certs``: a local CA and certificates (``ua-sentinel certs``).
- ``devrun``: ``make run``: the webhook on 127.0.0.1 with local certificates.
"""

__all__ = [
    "apiserver_config",
    "audit_policy",
    "certs",
    "devrun",
    "distros",
    "policy_check",
    "policy_merge",
    "replay",
    "report",
    "suggest",
]
