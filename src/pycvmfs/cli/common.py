"""Shared pieces of the command line: error handling, repository options, output helpers."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from pycvmfs.errors import ConfigError, CvmfsError

__all__ = ["CvmfsGroup", "emit_json", "make_progress", "open_repo", "repository_options",
           "revision_options", "revision_selector"]


class CvmfsGroup(click.Group):
    """A click group that turns expected failures into one line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # e.g. `pycvmfs cat ... | head`: the reader is gone, end quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(141)
        except CvmfsError as e:
            click.echo(f"pycvmfs: error: {e}", err=True)
            ctx.exit(1)
        except OSError as e:
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            click.echo(f"pycvmfs: error: {where}{e.strerror or e}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("pycvmfs: interrupted", err=True)
            ctx.exit(130)


def _default_keys() -> list[str]:
    env = os.environ.get("CVMFS_PUBLIC_KEY")
    if env:
        return [p for p in env.split(":") if p]
    for d in (os.environ.get("CVMFS_KEYS_DIR"), "/etc/cvmfs/keys"):
        if d and Path(d).is_dir():
            return [d]
    return []


def repository_options(f: Callable) -> Callable:
    """``--key``, ``--fqrn``, ``--cache-dir``, ``--proxy``, ``--timeout``."""

    @click.option("-k", "--key", "keys", multiple=True, type=click.Path(),
                  help="Master public key file, or a directory of *.pub keys (repeatable). "
                       "Default: $CVMFS_PUBLIC_KEY, $CVMFS_KEYS_DIR, /etc/cvmfs/keys.")
    @click.option("--fqrn", help="Repository name (default: the last component of the URL).")
    @click.option("--cache-dir", type=click.Path(file_okay=False),
                  envvar="PYCVMFS_CACHE_DIR", show_envvar=True,
                  help="Local object cache (default: ~/.cache/pycvmfs).")
    @click.option("--proxy", "proxies", multiple=True,
                  help="HTTP proxy URL or DIRECT, tried in order (repeatable; default DIRECT).")
    @click.option("--timeout", type=float, default=10.0, show_default=True,
                  help="Network timeout in seconds.")
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)

    return wrapper


def revision_options(f: Callable) -> Callable:
    """``--tag``, ``--revision``, ``--root-hash``, ``--date``."""

    @click.option("-t", "--tag", help="Read the revision with this tag.")
    @click.option("-r", "--revision", type=int, help="Read this revision number.")
    @click.option("--root-hash", help="Read the revision with this root catalog hash.")
    @click.option("--date", help="Read the newest tagged revision at or before this UTC date "
                                 "(YYYY-MM-DDThh:mm:ssZ).")
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)

    return wrapper


def revision_selector(kwargs: dict) -> dict:
    sel = {k: kwargs.pop(k, None) for k in ("tag", "revision", "root_hash", "date")}
    return {k: v for k, v in sel.items() if v is not None}


def open_repo(url: str, kwargs: dict):
    from pycvmfs.client.repository import open_repository

    keys = list(kwargs.pop("keys", ()) or ())
    fqrn = kwargs.pop("fqrn", None)
    if not keys:
        keys = _default_keys()
    if not keys:
        raise ConfigError("no public key: give --key FILE (or a directory of *.pub keys), or "
                          "set CVMFS_PUBLIC_KEY / CVMFS_KEYS_DIR")
    proxies = list(kwargs.pop("proxies", ()) or ()) or ["DIRECT"]
    return open_repository(url, keys=keys, fqrn=fqrn, cache_dir=kwargs.pop("cache_dir", None),
                           proxies=proxies, timeout=kwargs.pop("timeout", 10.0))


def emit_json(obj: object) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def make_progress(description: str, *, enabled: bool | None = None):
    """A rich progress bar on a terminal (stderr), else a no-op; use as a context manager that
    yields a ``progress(done, total)`` callable."""
    import contextlib

    if enabled is None:
        enabled = sys.stderr.isatty()

    @contextlib.contextmanager
    def manager():
        if not enabled:
            yield lambda done, total: None
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=Console(stderr=True), transient=True) as p:
            task = p.add_task(description, total=None)

            def update(done: int, total: int | None) -> None:
                p.update(task, completed=done, total=total)

            yield update

    return manager()
