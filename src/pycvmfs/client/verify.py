"""Checking a repository on its server: every object reachable from its revisions, once each."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pycvmfs.client.cache import ObjectCache
from pycvmfs.client.repository import Repository
from pycvmfs.errors import CvmfsError
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.storage.objects import download_verified

__all__ = ["VerifyReport", "verify_repository"]

Progress = Callable[[int, int | None], None]


@dataclass
class VerifyReport:
    fqrn: str
    revisions: list[int] = field(default_factory=list)
    checked: Counter = field(default_factory=Counter)  # kind label -> objects checked
    stored_bytes: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (object, message)
    seconds: float = 0.0

    @property
    def objects(self) -> int:
        return sum(self.checked.values())

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {
            "fqrn": self.fqrn, "revisions": self.revisions, "objects": self.objects,
            "by_kind": dict(sorted(self.checked.items())), "stored_bytes": self.stored_bytes,
            "failures": [{"object": o, "error": m} for o, m in self.failures],
            "seconds": round(self.seconds, 3),
            "objects_per_second": round(self.objects / self.seconds, 1) if self.seconds else None,
        }


class _Checker:
    def __init__(self, repo: Repository, report: VerifyReport, workers: int,
                 progress: Progress | None) -> None:
        self.repo = repo
        self.report = report
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers))
        self.futures = []
        self.progress = progress
        self.done = 0

    def _count(self, kind: ObjectKind, stored: int) -> None:
        with self.lock:
            self.report.checked[kind.label] += 1
            self.report.stored_bytes += stored
            self.done += 1
            if self.progress:
                self.progress(self.done, None)

    def fail(self, what: str, err: BaseException) -> None:
        with self.lock:
            self.report.failures.append((what, str(err)))

    def first_time(self, h: ContentHash, kind: ObjectKind) -> bool:
        name = h.object_name(kind)
        with self.lock:
            if name in self.seen:
                return False
            self.seen.add(name)
            return True

    def check(self, h: ContentHash, kind: ObjectKind, compression: Compression,
              size: int | None = None) -> None:
        """Download and check ``h`` (in a pool thread), capped at ``size`` (its catalog size)
        or the limit of its kind."""
        if not self.first_time(h, kind):
            return
        limit = size if size is not None else self.repo.size_limit(h, kind)

        def run() -> None:
            try:
                stored, _ = download_verified(self.repo.source, h, kind, compression, None,
                                              max_size=limit)
                self._count(kind, stored)
            except CvmfsError as e:
                self.fail(h.object_name(kind), e)

        self.futures.append(self.pool.submit(run))

    def counted(self, h: ContentHash, kind: ObjectKind, stored: int) -> None:
        """An object fetched and verified on the way (catalogs, certificate, history)."""
        self._count(kind, stored)

    def finish(self) -> None:
        self.pool.shutdown(wait=True)


def verify_repository(repo: Repository, *, tags: bool = False,
                      revisions: Iterable[dict] | None = None, workers: int = 4,
                      progress: Progress | None = None) -> VerifyReport:
    """Download and check every object reachable from the newest revision (plus, with ``tags``,
    every tagged revision, or the ``revisions`` given as ``open_revision`` keyword sets), each
    object exactly once, from the repository's source, ignoring the local cache.

    Failures are collected, not raised: the report lists each failing object with the reason.
    """
    start = time.monotonic()
    state = repo.refresh()  # manifest signature, certificate, whitelist (raises if broken)
    with tempfile.TemporaryDirectory(prefix="pycvmfs-verify-") as tmp:
        fresh = Repository(repo.source, public_keys=repo.public_keys, fqrn=repo.fqrn,
                           cache=ObjectCache(tmp), now=repo._now, blacklist=repo.blacklist,
                           env=repo.env)
        fresh._state = state
        report = VerifyReport(fqrn=repo.fqrn or "")
        checker = _Checker(fresh, report, workers, progress)
        m = state.manifest
        for h, kind in ((m.certificate, ObjectKind.CERTIFICATE), (m.history, ObjectKind.HISTORY),
                        (m.meta_info, ObjectKind.METAINFO)):
            if h is not None:
                checker.check(h, kind, Compression.ZLIB)
        selectors: list[dict] = [{}]
        if revisions is not None:
            selectors = list(revisions)
        elif tags:
            try:
                selectors += [{"root_hash": t.root_hash} for t in fresh.tags()]
            except CvmfsError as e:
                checker.fail(f"history of {repo.fqrn}", e)
        for sel in selectors:
            try:
                h, _ = fresh.resolve(**sel)
            except CvmfsError as e:
                checker.fail(f"revision {sel}", e)
                continue
            if not checker.first_time(h, ObjectKind.CATALOG):
                continue
            _walk_revision(fresh, checker, h, report)
        checker.finish()
    report.seconds = time.monotonic() - start
    return report


def _walk_revision(repo: Repository, checker: _Checker, root: ContentHash,
                   report: VerifyReport) -> None:
    stack: list[tuple[ContentHash, bytes]] = [(root, b"")]
    first = True
    while stack:
        h, mountpoint = stack.pop()
        what = f"{h.describe(ObjectKind.CATALOG)} at {os.fsdecode(mountpoint) or '/'}"
        try:
            before = repo.cache.stats["bytes_downloaded"]
            repo.fetch_object(h, ObjectKind.CATALOG)
            checker.counted(h, ObjectKind.CATALOG, repo.cache.stats["bytes_downloaded"] - before)
            cat = repo.load_catalog(h, mountpoint, what=what)
        except CvmfsError as e:
            checker.fail(h.object_name(ObjectKind.CATALOG), e)
            continue
        with cat:
            if first:
                report.revisions.append(cat.revision)
                first = False
            try:
                for fh, comp, size in cat.all_file_hashes():
                    checker.check(fh, ObjectKind.FILE, comp, size)
                for ch, comp, size in cat.all_chunk_hashes():
                    checker.check(ch, ObjectKind.PARTIAL, comp, size)
                for ref in cat.nested_catalogs():
                    if ref.hash is not None and checker.first_time(ref.hash, ObjectKind.CATALOG):
                        stack.append((ref.hash, ref.path))
            except CvmfsError as e:
                checker.fail(what, e)
