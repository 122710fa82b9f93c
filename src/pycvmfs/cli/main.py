"""The ``pycvmfs`` command: one entry point whose verbs mirror cvmfs_server / cvmfs_config."""

from __future__ import annotations

import click

from pycvmfs import __version__
from pycvmfs.cli import (
    admin_cmds,
    cache_cmds,
    client_cmds,
    config_cmds,
    container_cmds,
    mount_cmds,
    publish_cmds,
    replica_cmds,
    serve_cmd,
    stack_cmds,
    web_cmd,
)
from pycvmfs.cli.common import CvmfsGroup


@click.group(cls=CvmfsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pycvmfs")
def cli() -> None:
    """pycvmfs: publish, replicate and read CernVM-FS repositories."""


client_cmds.register(cli)
cache_cmds.register(cli)
config_cmds.register(cli)
publish_cmds.register(cli)
serve_cmd.register(cli)
mount_cmds.register(cli)
replica_cmds.register(cli)
admin_cmds.register(cli)
container_cmds.register(cli)
stack_cmds.register(cli)
web_cmd.register(cli)


def main() -> None:
    cli(prog_name="pycvmfs")


if __name__ == "__main__":
    main()
