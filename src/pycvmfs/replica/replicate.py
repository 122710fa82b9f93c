"""The verified snapshot: check the source's whole chain of trust, pull what is missing, keep
an own reflog, then switch the whitelist and manifest last (format doc §9).

What :func:`pycvmfs.replica.snapshot.snapshot` runs, under its lock, whenever the replica is not
recognised as up to date by :mod:`pycvmfs.replica.unchanged`. It imports the heavy machinery
(signatures, SQLite catalogs, the copy engine), which a no-op snapshot never needs.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pycvmfs.client.cache import ObjectCache
from pycvmfs.client.repository import Repository, TrustedState
from pycvmfs.errors import (
    ConfigError,
    CvmfsError,
    FormatError,
    IntegrityError,
    ObjectNotFoundError,
    OutdatedManifestError,
)
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.format.history import History
from pycvmfs.format.manifest import Manifest, parse_signed_manifest
from pycvmfs.format.reflog import Reflog, reflog_hash
from pycvmfs.publish.signing import sync_storage, upload_reflog
from pycvmfs.replica import unchanged
from pycvmfs.replica.pull import Progress, Puller
from pycvmfs.replica.snapshot import (
    IS_SNAPSHOTTING,
    LAST_SNAPSHOT,
    MANIFEST,
    REFLOG,
    SMALL,
    WHITELIST,
    WHITELIST_PKCS7,
    SnapshotReport,
    digest,
    mark_done,
    read_file,
    read_state,
    utc_date,
    write_state,
)
from pycvmfs.storage.base import ObjectStore, Source, fetch_bytes
from pycvmfs.storage.local import LocalStorage

__all__ = ["load_keys", "verified_snapshot"]


def verified_snapshot(source: Source, dest: ObjectStore, fqrn: str, keys: Sequence,
                      public_keys: list | None, state: Path, *, all_tags: bool, workers: int,
                      progress: Progress | None,
                      now: Callable[[], _dt.datetime] | None) -> SnapshotReport:
    """One snapshot with every check (the caller holds the lock and has checked that the
    source is replicable). ``public_keys``: ``keys`` loaded already, or None to load them here.
    A success is remembered for the next no-op snapshot (:func:`unchanged.remember`)."""
    unchanged.forget(state)  # whatever happens next, the head remembered before is not current
    fingerprint = unchanged.key_fingerprint(keys)
    if public_keys is None:
        public_keys = load_keys(keys)
    repo = Repository(source, public_keys=public_keys, fqrn=fqrn,
                      cache=ObjectCache(state / "cache"), now=now)
    trusted = repo.refresh()
    m = trusted.manifest
    pkcs7 = (fetch_bytes(source, WHITELIST_PKCS7, what=source.describe(WHITELIST_PKCS7),
                         limit=SMALL, fresh=True) if trusted.whitelist.pkcs7 else None)
    current = read_file(dest, MANIFEST)
    before = _check_not_older(dest, current, m)
    report = SnapshotReport(fqrn, source.describe(), dest.describe(), m.revision,
                            str(m.root_catalog), before)
    done_before = read_state(state)
    if (current == trusted.manifest_bytes and dest.exists(LAST_SNAPSHOT)
            and (not all_tags or done_before.get("all_tags") == digest(current))):
        report.changed = False
        if read_file(dest, WHITELIST) != trusted.whitelist_bytes:  # re-signed whitelist
            _switch(dest, trusted, pkcs7, manifest=False)
        mark_done(dest)
    else:
        dest.put_bytes(IS_SNAPSHOTTING, (utc_date() + "\n").encode())
        try:
            _replicate(source, dest, trusted, pkcs7, report, state, all_tags=all_tags,
                       workers=workers, progress=progress, incremental=current is not None)
            mark_done(dest)
            write_state(state, {"all_tags": digest(trusted.manifest_bytes)} if all_tags else {})
        finally:
            with contextlib.suppress(CvmfsError, OSError):
                dest.delete(IS_SNAPSHOTTING)
    repo.close()
    if fingerprint is not None and unchanged.key_fingerprint(keys) == fingerprint:
        # the keys did not change while they were loaded: these are the ones that verified it
        unchanged.remember(state, fqrn=fqrn, keys=fingerprint, trusted=trusted,
                           all_tags=read_state(state).get("all_tags")
                           == digest(trusted.manifest_bytes))
    return report


def load_keys(keys: Sequence) -> list:
    """RSA public keys from ``keys``: key objects as they are, paths of key files or of
    directories of ``*.pub`` files loaded."""
    from pycvmfs.format.signature import load_public_keys

    paths = [k for k in keys if isinstance(k, str | os.PathLike)]
    loaded = [k for k in keys if not isinstance(k, str | os.PathLike)]
    if paths:
        loaded += load_public_keys(paths)
    if not loaded:
        raise ConfigError("no master public key given: a replica cannot verify its source "
                          "without it")
    return loaded



def _replicate(source: Source, dest: ObjectStore, trusted: TrustedState, pkcs7: bytes | None,
               report: SnapshotReport, state: Path, *, all_tags: bool, workers: int,
               progress: Progress | None, incremental: bool) -> None:
    m = trusted.manifest
    work = state / "tmp"
    reflog = _open_reflog(dest, state, work, report.fqrn)
    try:
        puller = Puller(source, dest, work, workers=workers,
                        garbage_collectable=m.garbage_collectable, progress=progress)
        try:
            tags = _tags(puller, m.history) if m.history is not None else []
            # the trunk, back through previous revisions to one the replica has
            puller.pull(m.root_catalog, history=incremental, size=m.root_catalog_size)
            if all_tags:
                for tag in tags:
                    puller.pull(tag.root_hash, history=False, optional=m.garbage_collectable,
                                size=tag.size)
                    report.tags.append(tag.name)
            puller.wait()
            if m.certificate is None:
                raise FormatError(f"{source.describe(MANIFEST)}: no certificate hash (key X)")
            puller.copy_object(m.certificate, ObjectKind.CERTIFICATE, check_zlib=True)
            if m.meta_info is not None:
                puller.copy_object(m.meta_info, ObjectKind.METAINFO, check_zlib=True)
            if m.alt_catalog_paths:
                _place_alt_paths(dest, m)
        finally:
            puller.close()
        s = puller.stats
        report.objects_fetched, report.objects_present = s.objects_fetched, s.objects_present
        report.bytes_fetched = s.bytes_fetched
        report.catalogs_fetched, report.catalogs_present = s.catalogs_fetched, s.catalogs_present
        report.skipped_catalogs = list(s.skipped_catalogs)
        stamp = int(time.time())
        refs = [(h, ObjectKind.CATALOG) for h in s.stored_roots]
        refs += [(h, kind) for h, kind in ((m.root_catalog, ObjectKind.CATALOG),
                                           (m.certificate, ObjectKind.CERTIFICATE),
                                           (m.history, ObjectKind.HISTORY),
                                           (m.meta_info, ObjectKind.METAINFO)) if h is not None]
        for h, kind in refs:
            reflog.add(h, kind, stamp)
    finally:
        reflog.close()
    data = reflog.path.read_bytes()
    upload_reflog(dest, state / "reflog.chksum", data, m.algorithm)  # type: ignore[arg-type]
    reflog.path.unlink()
    if isinstance(dest, LocalStorage):
        sync_storage(dest)  # every object durable before the manifest names it
        dest = LocalStorage(dest.root, fsync=True)  # and the manifest itself
    _switch(dest, trusted, pkcs7, manifest=True)



def _check_not_older(dest: ObjectStore, current: bytes | None, m: Manifest) -> int | None:
    """The replica's revision; refuses to go back to an older one."""
    if current is None:
        return None
    try:
        mine = parse_signed_manifest(current, what=dest.describe(MANIFEST)).manifest
    except FormatError:
        return None  # a broken manifest on the replica is simply replaced
    if mine.revision > m.revision:
        raise OutdatedManifestError(f"{dest.describe(MANIFEST)}: the replica has revision "
                                    f"{mine.revision}, the source only {m.revision}; "
                                    "refusing to go back")
    return mine.revision


def _tags(puller: Puller, h: ContentHash) -> list:
    db = puller.load_database(h, ObjectKind.HISTORY)
    try:
        with History.open(db, what=h.describe(ObjectKind.HISTORY)) as hist:
            return hist.tags()
    finally:
        db.unlink(missing_ok=True)


def _open_reflog(dest: ObjectStore, state: Path, work: Path, fqrn: str) -> Reflog:
    """The replica's reflog, checked against the checksum the last snapshot recorded."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "reflog.db"
    path.unlink(missing_ok=True)
    try:
        data = fetch_bytes(dest, REFLOG, what=dest.describe(REFLOG))
    except ObjectNotFoundError:
        return Reflog.create(path, fqrn, what=dest.describe(REFLOG))
    path.write_bytes(data)
    known = state / "reflog.chksum"
    if not _reflog_trusted(known, data):
        raise IntegrityError(
            f"{dest.describe(REFLOG)}: does not match the checksum in {known}"
            + ("" if known.exists() else " (missing)")
            + "; it was changed behind the replica's back, or the state dir of earlier "
              "snapshots is not this one")
    reflog = Reflog.open(path, what=dest.describe(REFLOG), writable=True)
    if reflog.fqrn != fqrn:
        reflog.close()
        raise IntegrityError(f"{dest.describe(REFLOG)}: reflog of {reflog.fqrn!r}, not {fqrn!r}")
    return reflog


def _reflog_trusted(known: Path, data: bytes) -> bool:
    """Matches the recorded checksum, or the pending one a crash left behind (which then
    becomes the recorded one), as :func:`pycvmfs.publish.signing.upload_reflog` writes them."""
    pending = known.with_name(known.name + ".pending")
    for path in (known, pending):
        try:
            h = ContentHash.parse(path.read_text().strip(), what=str(path))
        except (FileNotFoundError, CvmfsError):
            continue
        if reflog_hash(data, h.algorithm) == h:
            if path == pending:
                os.replace(pending, known)
            return True
    return False


def _place_alt_paths(dest: ObjectStore, m: Manifest) -> None:
    """Copies of the bootstrap objects at ``.cvmfsalt-<hash><suffix>`` (manifest ``A=yes``)."""
    for h, kind in ((m.certificate, ObjectKind.CERTIFICATE), (m.root_catalog, ObjectKind.CATALOG),
                    (m.history, ObjectKind.HISTORY), (m.meta_info, ObjectKind.METAINFO)):
        if h is None:
            continue
        data = fetch_bytes(dest, h.object_path(kind), what=dest.describe(h.object_path(kind)))
        dest.put_bytes(f".cvmfsalt-{h.object_name(kind)}", data)


def _switch(dest: ObjectStore, trusted: TrustedState, pkcs7: bytes | None, *,
            manifest: bool) -> None:
    """The raw bytes as received, whitelist first and the manifest last of all."""
    if pkcs7 is not None:
        dest.put_bytes(WHITELIST_PKCS7, pkcs7)
    dest.put_bytes(WHITELIST, trusted.whitelist_bytes)
    if manifest:
        dest.put_bytes(MANIFEST, trusted.manifest_bytes)



