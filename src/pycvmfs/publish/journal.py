"""The list of objects a transaction created, so an aborted or killed publish can take them back."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pycvmfs.format.hashes import ContentHash

if TYPE_CHECKING:
    from pycvmfs.storage.base import ObjectStore

__all__ = ["ObjectJournal", "discard", "recover"]

_HEADER = "pycvmfs object journal; head "


class ObjectJournal:
    """Appends ``data/XX/...`` paths of newly stored objects to a file next to the lock.

    The first line names the root catalog the transaction started from. If the publisher dies,
    the next transaction calls :func:`recover`: when the manifest still names that root, the
    publish never switched and the listed objects are unreferenced; they are deleted.

    ``storage`` is the storage directory (objects are unlinked there), or an ObjectStore to
    delete them through (a remote upstream). ``on_discard`` runs after an abort's deletions
    (e.g. taking back what was already uploaded). With ``append``, a journal left for the same
    head is continued rather than replaced.
    """

    def __init__(self, path: Path, storage: Path | ObjectStore, head: ContentHash | str | None, *,
                 on_discard: Callable[[], object] | None = None, append: bool = False) -> None:
        self.path = path
        self.storage = storage
        self.on_discard = on_discard
        self._lock = threading.Lock()
        header = f"{_HEADER}{head}\n"
        if append and _first_line(path) == header.strip():
            self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for appends
        else:
            self._f = open(path, "w", encoding="utf-8")  # noqa: SIM115 - kept open for appends
            self._f.write(header)
        self._f.flush()

    def record(self, rel: str) -> None:
        with self._lock:
            self._f.write(rel + "\n")

    def record_durably(self, rel: str) -> None:
        """Record ``rel`` and push it to the file before returning (before an upload starts)."""
        with self._lock:
            self._f.write(rel + "\n")
            self._f.flush()

    def record_many(self, rels: list[str]) -> None:
        if rels:
            with self._lock:
                self._f.write("".join(r + "\n" for r in rels))

    def discard_objects(self) -> int:
        """Delete every recorded object (the transaction aborted); returns how many."""
        self.close()
        n = _delete_listed(self.path, self.storage)
        if self.on_discard is not None:
            self.on_discard()
        return n

    def close(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.flush()
                self._f.close()

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _first_line(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().strip()
    except FileNotFoundError:
        return None


def _delete_listed(journal: Path, storage: Path | ObjectStore) -> int:
    n = 0
    rels: list[str] = []
    with open(journal, encoding="utf-8", errors="replace") as f:
        next(f, None)
        for line in f:
            rel = line.strip()
            if not rel.startswith("data/") or ".." in rel:
                continue
            if not isinstance(storage, str | os.PathLike):
                rels.append(rel)
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(storage, rel))
                n += 1
    if rels:
        many = getattr(storage, "delete_many", None)
        if many is not None:
            many(rels)
        else:
            for rel in rels:
                storage.delete(rel)
        n = len(rels)
    journal.unlink(missing_ok=True)
    return n


def discard(journal: Path, storage: Path | ObjectStore) -> int:
    """Delete every object a journal file lists, whatever its head, and the file itself."""
    if not journal.exists():
        return 0
    return _delete_listed(journal, storage)


def recover(journal: Path, storage: Path | ObjectStore, current_head: ContentHash | str) -> int:
    """Clean up after a publisher that was killed: objects of a publish that never switched the
    manifest are deleted; after a switch the journal is just dropped. Returns objects deleted."""
    first = _first_line(journal)
    if first is None:
        return 0
    if not first.startswith(_HEADER) or first[len(_HEADER):] != str(current_head):
        journal.unlink(missing_ok=True)  # the manifest moved on: those objects are in use
        return 0
    return _delete_listed(journal, storage)
