"""Helpers for stratum-1 tests: a recording (and slowable) HTTP handler, object listings."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path

GOLDEN_FQRN = "golden.example.org"
SOURCE_FQRN = "source.example.org"


class RecordingHandler(http.server.SimpleHTTPRequestHandler):
    """HTTP/1.1 (keep-alive) static files; records every path asked for and can be slowed
    down. Subclassed per server (see :func:`recording_handler`) so the log is per test."""

    protocol_version = "HTTP/1.1"
    requests: list[str]
    delay: float = 0.0
    lock: threading.Lock
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args) -> None:
        pass

    def do_GET(self) -> None:
        with self.lock:
            self.requests.append(self.path)
        if self.delay and "/data/" in self.path:
            time.sleep(self.delay)
        super().do_GET()


def recording_handler(delay: float = 0.0) -> type[RecordingHandler]:
    return type("Handler", (RecordingHandler,),
                {"requests": [], "delay": delay, "lock": threading.Lock()})


def data_files(root: Path) -> set[str]:
    """Relative paths of the objects below ``root/data`` (``data/txn`` excluded)."""
    return {str(p.relative_to(root)) for p in (root / "data").rglob("*")
            if p.is_file() and p.parent.name != "txn"}
