"""The ``serve`` command: serve repository storage directories over HTTP in the foreground."""

from __future__ import annotations

from pathlib import Path

import click

from pycvmfs.errors import ConfigError

__all__ = ["register", "serve"]


@click.command()
@click.argument("storage_dirs", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 or :: for every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0: pick a free one).")
@click.option("--access-log", type=click.Path(dir_okay=False, path_type=Path),
              help="Append a common-log-format line per request to this file.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Worker processes (one event loop, i.e. about one core, each).")
@click.option("--request-timeout", default=20.0, show_default=True,
              type=click.FloatRange(min=0.1),
              help="Seconds a client may take to send a whole request (then 408).")
def serve(storage_dirs: tuple[Path, ...], host: str, port: int, access_log: Path | None,
          workers: int, request_timeout: float) -> None:
    """Serve repository storage directories at http://HOST:PORT/cvmfs/<name>/.

    Each STORAGE_DIR is either one repository's storage (a folder with .cvmfspublished, served
    under its folder name) or a folder whose subfolders are repository storages. Serves until
    interrupted (Ctrl-C or SIGTERM).
    """
    from pycvmfs.server.http import find_repositories, serve_forever

    repositories: dict[str, Path] = {}
    for storage in storage_dirs:
        for name, path in find_repositories(storage).items():
            if name in repositories:
                raise ConfigError(f"{path}: a repository named {name} is already served from "
                                  f"{repositories[name]}")
            repositories[name] = path

    def ready(url: str) -> None:
        for name, path in sorted(repositories.items()):
            click.echo(f"{url}/cvmfs/{name}  ({path})")
        click.echo(f"repository list: {url}/cvmfs/info/v1/repositories.json; "
                   f"press Ctrl-C to stop", err=True)

    serve_forever(repositories, host=host, port=port, access_log=access_log, workers=workers,
                  ready=ready, request_timeout=request_timeout)


def register(group: click.Group) -> None:
    group.add_command(serve)
