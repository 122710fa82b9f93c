"""Cache commands: ``pycvmfs cache stat|list|clean|rebuild`` on the local object cache."""

from __future__ import annotations

from pathlib import Path

import click

from pycvmfs.cli.common import emit_json

__all__ = ["register"]


def _cache_dir_option(f):
    return click.option("--cache-dir", type=click.Path(file_okay=False),
                        envvar="PYCVMFS_CACHE_DIR", show_envvar=True,
                        help="Local object cache (default: ~/.cache/pycvmfs).")(f)


def _json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)


def _open(cache_dir: str | None):
    """The cache's quota database; built from the directory when it did not exist yet."""
    from pycvmfs.client.cache import default_cache_dir
    from pycvmfs.client.quota import QuotaManager, quota_limit_from_env

    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    fresh = not (directory / "cachedb").exists()
    quota = QuotaManager(directory, quota_limit_from_env())
    if fresh:
        quota.rebuild()
    return quota


def _mb(n: int | None) -> str:
    return "unlimited" if n is None else f"{n / (1024 * 1024):.1f} MB"


@click.group(name="cache")
def cache_group() -> None:
    """Inspect and clean the local object cache (LRU database ``cachedb``)."""


@cache_group.command(name="stat")
@_cache_dir_option
@_json_option
def stat_cmd(cache_dir: str | None, as_json: bool) -> None:
    """Show the cache's size, object counts, pins and quota ($CVMFS_QUOTA_LIMIT, MB)."""
    with _open(cache_dir) as q:
        data = {"directory": str(q.directory), **q.stats().as_dict()}
    if as_json:
        emit_json(data)
        return
    click.echo(f"Cache directory  {data['directory']}")
    click.echo(f"Total size       {_mb(data['total_bytes'])} ({data['total_bytes']} bytes)")
    click.echo(f"Objects          {data['objects']} ({data['catalogs']} catalogs, "
               f"{_mb(data['catalog_bytes'])})")
    click.echo(f"Pinned           {data['pinned_objects']} ({_mb(data['pinned_bytes'])})")
    click.echo(f"Quota            {_mb(data['limit'])} (cleanup to "
               f"{_mb(data['cleanup_target'])})")


@cache_group.command(name="list")
@_cache_dir_option
@_json_option
def list_cmd(cache_dir: str | None, as_json: bool) -> None:
    """List the cached objects, least recently used first."""
    with _open(cache_dir) as q:
        entries = q.list()
    if as_json:
        emit_json([e.__dict__ for e in entries])
        return
    for e in entries:
        pin = f" pinned={e.pinned}" if e.pinned else ""
        click.echo(f"{e.hash}  {e.size:>12}  {e.type}{pin}")


@cache_group.command(name="clean")
@_cache_dir_option
@_json_option
def clean_cmd(cache_dir: str | None, as_json: bool) -> None:
    """Remove every cached object that is not pinned by a running process."""
    with _open(cache_dir) as q:
        freed = q.clean()
        left = q.stats()
    if as_json:
        emit_json({"freed_bytes": freed, "remaining_objects": left.objects,
                   "remaining_bytes": left.total_bytes})
        return
    click.echo(f"Freed {_mb(freed)}; {left.objects} pinned objects remain "
               f"({_mb(left.total_bytes)})")


@cache_group.command(name="rebuild")
@_cache_dir_option
@_json_option
def rebuild_cmd(cache_dir: str | None, as_json: bool) -> None:
    """Make ``cachedb`` agree with the objects present in the cache directory."""
    with _open(cache_dir) as q:
        counts = q.rebuild()
    if as_json:
        emit_json(counts)
        return
    click.echo(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items()))


def register(group: click.Group) -> None:
    group.add_command(cache_group)
