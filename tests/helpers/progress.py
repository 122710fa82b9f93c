"""Progress in tests: a ``progress`` callback that records what a publish or a pull reports,
and the bytes lines the command line draws."""

from __future__ import annotations

import re
import threading

#: an amount as a bytes line shows it, e.g. "1.3 MB" or "512 bytes"
_SIZE = r"\d[\d.]* (?:bytes|[kMGT]B)"


def bytes_line(stderr: str, stage: str) -> re.Match:
    """The finished bytes line of ``stage``: "<done>/<total> <rate>/s" (groups 1 to 3)."""
    m = re.search(rf"^{stage} .*?({_SIZE})/({_SIZE}) +({_SIZE})/s", stderr, re.MULTILINE)
    assert m, f"no {stage} line with bytes done/total and a rate in:\n{stderr}"
    return m


class ProgressRecorder:
    """A ``progress(stage, done, total)``: every call, in order (calls come from several
    threads)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int | None]] = []
        self._lock = threading.Lock()

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        with self._lock:
            self.calls.append((stage, done, total))

    def stage(self, name: str) -> list[tuple[int, int | None]]:
        return [(done, total) for stage, done, total in self.calls if stage == name]
