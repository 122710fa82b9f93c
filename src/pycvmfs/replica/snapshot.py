"""One stratum-1 snapshot (``cvmfs_server snapshot``): verify the source, pull what is missing,
keep an own reflog, then switch the whitelist and manifest last (format doc §9)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

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
from pycvmfs.publish.lock import SNAPSHOT_LOCK, publish_lock
from pycvmfs.publish.signing import sync_storage, upload_reflog
from pycvmfs.replica.pull import Progress, Puller
from pycvmfs.storage.base import ObjectStore, Source, fetch_bytes
from pycvmfs.storage.local import LocalStorage

if TYPE_CHECKING:
    from pycvmfs.replica.config import ReplicaConfig

__all__ = ["IS_SNAPSHOTTING", "LAST_SNAPSHOT", "MASTER_REPLICA", "STATUS", "SnapshotReport",
           "check_replicable",
           "snapshot", "snapshot_replica", "utc_date"]

MANIFEST = ".cvmfspublished"
WHITELIST = ".cvmfswhitelist"
WHITELIST_PKCS7 = ".cvmfswhitelist.pkcs7"
REFLOG = ".cvmfsreflog"
MASTER_REPLICA = ".cvmfs_master_replica"
LAST_SNAPSHOT = ".cvmfs_last_snapshot"
IS_SNAPSHOTTING = ".cvmfs_is_snapshotting"
STATUS = ".cvmfs_status.json"
_SMALL = 1 << 20  # manifests, whitelists, markers, status files

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def utc_date(t: float | None = None) -> str:
    """What ``date --utc`` prints in the C locale, e.g. ``Tue Nov  5 12:00:00 UTC 2024``."""
    d = _dt.datetime.fromtimestamp(time.time() if t is None else t, _dt.UTC)
    return (f"{_DAYS[d.weekday()]} {_MONTHS[d.month - 1]} {d.day:2d} "
            f"{d:%H:%M:%S} UTC {d.year}")


@dataclass
class SnapshotReport:
    """What one snapshot did; ``changed`` is false when the source had nothing new."""

    fqrn: str
    source: str
    destination: str
    revision: int
    root_hash: str
    previous_revision: int | None  # the replica's revision before, None on the first snapshot
    changed: bool = True
    objects_fetched: int = 0  # data objects and chunks copied
    objects_present: int = 0  # referenced objects the replica had already
    bytes_fetched: int = 0  # every byte copied (catalogs, history, certificate included)
    catalogs_fetched: int = 0
    catalogs_present: int = 0
    tags: list[str] = field(default_factory=list)  # tags whose trees were replicated
    skipped_catalogs: list[str] = field(default_factory=list)  # gone from a collectable source
    seconds: float = 0.0

    @property
    def initial(self) -> bool:
        return self.previous_revision is None

    def to_dict(self) -> dict:
        return {**asdict(self), "initial": self.initial}


def snapshot(source: Source, dest: ObjectStore, fqrn: str, keys: Sequence, *,
             state_dir: str | os.PathLike[str], all_tags: bool = True, workers: int = 16,
             progress: Progress | None = None,
             now: Callable[[], _dt.datetime] | None = None) -> SnapshotReport:
    """Bring ``dest`` up to the current revision of ``source`` (the stratum 0).

    ``keys`` are the master public keys (RSA keys or paths of key files / directories).
    ``state_dir`` (never inside ``dest``) keeps the snapshot lock, the replica's reflog
    checksum and the verified certificate; use the same one on every run. ``all_tags`` (the
    default, as stock ``cvmfs_server snapshot``) also replicates the tree of every tag in the
    history, so clients can pin ``CVMFS_REPOSITORY_TAG`` on the replica; ``False``: only the
    trunk and its previous revisions. Raises :class:`RepositoryBusyError` when
    another snapshot of this state dir runs, :class:`ConfigError` when the source is not
    marked for replication, :class:`IntegrityError` for anything that fails verification
    (then the replica keeps serving its previous revision).
    """
    start = time.monotonic()
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    public_keys = _load_keys(keys)
    with publish_lock(state / SNAPSHOT_LOCK, what=f"replica {fqrn} ({dest.describe()})"):
        check_replicable(source)
        repo = Repository(source, public_keys=public_keys, fqrn=fqrn,
                          cache=ObjectCache(state / "cache"), now=now)
        trusted = repo.refresh()
        m = trusted.manifest
        pkcs7 = (fetch_bytes(source, WHITELIST_PKCS7, what=source.describe(WHITELIST_PKCS7),
                             limit=_SMALL, fresh=True) if trusted.whitelist.pkcs7 else None)
        current = _read(dest, MANIFEST)
        before = _check_not_older(dest, current, m)
        report = SnapshotReport(fqrn, source.describe(), dest.describe(), m.revision,
                                str(m.root_catalog), before)
        done_before = _read_state(state)
        if (current == trusted.manifest_bytes and dest.exists(LAST_SNAPSHOT)
                and (not all_tags or done_before.get("all_tags") == _digest(current))):
            report.changed = False
            if _read(dest, WHITELIST) != trusted.whitelist_bytes:  # re-signed whitelist
                _switch(dest, trusted, pkcs7, manifest=False)
            _mark_done(dest)
        else:
            dest.put_bytes(IS_SNAPSHOTTING, (utc_date() + "\n").encode())
            try:
                _replicate(source, dest, trusted, pkcs7, report, state, all_tags=all_tags,
                           workers=workers, progress=progress, incremental=current is not None)
                _mark_done(dest)
                _write_state(state, {"all_tags": _digest(trusted.manifest_bytes)}
                             if all_tags else {})
            finally:
                with contextlib.suppress(CvmfsError, OSError):
                    dest.delete(IS_SNAPSHOTTING)
        repo.close()
    report.seconds = round(time.monotonic() - start, 3)
    return report


def snapshot_replica(cfg: ReplicaConfig, *, all_tags: bool | None = None,
                     workers: int | None = None, progress: Progress | None = None,
                     now: Callable[[], _dt.datetime] | None = None) -> SnapshotReport:
    """:func:`snapshot` of a configured replica (what cron / a systemd timer runs)."""
    source = cfg.open_source()
    dest = cfg.open_storage()
    try:
        return snapshot(source, dest, cfg.fqrn, cfg.public_keys, state_dir=cfg.state_dir,
                        all_tags=cfg.all_tags if all_tags is None else all_tags,
                        workers=workers or cfg.workers, progress=progress, now=now)
    finally:
        source.close()
        dest.close()


# -- the steps -------------------------------------------------------------------------------

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


def check_replicable(source: Source) -> None:
    try:
        fetch_bytes(source, MASTER_REPLICA, what=source.describe(MASTER_REPLICA), limit=_SMALL,
                    fresh=True)
    except ObjectNotFoundError:
        raise ConfigError(f"{source.describe(MASTER_REPLICA)} not found: the repository is not "
                          "marked for replication (on the stratum 0: `cvmfs_server alterfs -m "
                          "on`), or the URL is not a repository") from None


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


def _mark_done(dest: ObjectStore) -> None:
    """``.cvmfs_status.json`` (``last_snapshot``) and ``.cvmfs_last_snapshot``, as stock."""
    date = utc_date()
    status: dict = {}
    with contextlib.suppress(ValueError):
        old = _read(dest, STATUS)
        status = json.loads(old) if old else {}
    if not isinstance(status, dict):
        status = {}
    status["last_snapshot"] = date
    dest.put_bytes(STATUS, (json.dumps(status, indent=2) + "\n").encode())
    dest.put_bytes(LAST_SNAPSHOT, (date + "\n").encode())


def _digest(data: bytes | None) -> str:
    return hashlib.sha1(data or b"").hexdigest()


def _read_state(state: Path) -> dict:
    """What the last snapshot recorded: the manifest (its SHA-1) last pulled with all tags."""
    try:
        data = json.loads((state / "snapshot.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_state(state: Path, data: dict) -> None:
    tmp = state / "snapshot.json.tmp"
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, state / "snapshot.json")


def _read(store: Source, relpath: str) -> bytes | None:
    try:
        return fetch_bytes(store, relpath, what=store.describe(relpath), limit=_SMALL)
    except ObjectNotFoundError:
        return None


def _load_keys(keys: Sequence) -> list:
    from pycvmfs.format.signature import load_public_keys

    paths = [k for k in keys if isinstance(k, str | os.PathLike)]
    loaded = [k for k in keys if not isinstance(k, str | os.PathLike)]
    if paths:
        loaded += load_public_keys(paths)
    if not loaded:
        raise ConfigError("no master public key given: a replica cannot verify its source "
                          "without it")
    return loaded
