"""Every repository configured here, stratum 0 and stratum 1: its state, and a verified reader."""

from __future__ import annotations

import os
from pathlib import Path

from pycvmfs.client.cache import ObjectCache, default_cache_dir
from pycvmfs.client.repository import Repository
from pycvmfs.errors import CvmfsError
from pycvmfs.format.signature import load_public_keys
from pycvmfs.publish.admin import RepositoryStatus, lock_holder, stratum0_status
from pycvmfs.publish.config import config_base, configured_names, read_server_conf
from pycvmfs.publish.lock import SNAPSHOT_LOCK
from pycvmfs.replica.config import ReplicaConfig
from pycvmfs.storage.base import Source

__all__ = ["list_repositories", "open_configured", "replica_status"]


def _replica_source(cfg: ReplicaConfig) -> Source:
    """The replica's storage, read only (nothing created)."""
    from pycvmfs.storage.locate import open_source, open_store

    storage = cfg.storage_dir
    return open_source(str(storage)) if storage is not None else open_store(cfg.upstream)


def _cache(cache_dir: str | os.PathLike | None) -> ObjectCache:
    return ObjectCache(Path(cache_dir) if cache_dir else default_cache_dir())


def _replica_reader(cfg: ReplicaConfig, cache_dir: str | os.PathLike | None) -> Repository:
    """A verified reader of a stratum 1's storage, with the keys it replicates with."""
    return Repository(_replica_source(cfg), public_keys=load_public_keys(cfg.public_keys),
                      fqrn=cfg.fqrn, cache=_cache(cache_dir))


def replica_status(fqrn: str, config_dir: str | os.PathLike | None = None, *,
                   cache_dir: str | os.PathLike | None = None) -> RepositoryStatus:
    """State of a stratum 1: the revision it serves, checked with the master key it replicates
    with (``broken`` if that fails), or ``transaction`` while a snapshot holds the lock."""
    _repo_dir, conf = read_server_conf(fqrn, config_dir)
    status = RepositoryStatus(fqrn, "stratum1", conf.get("CVMFS_UPSTREAM_STORAGE", ""))
    try:
        cfg = ReplicaConfig.load(fqrn, config_dir)
        if cfg.storage_dir is not None:
            status.storage = str(cfg.storage_dir)
        with _replica_reader(cfg, cache_dir) as repo:
            trusted = repo.refresh()
        status.revision = trusted.manifest.revision
        status.whitelist(trusted.whitelist.expires)
    except CvmfsError as e:
        status.state, status.detail = "broken", str(e)
        return status
    holder = lock_holder(cfg.state_dir / SNAPSHOT_LOCK)
    if holder is not None:
        status.state, status.detail = "transaction", f"snapshot lock held by pid {holder}"
    return status


def list_repositories(config_dir: str | os.PathLike | None = None, *,
                      cache_dir: str | os.PathLike | None = None) -> list[RepositoryStatus]:
    """Every repository under ``<config_dir>/repositories.d``, like ``cvmfs_server list``."""
    base = config_base(config_dir)
    out = []
    for fqrn in configured_names(base):
        try:
            _repo_dir, conf = read_server_conf(fqrn, base)
        except CvmfsError as e:
            out.append(RepositoryStatus(fqrn, "unknown", "", state="broken", detail=str(e)))
            continue
        if conf.get("CVMFS_REPOSITORY_TYPE") == "stratum1":
            out.append(replica_status(fqrn, base, cache_dir=cache_dir))
        else:
            out.append(stratum0_status(fqrn, base))
    return out


def open_configured(fqrn: str, config_dir: str | os.PathLike | None = None, *,
                    cache_dir: str | os.PathLike | None = None) -> Repository:
    """A verified reader of a repository configured here (a stratum 0 with its own public key,
    a stratum 1 with the key it replicates with), over its storage."""
    _repo_dir, conf = read_server_conf(fqrn, config_dir)
    if conf.get("CVMFS_REPOSITORY_TYPE") == "stratum1":
        return _replica_reader(ReplicaConfig.load(fqrn, config_dir), cache_dir)
    from pycvmfs.publish.repository import Publisher

    pub = Publisher.open(fqrn, config_dir=config_dir)
    return Repository(pub.store, public_keys=load_public_keys([pub.config.key_path("pub")]),
                      fqrn=fqrn, cache=_cache(cache_dir))
