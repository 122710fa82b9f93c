"""A second copy process for a stratum-1 pull: the work per object on the other core.

Each object a pull copies costs Python work (transfer callbacks, hashing, creating and
renaming the file) in the thread that drives the transfers; in one process that work runs on
one core however many transfers are in flight. The :class:`~pycvmfs.replica.pull.Puller` hands
about half of the objects (by hash, so an object always goes to the same side) to a child
process (:func:`main`) with its own libcurl fetcher, which checks each
body against its name and stores it into the same local storage directory (atomically, as
every store does): a catalog is still stored by the puller only once the child has answered
for everything below it, so a killed pull resumes as before.

Protocol: the first line to the child is the JSON of its settings (the source's, the storage
root, transfers at once); then one object name per line (``<hash text><kind suffix>``). The
child answers each once: ``ok <name> <stored bytes>`` or ``fail <name> <reason>``. A failure,
or a child that ends with requests unanswered, sends the object back to the puller's own path
(with the source's fail-over and no-cache retries).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

from pycvmfs.pipechild import run, stop
from pycvmfs.storage.http import HttpSource

__all__ = ["CopyProcess", "main"]

#: ``on_done(name, stored_bytes, error)``: called once per submitted name, from a reader thread.
Done = Callable[[str, int, str | None], None]

_STOP_WAIT = 30.0


class CopyProcess:
    """The puller's side of the child. :meth:`submit` queues a name (buffered: :meth:`flush`
    sends what is queued), :meth:`close` waits for every answer."""

    def __init__(self, source: HttpSource, storage_root: str | os.PathLike[str], *,
                 parallel: int, fsync: bool, on_done: Done) -> None:
        self._on_done = on_done
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._queued: list[str] = []
        settings = {"source": source.settings(), "root": os.fspath(storage_root),
                    "parallel": parallel, "fsync": fsync, "parent": os.getpid()}
        # (-c, not -m: the package imports this module, and runpy warns about that)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from pycvmfs.replica.copier import main; main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        self._stdin: IO[bytes] = self._proc.stdin  # type: ignore[assignment]
        self._stdin.write(json.dumps(settings).encode() + b"\n")
        self._stdin.flush()
        self._broken: str | None = None
        self._reader = threading.Thread(target=self._answers, name="pycvmfs-copier-answers",
                                        daemon=True)
        self._reader.start()

    def submit(self, name: str) -> None:
        with self._lock:
            broken = self._broken
            if broken is None:
                self._pending.add(name)
                self._queued.append(name)
        if broken is not None:
            self._on_done(name, 0, broken)
        elif len(self._queued) >= 256:
            self.flush()

    def flush(self) -> None:
        """Send the queued names (from the thread that submits)."""
        with self._lock:
            names, self._queued = self._queued, []
        if not names:
            return
        try:
            self._stdin.write(("\n".join(names) + "\n").encode())
            self._stdin.flush()
        except (OSError, ValueError) as e:
            self._end(f"cannot reach the copy process: {e}")

    def _answers(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        for raw in stdout:
            words = raw.decode(errors="replace").rstrip("\n").split(" ", 2)
            if len(words) < 3:
                continue
            verdict, name, rest = words
            with self._lock:
                if name not in self._pending:
                    continue
                self._pending.discard(name)
            if verdict == "ok":
                self._on_done(name, int(rest), None)
            else:
                self._on_done(name, 0, f"copy process: {rest}")
        code = self._proc.wait()
        self._end(f"the copy process exited (status {code})")

    def _end(self, reason: str) -> None:
        """Every request not answered yet goes back to the puller."""
        with self._lock:
            if self._broken is None:
                self._broken = reason
            pending, self._pending = self._pending, set()
            self._queued = []
        for name in sorted(pending):
            self._on_done(name, 0, reason)

    def close(self, *, cancel: bool = False) -> None:
        """Let the child finish (or, with ``cancel``, stop it) and wait for every answer."""
        if not cancel:
            self.flush()
        stop(self._proc, self._stdin, self._reader, wait=_STOP_WAIT, kill=cancel)
        self._end("the copy process was stopped")


def _serve(settings: dict[str, Any], requests: IO[bytes], answers: IO[bytes]) -> None:
    """The child: fetch, check and store every object named; answer each once."""
    from pycvmfs.errors import CvmfsError
    from pycvmfs.format.hashes import parse_object_name
    from pycvmfs.replica.copying import BufferedObject, spill_for
    from pycvmfs.storage.batch import BatchFetcher
    from pycvmfs.storage.local import LocalStorage

    dest = LocalStorage(settings["root"], fsync=settings["fsync"])
    source = HttpSource(**settings["source"], pool_size=2)
    spill = spill_for(dest, dest.root / "data" / "txn")
    out_lock = threading.Lock()

    def answer(line: str) -> None:
        with out_lock, contextlib.suppress(OSError, ValueError):
            answers.write(line.encode())
            answers.flush()

    def done(obj: BufferedObject, error: str | None) -> None:
        try:
            if error is None and not obj.verified():
                error = "the body does not match the object's name"
            if error is None:
                obj.store(dest)
                answer(f"ok {obj.name} {obj.size}\n")
                return
        except Exception as e:  # a full disk, a permission: the puller's own path says it
            error = str(e)
        finally:
            obj.discard()
        reason = (error.splitlines() or ["?"])[0][:200]
        answer(f"fail {obj.name} {reason}\n")

    # (the fetcher ends every transfer with done() even when its engine fails: this is
    # only for the record)
    batch = BatchFetcher(source, parallel=settings["parallel"],
                         on_error=lambda e: print(f"pycvmfs copy process: {e}", file=sys.stderr))
    try:
        for raw in requests:
            name = raw.decode(errors="replace").strip()
            try:
                h, kind = parse_object_name(name)
            except (ValueError, CvmfsError) as e:
                answer(f"fail {name} bad request: {e}\n")
                continue
            batch.submit(BufferedObject(h, kind, name, spill, done))
    finally:
        batch.close()  # finishes the transfers in flight
        source.close()


def _die_with(parent: int) -> None:
    """End this process when the puller's dies (a killed snapshot must stop copying: the
    names it sent are still in the pipe), not only when its pipe is closed."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before that
        os._exit(1)


def main() -> None:
    run(_serve, prepare=lambda settings: _die_with(settings["parent"]))


if __name__ == "__main__":
    main()
