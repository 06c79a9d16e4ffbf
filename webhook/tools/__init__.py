"""The one-shot commands and local helpers.

- ``replay``: audit log files through the Detector, in order (``ua-sentinel replay``).
- ``suggest``: every agent in audit logs, and an allowlist that fits them.
- ``report``: ``--report``: replay's and suggest's results as one self-contained HTML page.
- ``apiserver_config``: the audit policy, webhook kubeconfig and flags for a kube-apiserver.
- ``certs``: a local CA and certificates (``ua-sentinel certs``).
- ``devrun``: ``make run``: the webhook on 127.0.0.1 with local certificates.
"""

__all__ = ["apiserver_config", "certs", "devrun", "replay", "report", "suggest"]
