"""Bytes → audit events, for replay, tail, suggest and ``/audit``.

``files`` opens logs (plain, gzip, stdin); ``lines`` is the one line decoder; ``scan`` the block
scanner behind it; ``formats`` the EKS, GKE and AKS shapes; ``eventlist`` the audit webhook's body.
"""
