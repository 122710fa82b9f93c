"""Mount commands: ``pycvmfs mount FQRN MOUNTPOINT`` and ``pycvmfs umount MOUNTPOINT``."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING

import click

from pycvmfs.cli.common import revision_options, revision_selector
from pycvmfs.cli.mount_report import PYCVMFS_FSTYPE, ReadyReporter, mount_type, read_report
from pycvmfs.errors import ConfigError

if TYPE_CHECKING:
    from pycvmfs.client.config import ClientConfig

__all__ = ["register"]


def _open_for_mount(fqrn: str, server_urls: tuple[str, ...], keys: tuple[str, ...],
                    cache_dir: str | None, proxies: tuple[str, ...], config_dir: str | None,
                    cfg: ClientConfig | None = None):
    """A Repository from explicit options, else from the CernVM-FS configuration (``cfg``
    when the caller loaded it already, else loaded from ``config_dir``)."""
    from pycvmfs.client.repository import open_configured_repository, open_repository

    if server_urls:
        if not keys:
            raise ConfigError("--server-url needs --key (the repository's public key)")
        urls = ";".join(u.replace("@fqrn@", fqrn).replace("@org@", fqrn.split(".")[0])
                        for u in server_urls)
        from pycvmfs.client.quota import quota_limit_from_env

        return open_repository(urls, keys=list(keys), fqrn=fqrn, cache_dir=cache_dir,
                               proxies=list(proxies) or ["DIRECT"],
                               quota_limit=quota_limit_from_env())
    from pycvmfs.client.config import load_client_config

    if cfg is None:
        cfg = load_client_config(fqrn, config_dir=config_dir)
    return open_configured_repository(cfg, keys=keys, proxies=proxies, cache_dir=cache_dir)


def config_mount_settings(cfg: ClientConfig) -> tuple[dict, dict]:
    """What the CernVM-FS configuration says about a mount: the revision selector
    (CVMFS_REPOSITORY_TAG / _DATE / CVMFS_ROOT_HASH) and MountOptions fields
    (CVMFS_MAX_TTL, CVMFS_KCACHE_TIMEOUT, CVMFS_MAGIC_XATTRS_VISIBILITY /
    CVMFS_HIDE_MAGIC_XATTRS, CVMFS_CLAIM_OWNERSHIP, CVMFS_UID_MAP / CVMFS_GID_MAP,
    CVMFS_WORLD_READABLE, CVMFS_CHECK_PERMISSIONS, CVMFS_FUSE3_MAX_THREADS)."""
    selector = {}
    for key, value in (("tag", cfg.repository_tag), ("date", cfg.repository_date),
                       ("root_hash", cfg.root_hash)):
        if value:
            selector = {key: value}
            break
    settings = {"magic_xattrs": cfg.magic_xattrs_visibility,
                "claim_ownership": cfg.claim_ownership, "uid_map": cfg.uid_map,
                "gid_map": cfg.gid_map, "world_readable": cfg.world_readable,
                "check_permissions": cfg.check_permissions}
    if cfg.max_ttl:
        settings["max_ttl"] = cfg.max_ttl
    if cfg.kcache_timeout is not None:
        settings["kcache_timeout"] = float(cfg.kcache_timeout)
    if cfg.fuse_threads is not None:
        settings["threads"] = cfg.fuse_threads
    return selector, settings


def _raise_open_files_limit(nfiles: int) -> None:
    """CVMFS_NFILES: the mount's open-file limit, the hard one raised to it if lower (as
    stock); where that is not allowed, a warning (as for a stock user mount)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = (nfiles, max(hard, nfiles) if hard != resource.RLIM_INFINITY else hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, wanted)
    except (OSError, ValueError) as e:
        click.echo(f"pycvmfs: warning: CVMFS_NFILES={nfiles}: cannot set the open-file limit "
                   f"({e}); it stays {soft}", err=True)


@click.command()
@click.argument("fqrn")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--server-url", "server_urls", multiple=True,
              help="Repository URL (repeatable; @fqrn@ is substituted). Default: the "
                   "CernVM-FS configuration's CVMFS_SERVER_URL.")
@click.option("-k", "--key", "keys", multiple=True, type=click.Path(),
              help="Public key file or directory (default: the configuration's keys).")
@click.option("--proxy", "proxies", multiple=True, help="HTTP proxy or DIRECT (repeatable).")
@click.option("--cache-dir", type=click.Path(file_okay=False), envvar="CVMFS_CACHE_BASE",
              help="Cache directory (default: CVMFS_CACHE_BASE of the configuration).")
@click.option("--config-dir", type=click.Path(file_okay=False), envvar="PYCVMFS_CONFIG_DIR",
              help="CernVM-FS configuration directory (default /etc/cvmfs).")
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground.")
@click.option("--allow-other", is_flag=True, help="Let other users access the mount.")
@click.option("--ttl", type=int, help="Re-check the manifest this often (seconds).")
@click.option("--log-file", type=click.Path(dir_okay=False), help="Write the log here.")
@click.option("-d", "--debug", is_flag=True, help="Debug logging (and libfuse debug output).")
@click.option("--readahead-threads", type=click.IntRange(0, 64), default=6, show_default=True,
              help="Threads downloading ahead of sequential reads (0: no read-ahead).")
@click.option("--readahead-process/--readahead-in-process", default=True, show_default=True,
              help="Over HTTP, run read-ahead downloads in a child process (on another core) "
                   "instead of a thread of the mount.")
@click.option("--kcache-timeout", type=click.FloatRange(0), default=None,
              help="Seconds the kernel keeps names and attributes (CVMFS_KCACHE_TIMEOUT; "
                   "default 60). A revision switch drops them at once anyway.")
@click.option("--fuse-threads", type=click.IntRange(1, 256), default=None,
              help="Threads answering FUSE requests (a request that downloads blocks only "
                   "its own; CVMFS_FUSE3_MAX_THREADS, default 8).")
@click.option("--catalog-idle", type=click.FloatRange(0), default=600.0, show_default=True,
              help="Unload nested catalogs unused for this many seconds (0: only when the "
                   "kernel forgets their inodes).")
@click.option("--magic-xattrs-visibility", "magic_xattrs",
              type=click.Choice(["rootonly", "never", "always"], case_sensitive=False),
              help="Where listxattr shows the client's magic attributes (user.revision, "
                   "user.hash, ...; they can always be read by name): on the mount root only "
                   "(the default, as stock), never, or on every entry "
                   "(CVMFS_MAGIC_XATTRS_VISIBILITY).")
@click.option("--hide-magic-xattrs", is_flag=True,
              help="Same as --magic-xattrs-visibility never (CVMFS_HIDE_MAGIC_XATTRS=yes).")
@click.option("--claim-ownership/--no-claim-ownership", default=None,
              help="Show every entry as owned by the mounting user (the default, as the stock "
                   "default.conf), or the owners stored in the catalogs "
                   "(CVMFS_CLAIM_OWNERSHIP).")
@click.option("--uid-map", type=click.Path(dir_okay=False),
              help="With --no-claim-ownership: a file of 'catalog_uid local_uid' lines, '*' "
                   "for the rest (CVMFS_UID_MAP).")
@click.option("--gid-map", type=click.Path(dir_okay=False),
              help="The same for group ids (CVMFS_GID_MAP).")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON once mounted in the background: fqrn, mountpoint, pid.")
@revision_options
def mount(fqrn: str, mountpoint: str, server_urls, keys, proxies, cache_dir, config_dir,
          foreground: bool, allow_other: bool, ttl: int | None, log_file: str | None,
          debug: bool, readahead_threads: int, readahead_process: bool,
          kcache_timeout: float | None, fuse_threads: int | None, catalog_idle: float,
          magic_xattrs: str | None, hide_magic_xattrs: bool, claim_ownership: bool | None,
          uid_map: str | None, gid_map: str | None, as_json: bool, **kw) -> None:
    """Mount repository FQRN read-only at MOUNTPOINT (FUSE)."""
    from pycvmfs.client.config import load_client_config
    from pycvmfs.client.fuse import MountOptions, run_mount
    from pycvmfs.client.settings import report_settings
    from pycvmfs.client.stat import read_id_map

    selector = revision_selector(kw)
    settings: dict = {}
    log_debug = debug
    cfg = None
    if not server_urls:
        cfg = load_client_config(fqrn, config_dir=config_dir)
        report_settings(cfg, refuse=True)
        cfg.check_strict_mount()
        configured, settings = config_mount_settings(cfg)
        selector = selector or configured
        if cfg.nfiles:
            _raise_open_files_limit(cfg.nfiles)
        if cfg.debug_log and not log_file:
            log_file, log_debug = cfg.debug_log, True
    if claim_ownership is not None:
        settings["claim_ownership"] = claim_ownership
    for key, path in (("uid_map", uid_map), ("gid_map", gid_map)):
        if path:
            settings[key] = read_id_map(path)
    if fuse_threads is not None:
        settings["threads"] = fuse_threads
    if kcache_timeout is not None:
        settings["kcache_timeout"] = kcache_timeout
    if magic_xattrs or hide_magic_xattrs:
        settings["magic_xattrs"] = (magic_xattrs or "never").lower()
    if not os.path.isdir(mountpoint):
        raise ConfigError(f"{mountpoint}: not a directory")
    if os.path.ismount(mountpoint):
        raise ConfigError(f"{mountpoint}: something is mounted there already")
    options = MountOptions(ttl=ttl, allow_other=allow_other, debug=debug, selector=selector,
                           prefetch_workers=readahead_threads,
                           prefetch_process=readahead_process, catalog_idle=catalog_idle,
                           **settings)
    if foreground:
        _logging(log_file, log_debug)
        repo = _open_for_mount(fqrn, server_urls, keys, cache_dir, proxies, config_dir, cfg)
        repo.refresh()
        run_mount(repo, mountpoint, options)
        return
    # background: check the repository first, then serve from a detached child
    probe = _open_for_mount(fqrn, server_urls, keys, cache_dir, proxies, config_dir, cfg)
    probe.refresh()
    probe.close()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: says "ready" on the pipe once mounted, or why it failed
        os.close(r)
        os.setsid()
        reporter = ReadyReporter(w, mountpoint)
        code = 0
        try:
            _logging(log_file, log_debug)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            repo = _open_for_mount(fqrn, server_urls, keys, cache_dir, proxies, config_dir, cfg)
            reporter.start()
            run_mount(repo, mountpoint, options)
        except BaseException as e:
            reporter.fail(e)
            code = 1
        os._exit(code)
    os.close(w)
    ready, why = read_report(r, 60.0)
    if not ready:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        raise ConfigError(f"mount of {fqrn} at {mountpoint} failed: {why}"
                          + (f" (see {log_file})" if log_file else ""))
    if as_json:
        from pycvmfs.cli.common import emit_json

        emit_json({"fqrn": fqrn, "mountpoint": os.path.abspath(mountpoint), "pid": pid})
        return
    click.echo(f"mounted {fqrn} at {mountpoint} (pid {pid})")


def _logging(log_file: str | None, debug: bool) -> None:
    logging.basicConfig(filename=log_file, level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


@click.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("-l", "--lazy", is_flag=True,
              help="Detach now; the mount ends when its last user (an open file, a working "
                   "directory) lets go, like umount -l.")
def umount(mountpoint: str, lazy: bool) -> None:
    """Unmount a pycvmfs mount."""
    fstype = mount_type(mountpoint)
    if fstype is None:
        raise ConfigError(f"{mountpoint}: not mounted")
    if fstype != PYCVMFS_FSTYPE:
        raise ConfigError(f"{mountpoint}: not a pycvmfs mount ({fstype} is mounted there); "
                          "nothing unmounted")
    from pycvmfs.client.fuse import unmount

    proc = unmount(mountpoint, lazy=lazy)
    if proc.returncode != 0:
        why = proc.stderr.strip() or "unmount failed"
        hint = " (pycvmfs umount -l detaches it now anyway)" if "busy" in why else ""
        raise ConfigError(f"{mountpoint}: {why}{hint}")
    deadline = time.monotonic() + 10
    while mount_type(mountpoint) == PYCVMFS_FSTYPE and time.monotonic() < deadline:
        time.sleep(0.05)
    click.echo(f"unmounted {mountpoint}" + (" (lazily: gone when its last user lets go)"
                                            if lazy else ""))


#: status fields that are numbers (the JSON has them as ints; timestamp: epoch seconds;
#: expires and uptime: minutes, as the stock client's attributes)
_STATUS_INTS = frozenset({"revision", "timestamp", "expires", "nclg", "nioerr", "uptime",
                          "pid"})


@click.command()
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON; revision, timestamp, expires, nclg, nioerr, uptime and pid as "
                   "integers.")
def status(mountpoint: str, as_json: bool) -> None:
    """Show a mount's state from its magic extended attributes (revision, host, proxy...)."""
    from pycvmfs.cli.common import emit_json

    names = ("fqrn", "revision", "root_hash", "timestamp", "host", "proxy", "expires", "nclg",
             "nioerr", "version", "uptime", "pid")
    out = {}
    for n in names:
        try:
            out[n] = os.getxattr(mountpoint, f"user.{n}").decode(errors="replace")
        except OSError as e:
            raise ConfigError(f"{mountpoint}: not a pycvmfs mount ({e.strerror})") from None
    if as_json:
        emit_json({n: int(v) if n in _STATUS_INTS and v.isdigit() else v
                   for n, v in out.items()})
        return
    width = max(len(n) for n in names)
    for n, v in out.items():
        click.echo(f"{n:<{width}}  {v}")


def register(group: click.Group) -> None:
    for cmd in (mount, umount, status):
        group.add_command(cmd)


