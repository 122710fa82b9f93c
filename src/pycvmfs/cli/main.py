"""The ``pycvmfs`` command: one entry point whose verbs mirror cvmfs_server / cvmfs_config.

Each verb's module is imported only when that verb runs (or ``--help`` lists them all), so that
``pycvmfs --version`` and a cron job's ``pycvmfs snapshot`` do not pay for the rest.
"""

from __future__ import annotations

import click

from pycvmfs import __version__
from pycvmfs.cli.group import LazyCvmfsGroup

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

_LAZY_VERBS = {verb: f"pycvmfs.cli.{module}"
               for module, verbs in VERB_MODULES.items() for verb in verbs}


@click.group(cls=LazyCvmfsGroup, lazy_verbs=_LAZY_VERBS,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pycvmfs")
def cli() -> None:
    """pycvmfs: publish, replicate and read CernVM-FS repositories."""


def main() -> None:
    cli(prog_name="pycvmfs")


if __name__ == "__main__":
    main()
