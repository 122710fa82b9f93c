"""One stratum-1 snapshot (``cvmfs_server snapshot``): verify the source, pull what is missing,
keep an own reflog, then switch the whitelist and manifest last (format doc §9).

This module stays light (no signatures, SQLite or HTTP engine): cron runs a snapshot every few
minutes on every stratum 1, and most find nothing new. Those end in
:mod:`pycvmfs.replica.unchanged`; the others go through :mod:`pycvmfs.replica.replicate`.
"""

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

from pycvmfs.errors import ConfigError, ObjectNotFoundError
from pycvmfs.publish.lock import SNAPSHOT_LOCK, publish_lock
from pycvmfs.storage.base import ObjectStore, Source, fetch_bytes

if TYPE_CHECKING:
    from pycvmfs.replica.config import ReplicaConfig
    from pycvmfs.replica.pull import Progress

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
SMALL = 1 << 20  # manifests, whitelists, markers, status files

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
    from pycvmfs.replica import unchanged

    public_keys = None
    fingerprint = unchanged.key_fingerprint(keys)
    if fingerprint is None:  # key objects, or a file that is not there: load them now (and
        from pycvmfs.replica.replicate import load_keys  # fail before the lock, if it fails)

        public_keys = load_keys(keys)
    with publish_lock(state / SNAPSHOT_LOCK, what=f"replica {fqrn} ({dest.describe()})"):
        check_replicable(source)
        report = unchanged.unchanged_report(source, dest, fqrn, fingerprint, state,
                                            all_tags=all_tags, now=now)
        if report is None:
            from pycvmfs.replica.replicate import verified_snapshot

            report = verified_snapshot(source, dest, fqrn, keys, public_keys, state,
                                       all_tags=all_tags, workers=workers, progress=progress,
                                       now=now)
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


def check_replicable(source: Source) -> None:
    """Raises :class:`ConfigError` unless ``source`` has the ``.cvmfs_master_replica`` marker."""
    try:
        fetch_bytes(source, MASTER_REPLICA, what=source.describe(MASTER_REPLICA), limit=SMALL,
                    fresh=True)
    except ObjectNotFoundError:
        raise ConfigError(f"{source.describe(MASTER_REPLICA)} not found: the repository is not "
                          "marked for replication (on the stratum 0: `cvmfs_server alterfs -m "
                          "on`), or the URL is not a repository") from None


def mark_done(dest: ObjectStore) -> None:
    """``.cvmfs_status.json`` (``last_snapshot``) and ``.cvmfs_last_snapshot``, as stock."""
    date = utc_date()
    status: dict = {}
    with contextlib.suppress(ValueError):
        old = read_file(dest, STATUS)
        status = json.loads(old) if old else {}
    if not isinstance(status, dict):
        status = {}
    status["last_snapshot"] = date
    dest.put_bytes(STATUS, (json.dumps(status, indent=2) + "\n").encode())
    dest.put_bytes(LAST_SNAPSHOT, (date + "\n").encode())


def digest(data: bytes | None) -> str:
    """The SHA-1 (hex) by which the state file names a manifest."""
    return hashlib.sha1(data or b"").hexdigest()


def read_state(state: Path) -> dict:
    """What the last snapshot recorded: the manifest (its SHA-1) last pulled with all tags."""
    try:
        data = json.loads((state / "snapshot.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_state(state: Path, data: dict) -> None:
    """Replace what :func:`read_state` reads (atomically)."""
    tmp = state / "snapshot.json.tmp"
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, state / "snapshot.json")


def read_file(store: Source, relpath: str) -> bytes | None:
    """A small file of ``store``, None when it has none."""
    try:
        return fetch_bytes(store, relpath, what=store.describe(relpath), limit=SMALL)
    except ObjectNotFoundError:
        return None


