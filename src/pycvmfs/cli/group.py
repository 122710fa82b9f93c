"""The click groups of the command line: failures as one line, verbs imported when used.

Kept light (click and :mod:`pycvmfs.errors` only): ``pycvmfs --version`` and every verb pay for
this module's imports before anything else runs.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping

import click

from pycvmfs.errors import CvmfsError

__all__ = ["CvmfsGroup", "LazyCvmfsGroup"]


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


class LazyCvmfsGroup(CvmfsGroup):
    """A :class:`CvmfsGroup` whose verbs live in modules imported only when one of their verbs
    is looked up (run, completed, or listed by ``--help``).

    ``lazy_verbs`` maps each verb to the module that registers it: a module with a
    ``register(group)`` function that adds its commands, exactly as an eager group would get
    them (same objects, names and aliases). A module is imported and registered once, the first
    time any of its verbs is asked for.
    """

    def __init__(self, *args, lazy_verbs: Mapping[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_verbs: dict[str, str] = dict(lazy_verbs or {})
        self._registered: set[str] = set()

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self.lazy_verbs))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_verbs:
            self.load_module(self.lazy_verbs[cmd_name])
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        """As click's, but an unknown verb first loads every verb module, so that the error
        offers the same "Did you mean" suggestions as an eager group (the error path only)."""
        name = click.utils.make_str(args[0])
        if self.get_command(ctx, name) is None and not ctx.resilient_parsing:
            for module in sorted(set(self.lazy_verbs.values())):
                self.load_module(module)
        return super().resolve_command(ctx, args)

    def load_module(self, module: str) -> None:
        """Import ``module`` and let it register its commands (once)."""
        if module in self._registered:
            return
        self._registered.add(module)
        importlib.import_module(module).register(self)
