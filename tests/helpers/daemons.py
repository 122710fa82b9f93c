"""Helpers for tests (and benchmarks) that run real daemons (Squid, nginx, Apache) on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


def require_binary(path: str, package: str) -> None:
    """Fail (under CI) or skip when a daemon the test needs is not installed."""
    import pytest  # here, so that benchmarks can use this module without pytest

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


def _logs(logs: Sequence[Path]) -> str:
    return "".join(p.read_text(errors="replace") for p in logs if p.exists())


def wait_for_port(port: int, proc: subprocess.Popen, what: str, logs: Sequence[Path] = (),
                  limit: float = 15.0) -> None:
    """Return once ``proc`` accepts connections on 127.0.0.1:``port``; raise RuntimeError with
    the ``logs`` if it exits first, or kill it and raise if it does not listen within ``limit``
    seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} at start-up:\n"
                               + _logs(logs))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {limit} s:\n"
                       + _logs(logs))


def stop_process(proc: subprocess.Popen, *, kill: bool = False, timeout: float = 10.0) -> None:
    """SIGTERM (or SIGKILL with ``kill``) and wait; SIGKILL if it has not exited in ``timeout``
    seconds."""
    if proc.poll() is not None:
        return
    proc.kill() if kill else proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
