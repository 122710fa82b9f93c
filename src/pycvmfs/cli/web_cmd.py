"""The ``web`` command: the software stacks portal (:mod:`pycvmfs.web`) on uvicorn."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from pycvmfs.errors import ConfigError

__all__ = ["register", "web"]


def assign_replicas(sources: list, replicas: tuple[str, ...]) -> dict[int, tuple[str, ...]]:
    """Which source (by position) each stratum 1 URL belongs to: all of them to the only
    source, else the source whose repository name the URL ends with."""
    from pycvmfs.client.repository import guess_fqrn

    out: dict[int, list[str]] = {}
    for url in replicas:
        if len(sources) == 1:
            out.setdefault(0, []).append(url)
            continue
        fqrn = guess_fqrn(url.split(";")[0])
        matches = [i for i, s in enumerate(sources) if s.name == fqrn]
        if len(matches) != 1:
            raise ConfigError(f"--replica {url}: its repository name ({fqrn or 'none'}) "
                              "names none of the --repo repositories; give URLs ending "
                              "with /cvmfs/FQRN")
        out.setdefault(matches[0], []).append(url)
    return {i: tuple(urls) for i, urls in out.items()}


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]") or "127.0.0.1", int(port)


@click.command()
@click.option("--repo", "repos", multiple=True, required=True,
              help="A repository URL (http://host/cvmfs/FQRN) or storage directory; repeatable.")
@click.option("--key", "keys", multiple=True, required=True,
              type=click.Path(exists=True, path_type=Path),
              help="Master public key file or directory of keys; repeatable.")
@click.option("--fqrn", help="The repository name when --repo does not end with it "
                             "(one --repo only).")
@click.option("--top", default="lcg", show_default=True,
              help="The stacks' folder inside the repositories.")
@click.option("--index", "index_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("pycvmfs-web.sqlite"), show_default=True,
              help="The SQLite index file (created or updated).")
@click.option("--replica", "replicas", multiple=True,
              help="A stratum 1 URL (http://host/cvmfs/FQRN) to compare with its stratum 0; "
                   "repeatable.")
@click.option("--stale-after", default=3600.0, show_default=True,
              type=click.FloatRange(min=0.0),
              help="Seconds a stratum 1 may lag behind its stratum 0 before the alarm.")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT.")
@click.option("--refresh", "refresh_interval", default=60.0, show_default=True,
              type=click.FloatRange(min=1.0),
              help="Seconds between checks of the repositories' manifests.")
@click.option("--cache-size", "cache_mib", default=256, show_default=True,
              type=click.IntRange(min=0),
              help="MiB of answers kept in memory until the index changes (0: none).")
def web(repos: tuple[str, ...], keys: tuple[Path, ...], fqrn: str | None, top: str,
        index_path: Path, replicas: tuple[str, ...], stale_after: float, listen: str,
        refresh_interval: float, cache_mib: int) -> None:
    """Serve the portal of the stacks published in the repositories: releases, packages,
    diffs, nightly results, the repository browser (revisions, tags, sizes, files, diffs),
    the stratum 1s' status (/replicas, Prometheus /metrics), the container images, and the
    JSON API behind every page (/docs, /openapi.json).

    Every file is read through the verified reader; a repository whose new revision does not
    verify keeps its last verified index and its pages say so."""
    import uvicorn

    from pycvmfs.web.app import create_app
    from pycvmfs.web.index import RepoSource, WebIndex

    if fqrn and len(repos) > 1:
        raise ConfigError("--fqrn names one repository; give one --repo with it")
    host, port = _listen(listen)
    sources = [RepoSource(r, tuple(str(k) for k in keys), fqrn, top) for r in repos]
    by_source = assign_replicas(sources, replicas)
    sources = [dataclasses.replace(s, replicas=by_source.get(i, ()), stale_after=stale_after)
               for i, s in enumerate(sources)]
    index = WebIndex(index_path, sources)
    for outcome in index.refresh():
        if outcome["error"]:
            click.echo(f"{outcome['fqrn']}: refused: {outcome['error']}", err=True)
        else:
            click.echo(f"{outcome['fqrn']}: revision {outcome['revision']} indexed", err=True)
    for row in index.replicas()["replicas"]:
        if row["alarm"]:
            click.echo(f"ALARM {row['replica']}: {row['alarm']}", err=True)
    app = create_app(index, refresh_interval=refresh_interval, cache_bytes=cache_mib << 20)
    click.echo(f"serving http://{host}:{port}/ (press Ctrl-C to stop)", err=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        index.close()


def register(group: click.Group) -> None:
    group.add_command(web)
