"""A publisher's per-repository configuration: server.conf with CernVM-FS names, and keys."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from pycvmfs.errors import ConfigError
from pycvmfs.format.chunking import ChunkingParams
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import Algorithm
from pycvmfs.publish.lock import PUBLISH_LOCK

__all__ = ["UPSTREAM_FORMS", "RepositoryConfig", "RepositoryDirs", "ServerSettings",
           "config_base", "configured_names", "default_config_dir", "local_storage",
           "local_upstream", "parse_bool", "parse_conf", "read_server_conf", "update_conf",
           "write_conf"]

_FQRN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.[A-Za-z0-9_.-]*[A-Za-z0-9]$")


def default_config_dir() -> Path:
    """``$PYCVMFS_CONFIG_DIR``, else ``/etc/pycvmfs`` for root, else ``~/.config/pycvmfs``."""
    env = os.environ.get("PYCVMFS_CONFIG_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/etc/pycvmfs")
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "pycvmfs"


def check_fqrn(fqrn: str) -> str:
    if not _FQRN.match(fqrn) or ".." in fqrn or len(fqrn) > 255:
        raise ConfigError(f"{fqrn!r} is not a valid repository name (like example.cern.ch)")
    return fqrn


def parse_conf(text: str, *, what: str) -> dict[str, str]:
    """``KEY=VALUE`` lines as the stock shell-sourced files have them (quotes stripped,
    ``#`` comments, blank lines; no variable expansion)."""
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise ConfigError(f"{what}:{n}: not a KEY=VALUE line: {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


def write_conf(path: Path, values: dict[str, str], header: str) -> None:
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{k}={v}" for k, v in values.items()]
    _replace_lines(path, lines)


def config_base(config_dir: str | os.PathLike | None) -> Path:
    """``config_dir`` as given, else :func:`default_config_dir`."""
    return Path(config_dir) if config_dir else default_config_dir()


def read_server_conf(fqrn: str, config_dir: str | os.PathLike | None) -> tuple[Path, dict]:
    """The repository folder ``<config_dir>/repositories.d/<fqrn>`` (stratum 0 or 1) and its
    parsed ``server.conf``."""
    check_fqrn(fqrn)
    repo_dir = config_base(config_dir) / "repositories.d" / fqrn
    conf_path = repo_dir / "server.conf"
    try:
        return repo_dir, parse_conf(conf_path.read_text(), what=str(conf_path))
    except FileNotFoundError:
        raise ConfigError(f"repository {fqrn} is not configured here ({conf_path} missing; "
                          "create it with `pycvmfs mkfs` or pass --config-dir)") from None


def update_conf(path: Path, changes: dict[str, str]) -> None:
    """Set ``changes`` in a ``KEY=VALUE`` file in place: other lines (comments, settings we
    do not know) stay as they are, new keys are appended; the file is replaced atomically."""
    lines = path.read_text().splitlines()
    seen = set()
    for i, raw in enumerate(lines):
        line = raw.strip()
        line = line[7:].lstrip() if line.startswith("export ") else line
        key = line.partition("=")[0].strip()
        if "=" in line and key in changes:  # every assignment: the last one would win
            lines[i] = f"{key}={changes[key]}"
            seen.add(key)
    lines += [f"{k}={v}" for k, v in changes.items() if k not in seen]
    _replace_lines(path, lines)


def _replace_lines(path: Path, lines: list[str]) -> None:
    """Write ``lines`` to a temporary file next to ``path``, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def configured_names(config_dir: Path) -> list[str]:
    """The repositories configured under ``config_dir`` (stratum 0 and 1), sorted."""
    base = config_dir / "repositories.d"
    try:
        return sorted(p.name for p in base.iterdir() if (p / "server.conf").is_file())
    except FileNotFoundError:
        return []


def parse_bool(value: str, key: str) -> bool:
    """A boolean setting as the stock tools accept it (true/yes/on/1, false/no/off/0/empty)."""
    v = value.strip().lower()
    if v in ("true", "yes", "on", "1"):
        return True
    if v in ("false", "no", "off", "0", ""):
        return False
    raise ConfigError(f"{key}={value!r} is not a boolean (true/false)")


def local_upstream(storage: str | os.PathLike[str]) -> str:
    """The ``CVMFS_UPSTREAM_STORAGE`` value of a storage directory, as stock writes it."""
    return f"local,{os.fspath(storage)}/data/txn,{os.fspath(storage)}"


def local_storage(upstream: str) -> Path | None:
    """The storage directory of a ``local,<tmp dir>,<storage dir>`` upstream, else None."""
    parts = upstream.split(",")
    return Path(parts[2]) if len(parts) == 3 and parts[0] == "local" else None


#: What ``CVMFS_UPSTREAM_STORAGE`` may hold, for error messages.
UPSTREAM_FORMS = "expected local,<tmp dir>,<storage dir> or S3,<tmp dir>,<alias>@<s3.conf>"


class RepositoryDirs:
    """``<config_dir>/repositories.d/<fqrn>/`` and its ``server.conf``, for the configuration
    dataclasses of a stratum 0 and of a stratum 1 (which define ``fqrn`` and ``config_dir``)."""

    fqrn: str
    config_dir: Path

    @property
    def repo_dir(self) -> Path:
        return self.config_dir / "repositories.d" / self.fqrn

    @property
    def server_conf(self) -> Path:
        return self.repo_dir / "server.conf"


def _int(value: str, key: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r} is not an integer") from None


@dataclass
class ServerSettings:
    """The settings a publish uses; names follow ``server.conf`` of the stock tools."""

    hash_algorithm: Algorithm = Algorithm.SHA1  # CVMFS_HASH_ALGORITHM
    compression: Compression = Compression.ZLIB  # CVMFS_COMPRESSION_ALGORITHM
    use_chunking: bool = True  # CVMFS_USE_FILE_CHUNKING
    chunking: ChunkingParams = field(default_factory=lambda: ChunkingParams(
        4 * 1024 * 1024, 8 * 1024 * 1024, 16 * 1024 * 1024))
    auto_tag: bool = True  # CVMFS_AUTO_TAG
    auto_tag_timespan: int = 0  # CVMFS_AUTO_TAG_TIMESPAN in seconds (0 = keep all)
    autocatalogs: bool = False  # CVMFS_AUTOCATALOGS
    autocatalogs_max_weight: int = 100_000
    autocatalogs_min_weight: int = 1_000
    include_xattrs: bool = False  # CVMFS_INCLUDE_XATTRS
    ttl: int = 240  # CVMFS_REPOSITORY_TTL
    garbage_collection: bool = False  # CVMFS_GARBAGE_COLLECTION
    ignore_special_files: bool = False  # CVMFS_IGNORE_SPECIAL_FILES
    file_mbyte_limit: int = 1024  # CVMFS_FILE_MBYTE_LIMIT
    root_kcatalog_limit: int = 200  # CVMFS_ROOT_KCATALOG_LIMIT
    nested_kcatalog_limit: int = 500  # CVMFS_NESTED_KCATALOG_LIMIT
    enforce_limits: bool = False  # CVMFS_ENFORCE_LIMITS
    mtime_ns: bool = False  # CVMFS_ENABLE_MTIME_NS
    hardlinks: bool = True  # PYCVMFS_HARDLINKS: keep hard-link groups (stock AUFS behaviour)
    ingest_processes: bool = True  # PYCVMFS_INGEST_PROCESSES: worker processes for tree syncs
    owner_uid: int | None = None  # CVMFS_USER's uid for entries we create ourselves
    owner_gid: int | None = None

    _VARS: ClassVar[dict[str, str]] = {
        "CVMFS_HASH_ALGORITHM": "hash_algorithm",
        "CVMFS_COMPRESSION_ALGORITHM": "compression",
        "CVMFS_USE_FILE_CHUNKING": "use_chunking",
        "CVMFS_AUTO_TAG": "auto_tag",
        "CVMFS_AUTO_TAG_TIMESPAN": "auto_tag_timespan",
        "CVMFS_AUTOCATALOGS": "autocatalogs",
        "CVMFS_AUTOCATALOGS_MAX_WEIGHT": "autocatalogs_max_weight",
        "CVMFS_AUTOCATALOGS_MIN_WEIGHT": "autocatalogs_min_weight",
        "CVMFS_INCLUDE_XATTRS": "include_xattrs",
        "CVMFS_REPOSITORY_TTL": "ttl",
        "CVMFS_GARBAGE_COLLECTION": "garbage_collection",
        "CVMFS_IGNORE_SPECIAL_FILES": "ignore_special_files",
        "CVMFS_FILE_MBYTE_LIMIT": "file_mbyte_limit",
        "CVMFS_ROOT_KCATALOG_LIMIT": "root_kcatalog_limit",
        "CVMFS_NESTED_KCATALOG_LIMIT": "nested_kcatalog_limit",
        "CVMFS_ENFORCE_LIMITS": "enforce_limits",
        "CVMFS_ENABLE_MTIME_NS": "mtime_ns",
        "PYCVMFS_HARDLINKS": "hardlinks",
        "PYCVMFS_INGEST_PROCESSES": "ingest_processes",
    }

    @classmethod
    def from_conf(cls, conf: dict[str, str]) -> ServerSettings:
        s = cls()
        for var, attr in cls._VARS.items():
            if var not in conf:
                continue
            value = conf[var]
            current = getattr(s, attr)
            if attr == "hash_algorithm":
                setattr(s, attr, Algorithm.from_config_name(value))
            elif attr == "compression":
                setattr(s, attr, Compression.from_config_name(value))
            elif isinstance(current, bool):
                setattr(s, attr, parse_bool(value, var))
            else:
                setattr(s, attr, _int(value, var))
        sizes = [conf.get(k) for k in ("CVMFS_MIN_CHUNK_SIZE", "CVMFS_AVG_CHUNK_SIZE",
                                       "CVMFS_MAX_CHUNK_SIZE")]
        if any(sizes):
            d = s.chunking
            mn, av, mx = (_int(v, k) if v else dflt for v, k, dflt in zip(
                sizes, ("CVMFS_MIN_CHUNK_SIZE", "CVMFS_AVG_CHUNK_SIZE", "CVMFS_MAX_CHUNK_SIZE"),
                (d.min_size, d.avg_size, d.max_size), strict=True))
            s.chunking = ChunkingParams(mn, av, mx)
        if conf.get("CVMFS_USER_UID"):
            s.owner_uid = _int(conf["CVMFS_USER_UID"], "CVMFS_USER_UID")
        if conf.get("CVMFS_USER_GID"):
            s.owner_gid = _int(conf["CVMFS_USER_GID"], "CVMFS_USER_GID")
        return s

    def to_conf(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for var, attr in self._VARS.items():
            v = getattr(self, attr)
            if attr == "hash_algorithm":
                out[var] = v.config_name
            elif attr == "compression":
                out[var] = "default" if v is Compression.ZLIB else "none"
            elif isinstance(v, bool):
                out[var] = "true" if v else "false"
            else:
                out[var] = str(v)
        out["CVMFS_MIN_CHUNK_SIZE"] = str(self.chunking.min_size)
        out["CVMFS_AVG_CHUNK_SIZE"] = str(self.chunking.avg_size)
        out["CVMFS_MAX_CHUNK_SIZE"] = str(self.chunking.max_size)
        if self.owner_uid is not None:
            out["CVMFS_USER_UID"] = str(self.owner_uid)
        if self.owner_gid is not None:
            out["CVMFS_USER_GID"] = str(self.owner_gid)
        return out

    def override(self, **changes) -> ServerSettings:
        names = {f.name for f in fields(self)}
        for k, v in changes.items():
            if k not in names:
                raise ConfigError(f"unknown setting {k!r}")
            setattr(self, k, v)
        return self


@dataclass
class RepositoryConfig(RepositoryDirs):
    """Where one repository's configuration, keys, state and storage live.

    ``<config_dir>/repositories.d/<fqrn>/server.conf`` holds the settings (and
    ``CVMFS_UPSTREAM_STORAGE=local,<storage>/data/txn,<storage>`` as stock writes it, or for a
    repository in S3 the stock ``S3,<spool dir>,<alias>@<s3.conf>``: then ``upstream`` is that
    value and ``storage`` the local spool directory where objects wait for their upload);
    ``<config_dir>/keys/<fqrn>.{masterkey,pub,crt,key}`` the keys, as in ``/etc/cvmfs/keys``;
    ``<config_dir>/repositories.d/<fqrn>/`` also the publish lock and ``reflog.chksum``.
    """

    fqrn: str
    config_dir: Path
    storage: Path
    settings: ServerSettings
    upstream: str | None = None  # an S3 CVMFS_UPSTREAM_STORAGE; None: local storage

    @property
    def keys_dir(self) -> Path:
        return self.config_dir / "keys"

    def key_path(self, suffix: str) -> Path:
        return self.keys_dir / f"{self.fqrn}.{suffix}"

    @property
    def lock_path(self) -> Path:
        return self.repo_dir / PUBLISH_LOCK

    @property
    def reflog_checksum_path(self) -> Path:
        return self.repo_dir / "reflog.chksum"

    @property
    def work_dir(self) -> Path:
        """Scratch space for catalogs being rewritten (same file system as the config)."""
        return self.repo_dir / "work"

    @classmethod
    def load(cls, fqrn: str, config_dir: Path | None = None) -> RepositoryConfig:
        config_dir = config_base(config_dir)
        repo_dir, conf = read_server_conf(fqrn, config_dir)
        upstream = conf.get("CVMFS_UPSTREAM_STORAGE", "")
        settings = ServerSettings.from_conf(conf)
        if upstream.startswith("S3,"):
            from pycvmfs.storage.locate import parse_s3_upstream

            spool, _alias, _conf = parse_s3_upstream(upstream)
            return cls(fqrn, config_dir, Path(spool), settings, upstream)
        storage = local_storage(upstream)
        if storage is None:
            raise ConfigError(f"{repo_dir / 'server.conf'}: CVMFS_UPSTREAM_STORAGE={upstream!r} "
                              f"({UPSTREAM_FORMS})")
        return cls(fqrn, config_dir, storage, settings)

    def save(self) -> None:
        self.repo_dir.mkdir(parents=True, exist_ok=True)
        values = {"CVMFS_REPOSITORY_NAME": self.fqrn, "CVMFS_REPOSITORY_TYPE": "stratum0",
                  "CVMFS_UPSTREAM_STORAGE": self.upstream
                  or local_upstream(self.storage)}
        values.update(self.settings.to_conf())
        write_conf(self.server_conf, values,
                   f"pycvmfs server configuration of {self.fqrn} (CernVM-FS variable names)")
