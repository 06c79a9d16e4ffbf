"""Fixtures for the hardening suite: the integration suite's test PKI and real `ua-sentinel serve`
processes on 127.0.0.1, shared rather than copied. Everything started is stopped at test end."""

from __future__ import annotations

from tests.integration.conftest import Launch, launch, launch_shared, pki

__all__ = ["Launch", "launch", "launch_shared", "pki"]
