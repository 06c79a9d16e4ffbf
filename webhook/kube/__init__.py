"""The Kubernetes API, through the official client; the only importer of ``kubernetes``.

- ``client``: the API client (in-cluster, else kubeconfig), our namespace, ConfigMap references.
- ``configmap``: the allowlist ConfigMap watch (list, watch, relist, backoff).
- ``events``: the one Event writer (allowlist Events and finding Events alike).
- ``lease``: leader election on a Lease (client-go's protocol), for sources with one reader.
- ``state_configmap``: the tailer's checkpoint copied into a ConfigMap (``--checkpoint-configmap``).
"""

__all__ = ["client", "configmap", "events", "lease", "state_configmap"]
