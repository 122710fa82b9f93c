"""Shared pieces of the command line: error handling, repository options, output helpers."""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click

from pycvmfs.cli.group import CvmfsGroup
from pycvmfs.errors import ConfigError

__all__ = ["CvmfsGroup", "ProgressDisplay", "emit_json", "make_progress", "open_repo",
           "repository_options", "revision_options", "revision_selector"]


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


#: PYCVMFS_PROGRESS=1 shows progress where stderr is not a terminal (then the final state is
#: printed once, at the end); =0 hides it everywhere.
PROGRESS_ENV = "PYCVMFS_PROGRESS"
#: seconds between two redraws of a line (updates in between are kept, not drawn)
_REDRAW_EVERY = 0.1


def _progress_wanted(enabled: bool | None) -> tuple[bool, bool]:
    """(show it, on a terminal) for ``enabled`` (None: decide) and $PYCVMFS_PROGRESS."""
    tty = sys.stderr.isatty()
    if enabled is False:
        return False, tty
    env = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if env in ("0", "no", "off", "false"):
        return False, tty
    return (tty or env in ("1", "yes", "on", "true")), tty


class ProgressDisplay:
    """What :func:`make_progress` yields: ``display(done, total)`` updates its first line;
    :meth:`show` updates (or adds) another line. Disabled, every call returns at once."""

    def __init__(self, progress=None, description: str = "", unit: str = "items", *,
                 start: Callable[[], object] | None = None) -> None:
        self._progress = progress  # a rich Progress, or None: nothing shown (yet)
        #: makes (and starts) the rich Progress on the first update: a command that has nothing
        #: to report (a no-op snapshot) never imports rich
        self._start = start
        self._lines: dict[str, list] = {}  # name -> [task id, last draw, undrawn update]
        self._main = description
        self._main_unit = unit
        self._lock = threading.Lock()  # (callers report from several threads)

    @property
    def enabled(self) -> bool:
        """Whether anything is shown (callers may skip their reports otherwise)."""
        return self._progress is not None or self._start is not None

    def __call__(self, done: int, total: int | None) -> None:
        self.show(self._main, done, total, unit=self._main_unit)

    def show(self, name: str, done: int, total: int | None, *, unit: str = "items",
             final: bool = True) -> None:
        """Line ``name`` is at ``done`` of ``total`` (None: unknown) ``unit`` ("items" or
        "bytes"); ``final=False``: more may be added to the total (shown as ``+``, no ETA)."""
        if self._progress is None and self._start is None:
            return
        now = time.monotonic()
        fields = {"completed": done, "total": total, "final": final}
        with self._lock:
            if self._progress is None and self._start is not None:  # the first update
                self._progress, self._start = self._start(), None
            line = self._lines.get(name)
            if line is None:
                task = self._progress.add_task(name, total=total, unit=unit, final=final)
                line = self._lines[name] = [task, 0.0, None]
            if now - line[1] < _REDRAW_EVERY and not (final and total is not None
                                                      and done >= total):
                line[2] = fields  # cheap: drawn with the next update or at the end
                return
            line[1], line[2] = now, None
            self._progress.update(line[0], **fields)

    def final(self) -> None:
        """Every line's total is now final."""
        if self._progress is not None:
            self._flush(final=True)

    def _flush(self, **fields) -> None:
        """Draw every line's undrawn update (with ``fields`` set on every line)."""
        with self._lock:
            if self._progress is None:
                return  # never started: nothing to draw
            for line in self._lines.values():
                update = {**(line[2] or {}), **fields}
                line[2] = None
                if update:
                    self._progress.update(line[0], **update)


def make_progress(description: str, *, enabled: bool | None = None, unit: str = "items"):
    """A context manager that yields a :class:`ProgressDisplay` whose first line is
    ``description`` counted in ``unit`` ("items", or "bytes": amount, rate and ETA).

    Shown on stderr when it is a terminal (or when $PYCVMFS_PROGRESS is 1, then once at the
    end); ``enabled=False`` or $PYCVMFS_PROGRESS=0 hide it. Updates are cheap (redrawn at most
    ten times a second), so callers may report every file.
    """
    import contextlib

    show, tty = _progress_wanted(enabled)

    @contextlib.contextmanager
    def manager():
        if not show:
            yield ProgressDisplay()
            return
        with contextlib.ExitStack() as stack:

            def start():
                from rich.console import Console
                from rich.progress import Progress

                return stack.enter_context(Progress(*_columns(), console=Console(stderr=True),
                                                    transient=tty))

            display = ProgressDisplay(None, description, unit, start=start)
            try:
                yield display
            finally:
                display._flush()

    return manager()


def _columns() -> list:
    """The columns of a progress line: description, bar, amount, rate, ETA."""
    from rich import filesize
    from rich.progress import BarColumn, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    def amount(n: float, unit: str) -> str:
        return filesize.decimal(int(n)) if unit == "bytes" else f"{int(n):,}"

    class Amount(ProgressColumn):
        def render(self, task) -> Text:
            unit = task.fields.get("unit", "items")
            more = "" if task.fields.get("final", True) else "+"
            total = "?" if task.total is None else amount(task.total, unit) + more
            return Text(f"{amount(task.completed, unit)}/{total}", style="progress.download")

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            if task.finished_time:  # done: the average of the whole run
                speed = task.completed / task.finished_time
            else:  # the recent rate; the average while rich has too few samples (it drops
                speed = task.speed  # them whenever the total changes)
                if speed is None and task.elapsed:
                    speed = task.completed / task.elapsed
            if not speed:
                return Text("")
            return Text(f"{amount(speed, task.fields.get('unit', 'items'))}/s",
                        style="progress.data.speed")

    class Eta(TimeRemainingColumn):
        def render(self, task) -> Text:
            if task.total is None or not task.fields.get("final", True):
                return Text("")  # a growing total has no honest ETA
            return super().render(task)

    return [TextColumn("{task.description}"), BarColumn(), Amount(), Rate(), Eta()]
