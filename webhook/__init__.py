"""ua-sentinel: flags Kubernetes API requests whose user agent is not on the cluster's allowlist."""

__version__ = "0.1.0"
