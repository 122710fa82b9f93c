"""What a background mount tells its parent (ready, or why not), and which mount is where."""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time

__all__ = ["PYCVMFS_FSTYPE", "ReadyReporter", "describe_error", "mount_type", "read_report"]

PYCVMFS_FSTYPE = "fuse.pycvmfs"  # what mountinfo says of a pycvmfs mount (subtype=pycvmfs)


def mount_type(path: str) -> str | None:
    """The file system type of the top mount at ``path``, None if nothing is mounted there;
    read from ``/proc/self/mountinfo``, so a hung or dead FUSE mount is never touched."""
    from pycvmfs.client.fuse import unescape_mountinfo

    target = os.path.realpath(path)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and "-" in fields and unescape_mountinfo(fields[4]) == target:
                found = fields[fields.index("-") + 1]
    return found


def describe_error(e: BaseException) -> str:
    """One line for an exception: its message, with the file an OSError names."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class ReadyReporter:
    """The daemonised mount's one line to its parent on a pipe: ``ready`` once the mount shows
    up in ``/proc/self/mountinfo`` (a thread watches, so the mount point is never looked at
    from inside the mount's own process), or ``error: …`` if mounting fails first."""

    def __init__(self, fd: int, mountpoint: str) -> None:
        self.fd = fd
        self.mountpoint = os.path.realpath(mountpoint)
        self._lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._watch, name="pycvmfs-ready", daemon=True).start()

    def _watch(self) -> None:
        while self.fd >= 0:
            if mount_type(self.mountpoint) == PYCVMFS_FSTYPE:
                self.send("ready")
                return
            time.sleep(0.02)

    def send(self, line: str) -> None:
        """Write ``line`` and close the pipe; only the first call writes."""
        with self._lock:
            if self.fd < 0:
                return
            with contextlib.suppress(OSError):
                os.write(self.fd, (line.replace("\n", " ") + "\n").encode())
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def fail(self, e: BaseException) -> None:
        self.send(f"error: {describe_error(e)}")


def read_report(fd: int, seconds: float) -> tuple[bool, str]:
    """Wait for the child's line on ``fd`` (closed afterwards): (True, "") for ``ready``, else
    (False, why): the error it sent, or that it ended or stayed silent for ``seconds``."""
    data = b""
    deadline = time.monotonic() + seconds
    try:
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return False, f"no answer from the mount process within {seconds:.0f} s"
            chunk = os.read(fd, 4096)
            if not chunk:
                return False, "the mount process ended without saying why"
            data += chunk
    finally:
        os.close(fd)
    line = data.decode(errors="replace").split("\n", 1)[0]
    if line == "ready":
        return True, ""
    return False, line.removeprefix("error: ")
