"""Helpers for stratum-1 tests: a recording (and slowable) HTTP handler, object listings."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from pathlib import Path

from pycvmfs.client.repository import Repository

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


REVISIONS = [({}, "rev2"), ({"tag": "v1"}, "rev1"), ({"tag": "v2"}, "rev2")]


def check_tree(repo: Repository, selector: dict, expected: dict) -> None:
    """The revision ``selector`` of ``repo`` has exactly the ``expected`` entries of
    ``expected.json`` (kinds, modes, mtimes, contents, xattrs, symlink targets)."""
    with repo.open_revision(**selector) as view:
        got = {s.path.lstrip("/"): s for _d, dirs, files in view.walk("/") for s in dirs + files}
        assert sorted(got) == sorted(expected)
        for path, exp in expected.items():
            s = got[path]
            assert (s.type, f"{s.permissions:o}", s.st_mtime) == (
                exp["type"], exp["mode"], exp["mtime"]), path
            if exp["type"] == "file":
                data = view.read_bytes(path)
                assert (len(data), hashlib.sha1(data).hexdigest()) == (exp["size"], exp["sha1"])
                assert {k: v.hex() for k, v in view.xattrs(path).items()} == \
                    exp.get("xattrs_hex", {}), path
            elif exp["type"] == "symlink":
                assert view.readlink(path) == exp["target"], path
