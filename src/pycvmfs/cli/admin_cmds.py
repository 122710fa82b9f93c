"""Administration commands: list, rmfs, alterfs, list-catalogs, doctor (alias chksetup)."""

from __future__ import annotations

import sys

import click

from pycvmfs.cli.common import emit_json, open_repo, repository_options
from pycvmfs.cli.publish_cmds import config_option
from pycvmfs.errors import ConfigError

__all__ = ["register"]

_ON_OFF = click.Choice(["on", "off"], case_sensitive=False)


def _on(value: str | None) -> bool | None:
    return None if value is None else value.lower() == "on"


@click.command(name="list")
@config_option
@click.option("--cache-dir", type=click.Path(file_okay=False), envvar="PYCVMFS_CACHE_DIR",
              help="Object cache for checking the replicas (default: ~/.cache/pycvmfs).")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: fqrn, type, storage, revision (int or null), state, detail.")
def list_cmd(config_dir: str | None, cache_dir: str | None, as_json: bool) -> None:
    """List the repositories configured here (stratum 0 and 1) with their state.

    State: ok, transaction (a publish or snapshot holds the lock) or broken (the manifest
    cannot be read or is not signed by the repository's keys; the reason follows)."""
    from pycvmfs.replica.admin import list_repositories

    rows = list_repositories(config_dir, cache_dir=cache_dir)
    if as_json:
        emit_json([r.to_dict() for r in rows])
        return
    for r in rows:
        revision = "-" if r.revision is None else str(r.revision)
        detail = f"  ({r.detail})" if r.detail else ""
        click.echo(f"{r.fqrn:<32} {r.type:<8} r{revision:<6} {r.state:<11} {r.storage}{detail}")


@click.command()
@click.argument("fqrn")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("-p", "--preserve-data", is_flag=True,
              help="Keep the storage (objects, manifest); remove only configuration and keys.")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON: what was removed and kept.")
def rmfs(fqrn: str, force: bool, preserve_data: bool, config_dir: str | None,
         as_json: bool) -> None:
    """Remove repository FQRN: its configuration, its keys and its storage (like
    `cvmfs_server rmfs`). Refused while a publish or snapshot runs; in S3 only with -p."""
    from pycvmfs.publish.admin import remove_repository
    from pycvmfs.publish.config import local_storage, read_server_conf

    _repo_dir, conf = read_server_conf(fqrn, config_dir)
    if not force:
        upstream = conf.get("CVMFS_UPSTREAM_STORAGE", "")
        what = ("its configuration and keys" if preserve_data else
                f"its configuration, keys and storage {local_storage(upstream) or upstream}")
        if not sys.stdin.isatty():
            raise ConfigError(f"rmfs {fqrn}: would remove {what}; confirm on a terminal or "
                              "give -f")
        click.confirm(f"Remove {fqrn}: {what}?", abort=True, err=True)
    report = remove_repository(fqrn, config_dir, preserve_data=preserve_data)
    if as_json:
        emit_json(report.to_dict())
        return
    click.echo(f"removed {fqrn} ({report.type})")
    for path in report.kept:
        click.echo(f"pycvmfs: warning: kept {path} (not part of a repository storage)", err=True)


@click.command()
@click.argument("fqrn")
@click.option("-m", "--master-replica", type=_ON_OFF,
              help="Allow stratum 1 replication or not (.cvmfs_master_replica), as stock -m.")
@click.option("-z", "--garbage-collection", type=_ON_OFF,
              help="Make the repository garbage-collectable (CVMFS_GARBAGE_COLLECTION; the "
                   "manifest says so from the next publish).")
@click.option("--ttl", type=click.IntRange(1), help="Client catalog TTL in seconds "
                                                    "(CVMFS_REPOSITORY_TTL; next publish).")
@click.option("--auto-tag", type=_ON_OFF, help="Tag every publish (CVMFS_AUTO_TAG).")
@click.option("--auto-tag-timespan", metavar="SPAN",
              help="Keep automatic tags this long: seconds or 12h, 30d, 4w; 0 keeps all "
                   "(CVMFS_AUTO_TAG_TIMESPAN).")
@click.option("--include-xattrs", type=_ON_OFF, help="Record extended attributes.")
@click.option("--ignore-special-files", type=_ON_OFF,
              help="Skip devices, FIFOs and sockets when publishing.")
@click.option("--file-mbyte-limit", type=click.IntRange(1),
              help="Largest file a publish takes, in MB (CVMFS_FILE_MBYTE_LIMIT).")
@config_option
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: changed {VARIABLE: [old, new]} and notes.")
def alterfs(fqrn: str, master_replica: str | None, garbage_collection: str | None,
            ttl: int | None, auto_tag: str | None, auto_tag_timespan: str | None,
            include_xattrs: str | None, ignore_special_files: str | None,
            file_mbyte_limit: int | None, config_dir: str | None, as_json: bool) -> None:
    """Change settings of repository FQRN in its server.conf (like `cvmfs_server alterfs`).

    Changes count from the next pycvmfs command; the TTL and the garbage-collection flag are
    written into the root catalog and manifest by the next publish."""
    from pycvmfs.publish.admin import alter_settings, parse_duration

    timespan = None if auto_tag_timespan is None else parse_duration(auto_tag_timespan)
    report = alter_settings(
        fqrn, config_dir, master_replica=_on(master_replica),
        garbage_collection=_on(garbage_collection), ttl=ttl, auto_tag=_on(auto_tag),
        auto_tag_timespan=timespan, include_xattrs=_on(include_xattrs),
        ignore_special_files=_on(ignore_special_files), file_mbyte_limit=file_mbyte_limit)
    if as_json:
        emit_json(report.to_dict())
        return
    if not report.changed:
        click.echo(f"{fqrn}: nothing to change")
    for var, (old, new) in report.changed.items():
        click.echo(f"{fqrn}: {var}: {old or '(unset)'} -> {new}")
    for note in report.notes:
        click.echo(f"note: {note}")


@click.command(name="list-catalogs", context_settings={"help_option_names": ["--help"]})
@click.argument("target")
@click.option("-s", "--size", "show_size", is_flag=True,
              help="Show each catalog's size in bytes (uncompressed).")
@click.option("-e", "--entries", "show_entries", is_flag=True,
              help="Show each catalog's number of entries.")
@click.option("-h", "--hash", "show_hash", is_flag=True, help="Show each catalog's hash.")
@click.option("-x", "--no-tree", is_flag=True,
              help="No indentation: one catalog per line for scripts.")
@config_option
@repository_options
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: mountpoint, hash, size, entries, depth of every catalog.")
def list_catalogs(target: str, show_size: bool, show_entries: bool, show_hash: bool,
                  no_tree: bool, config_dir: str | None, as_json: bool, **kw) -> None:
    """Show the tree of catalogs of TARGET: a repository configured here (FQRN), or a
    repository URL or storage directory (with --key), like `cvmfs_server list-catalogs`."""
    from pycvmfs.client.catalogs import list_catalogs as walk
    from pycvmfs.replica.admin import open_configured

    if "/" in target or target.startswith("."):
        repo = open_repo(target, kw)
    else:
        repo = open_configured(target, config_dir, cache_dir=kw.get("cache_dir"))
    with repo:
        rows = walk(repo)
    if as_json:
        emit_json([r.to_dict() for r in rows])
        return
    for r in rows:
        columns = [("  " * r.depth if not no_tree else "") + r.mountpoint]
        if show_hash:
            columns.append(r.hash)
        if show_size:
            columns.append(str(r.size))
        if show_entries:
            columns.append(str(r.entries))
        click.echo("\t".join(columns) if no_tree else "  ".join(columns))


@click.command()
@click.argument("fqrns", nargs=-1)
@click.option("--config-dir", type=click.Path(file_okay=False),
              help="Client configuration directory (default: $PYCVMFS_CONFIG_DIR, else "
                   "/etc/cvmfs).")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Cache directory to check (default: CVMFS_CACHE_BASE).")
@click.option("--warn-days", type=click.IntRange(0), default=7, show_default=True,
              help="Warn when a whitelist or certificate expires sooner than this.")
@click.option("--timeout", type=click.FloatRange(0.1), default=5.0, show_default=True,
              help="Seconds each server gets to answer.")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: a list of {name, status, detail}, status ok/warn/fail.")
def doctor(fqrns: tuple[str, ...], config_dir: str | None, cache_dir: str | None,
           warn_days: int, timeout: float, as_json: bool) -> None:
    """Check this machine's client set-up (like `cvmfs_config chksetup`): /dev/fuse and
    fusermount3, the cache directory, and for each repository (FQRNS, default
    CVMFS_REPOSITORIES) its keys, servers, signatures and expiry. Exit 1 on a failure."""
    from pycvmfs.client.doctor import check_setup

    checks = check_setup(fqrns, config_dir=config_dir, cache_dir=cache_dir,
                         warn_days=warn_days, timeout=timeout)
    if as_json:
        emit_json([c.to_dict() for c in checks])
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            click.echo(f"{c.status.upper():<5} {c.name:<{width}}  {c.detail}")
    if any(c.status == "fail" for c in checks):
        sys.exit(1)


def register(group: click.Group) -> None:
    for cmd in (list_cmd, rmfs, alterfs, list_catalogs, doctor):
        group.add_command(cmd)
    group.add_command(doctor, name="chksetup")
