"""The ``pycvmfs`` command: one entry point whose verbs mirror cvmfs_server / cvmfs_config.

Each verb's module is imported only when that verb runs (or ``--help`` lists them all), so that
``pycvmfs --version`` and a cron job's ``pycvmfs snapshot`` do not pay for the rest; a bare
``pycvmfs --version`` is answered before click is imported at all. The click group, :data:`cli`,
is made on first use.
"""

from __future__ import annotations

import sys

from pycvmfs import __version__

TYPE_CHECKING = False  # (true for type checkers; typing is not imported when --version runs)
if TYPE_CHECKING:
    from typing import Any

    import click

    cli: click.Group  # made on first use (module __getattr__)

__all__ = ["VERB_MODULES", "cli", "main"]

#: module (under pycvmfs.cli) -> the verbs its ``register()`` adds; tests/cli/test_lazy_imports.py
#: checks that this table and the modules agree
VERB_MODULES: dict[str, tuple[str, ...]] = {
    "client_cmds": ("cat", "diff", "get", "info", "ls", "tags", "verify"),
    "cache_cmds": ("cache",),
    "config_cmds": ("config", "probe"),
    "publish_cmds": ("check", "gc", "ingest", "mkfs", "publish", "resign", "rm", "rollback",
                     "tag"),
    "serve_cmd": ("serve",),
    "mount_cmds": ("mount", "status", "umount"),
    "replica_cmds": ("add-replica", "snapshot"),
    "admin_cmds": ("alterfs", "chksetup", "doctor", "list", "list-catalogs", "rmfs"),
    "container_cmds": ("container",),
    "stack_cmds": ("stack",),
    "web_cmd": ("web",),
}

#: what ``--version`` prints (click's version_option with this program name)
VERSION_LINE = f"pycvmfs, version {__version__}\n"

_cli: click.Group | None = None


def _make_cli() -> click.Group:
    import click

    from pycvmfs.cli.group import LazyCvmfsGroup

    lazy = {verb: f"pycvmfs.cli.{module}"
            for module, verbs in VERB_MODULES.items() for verb in verbs}

    @click.group(cls=LazyCvmfsGroup, lazy_verbs=lazy,
                 context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="pycvmfs")
    def cli() -> None:
        """pycvmfs: publish, replicate and read CernVM-FS repositories."""

    return cli


def __getattr__(name: str) -> Any:
    global _cli
    if name == "cli":
        if _cli is None:
            _cli = _make_cli()
        return _cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write(VERSION_LINE)
        return
    __getattr__("cli")(prog_name="pycvmfs")


if __name__ == "__main__":
    main()
