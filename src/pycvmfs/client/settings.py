"""Every stock CernVM-FS client setting and what pycvmfs does with it (honour, ignore, refuse)."""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pycvmfs.client.config import OFF_VALUES, ON_VALUES
from pycvmfs.errors import ConfigError

if TYPE_CHECKING:
    from pycvmfs.client.config import ClientConfig

__all__ = ["HONOURED", "IGNORED", "REFUSED", "SETTINGS", "Review", "Setting", "markdown_table",
           "report_settings", "review_settings", "setting_for"]

HONOURED = "honoured"
IGNORED = "ignored"  # set to anything but an inert value: one warning naming it
REFUSED = "refused"  # set to anything but an inert value: the mount refuses to start


def _empty(value: str) -> bool:
    return not value.strip()


def _off(value: str) -> bool:
    return _empty(value) or value.strip().upper() in OFF_VALUES


def _on(value: str) -> bool:
    return _empty(value) or value.strip().upper() in ON_VALUES


def _zero(value: str) -> bool:
    return value.strip() in ("", "0")


def _always(_value: str) -> bool:
    return True


def _no_blacklist(path: str) -> bool:
    """A blacklist that lists nothing (missing or only blank lines) changes nothing."""
    try:
        with open(path.strip() or os.devnull, "rb") as f:
            return not f.read().strip()
    except OSError:
        return True


@dataclass(frozen=True)
class Setting:
    """What pycvmfs does with one client variable; ``inert(value)``: values that ask for what
    pycvmfs does anyway (no warning, no refusal)."""

    status: str
    what: str
    inert: Callable[[str], bool] = _empty


def _h(what: str) -> Setting:
    return Setting(HONOURED, what, _always)


def _i(what: str, inert: Callable[[str], bool] = _empty) -> Setting:
    return Setting(IGNORED, what, inert)


def _r(what: str, inert: Callable[[str], bool] = _empty) -> Setting:
    return Setting(REFUSED, what, inert)


_RESOLVER = "the system resolver is used (getaddrinfo)"
_NO_TRACE = "pycvmfs has no tracer; see --debug and --log-file"
_ONE_CACHE = "pycvmfs has one POSIX cache (CVMFS_CACHE_BASE, CVMFS_QUOTA_LIMIT)"
_NO_TALK = "pycvmfs has no cvmfs_talk socket; pycvmfs status reads the magic xattrs"
_NO_CONFIG_REPO = "configuration repositories are not read; only the files of --config-dir"
_NO_EXTERNAL = "external data (CVMFS_EXTERNAL_*) is not supported"

#: Every ``CVMFS_*`` variable of the stock 2.12 ``default.conf`` and of the parameters the stock
#: client, loader and mount helper read (mountpoint.cc, loader.cc, cvmfs.cc, mount.cvmfs.cc,
#: cvmfs_config), with what pycvmfs does about it.
SETTINGS: dict[str, Setting] = {
    # -- where the repository is, and how to reach it
    "CVMFS_SERVER_URL": _h("servers in fail-over order, @fqrn@ and @org@ substituted"),
    "CVMFS_HTTP_PROXY": _h("proxy groups (';') of load-balanced members ('|'), DIRECT; "
                           "'auto' (WPAD) is refused"),
    "CVMFS_FALLBACK_PROXY": _h("proxy groups tried after those of CVMFS_HTTP_PROXY"),
    "CVMFS_TIMEOUT": _h("seconds for connections through a proxy"),
    "CVMFS_TIMEOUT_DIRECT": _h("seconds for direct connections"),
    "CVMFS_MAX_RETRIES": _h("retries of a failed request before the next proxy or server"),
    "CVMFS_BACKOFF_INIT": _h("first back-off between retries (seconds)"),
    "CVMFS_BACKOFF_MAX": _h("longest back-off between retries (seconds)"),
    "CVMFS_HOST_RESET_AFTER": _h("seconds before going back to the first server"),
    "CVMFS_PROXY_RESET_AFTER": _h("seconds before going back to the first proxy group"),
    "CVMFS_LOW_SPEED_LIMIT": _h("a transfer slower than this (bytes/s) for CVMFS_TIMEOUT"
                                "[_DIRECT] seconds fails like a timeout"),
    "CVMFS_FOLLOW_REDIRECTS": _i("HTTP redirects are never followed: a 3xx answer moves to the "
                                 "next server", _off),
    "CVMFS_SEND_INFO_HEADER": _i("no X-CVMFS2 path header is sent", _off),
    "CVMFS_USE_GEOAPI": _i("servers are not ordered by the Geo API; they are tried in the "
                           "configured order", _off),
    "CVMFS_MAX_SERVERS": _i("every configured server is used", _zero),
    "CVMFS_FAILOVER_INDEFINITELY": _i("a request gives up after every server failed", _off),
    "CVMFS_IPFAMILY_PREFER": _i(f"no IPv4/IPv6 preference; {_RESOLVER}"),
    "CVMFS_IPV4_ONLY": _i(f"no IPv4-only mode; {_RESOLVER}", _off),
    "CVMFS_MAX_IPADDR_PER_PROXY": _i(f"every address of a proxy name is used; {_RESOLVER}"),
    "CVMFS_DNS_SERVER": _i(f"no own DNS server; {_RESOLVER}"),
    "CVMFS_DNS_TIMEOUT": _i(f"no own DNS timeout; {_RESOLVER}"),
    "CVMFS_DNS_RETRIES": _i(f"no own DNS retries; {_RESOLVER}"),
    "CVMFS_DNS_MIN_TTL": _i(f"no own DNS cache; {_RESOLVER}"),
    "CVMFS_DNS_MAX_TTL": _i(f"no own DNS cache; {_RESOLVER}"),
    "CVMFS_DNS_ROAMING": _i(f"no resolv.conf watch; {_RESOLVER}", _off),
    "CVMFS_PROXY_SHARD": _i("proxies are not sharded; members of a group are load-balanced",
                            _off),
    "CVMFS_PROXY_SHARDING_POLICY": _i("proxies are not sharded"),
    "CVMFS_PROXY_TEMPLATE": _i("no proxy template header is sent"),
    "CVMFS_CLIENT_PROFILE": _i("no client profile: CVMFS_HTTP_PROXY is required (no WPAD)"),
    "CVMFS_USE_CDN": _i("no CDN server list is chosen; CVMFS_SERVER_URL is used", _off),
    "CVMFS_TRUSTED_CERTS": _i("HTTPS servers are checked against the system's CA certificates"),
    "CVMFS_USE_SSL_SYSTEM_CA": _i("HTTPS servers are checked against the system's CA "
                                  "certificates", _on),
    "CVMFS_HTTP_TRACING": _i(_NO_TRACE, _off),
    "CVMFS_HTTP_TRACING_HEADERS": _i(_NO_TRACE),
    # -- trust and revisions
    "CVMFS_KEYS_DIR": _h("the *.pub master keys directly in this directory"),
    "CVMFS_PUBLIC_KEY": _h("':'-separated master key files (win over CVMFS_KEYS_DIR)"),
    "CVMFS_REPOSITORY_TAG": _h("the mount is pinned to this named tag"),
    "CVMFS_REPOSITORY_DATE": _h("the mount is pinned to the revision current at this date"),
    "CVMFS_ROOT_HASH": _h("the mount is pinned to this root catalog"),
    "CVMFS_MAX_TTL": _h("caps the manifest re-check period (minutes)"),
    "CVMFS_AUTO_UPDATE": _i("new revisions are always applied (use CVMFS_REPOSITORY_TAG or "
                            "CVMFS_ROOT_HASH to pin)", _on),
    "CVMFS_IGNORE_SIGNATURE": _i("signatures are always checked", _off),
    "CVMFS_BLACKLIST": _r("pycvmfs does not read certificate blacklists: a blacklisted "
                          "certificate would be trusted", _no_blacklist),
    "CVMFS_INITIAL_GENERATION": _i("inode numbers have no generation offset"),
    # -- the cache
    "CVMFS_CACHE_BASE": _h("cache under CVMFS_CACHE_BASE/shared (or /<fqrn>)"),
    "CVMFS_SHARED_CACHE": _h("one cache for all repositories (no: one per repository)"),
    "CVMFS_QUOTA_LIMIT": _h("the cache's size limit (MB, -1: none) for every process using it"),
    "CVMFS_CACHE_DIR": _h("the cache directory itself (wins over CVMFS_CACHE_BASE)"),
    "CVMFS_ALIEN_CACHE": _i(f"no alien cache; {_ONE_CACHE}"),
    "CVMFS_CACHE_PRIMARY": _i(f"no cache manager instances; {_ONE_CACHE}"),
    "CVMFS_CACHE_REFCOUNT": _i("open files are counted by the cache database", _on),
    "CVMFS_CACHE_SYMLINKS": _i("symlinks are not cached separately", _off),
    "CVMFS_CACHE_SERVER_MODE": _i(_ONE_CACHE, _off),
    "CVMFS_STREAMING_CACHE": _i(f"no streaming cache; {_ONE_CACHE}", _off),
    "CVMFS_SERVER_CACHE_MODE": _i(_ONE_CACHE, _off),
    "CVMFS_MEMCACHE_SIZE": _i("in-memory metadata caches have fixed sizes"),
    "CVMFS_CATALOG_WATERMARK": _i("idle nested catalogs are unloaded after --catalog-idle "
                                  "seconds"),
    "CVMFS_WORKSPACE": _i("pycvmfs keeps its working files in the cache directory"),
    # -- the mount
    "CVMFS_CLAIM_OWNERSHIP": _h("yes (default): files are owned by the mounting user; no: the "
                                "catalog's owners (mapped by CVMFS_UID_MAP / CVMFS_GID_MAP)"),
    "CVMFS_UID_MAP": _h("a file of 'catalog_uid local_uid' lines ('*': the rest), when "
                        "CVMFS_CLAIM_OWNERSHIP=no"),
    "CVMFS_GID_MAP": _h("as CVMFS_UID_MAP for group ids"),
    "CVMFS_CHECK_PERMISSIONS": _h("yes (default): the kernel checks file modes "
                                  "(default_permissions); no: it does not"),
    "CVMFS_WORLD_READABLE": _h("yes: every entry readable by all (r-x for directories)"),
    "CVMFS_KCACHE_TIMEOUT": _h("seconds the kernel keeps names and attributes"),
    "CVMFS_HIDE_MAGIC_XATTRS": _h("yes: magic xattrs are not listed (still readable by name)"),
    "CVMFS_MAGIC_XATTRS_VISIBILITY": _h("where listxattr shows the magic xattrs"),
    "CVMFS_NFILES": _h("the mount's open-file limit (RLIMIT_NOFILE)"),
    "CVMFS_FUSE3_MAX_THREADS": _h("threads answering FUSE requests (--fuse-threads)"),
    "CVMFS_DEBUGLOG": _h("debug log file of the mount (as --debug --log-file FILE)"),
    "CVMFS_STRICT_MOUNT": _h("yes: only repositories listed in CVMFS_REPOSITORIES mount"),
    "CVMFS_REPOSITORIES": _h("the repositories CVMFS_STRICT_MOUNT allows"),
    "CVMFS_FUSE_NOTIFY_INVALIDATION": _i("the kernel's names are always invalidated at a "
                                         "revision switch", _on),
    "CVMFS_FUSE3_IDLE_THREADS": _i("the FUSE threads are a fixed pool (--fuse-threads)"),
    "CVMFS_ENFORCE_ACLS": _r("pycvmfs does not enforce POSIX ACLs: files would be readable "
                             "beyond what their ACLs allow", _off),
    "CVMFS_AUTHZ_HELPER": _r("pycvmfs has no membership (authz) helper: a repository that "
                             "requires membership would be readable by anyone"),
    "CVMFS_AUTHZ_SEARCH_PATH": _i("no authz helpers are run"),
    "CVMFS_XATTR_PRIVILEGED_GIDS": _r("magic xattrs are not restricted to groups: protected "
                                      "ones would be readable by anyone"),
    "CVMFS_XATTR_PROTECTED_XATTRS": _r("magic xattrs are not restricted to groups: protected "
                                       "ones would be readable by anyone"),
    "CVMFS_NFS_SOURCE": _r("no NFS export mode (persistent inodes): exported file handles "
                           "would go stale or point elsewhere", _off),
    "CVMFS_NFS_SHARED": _i("no NFS export mode"),
    "CVMFS_NFS_INTERLEAVED_INODES": _i("no NFS export mode"),
    "CVMFS_MOUNT_RW": _i("the mount is always read-only", _off),
    "CVMFS_SUID": _i("set-uid bits and device files follow the FUSE mount defaults", _off),
    "CVMFS_MOUNT_DIR": _i("the mount point comes from the command line (a fixed stock "
                          "default.conf value: no warning)", _always),
    "CVMFS_USER": _i("the mount runs as the user who starts it (no privilege drop)"),
    "CVMFS_CWD_CACHE": _i("no working-directory cache across remounts", _off),
    "CVMFS_STATFS_CACHE_TIMEOUT": _i("statfs is answered from the loaded catalogs"),
    "CVMFS_INSTRUMENT_FUSE": _i("request counters are always on (user.fuse_requests)", _off),
    "CVMFS_ALT_ROOT_PATH": _i("no alternative root path", _off),
    "CVMFS_OOM_SCORE_ADJ": _i("the mount's OOM score is left as inherited"),
    "CVMFS_CPU_AFFINITY": _i("the mount's CPU affinity is left as inherited"),
    "CVMFS_SYSTEMD_NOKILL": _i("no systemd kill-mode marking", _off),
    "CVMFS_ARCH": _i("no architecture-specific library path"),
    "CVMFS_LIBRARY_PATH": _i("no stock client library is loaded"),
    "CVMFS_RELOAD_SOCKETS": _i("no reload sockets, a remount is a new mount (a fixed stock "
                               "default.conf value: no warning)", _always),
    "CVMFS_TALK_SOCKET": _i(_NO_TALK),
    "CVMFS_TALK_OWNER": _i(_NO_TALK),
    "CVMFS_NOTIFICATION_SERVER": _i("no notification server: the manifest is re-checked every "
                                    "TTL"),
    "CVMFS_TELEMETRY_SEND": _i("no telemetry is sent", _off),
    "CVMFS_TELEMETRY_RATE": _i("no telemetry is sent"),
    # -- logging
    "CVMFS_SYSLOG_LEVEL": _i("pycvmfs logs to --log-file (or CVMFS_DEBUGLOG), not syslog"),
    "CVMFS_SYSLOG_FACILITY": _i("pycvmfs logs to --log-file, not syslog"),
    "CVMFS_SYSLOG_PREFIX": _i("pycvmfs logs to --log-file, not syslog"),
    "CVMFS_USYSLOG": _i("pycvmfs logs to --log-file, not to a rotated user syslog file"),
    "CVMFS_TRACEFILE": _i(_NO_TRACE),
    "CVMFS_TRACEBUFFER": _i(_NO_TRACE),
    "CVMFS_TRACEBUFFER_THRESHOLD": _i(_NO_TRACE),
    # -- configuration repositories, external data, helper-script settings
    "CVMFS_CONFIG_REPOSITORY": _i(_NO_CONFIG_REPO),
    "CVMFS_CONFIG_REPO_REQUIRED": _i(_NO_CONFIG_REPO, _off),
    "CVMFS_CONFIG_REPO_DEFAULT_ENV": _i(_NO_CONFIG_REPO, _off),
    "CVMFS_DEFAULT_DOMAIN": _i("repository names must be fully qualified"),
    "CVMFS_EXTERNAL_URL": _i(_NO_EXTERNAL),
    "CVMFS_EXTERNAL_SERVER_URL": _i(_NO_EXTERNAL),
    "CVMFS_EXTERNAL_HTTP_PROXY": _i(_NO_EXTERNAL),
    "CVMFS_EXTERNAL_FALLBACK_PROXY": _i(_NO_EXTERNAL),
    "CVMFS_EXTERNAL_TIMEOUT": _i(_NO_EXTERNAL),
    "CVMFS_EXTERNAL_TIMEOUT_DIRECT": _i(_NO_EXTERNAL),
    "CVMFS_EXTERNAL_MAX_SERVERS": _i(_NO_EXTERNAL),
    "CVMFS_AUTO_SOURCES": _i("no cvmfs_config helper settings"),
    "CVMFS_MOUNT_SOURCES": _i("no cvmfs_config helper settings"),
    "CVMFS_PARMS": _i("no cvmfs_config helper settings"),
    # -- set by the stock scripts themselves, never meant for users
    "CVMFS_BASE_ENV": _h("internal guard of default.conf"),
    "CVMFS_FQRN": _h("the repository name (for $CVMFS_FQRN in the files)"),
    "CVMFS_REPOSITORY_NAME": _h("the repository name (showconfig prints it)"),
}

#: families of per-instance names (``CVMFS_CACHE_<instance>_TYPE``, ...), longest prefix first
_FAMILIES = (("CVMFS_CACHE_", _i(f"no cache manager instances; {_ONE_CACHE}")),
             ("CVMFS_AUTHZ_", _i("no authz helpers are run")),
             ("CVMFS_EXTERNAL_", _i(_NO_EXTERNAL)))


def setting_for(name: str) -> Setting | None:
    """What pycvmfs does with ``name``; None: not a stock client setting."""
    found = SETTINGS.get(name)
    if found is not None:
        return found
    for prefix, setting in _FAMILIES:
        if name.startswith(prefix):
            return setting
    return None


@dataclass(frozen=True)
class Review:
    """The settings of one configuration that pycvmfs does not honour: ``warnings`` (ignored or
    unknown settings, one line each) and ``refusals`` (settings it must not run without)."""

    warnings: list[str]
    refusals: list[str]


def review_settings(cfg: ClientConfig) -> Review:
    """One line for every ``CVMFS_*`` variable of ``cfg`` that is set and not honoured."""
    warnings, refusals = [], []
    for name, value, _source in cfg.items():
        if not name.startswith("CVMFS_"):
            continue
        entry = cfg.entry(name)
        where = f"{name} ({entry.source}:{entry.line})" if entry else name
        setting = setting_for(name)
        if setting is None:
            close = difflib.get_close_matches(name, SETTINGS, n=1, cutoff=0.8)
            hint = f"; did you mean {close[0]}?" if close else " (ignored)"
            warnings.append(f"unknown setting {where}{hint}")
        elif setting.inert(value):
            continue
        elif setting.status == REFUSED:
            refusals.append(f"{where}: {value!r} is refused: {setting.what}")
        elif setting.status == IGNORED:
            warnings.append(f"{where}: {value!r} is not honoured: {setting.what}")
    return Review(warnings, refusals)


_INERT_WORDS = {_off: "off", _on: "on", _zero: "0", _no_blacklist: "the file lists nothing"}


def markdown_table() -> str:
    """The table of docs/mount.md: every setting, what pycvmfs does."""
    rows = ["| variable | pycvmfs |", "| --- | --- |"]
    for name, s in SETTINGS.items():
        label = {HONOURED: "honoured", IGNORED: "ignored, warns",
                 REFUSED: "**refused**"}[s.status]
        if s.status == IGNORED and s.inert is _always:
            label = "ignored (no warning)"
        elif s.status != HONOURED and s.inert is not _empty:
            label += " unless " + _INERT_WORDS[s.inert]
        what = s.what.replace("|", "\\|")  # (a '|' would end the table cell)
        rows.append(f"| `{name}` | {label}: {what} |")
    return "\n".join(rows) + "\n"


def _to_stderr(message: str) -> None:
    print(f"pycvmfs: warning: {message}", file=sys.stderr, flush=True)


def report_settings(cfg: ClientConfig, *, refuse: bool,
                    warn: Callable[[str], None] = _to_stderr) -> None:
    """``warn`` once for every set ``CVMFS_*`` variable that is not honoured (ignored or
    unknown); settings pycvmfs must not run without raise ConfigError when ``refuse``, else
    they are warnings too."""
    review = review_settings(cfg)
    for line in review.warnings:
        warn(line)
    if review.refusals and refuse:
        raise ConfigError("; ".join(review.refusals))
    for line in review.refusals:
        warn(f"{line} (a mount refuses to start)")
