"""A ``progress`` callback for tests that records what a publish or a pull reports."""

from __future__ import annotations

import threading


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
