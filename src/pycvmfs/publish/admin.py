"""Administration of configured repositories: state, removal and settings (cvmfs_server verbs)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pycvmfs.errors import ConfigError, CvmfsError, RepositoryBusyError, WhitelistError
from pycvmfs.format.whitelist import Whitelist
from pycvmfs.publish.config import (
    RepositoryConfig,
    local_storage,
    parse_bool,
    parse_conf,
    read_server_conf,
    update_conf,
)
from pycvmfs.publish.lock import PUBLISH_LOCK, SNAPSHOT_LOCK, publish_lock
from pycvmfs.publish.signing import WHITELIST, read_whitelist

__all__ = ["AlterReport", "RemovalReport", "RepositoryStatus", "alter_settings",
           "lock_holder", "parse_duration", "remove_repository",
           "stratum0_status"]

#: the locks a publish (stratum 0) and a snapshot (stratum 1) hold in the repository folder
LOCK_NAMES = (PUBLISH_LOCK, SNAPSHOT_LOCK)
#: what a storage directory holds besides data/: the files stock and pycvmfs write at its top
_STORAGE_FILE = re.compile(r"^\.cvmfs[A-Za-z0-9_.-]*$")
MASTER_REPLICA = ".cvmfs_master_replica"  # alterfs -m: the replication marker


@dataclass
class RepositoryStatus:
    """One configured repository as ``list`` shows it."""

    fqrn: str
    type: str  # stratum0 / stratum1 / unknown
    storage: str  # a directory, or the S3 upstream
    revision: int | None = None
    state: str = "ok"  # ok / transaction / broken
    detail: str = ""  # why it is not ok
    whitelist_expires: str | None = None  # ISO 8601 UTC

    def whitelist(self, expires: _dt.datetime) -> None:
        """Note the whitelist's expiry; an expired one breaks the repository for clients."""
        self.whitelist_expires = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
        if expires <= _dt.datetime.now(_dt.UTC) and self.state == "ok":
            self.state, self.detail = "broken", (f"whitelist expired {self.whitelist_expires}"
                                                 " (renew it: pycvmfs resign)")

    def to_dict(self) -> dict:
        return asdict(self)


def lock_holder(path: Path) -> str | None:
    """The PID (as written) of the process holding the flock on ``path``, else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
    finally:
        os.close(fd)


def stratum0_status(fqrn: str, config_dir: str | os.PathLike | None = None) -> RepositoryStatus:
    """State of a stratum 0: its head revision, whether a publish holds the lock, or why the
    manifest cannot be read and checked with its own keys (``broken``)."""
    from pycvmfs.publish.repository import Publisher

    _repo_dir, conf = read_server_conf(fqrn, config_dir)
    status = RepositoryStatus(fqrn, "stratum0", conf.get("CVMFS_UPSTREAM_STORAGE", ""))
    try:
        pub = Publisher.open(fqrn, config_dir=config_dir)
    except CvmfsError as e:
        status.state, status.detail = "broken", str(e)
        return status
    storage = local_storage(status.storage)
    if storage is not None:
        status.storage = str(storage)
    try:
        status.revision = pub.head().revision
        what = pub.store.describe(WHITELIST)
        data = read_whitelist(pub.store)
        if data is None:
            raise WhitelistError(f"{what}: missing; sign one with `pycvmfs resign {fqrn}`")
        status.whitelist(Whitelist.parse(data, what=what).expires)
    except CvmfsError as e:
        status.state, status.detail = "broken", str(e)
        return status
    finally:
        pub.store.close()
    holder = lock_holder(pub.config.lock_path)
    if holder is not None:
        status.state, status.detail = "transaction", f"publish lock held by pid {holder}"
    return status


@dataclass
class RemovalReport:
    """What ``remove_repository`` deleted and what it left."""

    fqrn: str
    type: str
    storage: str
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # in the storage folder, not ours

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def _all_locks(repo_dir: Path, fqrn: str) -> Iterator[None]:
    """Both locks (created if missing): no publish or snapshot can start meanwhile."""
    with contextlib.ExitStack() as stack:
        for name in LOCK_NAMES:
            stack.enter_context(publish_lock(repo_dir / name, what=f"repository {fqrn}"))
        yield


def remove_repository(fqrn: str, config_dir: str | os.PathLike | None = None, *,
                      preserve_data: bool = False) -> RemovalReport:
    """Remove a repository's configuration, its keys (stratum 0) and its storage, like
    ``cvmfs_server rmfs``; ``preserve_data`` keeps the storage.

    Refused while a publish or snapshot holds the lock. In the storage folder only what a
    repository consists of goes (``data/``, the ``.cvmfs*`` files); anything else stays and is
    reported, and the folder itself only goes once empty. Storage in S3 is not deleted: the
    bucket may hold other repositories, and a listing-driven delete there cannot be undone."""
    repo_dir, conf = read_server_conf(fqrn, config_dir)
    kind = conf.get("CVMFS_REPOSITORY_TYPE") or "stratum0"
    upstream = conf.get("CVMFS_UPSTREAM_STORAGE", "")
    storage = local_storage(upstream)
    if storage is None and not preserve_data:
        raise ConfigError(f"{fqrn}: storage {upstream!r} is not a local directory; pycvmfs "
                          "does not delete objects in S3 (remove the prefix "
                          f"{fqrn}/ with your S3 tools), use rmfs -p to remove only the "
                          "configuration")
    report = RemovalReport(fqrn, kind, str(storage) if storage else upstream)
    with _all_locks(repo_dir, fqrn):
        if storage is not None and not preserve_data:
            _remove_storage(storage, repo_dir.parent.parent, report)
        if kind != "stratum1":
            keys_dir = repo_dir.parent.parent / "keys"
            for suffix in ("masterkey", "pub", "crt", "key", "gw"):
                key = keys_dir / f"{fqrn}.{suffix}"
                if key.is_file() or key.is_symlink():
                    key.unlink()
                    report.removed.append(str(key))
        shutil.rmtree(repo_dir)
        report.removed.append(str(repo_dir))
    return report


def _remove_storage(storage: Path, config_dir: Path, report: RemovalReport) -> None:
    if not storage.exists():
        return
    real = storage.resolve()
    if not storage.is_dir() or real == Path("/") or real in config_dir.resolve().parents \
            or real == config_dir.resolve():
        raise ConfigError(f"{storage}: refusing to delete this as a repository storage")
    if not (storage / ".cvmfspublished").exists() and not (storage / "data").is_dir():
        raise ConfigError(f"{storage}: holds no .cvmfspublished and no data/: not a "
                          "repository storage, nothing deleted (use rmfs -p)")
    for entry in sorted(os.scandir(storage), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.name == "data" and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path)
        elif _STORAGE_FILE.match(entry.name) and not entry.is_dir(follow_symlinks=False):
            path.unlink()
        else:
            report.kept.append(str(path))
            continue
        report.removed.append(str(path))
    if not report.kept and not storage.is_symlink():
        storage.rmdir()
        report.removed.append(str(storage))


@dataclass
class AlterReport:
    """The settings ``alter_settings`` changed (variable: [old, new]) and what to know."""

    fqrn: str
    changed: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


#: alterable settings: keyword -> (server.conf variable, kind)
_ALTERABLE = {
    "garbage_collection": ("CVMFS_GARBAGE_COLLECTION", bool),
    "ttl": ("CVMFS_REPOSITORY_TTL", int),
    "auto_tag": ("CVMFS_AUTO_TAG", bool),
    "auto_tag_timespan": ("CVMFS_AUTO_TAG_TIMESPAN", int),
    "include_xattrs": ("CVMFS_INCLUDE_XATTRS", bool),
    "ignore_special_files": ("CVMFS_IGNORE_SPECIAL_FILES", bool),
    "file_mbyte_limit": ("CVMFS_FILE_MBYTE_LIMIT", int),
}
#: settings that live in the manifest or the root catalog: written by the next publish
_PUBLISHED = {"CVMFS_GARBAGE_COLLECTION": "manifest G", "CVMFS_REPOSITORY_TTL": "root catalog TTL"}


def parse_duration(text: str) -> int:
    """Seconds from ``3600``, ``90s``, ``30m``, ``12h``, ``30d``, ``4w`` (also ``30 days``)."""
    m = re.fullmatch(r"\s*(\d+)\s*(s|sec|seconds?|m|min|minutes?|h|hours?|d|days?|w|weeks?)?"
                     r"(\s+ago)?\s*", text)
    if not m:
        raise ConfigError(f"{text!r} is not a time span (like 3600, 12h, 30d)")
    unit = (m.group(2) or "s")[0]
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]


def alter_settings(fqrn: str, config_dir: str | os.PathLike | None = None, *,
                   master_replica: bool | None = None, **changes: bool | int | None
                   ) -> AlterReport:
    """Change settings of a stratum 0 in ``server.conf`` (atomically, other lines kept) and,
    for ``master_replica``, the ``.cvmfs_master_replica`` marker in its storage, as
    ``cvmfs_server alterfs -m`` does. Refused while a publish holds the lock.

    Every pycvmfs command reads ``server.conf`` when it starts, so a change counts from the
    next command on; the TTL and the garbage-collection flag are written into the root
    catalog and the manifest by the next publish (the report says so)."""
    from pycvmfs.publish.repository import MASTER_REPLICA_TEXT, Publisher

    unknown = set(changes) - set(_ALTERABLE)
    if unknown:
        raise ConfigError(f"cannot alter {', '.join(sorted(unknown))}")
    _repo_dir, conf = read_server_conf(fqrn, config_dir)
    if conf.get("CVMFS_REPOSITORY_TYPE") == "stratum1":
        raise ConfigError(f"{fqrn} is a stratum 1 here: alterfs changes the settings of a "
                          "stratum 0 (a replica follows its source's)")
    pub = Publisher.open(fqrn, config_dir=config_dir)
    report = AlterReport(fqrn)
    try:
        with pub.lock():
            conf = parse_conf(pub.config.server_conf.read_text(), what=str(pub.config.server_conf))
            updates: dict[str, str] = {}
            for name, value in changes.items():
                if value is None:
                    continue
                var, kind = _ALTERABLE[name]
                if kind is int and (isinstance(value, bool) or value < 0
                                    or (name == "ttl" and value == 0)):
                    raise ConfigError(f"{var}: {value!r} is not a valid value")
                new = ("true" if value else "false") if kind is bool else str(int(value))
                old = conf.get(var, "")
                same = (parse_bool(old, var) == value) if kind is bool and old else old == new
                if not same:
                    updates[var] = new
                    report.changed[var] = [old, new]
            if updates:
                update_conf(pub.config.server_conf, updates)
            for var, where in _PUBLISHED.items():
                if var in updates:
                    report.notes.append(f"{var} is recorded in the {where}: it applies from "
                                        "the next publish")
            if master_replica is not None:
                present = pub.store.exists(MASTER_REPLICA)
                if master_replica and not present:
                    pub.store.put_bytes(MASTER_REPLICA, MASTER_REPLICA_TEXT)
                elif not master_replica and present:
                    pub.store.delete(MASTER_REPLICA)
                if master_replica != present:
                    report.changed[MASTER_REPLICA] = [
                        "present" if present else "absent",
                        "present" if master_replica else "absent"]
    except RepositoryBusyError as e:
        raise RepositoryBusyError(f"{e} (alterfs changes nothing during a publish)") from None
    finally:
        pub.store.close()
    RepositoryConfig.load(fqrn, pub.config.config_dir)  # what we wrote must load
    return report
