"""Client configuration commands: ``config showconfig`` and ``probe``."""

from __future__ import annotations

import sys

import click

from pycvmfs.cli.common import emit_json
from pycvmfs.client.config import DIRECT, load_client_config

__all__ = ["register"]

_config_dir_option = click.option(
    "--config-dir", type=click.Path(file_okay=False),
    help="Client configuration directory (default: $PYCVMFS_CONFIG_DIR, else /etc/cvmfs).")


@click.group(name="config")
def config_group() -> None:
    """Inspect the CernVM-FS client configuration (like cvmfs_config)."""


@config_group.command()
@click.argument("fqrn")
@_config_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def showconfig(fqrn: str, config_dir: str | None, as_json: bool) -> None:
    """Print every configuration variable of FQRN and the file that set it."""
    from pycvmfs.client.settings import report_settings

    cfg = load_client_config(fqrn, config_dir=config_dir)
    report_settings(cfg, refuse=False)
    if as_json:
        emit_json(cfg.to_json())
        return
    click.echo(f"CVMFS_REPOSITORY_NAME={fqrn}")
    click.echo(cfg.showconfig(), nl=False)


@click.command()
@click.argument("fqrn")
@_config_dir_option
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: a list of {url, ok, reason}.")
def probe(fqrn: str, config_dir: str | None, as_json: bool) -> None:
    """Fetch .cvmfspublished from every configured server through the configured proxies."""
    from pycvmfs.client.doctor import probe_server

    cfg = load_client_config(fqrn, config_dir=config_dir)
    urls, proxies = cfg.server_urls, cfg.proxies
    timeout = cfg.timeout_direct if all(p == DIRECT for p in proxies) else cfg.timeout
    results = [(url, probe_server(fqrn, url, proxies, timeout, cfg.low_speed_limit))
               for url in urls]
    if as_json:
        emit_json([{"url": url, "ok": reason is None, "reason": reason}
                   for url, reason in results])
    else:
        for url, reason in results:
            click.echo(f"Probing {url}... " + ("OK" if reason is None else f"Failed ({reason})"))
    worked = sum(reason is None for _url, reason in results)
    if not worked:
        click.echo(f"pycvmfs: error: {fqrn}: no server answered", err=True)
        sys.exit(1)


def register(group: click.Group) -> None:
    group.add_command(config_group)
    group.add_command(probe)
