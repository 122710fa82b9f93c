"""CernVM-FS client configuration: /etc/cvmfs files read in stock order, with typed accessors."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pycvmfs.client.shell_config import ConfigValue, parse_config_file
from pycvmfs.client.stat import IdMap, read_id_map
from pycvmfs.errors import ConfigError

__all__ = ["DIRECT", "ClientConfig", "ConfigValue", "config_files", "default_client_config_dir",
           "load_client_config", "shell_quote"]

#: The proxy name meaning "no proxy" in ``CVMFS_HTTP_PROXY``.
DIRECT = "DIRECT"
#: Where listxattr shows the client's magic attributes (CVMFS_MAGIC_XATTRS_VISIBILITY)
MAGIC_XATTRS_VISIBILITY = ("rootonly", "never", "always")

#: Values the stock client takes for on and off (OptionsManager::IsOn / IsOff), upper case
ON_VALUES = ("YES", "ON", "1", "TRUE")
OFF_VALUES = ("NO", "OFF", "0", "FALSE")

_SAFE_VALUE = re.compile(r"[0-9A-Za-z/:._,-]*")


def default_client_config_dir() -> Path:
    """``$PYCVMFS_CONFIG_DIR`` if set, else ``/etc/cvmfs``."""
    return Path(os.environ.get("PYCVMFS_CONFIG_DIR") or "/etc/cvmfs")


def _domain(fqrn: str) -> str:
    labels = fqrn.split(".")
    if len(labels) < 2 or not all(labels):
        raise ConfigError(f"{fqrn!r}: not a fully qualified repository name (need a domain)")
    return ".".join(labels[1:])


def config_files(fqrn: str, config_dir: str | os.PathLike) -> list[Path]:
    """The files the stock client would read for ``fqrn``, lowest precedence first (whether or
    not they exist; ``default.d/*.conf`` as found now, sorted)."""
    d = Path(config_dir)
    domain = _domain(fqrn)
    dist = sorted(p for p in (d / "default.d").glob("*.conf") if p.is_file())
    return [d / "default.conf", *dist, d / "default.local",
            d / "domain.d" / f"{domain}.conf", d / "domain.d" / f"{domain}.local",
            d / "config.d" / f"{fqrn}.conf", d / "config.d" / f"{fqrn}.local"]


def load_client_config(fqrn: str, *, config_dir: str | os.PathLike | None = None,
                       environ: Mapping[str, str] | None = None) -> ClientConfig:
    """Read the client configuration of ``fqrn`` the way the stock client does
    (``OptionsManager::ParseDefault``): ``default.conf``, ``default.d/*.conf`` (sorted),
    ``default.local``, ``domain.d/<domain>.conf``, ``domain.d/<domain>.local``,
    ``config.d/<fqrn>.conf``, ``config.d/<fqrn>.local``; later assignments win.

    Like stock, the environment (``environ``, default ``os.environ``, plus ``CVMFS_FQRN``) is only
    visible to ``$VAR`` references; it never overrides nor adds configuration variables.
    """
    directory = Path(config_dir) if config_dir is not None else default_client_config_dir()
    env = dict(os.environ if environ is None else environ)
    env["CVMFS_FQRN"] = fqrn
    values: dict[str, ConfigValue] = {}
    read: list[Path] = []
    for path in config_files(fqrn, directory):
        if path.is_file():
            parse_config_file(path, values, env)
            read.append(path)
    return ClientConfig(fqrn, directory, values, read)


def shell_quote(value: str) -> str:
    """Quote a value the way ``cvmfs_config showconfig`` prints it (``EscapeShell``)."""
    if _SAFE_VALUE.fullmatch(value):
        return value
    return "'" + value.replace("'", "\\'") + "'"


class ClientConfig:
    """The merged configuration of one repository; typed accessors apply stock defaults."""

    def __init__(self, fqrn: str, config_dir: Path, values: Mapping[str, ConfigValue],
                 files: list[Path]) -> None:
        self.fqrn = fqrn
        self.config_dir = config_dir
        self.files = list(files)
        self._values = dict(values)

    def __repr__(self) -> str:
        return f"ClientConfig({self.fqrn!r}, {len(self._values)} variables from {self.config_dir})"

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of ``name``, or ``default`` when no file sets it."""
        v = self._values.get(name)
        return v.value if v is not None else default

    def entry(self, name: str) -> ConfigValue | None:
        """Value, source file and line of ``name``."""
        return self._values.get(name)

    def source(self, name: str) -> str | None:
        """The file that set ``name`` last."""
        v = self._values.get(name)
        return v.source if v is not None else None

    def items(self) -> list[tuple[str, str, str]]:
        """``(name, value, source file)`` of every variable, sorted by name."""
        return [(k, v.value, v.source) for k, v in sorted(self._values.items())]

    def showconfig(self) -> str:
        """Every variable as ``NAME=value    # from <file>`` lines, like ``cvmfs_config``."""
        return "".join(f"{k}={shell_quote(v)}    # from {src}\n" for k, v, src in self.items())

    def to_json(self) -> dict:
        return {
            "fqrn": self.fqrn, "config_dir": str(self.config_dir),
            "files": [str(p) for p in self.files],
            "variables": {k: {"value": v.value, "source": v.source, "line": v.line}
                          for k, v in sorted(self._values.items())},
        }

    # -- typed accessors ----------------------------------------------------------------------

    def _where(self, name: str) -> str:
        v = self._values.get(name)
        return f"{name} ({v.source}:{v.line})" if v is not None else name

    def _int(self, name: str, default: int | None) -> int | None:
        text = (self.get(name) or "").strip()
        if not text:
            return default
        try:
            return int(text, 10)
        except ValueError:
            raise ConfigError(f"{self._where(name)}: not an integer: {text!r}") from None

    def _uint(self, name: str, default: int) -> int:
        n = self._int(name, default)
        assert n is not None
        if n < 0:
            raise ConfigError(f"{self._where(name)}: must not be negative: {n}")
        return n

    def _text(self, name: str) -> str | None:
        return (self.get(name) or "").strip() or None

    def _flag(self, name: str, default: bool) -> bool:
        text = self._text(name)
        if text is None:
            return default
        return text.upper() in ON_VALUES

    @property
    def server_urls(self) -> list[str]:
        """``CVMFS_SERVER_URL`` split at ``;`` with ``@fqrn@`` and ``@org@`` substituted."""
        text = self._text("CVMFS_SERVER_URL")
        if text is None:
            raise ConfigError(f"{self.fqrn}: CVMFS_SERVER_URL is not set in {self.config_dir}")
        org = self.fqrn.split(".", 1)[0]
        urls = [u.strip().replace("@fqrn@", self.fqrn).replace("@org@", org)
                for u in text.split(";")]
        return [u for u in urls if u]

    def _groups(self, name: str) -> list[list[str]]:
        groups = []
        for group in (self.get(name) or "").split(";"):
            if not group.strip():
                continue
            members = [m.strip() for m in group.split("|")]
            if any(not m for m in members):
                raise ConfigError(f"{self._where(name)}: empty proxy in group {group!r}")
            if any(m.lower() == "auto" for m in members):
                raise ConfigError(f"{self._where(name)}: 'auto' (WPAD) proxies are not supported")
            groups.append([DIRECT if m.upper() == DIRECT else m for m in members])
        return groups

    @property
    def proxy_groups(self) -> list[list[str]]:
        """``CVMFS_HTTP_PROXY`` groups (fail-over order; members load-balanced), then the
        ``CVMFS_FALLBACK_PROXY`` groups. A missing or empty ``CVMFS_HTTP_PROXY`` is an error."""
        groups = self._groups("CVMFS_HTTP_PROXY")
        if not groups:
            raise ConfigError(f"{self.fqrn}: CVMFS_HTTP_PROXY is required (use DIRECT for no "
                              f"proxy); not set in {self.config_dir}")
        return groups + self._groups("CVMFS_FALLBACK_PROXY")

    @property
    def proxies(self) -> list[str]:
        """All proxies in try order, groups flattened (no load-balancing shuffle)."""
        return [p for group in self.proxy_groups for p in group]

    @property
    def timeout(self) -> int:
        """Seconds for connections through a proxy (``CVMFS_TIMEOUT``, default 5)."""
        return self._uint("CVMFS_TIMEOUT", 5)

    @property
    def timeout_direct(self) -> int:
        """Seconds for direct connections (``CVMFS_TIMEOUT_DIRECT``, default 10)."""
        return self._uint("CVMFS_TIMEOUT_DIRECT", 10)

    @property
    def low_speed_limit(self) -> int:
        """Bytes/s under which a transfer fails after ``CVMFS_TIMEOUT``/``_DIRECT`` seconds
        (``CVMFS_LOW_SPEED_LIMIT``, default 1024)."""
        return self._uint("CVMFS_LOW_SPEED_LIMIT", 1024)

    @property
    def max_retries(self) -> int:
        return self._uint("CVMFS_MAX_RETRIES", 1)

    @property
    def backoff_init(self) -> int:
        return self._uint("CVMFS_BACKOFF_INIT", 2)

    @property
    def backoff_max(self) -> int:
        return self._uint("CVMFS_BACKOFF_MAX", 10)

    @property
    def host_reset_after(self) -> int:
        """Seconds before returning to the first host (0: never)."""
        return self._uint("CVMFS_HOST_RESET_AFTER", 0)

    @property
    def proxy_reset_after(self) -> int:
        """Seconds before returning to the first proxy group (0: never)."""
        return self._uint("CVMFS_PROXY_RESET_AFTER", 0)

    def source_options(self) -> dict[str, Any]:
        """The keyword arguments of :class:`~pycvmfs.storage.http.HttpSource` this configuration
        sets (proxy groups, timeouts, retries, back-off, reset times, low-speed limit): the one
        place that carries each transfer setting to every source the client makes."""
        return {"proxies": self.proxy_groups, "timeout": self.timeout,
                "timeout_direct": self.timeout_direct, "retries": self.max_retries,
                "backoff": (self.backoff_init, self.backoff_max),
                "host_reset_after": self.host_reset_after,
                "proxy_reset_after": self.proxy_reset_after,
                "low_speed_limit": self.low_speed_limit}

    @property
    def public_keys(self) -> list[Path]:
        """``CVMFS_PUBLIC_KEY`` (``:``-separated), else the ``*.pub`` files directly in
        ``CVMFS_KEYS_DIR``, else in ``<config_dir>/keys`` (not recursive, like stock
        ``FindFilesBySuffix``)."""
        if "CVMFS_PUBLIC_KEY" in self._values:
            return [Path(p) for p in (self.get("CVMFS_PUBLIC_KEY") or "").split(":") if p]
        if "CVMFS_KEYS_DIR" in self._values:
            keys_dir = Path(self.get("CVMFS_KEYS_DIR") or "")
        else:
            keys_dir = self.config_dir / "keys"
        if not str(keys_dir) or not keys_dir.is_dir():
            return []
        return sorted(p for p in keys_dir.glob("*.pub") if p.is_file())

    @property
    def cache_base(self) -> Path:
        return Path(self._text("CVMFS_CACHE_BASE") or "/var/lib/cvmfs")

    @property
    def quota_limit_mb(self) -> int | None:
        """``CVMFS_QUOTA_LIMIT`` in MB; None when unset or -1 (unlimited)."""
        n = self._int("CVMFS_QUOTA_LIMIT", None)
        if n is None or n == -1:
            return None
        if n < 0:
            raise ConfigError(f"{self._where('CVMFS_QUOTA_LIMIT')}: invalid quota {n}")
        return n

    @property
    def shared_cache(self) -> bool:
        return self._flag("CVMFS_SHARED_CACHE", True)

    @property
    def repository_tag(self) -> str | None:
        return self._text("CVMFS_REPOSITORY_TAG")

    @property
    def repository_date(self) -> str | None:
        return self._text("CVMFS_REPOSITORY_DATE")

    @property
    def root_hash(self) -> str | None:
        return self._text("CVMFS_ROOT_HASH")

    @property
    def kcache_timeout(self) -> int | None:
        """``CVMFS_KCACHE_TIMEOUT``: seconds the kernel keeps names and attributes; None:
        unset (the mount's default)."""
        text = self._text("CVMFS_KCACHE_TIMEOUT")
        return None if text is None else self._uint("CVMFS_KCACHE_TIMEOUT", 0)

    @property
    def magic_xattrs_visibility(self) -> str:
        """Where listxattr shows the magic attributes (``user.revision``, ``user.hash``, ...;
        they can always be read by name): ``rootonly`` (the stock default), ``never`` or
        ``always``. ``CVMFS_MAGIC_XATTRS_VISIBILITY`` wins over ``CVMFS_HIDE_MAGIC_XATTRS``
        (on: never, off: always), as in the stock client."""
        visibility = "rootonly"
        hide = self._text("CVMFS_HIDE_MAGIC_XATTRS")
        if hide is not None and hide.upper() in ON_VALUES:
            visibility = "never"
        elif hide is not None and hide.upper() in OFF_VALUES:
            visibility = "always"
        text = self._text("CVMFS_MAGIC_XATTRS_VISIBILITY")
        if text is not None:
            if text.lower() not in MAGIC_XATTRS_VISIBILITY:
                raise ConfigError(f"{self._where('CVMFS_MAGIC_XATTRS_VISIBILITY')}: {text!r} "
                                  f"is not one of {', '.join(MAGIC_XATTRS_VISIBILITY)}")
            visibility = text.lower()
        return visibility

    @property
    def max_ttl(self) -> int | None:
        """The catalog TTL cap in **seconds** (``CVMFS_MAX_TTL`` is in minutes); None: no cap."""
        minutes = self._uint("CVMFS_MAX_TTL", 0)
        return minutes * 60 if minutes else None

    @property
    def claim_ownership(self) -> bool:
        """``CVMFS_CLAIM_OWNERSHIP``: the mounting user owns every entry (yes, the stock
        ``default.conf`` value) or the catalog's owners are shown (no)."""
        return self._flag("CVMFS_CLAIM_OWNERSHIP", True)

    def _id_map(self, name: str) -> IdMap | None:
        path = self._text(name)
        if path is None:
            return None
        try:
            return read_id_map(path)
        except ConfigError as e:
            raise ConfigError(f"{self._where(name)}: {e}") from None

    @property
    def uid_map(self) -> IdMap | None:
        """``CVMFS_UID_MAP``: catalog uid -> local uid (used when ownership is not claimed)."""
        return self._id_map("CVMFS_UID_MAP")

    @property
    def gid_map(self) -> IdMap | None:
        """``CVMFS_GID_MAP``: catalog gid -> local gid (used when ownership is not claimed)."""
        return self._id_map("CVMFS_GID_MAP")

    @property
    def check_permissions(self) -> bool:
        """``CVMFS_CHECK_PERMISSIONS``: the kernel checks modes (``default_permissions``)."""
        return self._flag("CVMFS_CHECK_PERMISSIONS", True)

    @property
    def world_readable(self) -> bool:
        """``CVMFS_WORLD_READABLE``: every entry readable (directories searchable) by all."""
        return self._flag("CVMFS_WORLD_READABLE", False)

    @property
    def nfiles(self) -> int | None:
        """``CVMFS_NFILES``: the mount's open-file limit; None: unset (left as inherited)."""
        return None if self._text("CVMFS_NFILES") is None else self._uint("CVMFS_NFILES", 0)

    @property
    def fuse_threads(self) -> int | None:
        """``CVMFS_FUSE3_MAX_THREADS``: threads answering FUSE requests; None: unset."""
        n = self._int("CVMFS_FUSE3_MAX_THREADS", None)
        if n is not None and not 1 <= n <= 256:
            raise ConfigError(f"{self._where('CVMFS_FUSE3_MAX_THREADS')}: {n} is not in 1..256")
        return n

    @property
    def debug_log(self) -> str | None:
        """``CVMFS_DEBUGLOG``: a file for the mount's debug log."""
        return self._text("CVMFS_DEBUGLOG")

    @property
    def cache_dir(self) -> Path | None:
        """``CVMFS_CACHE_DIR``: the cache directory itself (wins over ``CVMFS_CACHE_BASE``)."""
        text = self._text("CVMFS_CACHE_DIR")
        return Path(text) if text else None

    def check_strict_mount(self) -> None:
        """``CVMFS_STRICT_MOUNT=yes``: refuse a repository missing from ``CVMFS_REPOSITORIES``
        (a comma-separated list)."""
        if not self._flag("CVMFS_STRICT_MOUNT", False):
            return
        allowed = [r.strip() for r in (self.get("CVMFS_REPOSITORIES") or "").split(",")]
        if self.fqrn not in allowed:
            raise ConfigError(f"{self.fqrn}: not in CVMFS_REPOSITORIES and "
                              f"{self._where('CVMFS_STRICT_MOUNT')} is on")
