"""Checking a repository storage: every object of its kept revisions, and the catalog invariants."""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pycvmfs.errors import (
    CvmfsError,
    FetchError,
    FormatError,
    IntegrityError,
    ObjectNotFoundError,
)
from pycvmfs.format.catalog import Catalog, NestedRef, run_tree_steps
from pycvmfs.format.certificate import Certificate
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.format.history import History, Tag
from pycvmfs.format.manifest import Manifest, parse_signed_manifest, verify_manifest
from pycvmfs.format.reflog import Reflog, reflog_hash
from pycvmfs.publish.check_catalog import COMPARED, CatalogInvariants, Row, RowReader, show
from pycvmfs.publish.gc import ObjectSet, Progress, open_scratch
from pycvmfs.storage.base import Source, fetch_bytes
from pycvmfs.storage.objects import SMALL_FILE_LIMIT, download_verified

if TYPE_CHECKING:
    from pycvmfs.publish.repository import Publisher

__all__ = ["CheckReport", "Problem", "check_repository"]

MANIFEST = ".cvmfspublished"
REFLOG = ".cvmfsreflog"
_BATCH = 512
_MISSING = object()  # what _catalog returns for an absent catalog when that is allowed


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: the object concerned (e.g. ``catalog 43…C``), a repository path or ``""``,
    and what is wrong."""

    object: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"{self.object}{where}: {self.message}"


@dataclass
class CheckReport:
    fqrn: str
    revisions: list[int] = field(default_factory=list)  # root revisions checked, newest first
    catalogs: int = 0
    checked: Counter = field(default_factory=Counter)  # kind label -> objects verified
    stored_bytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def objects(self) -> int:
        return sum(self.checked.values())

    def to_dict(self) -> dict:
        return {"fqrn": self.fqrn, "ok": self.ok, "revisions": self.revisions,
                "catalogs": self.catalogs, "objects": self.objects,
                "by_kind": dict(sorted(self.checked.items())), "stored_bytes": self.stored_bytes,
                "problems": [{"object": p.object, "path": p.path, "message": p.message}
                             for p in self.problems],
                "notes": self.notes, "seconds": round(self.seconds, 3)}


def check_repository(target: Publisher | Source | str | os.PathLike, *,
                     all_revisions: bool = False, manifest: Manifest | bytes | None = None,
                     reflog_checksum: str | os.PathLike | None = None, workers: int = 4,
                     progress: Progress | None = None) -> CheckReport:
    """Check a repository (``cvmfs_server check -c``): every object of the newest revision —
    with ``all_revisions`` also of every tagged root and of the ``previous_revision`` chain as
    far as it exists — verified exactly once (hash over the stored bytes, complete zlib
    stream), every catalog against the invariants of format doc §4.16, and the reflog.

    ``target`` is a :class:`Publisher` (its verified head and ``reflog.chksum`` are used), or a
    source / storage directory / URL; then ``manifest`` may give the manifest to check (bytes of
    a ``.cvmfspublished`` or a trusted :class:`Manifest`), by default the storage's own, whose
    signature is checked against its certificate object. Problems are collected, not raised.
    """
    from pycvmfs.publish.repository import Publisher

    started = time.monotonic()
    report = CheckReport(fqrn="")
    close = None
    work_parent = None
    if isinstance(target, Publisher):
        source: Source = target.store
        head: Manifest | bytes | None = manifest
        if head is None:
            try:
                head = target.head()
            except CvmfsError as e:  # check what the storage holds, as without a publisher
                report.problems.append(Problem(MANIFEST, "", str(e)))
        try:  # would the next publish be refused (keys, certificate, whitelist)?
            target.check_signing()
        except CvmfsError as e:
            report.problems.append(Problem("signing", "", str(e)))
        reflog_checksum = reflog_checksum or target.config.reflog_checksum_path
        work_parent = target.config.work_dir
        work_parent.mkdir(parents=True, exist_ok=True)
    elif isinstance(target, Source):
        source, head = target, manifest
    else:
        from pycvmfs.storage.locate import open_source

        source = close = open_source(os.fspath(target))
        head = manifest
    try:
        with (tempfile.TemporaryDirectory(prefix="pycvmfs-check-", dir=work_parent) as tmp,
              ThreadPoolExecutor(max_workers=max(1, workers)) as pool):
            checker = _Checker(source, Path(tmp), report, pool, progress)
            try:
                checker.run(head, all_revisions=all_revisions, reflog_checksum=reflog_checksum)
            finally:
                checker.db.close()
    finally:
        if close is not None:
            close.close()
    report.revisions = sorted(set(report.revisions), reverse=True)
    report.seconds = time.monotonic() - started
    return report


#: A catalog check as a generator: yields nested catalogs' generators, gets their results.
_Steps = Generator[Any, Any, Any]


@dataclass
class _Done:
    totals: dict[str, int] | None  # self + subtree as recomputed; None when unknown
    root_key: tuple | None
    prefix: bytes
    size: int
    revision: int
    previous: ContentHash | None


class _Checker:
    def __init__(self, source: Source, tmp: Path, report: CheckReport, pool: ThreadPoolExecutor,
                 progress: Progress | None) -> None:
        self.source = source
        self.tmp = tmp
        self.report = report
        self.pool = pool
        self.progress = progress
        self.db = open_scratch(tmp / "seen.db")
        self.seen = ObjectSet(self.db, "seen")
        self.done: dict[str, _Done] = {}
        self.depth = 0

    def problem(self, obj: str, path: bytes | str, message: str) -> None:
        p = show(path) if isinstance(path, bytes) else path
        self.report.problems.append(Problem(obj, p, message))

    def _count(self, kind: ObjectKind, stored: int) -> None:
        self.report.checked[kind.label] += 1
        self.report.stored_bytes += stored
        if self.progress is not None:
            self.progress("checking", self.report.objects, None)

    # -- the head ------------------------------------------------------------------------
    def _head(self, given: Manifest | bytes | None) -> Manifest | None:
        """The manifest to check; its certificate object is verified, and the signature of a
        manifest read here (not handed over as trusted) is checked against it."""
        if isinstance(given, Manifest):
            m, signed = given, None
        else:
            try:
                signed = given if given is not None else fetch_bytes(
                    self.source, MANIFEST, what=MANIFEST, limit=SMALL_FILE_LIMIT)
                m, _letter = parse_signed_manifest(signed, what=MANIFEST)
            except CvmfsError as e:
                self.problem(MANIFEST, "", str(e))
                return None
        if m.certificate is None:
            self.problem(MANIFEST, "", "no certificate hash (key X)")
            return m
        pem = self._aux(m.certificate, ObjectKind.CERTIFICATE)
        if pem is not None and signed is not None:
            try:
                verify_manifest(signed, Certificate.from_pem(pem), what=MANIFEST)
            except CvmfsError as e:
                self.problem(MANIFEST, "", f"signature does not verify with the certificate "
                                           f"{m.certificate}X: {e}")
        return m

    def _aux(self, h: ContentHash, kind: ObjectKind) -> bytes | None:
        """Verify a small auxiliary object (certificate, history, meta-info); its content."""
        out = bytearray()
        try:
            stored, _ = download_verified(self.source, h, kind, Compression.ZLIB, out)
        except CvmfsError as e:
            self.problem(h.describe(kind), "", _why(e))
            return None
        self.seen.add(h.object_name(kind))
        self._count(kind, stored)
        return bytes(out)

    def run(self, given: Manifest | bytes | None, *, all_revisions: bool,
            reflog_checksum: str | os.PathLike | None) -> None:
        m = self._head(given)
        if m is None:
            return
        self.report.fqrn = m.fqrn or ""
        self._check_reflog(m, reflog_checksum)
        tags: list[Tag] = []
        if m.history is not None and (data := self._aux(m.history, ObjectKind.HISTORY)):
            path = self.tmp / "history.db"
            path.write_bytes(data)
            try:
                with History.open(path, what=m.history.describe(ObjectKind.HISTORY)) as hist:
                    tags = hist.tags()
            except CvmfsError as e:
                self.problem(m.history.describe(ObjectKind.HISTORY), "", str(e))
        if m.meta_info is not None:
            self._aux(m.meta_info, ObjectKind.METAINFO)
        head = self._root(m.root_catalog, m.root_catalog_size or None, f"revision {m.revision}")
        if isinstance(head, _Done) and head.revision != m.revision:
            self.problem(MANIFEST, "", f"revision S={m.revision} but the root catalog has "
                                       f"revision {head.revision}")
        if not all_revisions:
            return
        for tag in tags:
            got = self._root(tag.root_hash, tag.size or None, f"tag {tag.name!r}")
            if isinstance(got, _Done) and got.revision != tag.revision:
                self.problem(f"tag {tag.name!r}", "", f"revision {tag.revision} but its root "
                                                     f"catalog has revision {got.revision}")
        info, chain = head, set()
        while isinstance(info, _Done) and info.previous is not None:
            prev = info.previous
            if str(prev) in chain:
                break
            chain.add(str(prev))
            info = self._root(prev, None, f"previous revision of revision {info.revision}",
                              missing_ok=True)
            if info is _MISSING:
                text = f"the revision chain ends at {prev}C, which is not in the storage"
                if m.garbage_collectable:
                    self.report.notes.append(text + " (garbage-collected)")
                else:
                    self.problem(prev.describe(ObjectKind.CATALOG), "", text + " and the "
                                 "repository is not garbage-collectable (G=no)")

    def _root(self, h: ContentHash, size: int | None, label: str, *,
              missing_ok: bool = False) -> Any:
        done = run_tree_steps(self._catalog(h, b"", None, size, nested=False,
                                            missing_ok=missing_ok, label=label))
        if isinstance(done, _Done):
            self.report.revisions.append(done.revision)
        return done

    def _check_reflog(self, m: Manifest, checksum_path: str | os.PathLike | None) -> None:
        path = self.tmp / "reflog.db"
        try:
            path.write_bytes(fetch_bytes(self.source, REFLOG, what=REFLOG))
        except ObjectNotFoundError:
            self.problem(REFLOG, "", "missing; the manifest's objects cannot be looked up")
            return
        except CvmfsError as e:
            self.problem(REFLOG, "", str(e))
            return
        known, where = m.reflog, "the manifest (key Y)"
        if checksum_path is not None and Path(checksum_path).exists():
            text = Path(checksum_path).read_text().strip()
            known, where = ContentHash.parse(text, what=str(checksum_path)), str(checksum_path)
        if known is not None and reflog_hash(path, known.algorithm) != known:
            text = f"hash {reflog_hash(path, known.algorithm)} differs from {where} ({known})"
            if checksum_path is None and m.garbage_collectable:
                self.report.notes.append(f"{REFLOG}: {text}; a garbage collection leaves Y stale")
            else:
                self.problem(REFLOG, "", text)
        try:
            with Reflog.open(path, what=REFLOG) as reflog:
                for key, h, kind in (("C", m.root_catalog, ObjectKind.CATALOG),
                                     ("X", m.certificate, ObjectKind.CERTIFICATE),
                                     ("H", m.history, ObjectKind.HISTORY),
                                     ("M", m.meta_info, ObjectKind.METAINFO)):
                    if h is not None and not reflog.contains(h, kind):
                        self.problem(REFLOG, "", f"does not list the manifest's {key} "
                                                 f"({h.object_name(kind)})")
        except CvmfsError as e:
            self.problem(REFLOG, "", str(e))

    # -- catalogs ------------------------------------------------------------------------
    def _catalog(self, h: ContentHash, mountpoint: bytes, transition: Row | None,
                 size: int | None, *, nested: bool, missing_ok: bool = False,
                 label: str = "") -> _Steps:
        """Check one catalog (a generator for :func:`run_tree_steps`: it yields the generators
        of its nested catalogs and gets their results back); returns its :class:`_Done`."""
        name = h.object_name(ObjectKind.CATALOG)
        what = h.describe(ObjectKind.CATALOG)
        done = self.done.get(name)
        if done is None:
            done = yield from self._inspect(h, mountpoint, nested, missing_ok, label)
            if not isinstance(done, _Done):
                return done
            self.done[name] = done
        elif done.prefix != mountpoint:  # checked before, mounted elsewhere then
            self.problem(what, mountpoint, f"root_prefix is {show(done.prefix)!r}, but the "
                                           "catalog is mounted here")
        if size is not None and size != done.size:
            self.problem(what, mountpoint, f"uncompressed size is {done.size} bytes, but "
                                           f"{size} is recorded for it")
        if transition is not None and done.root_key is not None:
            diff = [c for c, a, b in zip(COMPARED, transition.key(), done.root_key,
                                         strict=True) if a != b]
            if diff:
                self.problem(what, mountpoint, "the nested root entry differs from the mount "
                                               f"point entry in the parent in {', '.join(diff)}")
        return done

    def _inspect(self, h: ContentHash, mp: bytes, nested: bool, missing_ok: bool,
                 label: str) -> _Steps:
        what = h.describe(ObjectKind.CATALOG)
        self.depth += 1  # one file per nesting level: parents stay open while children run
        path = self.tmp / f"catalog-{self.depth}.db"
        try:
            try:
                with open(path, "wb") as f:
                    stored, size = download_verified(self.source, h, ObjectKind.CATALOG,
                                                     Compression.ZLIB, f, what=what)
            except ObjectNotFoundError as e:
                if missing_ok:
                    return _MISSING
                self.problem(what, mp, f"missing ({label or 'nested catalog'}): {_why(e)}")
                return None
            self._count(ObjectKind.CATALOG, stored)
            self.report.catalogs += 1
            with Catalog.open(path, what=what, hash=h) as cat, \
                    RowReader(path, what=what) as rows:
                return (yield from self._invariants(cat, rows, h, mp, nested, size))
        except CvmfsError as e:
            self.problem(what, mp, _why(e))
            return None
        finally:
            self.depth -= 1
            path.unlink(missing_ok=True)

    def _invariants(self, cat: Catalog, rows: RowReader, h: ContentHash, mp: bytes,
                    nested: bool, size: int) -> _Steps:
        what = h.describe(ObjectKind.CATALOG)
        inv = CatalogInvariants(cat, rows, mp, nested=nested,
                                bad=lambda path, message: self.problem(what, path, message))

        def child(ref: NestedRef, transition: Row | None) -> _Steps:
            got = yield self._catalog(ref.hash, ref.path, transition, ref.size, nested=True)
            return got.totals if isinstance(got, _Done) else None

        totals = yield from inv.check(child)
        self.verify_objects(cat, rows, what, mp)
        try:
            previous = cat.previous_revision
        except FormatError as e:
            self.problem(what, mp, str(e))
            previous = None
        return _Done(totals, inv.root.key() if inv.root is not None else None,
                     cat.root_prefix, size, cat.revision, previous)

    # -- data objects --------------------------------------------------------------------
    def verify_objects(self, cat: Catalog, rows: RowReader, what: str, mp: bytes) -> None:
        def refs():
            for h, comp, _size in cat.all_file_hashes():
                yield h, ObjectKind.FILE, comp
            for h, comp, _size in cat.all_chunk_hashes():
                yield h, ObjectKind.PARTIAL, comp

        batch: dict[str, tuple] = {}
        try:
            for ref in refs():
                batch[ref[0].object_name(ref[1])] = ref
                if len(batch) >= _BATCH:
                    self._verify_batch(batch, rows, mp)
                    batch = {}
        except FormatError as e:
            self.problem(what, mp, str(e))
        if batch:
            self._verify_batch(batch, rows, mp)

    def _verify_batch(self, batch: dict[str, tuple], rows: RowReader, mp: bytes) -> None:
        new = self.seen.new_among(list(batch))
        jobs = [batch[n] for n in new]
        for (h, kind, _comp), result in zip(jobs, self.pool.map(self._verify_one, jobs),
                                            strict=True):
            if isinstance(result, int):
                self._count(kind, result)
            else:
                paths = rows.paths_of(h.digest, chunk=kind is ObjectKind.PARTIAL,
                                      mountpoint=mp)
                self.problem(h.describe(kind), ", ".join(paths), result)

    def _verify_one(self, job: tuple) -> int | str:
        h, kind, comp = job
        try:
            stored, _ = download_verified(self.source, h, kind, comp, None)
            return stored
        except CvmfsError as e:
            return _why(e)


def _why(e: CvmfsError) -> str:
    if isinstance(e, ObjectNotFoundError):
        return "missing from the storage"
    if isinstance(e, IntegrityError | FetchError):
        return str(e)
    return f"{type(e).__name__}: {e}"
