"""SpooledStore: a publisher's view of a remote upstream (S3): objects spooled locally, uploaded
at the switch, with a journal of what the upload created."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import BinaryIO, TypeVar

from pycvmfs.errors import CvmfsError
from pycvmfs.format.manifest import Manifest
from pycvmfs.publish.journal import ObjectJournal, discard, recover
from pycvmfs.storage.base import Consumer, ObjectStore, fetch_bytes
from pycvmfs.storage.local import TXN_DIR, LocalStorage

__all__ = ["SpooledStore", "manifest_key"]

T = TypeVar("T")
MANIFEST = ".cvmfspublished"


def manifest_key(m: Manifest | None) -> str:
    """What identifies the revision an upload journal started from. Not the root catalog alone:
    a tag switches the manifest but keeps the root, and its uploads must then stay."""
    if m is None:
        return "none"
    return f"{m.root_catalog}:{m.history}:{m.publish_timestamp}"


def _is_object(relpath: str) -> bool:
    return relpath.startswith("data/")


class SpooledStore:
    """An :class:`~pycvmfs.storage.base.ObjectStore` for publishing to a remote ``upstream``.

    Content-addressed objects (``data/...``) are written to the local ``spool`` directory —
    the ingest pipeline writes there exactly as into a local storage (``root`` is the spool) —
    and reach the upstream only in :meth:`upload_staged`, in parallel, right before the reflog
    and the manifest (the commit point). Top-level files (whitelist, reflog, manifest...) go
    straight to the upstream. Reads look in the spool first, then upstream.

    Every object the upload creates (a HEAD found it absent) is listed first in the upload
    journal (``journal_path``); a publish that fails before its manifest takes them back
    (:meth:`discard_uploads`), and one that died is cleaned up by :meth:`recover`.
    """

    def __init__(self, spool: str | os.PathLike[str], upstream: ObjectStore, journal_path: Path,
                 *, workers: int | None = None) -> None:
        self.spool = LocalStorage(spool, fsync=False)
        self.root = self.spool.root
        self.upstream = upstream
        self.journal_path = Path(journal_path)
        self.workers = workers or getattr(upstream, "max_connections", 8)
        self.peek_before_put = getattr(upstream, "peek_before_put", True)

    def __repr__(self) -> str:
        return f"SpooledStore({self.upstream!r}, spool={str(self.root)!r})"

    # -- Source ------------------------------------------------------------------------------

    def fetch(self, relpath: str, consume: Consumer[T], *, what: str, fresh: bool = False) -> T:
        if _is_object(relpath) and self.spool.exists(relpath):
            return self.spool.fetch(relpath, consume, what=what)
        return self.upstream.fetch(relpath, consume, what=what, fresh=fresh)

    def describe(self, relpath: str = "") -> str:
        return self.upstream.describe(relpath)

    def close(self) -> None:
        self.upstream.close()

    # -- ObjectStore -------------------------------------------------------------------------

    def exists(self, relpath: str) -> bool:
        return (_is_object(relpath) and self.spool.exists(relpath)) or \
            self.upstream.exists(relpath)

    def size(self, relpath: str) -> int | None:
        """Stored size upstream (None when absent)."""
        size = getattr(self.upstream, "size", None)
        if size is not None:
            return size(relpath)
        return 0 if self.upstream.exists(relpath) else None

    def put_bytes(self, relpath: str, data: bytes) -> None:
        (self.spool if _is_object(relpath) else self.upstream).put_bytes(relpath, data)

    def put_file(self, relpath: str, src: BinaryIO) -> None:
        (self.spool if _is_object(relpath) else self.upstream).put_file(relpath, src)

    def delete(self, relpath: str) -> None:
        if _is_object(relpath):
            self.spool.delete(relpath)
        self.upstream.delete(relpath)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.upstream.list(prefix)

    def create_skeleton(self) -> None:
        """The spool's folder for writes in progress (objects make their own folders)."""
        (self.root / TXN_DIR).mkdir(parents=True, exist_ok=True)

    # -- staging -----------------------------------------------------------------------------

    def staged(self) -> list[str]:
        """The objects waiting in the spool."""
        return list(self.spool.list("data/"))

    def upload_staged(self, head: str) -> int:
        """Upload every spooled object that the upstream lacks, ``workers`` at a time; returns
        how many were uploaded. ``head`` is the :func:`manifest_key` of the current manifest:
        the upload journal is keyed on it so that :meth:`recover` knows whether the switch
        happened."""
        rels = self.staged()
        if not rels:
            return 0
        journal = ObjectJournal(self.journal_path, self.upstream, head, append=True)
        uploaded = 0

        def one(rel: str) -> bool:
            if self.peek_before_put:
                if self.upstream.exists(rel):
                    return False
                journal.record_durably(rel)  # listed before it exists: never an orphan
            path = self.root / rel
            upload = getattr(self.upstream, "upload_path", None)
            if upload is not None:
                upload(rel, path)
            else:
                with open(path, "rb") as f:
                    self.upstream.put_file(rel, f)
            return True

        try:
            with ThreadPoolExecutor(max_workers=max(1, self.workers),
                                    thread_name_prefix="pycvmfs-upload") as pool:
                futures = [pool.submit(one, rel) for rel in rels]
                _done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                for f in pending:
                    f.cancel()
                for f in futures:  # the first failure, after the running uploads ended
                    if not f.cancelled():
                        uploaded += f.result()
        finally:
            journal.close()
        return uploaded

    def put_manifest(self, data: bytes) -> None:
        """Upload the signed manifest: the switch. When the PUT reports a failure, the bucket
        is asked again: a manifest that arrived (a lost reply) is a success, so its objects are
        never taken back."""
        try:
            self.upstream.put_bytes(MANIFEST, data)
        except (CvmfsError, OSError):
            try:
                arrived = fetch_bytes(self.upstream, MANIFEST, what=MANIFEST) == data
            except CvmfsError:
                arrived = False
            if not arrived:
                raise

    def staged_committed(self) -> None:
        """After the manifest switch: the uploads are in use; empty the spool."""
        self.journal_path.unlink(missing_ok=True)
        self.clear_spool()

    def discard_uploads(self) -> int:
        """Delete what :meth:`upload_staged` created (the publish did not switch); returns how
        many objects were taken back. The spool is emptied too."""
        n = discard(self.journal_path, self.upstream)
        self.clear_spool()
        return n

    def recover(self, head: str) -> int:
        """Before a change: take back the uploads of a publish that died before switching away
        from the manifest ``head`` (its :func:`manifest_key`; a journal for another is dropped),
        and empty the spool."""
        n = recover(self.journal_path, self.upstream, head)
        self.clear_spool()
        return n

    def clear_spool(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root / "data"):
                if entry.is_dir(follow_symlinks=False) and entry.name != "txn":
                    shutil.rmtree(entry.path, ignore_errors=True)
