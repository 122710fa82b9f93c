"""Checks of a client set-up (cvmfs_config chksetup): FUSE, keys, expiry, servers, cache."""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pycvmfs.client.config import ClientConfig, load_client_config
from pycvmfs.errors import CvmfsError, FetchError

__all__ = ["Check", "check_setup", "probe_server"]


@dataclass(frozen=True)
class Check:
    """One line of the doctor's table."""

    name: str  # what was checked, e.g. "fuse device" or "sw.example.org: whitelist"
    status: str  # ok / warn / fail
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def probe_server(fqrn: str, url: str, proxies: Sequence[str], timeout: float,
                 low_speed_limit: int = 1024) -> str | None:
    """Fetch and parse ``<url>/.cvmfspublished`` once (no retries); None if that worked, else
    the reason."""
    from pycvmfs.format.manifest import parse_signed_manifest
    from pycvmfs.storage.base import fetch_bytes
    from pycvmfs.storage.http import HttpSource
    from pycvmfs.storage.objects import SMALL_FILE_LIMIT

    try:
        with HttpSource([url], proxies=list(proxies), timeout=timeout, retries=0,
                        low_speed_limit=low_speed_limit) as source:
            data = fetch_bytes(source, ".cvmfspublished", what=f"{url}/.cvmfspublished",
                               limit=SMALL_FILE_LIMIT)
        manifest = parse_signed_manifest(data).manifest
    except FetchError as e:
        return "; ".join(e.attempts) or str(e)
    except CvmfsError as e:
        return str(e)
    if manifest.fqrn and manifest.fqrn != fqrn:
        return f"manifest is for {manifest.fqrn}, not {fqrn}"
    return None


def _fuse_checks(device: str) -> list[Check]:
    out = []
    try:
        st = os.stat(device)
        if not stat.S_ISCHR(st.st_mode):
            raise OSError(0, "not a character device")
        os.close(os.open(device, os.O_RDWR))
        out.append(Check("fuse device", "ok", f"{device} can be opened"))
    except OSError as e:
        out.append(Check("fuse device", "fail", f"{device}: {e.strerror or e}"))
    tool = shutil.which("fusermount3")
    if tool:
        out.append(Check("fusermount3", "ok", tool))
    else:
        out.append(Check("fusermount3", "fail", "fusermount3 is not on PATH (install fuse3)"))
    return out


def _cache_check(directory: Path) -> Check:
    """Writable if it exists (a file is created and removed); else whether the nearest
    existing parent would let the mount create it (nothing is created)."""
    if not directory.exists():
        parent = next(p for p in directory.parents if p.exists())
        if os.access(parent, os.W_OK | os.X_OK):
            return Check("cache directory", "ok", f"{directory} will be created in {parent}")
        return Check("cache directory", "fail", f"{directory} is missing and {parent} is "
                     "not writable")
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".doctor-"):
            pass
    except OSError as e:
        return Check("cache directory", "fail", f"{directory}: {e.strerror or e}")
    return Check("cache directory", "ok", f"{directory} is writable")


def _expiry(name: str, what: str, expires: _dt.datetime, now: _dt.datetime,
            warn_days: int) -> Check:
    stamp = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    left = expires - now
    if left.total_seconds() <= 0:
        return Check(f"{name}: {what}", "fail", f"expired {stamp}")
    days = left.total_seconds() / 86400
    status = "warn" if days < warn_days else "ok"
    return Check(f"{name}: {what}", status, f"expires {stamp} (in {days:.1f} days)")


def _repository_checks(cfg: ClientConfig, timeout: float, warn_days: int,
                       now: _dt.datetime) -> list[Check]:
    from pycvmfs.client.cache import ObjectCache
    from pycvmfs.client.repository import Repository
    from pycvmfs.format.signature import load_public_keys
    from pycvmfs.storage.http import HttpSource

    name = cfg.fqrn
    out = []
    keys = cfg.public_keys
    missing = [str(k) for k in keys if not k.exists()]
    if not keys or missing:
        out.append(Check(f"{name}: public key", "fail",
                         f"missing: {', '.join(missing)}" if missing else
                         "no CVMFS_PUBLIC_KEY and no *.pub in the keys directory"))
        return out
    out.append(Check(f"{name}: public key", "ok", ", ".join(map(str, keys))))
    try:
        urls, proxies = cfg.server_urls, cfg.proxies
    except CvmfsError as e:
        return [*out, Check(f"{name}: servers", "fail", str(e))]
    reached = []
    for url in urls:
        reason = probe_server(name, url, proxies, timeout, cfg.low_speed_limit)
        out.append(Check(f"{name}: server {url}", "fail" if reason else "ok",
                         reason or ".cvmfspublished fetched"))
        if reason is None:
            reached.append(url)
    if not reached:
        return out
    try:
        source = HttpSource(reached, **{**cfg.source_options(), "proxies": proxies,
                                        "timeout": timeout, "timeout_direct": timeout,
                                        "retries": 0})
        with tempfile.TemporaryDirectory(prefix="pycvmfs-doctor-") as scratch, \
                Repository(source, public_keys=load_public_keys(keys), fqrn=name,
                           cache=ObjectCache(scratch), now=lambda: now) as repo:
            state = repo.refresh()
    except CvmfsError as e:
        return [*out, Check(f"{name}: signature", "fail", str(e))]
    out.append(Check(f"{name}: signature", "ok", f"revision {state.manifest.revision} "
                     "verified (whitelist, certificate, manifest)"))
    out.append(_expiry(name, "whitelist", state.whitelist.expires, now, warn_days))
    out.append(_expiry(name, "certificate", state.certificate.x509.not_valid_after_utc, now,
                       warn_days))
    return out


def check_setup(fqrns: Sequence[str] = (), *, config_dir: str | os.PathLike | None = None,
                cache_dir: str | os.PathLike | None = None, warn_days: int = 7,
                timeout: float = 5.0, fuse_device: str = "/dev/fuse",
                now: _dt.datetime | None = None) -> list[Check]:
    """Every check, in table order: FUSE, the cache directory, then for each repository
    (``fqrns``, else ``CVMFS_REPOSITORIES`` of the configuration) its keys, each server
    (``.cvmfspublished`` fetched once with ``timeout``), the signature chain, and the
    whitelist and certificate expiry (``warn`` under ``warn_days``)."""
    now = now or _dt.datetime.now(_dt.UTC)
    out = _fuse_checks(fuse_device)
    if not fqrns:
        try:  # a name in the reserved .invalid domain: only the default files apply
            defaults = load_client_config("default.invalid", config_dir=config_dir)
        except CvmfsError as e:
            return [*out, Check("configuration", "fail", str(e))]
        domain = defaults.get("CVMFS_DEFAULT_DOMAIN") or ""
        fqrns = [name if "." in name or not domain else f"{name}.{domain}"
                 for name in (n.strip() for n in
                              (defaults.get("CVMFS_REPOSITORIES") or "").split(","))
                 if name]
        if not fqrns:
            out.append(Check("repositories", "warn", "none given and CVMFS_REPOSITORIES "
                             "is empty: only the local set-up was checked"))
    configs = []
    for fqrn in fqrns:
        try:
            configs.append(load_client_config(fqrn, config_dir=config_dir))
        except CvmfsError as e:
            out.append(Check(f"{fqrn}: configuration", "fail", str(e)))
    cache_base = Path(cache_dir) if cache_dir else (
        configs[0].cache_base if configs else None)
    if cache_base is not None:
        out.append(_cache_check(cache_base))
    for cfg in configs:
        out += _repository_checks(cfg, timeout, warn_days, now)
    return out

