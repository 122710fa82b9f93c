"""pycvmfs's helper processes (the mount's download process): the
child's settings come as one JSON line on its standard input, then its requests, one per line;
its answers go to its standard output, which is closed when it ends so the parent's reader
sees the end at once."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

Serve = Callable[[dict[str, Any], IO[bytes], IO[bytes]], None]


def run(serve: Serve, prepare: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Read the settings, call ``prepare(settings)``, then ``serve(settings, requests,
    answers)`` until the requests end."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    settings = json.loads(stdin.readline())
    if prepare is not None:
        prepare(settings)
    try:
        serve(settings, stdin, stdout)
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.close(1)


def stop(proc: subprocess.Popen, requests: IO[bytes], reader: threading.Thread, *,
         wait: float, kill: bool = False) -> None:
    """The parent's side: end the requests (the child finishes what it has, or is killed at
    once with ``kill``, or after ``wait`` seconds), then wait for the answers' reader."""
    with contextlib.suppress(OSError, ValueError):
        requests.close()
    if kill:
        proc.kill()
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    reader.join(wait)
