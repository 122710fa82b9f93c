"""The single-writer lock of a repository: an flock that the kernel releases if we crash."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from pycvmfs.errors import RepositoryBusyError

__all__ = ["PUBLISH_LOCK", "SNAPSHOT_LOCK", "RepositoryBusyError", "publish_lock"]

#: the lock file a publish holds in ``repositories.d/<fqrn>/`` (a stratum 0)
PUBLISH_LOCK = "publish.lock"
#: the lock file a snapshot holds in its state folder (a stratum 1)
SNAPSHOT_LOCK = "snapshot.lock"


@contextlib.contextmanager
def publish_lock(path: Path, *, what: str, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block.

    ``flock`` locks belong to the open file: a writer killed with SIGKILL releases it with its
    file descriptors, so no stale lock survives a crash. The holder's PID is written into the
    file for messages only.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise RepositoryBusyError(f"{what} is being changed by another process "
                                      f"(pid {holder}); try again when it is done") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
