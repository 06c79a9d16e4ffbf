"""The Kubernetes API, and the only importer of ``kubernetes``.

``client`` (API client, own namespace, NS/NAME references), ``configmap`` (the allowlist
ConfigMap watch), ``events`` (the one Event writer).
"""
