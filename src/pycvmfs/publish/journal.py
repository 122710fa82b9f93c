"""The list of objects a transaction created, so an aborted or killed publish can take them back."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from pycvmfs.format.hashes import ContentHash

__all__ = ["ObjectJournal", "recover"]

_HEADER = "pycvmfs object journal; head "


class ObjectJournal:
    """Appends ``data/XX/...`` paths of newly stored objects to a file next to the lock.

    The first line names the root catalog the transaction started from. If the publisher dies,
    the next transaction calls :func:`recover`: when the manifest still names that root, the
    publish never switched and the listed objects are unreferenced; they are deleted.
    """

    def __init__(self, path: Path, storage: Path, head: ContentHash) -> None:
        self.path = path
        self.storage = storage
        self._lock = threading.Lock()
        self._f = open(path, "w", encoding="utf-8")  # noqa: SIM115 - kept open for appends
        self._f.write(f"{_HEADER}{head}\n")
        self._f.flush()

    def record(self, rel: str) -> None:
        with self._lock:
            self._f.write(rel + "\n")

    def record_many(self, rels: list[str]) -> None:
        if rels:
            with self._lock:
                self._f.write("".join(r + "\n" for r in rels))

    def discard_objects(self) -> int:
        """Delete every recorded object (the transaction aborted); returns how many."""
        self.close()
        return _delete_listed(self.path, self.storage)

    def close(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.flush()
                self._f.close()

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _delete_listed(journal: Path, storage: Path) -> int:
    n = 0
    with open(journal, encoding="utf-8", errors="replace") as f:
        next(f, None)
        for line in f:
            rel = line.strip()
            if not rel.startswith("data/") or ".." in rel:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(storage / rel)
                n += 1
    journal.unlink(missing_ok=True)
    return n


def recover(journal: Path, storage: Path, current_head: ContentHash) -> int:
    """Clean up after a publisher that was killed: objects of a publish that never switched the
    manifest are deleted; after a switch the journal is just dropped. Returns objects deleted."""
    try:
        with open(journal, encoding="utf-8", errors="replace") as f:
            first = f.readline().strip()
    except FileNotFoundError:
        return 0
    if not first.startswith(_HEADER) or first[len(_HEADER):] != str(current_head):
        journal.unlink(missing_ok=True)  # the manifest moved on: those objects are in use
        return 0
    return _delete_listed(journal, storage)
