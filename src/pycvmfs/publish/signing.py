"""The last step of every change: certificate, reflog, signed manifest — switched atomically."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import shutil
import time
from pathlib import Path

from pycvmfs.errors import ConfigError, CvmfsError, IntegrityError
from pycvmfs.format.compression import compress
from pycvmfs.format.hashes import Algorithm, ContentHash, ObjectKind, hash_bytes
from pycvmfs.format.manifest import Manifest, parse_signed_manifest, sign_manifest, verify_manifest
from pycvmfs.format.reflog import Reflog, reflog_hash
from pycvmfs.publish.config import RepositoryConfig
from pycvmfs.publish.journal import ObjectJournal
from pycvmfs.publish.keys import RepositoryKeys
from pycvmfs.storage.local import LocalStorage

__all__ = ["MANIFEST", "REFLOG", "read_head", "reflog_trusted", "store_object",
           "switch_manifest", "sync_storage", "upload_reflog"]

MANIFEST = ".cvmfspublished"
REFLOG = ".cvmfsreflog"


def store_object(store: LocalStorage, data: bytes, kind: ObjectKind, algorithm: Algorithm,
                 journal: ObjectJournal | None = None) -> ContentHash:
    """Store already-compressed ``data`` under the hash of its bytes (kept if present); a new
    object is recorded in ``journal`` so an aborted transaction can take it back."""
    h = hash_bytes(data, algorithm)
    rel = h.object_path(kind)
    if not store.exists(rel):
        store.put_bytes(rel, data)
        if journal is not None:
            journal.record(rel)
    return h


def sync_storage(store: LocalStorage) -> None:
    """Flush the storage's file system before the manifest switch (one ``syncfs``)."""
    fd = os.open(store.root, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if getattr(libc, "syncfs", None) is None or libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def read_head(store: LocalStorage, keys: RepositoryKeys, fqrn: str) -> Manifest:
    """The current manifest, checked against our own certificate."""
    try:
        data = (store.root / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{store.root}: no {MANIFEST}; not a repository storage "
                          "(create it with `pycvmfs mkfs`)") from None
    what = f"{store.root / MANIFEST}"
    try:
        m = verify_manifest(data, keys.certificate, what=what)
    except IntegrityError:
        parsed, _ = parse_signed_manifest(data, what=what)
        raise IntegrityError(f"{what}: revision {parsed.revision} is not signed by this "
                             f"repository's certificate ({keys.certificate.subject_cn})") from None
    if m.fqrn != fqrn:
        raise ConfigError(f"{what}: manifest is for {m.fqrn!r}, not {fqrn!r}")
    return m


def _update_reflog(store: LocalStorage, cfg: RepositoryConfig, algorithm: Algorithm,
                   add: list[tuple[ContentHash, ObjectKind]], now: int) -> ContentHash:
    src = store.root / REFLOG
    work = cfg.work_dir
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / "reflog.db"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    if src.exists():
        known = cfg.reflog_checksum_path
        if known.exists() and not reflog_trusted(known, src):
            raise IntegrityError(f"{src}: its hash differs from {known}; "
                                 "the reflog was changed behind the publisher's back")
        shutil.copyfile(src, tmp)
        reflog = Reflog.open(tmp, what=str(src), writable=True)
    else:
        reflog = Reflog.create(tmp, cfg.fqrn)
    try:
        for h, kind in add:
            reflog.add(h, kind, now)
    finally:
        reflog.close()
    data = tmp.read_bytes()
    y = upload_reflog(store, cfg.reflog_checksum_path, data, algorithm)
    tmp.unlink()
    return y


def _write_atomic(path: Path, text: str) -> None:
    part = path.with_name(path.name + ".tmp")
    part.write_text(text)
    os.replace(part, path)


def upload_reflog(store: LocalStorage, known: Path, data: bytes,
                  algorithm: Algorithm) -> ContentHash:
    """Replace ``.cvmfsreflog`` and record its checksum in ``known``. A crash between the two
    must not look like tampering: the new checksum is recorded as pending first, and a reflog
    matching a pending checksum is accepted (:func:`reflog_trusted`)."""
    y = reflog_hash(data, algorithm)
    known.parent.mkdir(parents=True, exist_ok=True)
    pending = known.with_name(known.name + ".pending")
    _write_atomic(pending, str(y))
    store.put_bytes(REFLOG, data)
    os.replace(pending, known)
    return y


def reflog_trusted(known: Path, reflog: Path) -> bool:
    """Whether ``reflog`` is the one this publisher wrote last (by ``known`` or a pending
    checksum left by a crash)."""
    expected = ContentHash.parse(known.read_text().strip(), what=str(known))
    return reflog_hash(reflog, expected.algorithm) == expected or _pending_matches(known, reflog)


def _pending_matches(known: Path, reflog: Path) -> bool:
    """After a crash between uploading the reflog and recording its checksum: the reflog is
    the one the publisher wrote if it matches the pending checksum; that checksum then
    becomes the known one."""
    pending = known.with_name(known.name + ".pending")
    try:
        h = ContentHash.parse(pending.read_text().strip(), what=str(pending))
    except (FileNotFoundError, CvmfsError):
        return False
    if reflog_hash(reflog, h.algorithm) != h:
        return False
    os.replace(pending, known)
    return True


def switch_manifest(store: LocalStorage, cfg: RepositoryConfig, keys: RepositoryKeys,
                    manifest: Manifest, *, previous: Manifest | None,
                    extra_reflog: list[tuple[ContentHash, ObjectKind]] = (),
                    now: int | None = None) -> Manifest:
    """Sign ``manifest`` (its C, B, S, D, H, M set by the caller) and make it current.

    Stores the certificate object, records C/X/H/M (and ``extra_reflog``) in the reflog, flushes
    the storage, then replaces ``.cvmfspublished`` atomically: until that rename, readers see the
    previous revision; after it, everything the new manifest names is on disk.
    """
    algorithm = manifest.root_catalog.algorithm
    stamp = int(now if now is not None else time.time())
    if previous is not None:
        stamp = max(stamp, previous.publish_timestamp or 0)
    cert_hash = store_object(store, compress(keys.certificate.pem), ObjectKind.CERTIFICATE,
                             algorithm)
    refs: list[tuple[ContentHash, ObjectKind]] = [(manifest.root_catalog, ObjectKind.CATALOG),
                                                  (cert_hash, ObjectKind.CERTIFICATE)]
    if manifest.history is not None:
        refs.append((manifest.history, ObjectKind.HISTORY))
    if manifest.meta_info is not None:
        refs.append((manifest.meta_info, ObjectKind.METAINFO))
    refs.extend(extra_reflog)
    y = _update_reflog(store, cfg, algorithm, refs, stamp)
    signed = dataclasses.replace(
        manifest, fqrn=cfg.fqrn, certificate=cert_hash, publish_timestamp=stamp, reflog=y,
        garbage_collectable=cfg.settings.garbage_collection, alt_catalog_paths=False,
        root_path_md5="d41d8cd98f00b204e9800998ecf8427e")
    data = sign_manifest(signed, keys.repo_key)
    sync_storage(store)
    LocalStorage(store.root, fsync=True).put_bytes(MANIFEST, data)  # the commit point
    _fsync_dir(store.root)
    return signed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
