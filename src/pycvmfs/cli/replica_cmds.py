"""Stratum-1 commands: add-replica and snapshot."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import click

from pycvmfs.cli.common import emit_json, make_progress
from pycvmfs.errors import ConfigError

__all__ = ["register"]

_CONFIG_HELP = ("Where replica configuration and state live "
                "(default /etc/pycvmfs for root, else ~/.config/pycvmfs).")


def _default_state_dir(fqrn: str, dest: str) -> Path:
    """State of an unconfigured replica: ``$XDG_STATE_HOME/pycvmfs/snapshots/<fqrn>-<id>``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    ident = hashlib.sha1(os.path.abspath(dest).encode()).hexdigest()[:12]
    return Path(base) / "pycvmfs" / "snapshots" / f"{fqrn}-{ident}"


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _print_report(report, as_json: bool) -> None:
    if as_json:
        emit_json(report.to_dict())
        return
    if not report.changed:
        click.echo(f"{report.fqrn}: up to date at revision {report.revision} "
                   f"({report.seconds:.2f} s)")
        return
    was = "first snapshot" if report.initial else f"was {report.previous_revision}"
    click.echo(f"{report.fqrn}: revision {report.revision} ({was}): "
               f"{report.objects_fetched} objects fetched, {report.objects_present} present, "
               f"{report.catalogs_fetched} catalogs, {_human_bytes(report.bytes_fetched)} in "
               f"{report.seconds:.2f} s")
    for h in report.skipped_catalogs:
        click.echo(f"  skipped root catalog {h} (gone from the collectable source)")


@click.command("snapshot")
@click.argument("target")
@click.argument("dest", required=False)
@click.option("-k", "--key", "keys", multiple=True, type=click.Path(exists=True),
              help="Master public key file or directory of *.pub keys (repeatable; with "
                   "SOURCE_URL DEST).")
@click.option("--fqrn", help="Repository name (default: the last component of SOURCE_URL).")
@click.option("--state-dir", type=click.Path(file_okay=False),
              help="Lock, reflog checksum and verified certificate of this replica (with "
                   "SOURCE_URL DEST; default ~/.local/state/pycvmfs/snapshots/FQRN-ID).")
@click.option("--all-tags/--trunk-only", default=None,
              help="Replicate the tree of every tag in the history too (the default, as "
                   "`cvmfs_server snapshot` does), or only the trunk and its previous "
                   "revisions (default: the replica's PYCVMFS_SNAPSHOT_ALL_TAGS, else all "
                   "tags).")
@click.option("--workers", "-n", type=click.IntRange(1, 256),
              help="Parallel downloads (default: CVMFS_NUM_WORKERS, else 16).")
@click.option("--proxy", help="CVMFS_HTTP_PROXY-style proxy list (with SOURCE_URL DEST).")
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Network timeout in seconds (with SOURCE_URL DEST).")
@click.option("--config-dir", type=click.Path(file_okay=False), envvar="PYCVMFS_CONFIG_DIR",
              show_envvar=True, help=_CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def snapshot_cmd(target: str, dest: str | None, keys: tuple[str, ...], fqrn: str | None,
                 state_dir: str | None, all_tags: bool | None, workers: int | None,
                 proxy: str | None, timeout: float, config_dir: str | None,
                 as_json: bool) -> None:
    """Replicate a repository (stratum 1), like `cvmfs_server snapshot`.

    \b
    pycvmfs snapshot FQRN                  a replica made with add-replica
    pycvmfs snapshot SOURCE_URL DEST -k K  ad hoc, into the directory DEST

    Only missing objects are fetched, each verified against its hash; the manifest is switched
    last, so readers of DEST always see a complete revision, and an interrupted snapshot
    resumes where it stopped.
    """
    from pycvmfs.replica.config import ReplicaConfig
    from pycvmfs.replica.snapshot import snapshot_replica

    with make_progress("snapshot", enabled=False if as_json else None) as display:
        progress = _snapshot_lines(display)
        if dest is None:
            if keys or fqrn or state_dir or proxy:
                raise ConfigError("--key, --fqrn, --state-dir and --proxy go with SOURCE_URL "
                                  "DEST; a configured replica takes them from its "
                                  "configuration")
            cfg = ReplicaConfig.load(target, config_dir)
            report = snapshot_replica(cfg, all_tags=all_tags, workers=workers,
                                      progress=progress)
        else:
            report = _adhoc(target, dest, keys, fqrn, state_dir, all_tags is not False,
                            workers or 16, proxy, timeout, progress)
    _print_report(report, as_json)


def _snapshot_lines(display) -> Callable[[str, int, int | None], None]:
    """A pull's ``progress`` shown as lines: catalogs read, objects and their bytes (as the
    catalogs record them) done of the totals found so far, marked ``+`` until the walk through
    the catalogs is over."""
    walked = [False]

    def update(stage: str, done: int, total: int | None) -> None:
        if stage == "catalogs":
            display.show("catalogs", done, total)
            if total is not None and not walked[0]:
                walked[0] = True
                display.final()
        elif stage in ("objects", "bytes"):
            display.show(stage if stage == "objects" else "file data", done, total,
                         unit="items" if stage == "objects" else "bytes", final=walked[0])

    return update


def _adhoc(url: str, dest: str, keys: tuple[str, ...], fqrn: str | None, state_dir: str | None,
           all_tags: bool, workers: int, proxy: str | None, timeout: float, progress):
    from pycvmfs.publish.config import check_fqrn
    from pycvmfs.replica.snapshot import snapshot
    from pycvmfs.storage.local import LocalStorage
    from pycvmfs.storage.locate import open_source

    if not keys:
        raise ConfigError("no master public key: give -k FILE (or a directory of *.pub keys)")
    if not fqrn:
        from pycvmfs.client.repository import guess_fqrn  # (imports the whole client)

        fqrn = guess_fqrn(url.split(";")[0])
    if not fqrn:
        raise ConfigError(f"{url}: cannot tell the repository name from the URL; give --fqrn")
    check_fqrn(fqrn)
    if url.strip().lower().startswith(("http://", "https://")):
        source = open_source(url, proxies=proxy or "DIRECT", timeout=timeout,
                             pool_size=workers)
    else:
        source = open_source(url)
    if dest.startswith(("s3://", "S3,")):
        from pycvmfs.storage.locate import open_store

        store = open_store(dest)
    else:
        store = LocalStorage(dest, fsync=False)  # one syncfs before the manifest switch
        store.create_skeleton()
    state = Path(state_dir) if state_dir else _default_state_dir(fqrn, dest)
    try:
        return snapshot(source, store, fqrn, list(keys), state_dir=state, all_tags=all_tags,
                        workers=workers, progress=progress)
    finally:
        source.close()
        store.close()


@click.command("add-replica")
@click.argument("fqrn")
@click.argument("source_url")
@click.argument("storage")
@click.option("-k", "--key", "keys", multiple=True, required=True, type=click.Path(exists=True),
              help="Master public key file or directory of *.pub keys (repeatable).")
@click.option("--workers", "-n", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Parallel downloads (CVMFS_NUM_WORKERS).")
@click.option("--all-tags/--trunk-only", default=True, show_default=True,
              help="Replicate every tagged revision on each snapshot, as `cvmfs_server "
                   "snapshot` does, or only the trunk (PYCVMFS_SNAPSHOT_ALL_TAGS).")
@click.option("--proxy", default="DIRECT", show_default=True,
              help="Proxies for the stratum 0 (CVMFS_HTTP_PROXY syntax).")
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="CVMFS_HTTP_TIMEOUT in seconds.")
@click.option("--retries", type=click.IntRange(0, 100), default=3, show_default=True,
              help="CVMFS_HTTP_RETRIES.")
@click.option("--stratum1-url", default="", help="This replica's own URL (CVMFS_STRATUM1).")
@click.option("--no-check", is_flag=True,
              help="Do not check now that the source is reachable and replicable.")
@click.option("--config-dir", type=click.Path(file_okay=False), envvar="PYCVMFS_CONFIG_DIR",
              show_envvar=True, help=_CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True)
def add_replica(fqrn: str, source_url: str, storage: str, keys: tuple[str, ...], workers: int,
                all_tags: bool, proxy: str, timeout: float, retries: int, stratum1_url: str,
                no_check: bool, config_dir: str | None, as_json: bool) -> None:
    """Configure a stratum 1 of FQRN from SOURCE_URL into STORAGE (a directory, or a stock
    S3,<tmp>,<alias>@<s3.conf> value), like `cvmfs_server add-replica`.

    Then run `pycvmfs snapshot FQRN` (from cron or a systemd timer) to replicate.
    """
    from pycvmfs.replica.config import ReplicaConfig
    from pycvmfs.replica.snapshot import check_replicable

    cfg = ReplicaConfig.create(fqrn, source_url, storage, list(keys), config_dir=config_dir,
                               workers=workers, all_tags=all_tags, proxy=proxy,
                               timeout=timeout, retries=retries, stratum1=stratum1_url)
    if not no_check:
        source = cfg.open_source()
        try:
            check_replicable(source)
        finally:
            source.close()
    cfg.save()
    info = {"fqrn": cfg.fqrn, "stratum0": cfg.stratum0, "upstream": cfg.upstream,
            "public_keys": cfg.public_keys, "config": str(cfg.server_conf)}
    if as_json:
        emit_json(info)
    else:
        click.echo(f"replica {cfg.fqrn} of {cfg.stratum0} configured in {cfg.repo_dir}; "
                   f"run `pycvmfs snapshot {cfg.fqrn}` to replicate")


def register(cli: click.Group) -> None:
    cli.add_command(snapshot_cmd)
    cli.add_command(add_replica)
