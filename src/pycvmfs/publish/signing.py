"""The last step of every change: certificate, reflog, signed manifest — switched atomically."""

from __future__ import annotations

import dataclasses
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from pycvmfs.errors import (
    ConfigError,
    CvmfsError,
    IntegrityError,
    ObjectNotFoundError,
    WhitelistError,
)
from pycvmfs.format.compression import compress
from pycvmfs.format.hashes import Algorithm, ContentHash, ObjectKind, hash_bytes
from pycvmfs.format.manifest import Manifest, parse_signed_manifest, sign_manifest, verify_manifest
from pycvmfs.format.reflog import Reflog, reflog_hash
from pycvmfs.format.signature import load_public_keys, split_letter
from pycvmfs.format.whitelist import Whitelist, verify_whitelist
from pycvmfs.publish.config import RepositoryConfig
from pycvmfs.publish.journal import ObjectJournal
from pycvmfs.publish.keys import RepositoryKeys
from pycvmfs.publish.upstream import SpooledStore, manifest_key
from pycvmfs.storage.base import ObjectStore, fetch_bytes
from pycvmfs.storage.local import LocalStorage
from pycvmfs.storage.objects import SMALL_FILE_LIMIT

__all__ = ["MANIFEST", "REFLOG", "WHITELIST", "check_signing", "copy_to_file", "fetch_manifest",
           "read_head", "read_whitelist", "reflog_trusted", "store_object", "switch_manifest",
           "sync_storage", "upload_reflog"]

MANIFEST = ".cvmfspublished"
REFLOG = ".cvmfsreflog"
WHITELIST = ".cvmfswhitelist"


def store_object(store: ObjectStore, data: bytes, kind: ObjectKind, algorithm: Algorithm,
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
    import ctypes  # here: most commands never sync

    fd = os.open(store.root, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if getattr(libc, "syncfs", None) is None or libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def copy_to_file(store: ObjectStore, relpath: str, dest: Path, *, what: str) -> bool:
    """Copy a storage file to the local ``dest``; False (and no ``dest``) when it is absent."""
    dest.unlink(missing_ok=True)

    def consume(blocks) -> None:
        with open(dest, "wb") as f:
            for b in blocks:
                f.write(b)

    try:
        store.fetch(relpath, consume, what=what, fresh=True)
    except ObjectNotFoundError:
        dest.unlink(missing_ok=True)
        return False
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return True


def fetch_manifest(store: ObjectStore) -> bytes:
    """The stored manifest, fetched fresh (at most 1 MiB)."""
    try:
        return fetch_bytes(store, MANIFEST, what=store.describe(MANIFEST), limit=SMALL_FILE_LIMIT,
                           fresh=True)
    except ObjectNotFoundError:
        raise ConfigError(f"{store.describe()}: no {MANIFEST}; not a repository storage "
                          "(create it with `pycvmfs mkfs`)") from None


def read_head(store: ObjectStore, keys: RepositoryKeys, fqrn: str,
              data: bytes | None = None) -> Manifest:
    """The current manifest (``data``: its bytes, when fetched already), checked against our
    own certificate."""
    what = store.describe(MANIFEST)
    if data is None:
        data = fetch_manifest(store)
    try:
        m = verify_manifest(data, keys.certificate, what=what)
    except IntegrityError:
        parsed, _ = parse_signed_manifest(data, what=what)
        raise IntegrityError(f"{what}: revision {parsed.revision} is not signed by this "
                             f"repository's certificate ({keys.certificate.subject_cn}); "
                             f"re-sign it with `pycvmfs resign -p {fqrn}` once the right "
                             "key is in place (docs/recovery.md)") from None
    if m.fqrn != fqrn:
        raise ConfigError(f"{what}: manifest is for {m.fqrn!r}, not {fqrn!r}")
    return m


def read_whitelist(store: ObjectStore) -> bytes | None:
    """The stored ``.cvmfswhitelist`` (fetched fresh), or None when there is none."""
    try:
        return fetch_bytes(store, WHITELIST, what=store.describe(WHITELIST), limit=SMALL_FILE_LIMIT,
                           fresh=True)
    except ObjectNotFoundError:
        return None


def check_signing(store: ObjectStore, cfg: RepositoryConfig, keys: RepositoryKeys, *,
                  now: datetime | None = None) -> Whitelist:
    """Refuse, before anything is stored, a change that no client would accept.

    The repository key must belong to the certificate, the certificate must not have expired,
    and the stored whitelist must verify with the master public key, name this repository and
    this certificate, and not have expired (``cvmfs_server publish`` and ``rollback`` refuse an
    expired whitelist too). Every message names the file and the command that mends it.
    """
    fqrn = cfg.fqrn
    paths = keys.paths(cfg.keys_dir, fqrn)
    rotate = f"`pycvmfs resign {fqrn} --rotate-certificate` (docs/recovery.md)"
    keys.check_pair(cfg.keys_dir, fqrn)
    when = now or datetime.now(UTC)
    expiry = keys.certificate.x509.not_valid_after_utc
    if expiry <= when:
        raise ConfigError(f"{paths['crt']}: the repository certificate expired on "
                          f"{expiry:%Y-%m-%d %H:%M} UTC; make a new one with {rotate}")
    what = store.describe(WHITELIST)
    data = read_whitelist(store)
    if data is None:
        raise WhitelistError(f"{what}: missing; sign one with `pycvmfs resign {fqrn}`")
    try:
        return verify_whitelist(data, load_public_keys(paths["pub"]), fqrn=fqrn,
                                certificate=keys.certificate, now=when, what=what)
    except CvmfsError as e:
        try:
            names_ours = Whitelist.parse(split_letter(data, what=what).body).lists(
                keys.certificate)
        except CvmfsError:
            names_ours = True  # unreadable: a fresh signature is the remedy
        remedy = (f"renew it with `pycvmfs resign {fqrn}` (docs/recovery.md)" if names_ours
                  else f"put back the key pair it names ({paths['key']}, {paths['crt']}) or "
                       f"run {rotate}")
        raise WhitelistError(f"{e}; {remedy}") from None


def _update_reflog(store: ObjectStore, cfg: RepositoryConfig, algorithm: Algorithm,
                   add: list[tuple[ContentHash, ObjectKind]], now: int) -> ContentHash:
    src = store.describe(REFLOG)
    work = cfg.work_dir
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / "reflog.db"
    if copy_to_file(store, REFLOG, tmp, what=src):
        known = cfg.reflog_checksum_path
        if known.exists() and not reflog_trusted(known, tmp):
            raise IntegrityError(f"{src}: its hash differs from {known}; "
                                 "the reflog was changed behind the publisher's back")
        reflog = Reflog.open(tmp, what=src, writable=True)
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


def upload_reflog(store: ObjectStore, known: Path, data: bytes,
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


def switch_manifest(store: ObjectStore, cfg: RepositoryConfig, keys: RepositoryKeys,
                    manifest: Manifest, *, previous: Manifest | None,
                    extra_reflog: list[tuple[ContentHash, ObjectKind]] = (),
                    now: int | None = None) -> Manifest:
    """Sign ``manifest`` (its C, B, S, D, H, M set by the caller) and make it current.

    Stores the certificate object, records C/X/H/M (and ``extra_reflog``) in the reflog, flushes
    the storage, then replaces ``.cvmfspublished`` atomically: until that rename, readers see the
    previous revision; after it, everything the new manifest names is on disk. With a remote
    upstream (:class:`SpooledStore`) the spooled objects are uploaded before the reflog, and the
    manifest upload is the switch.
    """
    keys.check_pair(cfg.keys_dir, cfg.fqrn)  # the last guard: never sign what no client accepts
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
    spooled = isinstance(store, SpooledStore)
    if spooled:
        store.upload_staged(manifest_key(previous))
    y = _update_reflog(store, cfg, algorithm, refs, stamp)
    signed = dataclasses.replace(
        manifest, fqrn=cfg.fqrn, certificate=cert_hash, publish_timestamp=stamp, reflog=y,
        garbage_collectable=cfg.settings.garbage_collection, alt_catalog_paths=False,
        root_path_md5="d41d8cd98f00b204e9800998ecf8427e")
    data = sign_manifest(signed, keys.repo_key)
    if spooled:
        store.put_manifest(data)  # the commit point: one PUT replaces it atomically
        store.staged_committed()
        return signed
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
