"""Helpers for tests that run real daemons (Squid, nginx) on loopback."""

from __future__ import annotations

import os
import socket

import pytest


def require_binary(path: str, package: str) -> None:
    """Fail (under CI) or skip when a daemon the test needs is not installed."""
    if os.access(path, os.X_OK):
        return
    message = (f"{path} not found: install the Debian package '{package}' "
               "(tools/test.sh does this)")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
