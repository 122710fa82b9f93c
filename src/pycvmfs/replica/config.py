"""A stratum 1's per-repository configuration: server.conf and replica.conf, CernVM-FS names."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pycvmfs.errors import ConfigError
from pycvmfs.publish.config import (
    UPSTREAM_FORMS,
    RepositoryDirs,
    check_fqrn,
    config_base,
    local_storage,
    local_upstream,
    parse_bool,
    parse_conf,
    write_conf,
)
from pycvmfs.storage.base import ObjectStore, Source

__all__ = ["DEFAULT_WORKERS", "ReplicaConfig", "local_upstream"]

DEFAULT_WORKERS = 16


def _number(value: str, key: str, kind: type = int) -> float:
    try:
        n = kind(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r} is not a number") from None
    if n <= 0 and key != "CVMFS_HTTP_RETRIES":
        raise ConfigError(f"{key}={value!r} must be positive")
    if n < 0:
        raise ConfigError(f"{key}={value!r} must not be negative")
    return n


@dataclass
class ReplicaConfig(RepositoryDirs):
    """Where one replica's settings and state live, and what it replicates.

    ``<config_dir>/repositories.d/<fqrn>/server.conf`` holds ``CVMFS_REPOSITORY_NAME``,
    ``CVMFS_REPOSITORY_TYPE=stratum1``, ``CVMFS_STRATUM0`` (source URL, several separated by
    ``;``), ``CVMFS_STRATUM1`` (this replica's own URL, informational) and
    ``CVMFS_UPSTREAM_STORAGE`` (``local,<storage>/data/txn,<storage>`` or a stock
    ``S3,<tmp>,<alias>@<s3.conf>``); ``replica.conf`` holds ``CVMFS_PUBLIC_KEY`` (key files or
    directories separated by ``:``), ``CVMFS_NUM_WORKERS``, ``CVMFS_HTTP_TIMEOUT``,
    ``CVMFS_HTTP_RETRIES``, ``CVMFS_HTTP_PROXY`` and ``PYCVMFS_SNAPSHOT_ALL_TAGS``. The same
    folder keeps the state of the snapshots (lock, reflog checksum, verified certificate).
    """

    fqrn: str
    config_dir: Path
    stratum0: str
    public_keys: list[str]
    upstream: str
    stratum1: str = ""
    workers: int = DEFAULT_WORKERS
    timeout: float = 10.0
    retries: int = 3
    proxy: str = "DIRECT"
    all_tags: bool = True  # every tag's tree, as stock `cvmfs_server snapshot` does

    @property
    def replica_conf(self) -> Path:
        return self.repo_dir / "replica.conf"

    @property
    def state_dir(self) -> Path:
        """Lock, reflog checksum, verified certificate and scratch files of the snapshots."""
        return self.repo_dir

    @property
    def storage_dir(self) -> Path | None:
        """The storage directory of a ``local`` upstream, else None."""
        return local_storage(self.upstream)

    def open_storage(self) -> ObjectStore:
        """The replica's storage: a directory (created with ``data/00``…``data/ff``) or S3."""
        storage = self.storage_dir
        if storage is not None:
            from pycvmfs.storage.local import LocalStorage

            store = LocalStorage(storage, fsync=False)  # one syncfs before the manifest
            store.create_skeleton()
            return store
        if self.upstream.startswith("S3,"):
            from pycvmfs.storage.locate import open_store

            return open_store(self.upstream)
        raise ConfigError(f"{self.server_conf}: CVMFS_UPSTREAM_STORAGE={self.upstream!r} "
                          f"({UPSTREAM_FORMS})")

    def open_source(self) -> Source:
        """The stratum 0 (HTTP with this replica's timeout, retries, proxy and pool size)."""
        from pycvmfs.storage.locate import open_source

        if self.stratum0.lower().startswith(("http://", "https://")):
            return open_source(self.stratum0, proxies=self.proxy, timeout=self.timeout,
                               retries=self.retries, pool_size=self.workers)
        return open_source(self.stratum0)

    # -- files -------------------------------------------------------------------------------

    @classmethod
    def load(cls, fqrn: str, config_dir: str | os.PathLike[str] | None = None) -> ReplicaConfig:
        check_fqrn(fqrn)
        base = config_base(config_dir)
        repo_dir = base / "repositories.d" / fqrn
        conf: dict[str, str] = {}
        for name in ("server.conf", "replica.conf"):
            path = repo_dir / name
            try:
                conf.update(parse_conf(path.read_text(), what=str(path)))
            except FileNotFoundError:
                raise ConfigError(f"{fqrn} is not a replica configured here ({path} missing; "
                                  "create it with `pycvmfs add-replica` or pass "
                                  "--config-dir)") from None
        where = str(repo_dir / "server.conf")
        if conf.get("CVMFS_REPOSITORY_TYPE") != "stratum1":
            raise ConfigError(f"{where}: {fqrn} is not a stratum 1 (CVMFS_REPOSITORY_TYPE="
                              f"{conf.get('CVMFS_REPOSITORY_TYPE', '')!r})")
        for key in ("CVMFS_STRATUM0", "CVMFS_UPSTREAM_STORAGE", "CVMFS_PUBLIC_KEY"):
            if not conf.get(key):
                raise ConfigError(f"{repo_dir}: {key} is not set")
        return cls(
            fqrn=fqrn, config_dir=base, stratum0=conf["CVMFS_STRATUM0"],
            public_keys=[k for k in conf["CVMFS_PUBLIC_KEY"].split(":") if k],
            upstream=conf["CVMFS_UPSTREAM_STORAGE"], stratum1=conf.get("CVMFS_STRATUM1", ""),
            workers=int(_number(conf.get("CVMFS_NUM_WORKERS", str(DEFAULT_WORKERS)),
                                "CVMFS_NUM_WORKERS")),
            timeout=float(_number(conf.get("CVMFS_HTTP_TIMEOUT", "10"), "CVMFS_HTTP_TIMEOUT",
                                  float)),
            retries=int(_number(conf.get("CVMFS_HTTP_RETRIES", "3"), "CVMFS_HTTP_RETRIES")),
            proxy=conf.get("CVMFS_HTTP_PROXY") or "DIRECT",
            all_tags=parse_bool(conf.get("PYCVMFS_SNAPSHOT_ALL_TAGS", "true"),
                           "PYCVMFS_SNAPSHOT_ALL_TAGS"))

    def save(self, *, overwrite: bool = False) -> None:
        """Write server.conf and replica.conf; refuses to replace another repository's
        configuration (a stratum 0 of the same name, or another replica) unless ``overwrite``."""
        check_fqrn(self.fqrn)
        if self.server_conf.exists() and not overwrite:
            kind = parse_conf(self.server_conf.read_text(), what=str(self.server_conf)).get(
                "CVMFS_REPOSITORY_TYPE", "stratum0")
            raise ConfigError(f"{self.server_conf} exists: {self.fqrn} is already configured "
                              f"here as a {kind}; use another --config-dir")
        self.repo_dir.mkdir(parents=True, exist_ok=True)
        write_conf(self.server_conf, {
            "CVMFS_REPOSITORY_NAME": self.fqrn,
            "CVMFS_REPOSITORY_TYPE": "stratum1",
            "CVMFS_STRATUM0": self.stratum0,
            "CVMFS_STRATUM1": self.stratum1,
            "CVMFS_UPSTREAM_STORAGE": self.upstream,
        }, f"pycvmfs stratum-1 configuration of {self.fqrn} (CernVM-FS variable names)")
        write_conf(self.replica_conf, {
            "CVMFS_NUM_WORKERS": str(self.workers),
            "CVMFS_PUBLIC_KEY": ":".join(self.public_keys),
            "CVMFS_HTTP_TIMEOUT": f"{self.timeout:g}",
            "CVMFS_HTTP_RETRIES": str(self.retries),
            "CVMFS_HTTP_PROXY": self.proxy,
            "PYCVMFS_SNAPSHOT_ALL_TAGS": "true" if self.all_tags else "false",
        }, f"pycvmfs replication settings of {self.fqrn}")

    @classmethod
    def create(cls, fqrn: str, stratum0: str, storage: str, public_keys: list[str], *,
               config_dir: str | os.PathLike[str] | None = None, **settings: object
               ) -> ReplicaConfig:
        """A new configuration (not yet saved): ``storage`` is a directory or a stock
        ``S3,<tmp>,<alias>@<s3.conf>`` value; keys are stored as absolute paths."""
        check_fqrn(fqrn)
        if not public_keys:
            raise ConfigError("a replica needs the repository's master public key (-k FILE or "
                              "a directory of *.pub keys)")
        keys = []
        for k in public_keys:
            if not os.path.exists(k):
                raise ConfigError(f"{k}: no such public key file or directory")
            keys.append(os.path.abspath(k))
        upstream = (storage if storage.startswith("S3,")
                    else local_upstream(os.path.abspath(storage)))
        base = config_base(config_dir)
        cfg = cls(fqrn=fqrn, config_dir=base, stratum0=stratum0.strip().rstrip("/"),
                  public_keys=keys, upstream=upstream)
        for key, value in settings.items():
            if value is None:
                continue
            if not hasattr(cfg, key):
                raise ConfigError(f"unknown replica setting {key!r}")
            setattr(cfg, key, value)
        return cfg
