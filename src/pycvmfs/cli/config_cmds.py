"""Client configuration commands: ``config showconfig`` and ``probe``."""

from __future__ import annotations

import sys

import click

from pycvmfs.cli.common import emit_json
from pycvmfs.client.config import DIRECT, ClientConfig, load_client_config
from pycvmfs.errors import CvmfsError, FetchError

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


def _probe_one(cfg: ClientConfig, url: str, proxies: list[str], timeout: int) -> str | None:
    """Fetch and parse ``<url>/.cvmfspublished``; None if it worked, else the reason."""
    from pycvmfs.format.manifest import parse_signed_manifest
    from pycvmfs.storage.base import fetch_bytes
    from pycvmfs.storage.http import HttpSource

    try:
        with HttpSource([url], proxies=proxies, timeout=timeout, retries=0) as source:
            data = fetch_bytes(source, ".cvmfspublished", what=f"{url}/.cvmfspublished",
                               limit=1 << 20)
        manifest = parse_signed_manifest(data).manifest
    except FetchError as e:
        return "; ".join(e.attempts) or str(e)
    except CvmfsError as e:
        return str(e)
    if manifest.fqrn and manifest.fqrn != cfg.fqrn:
        return f"manifest is for {manifest.fqrn}, not {cfg.fqrn}"
    return None


@click.command()
@click.argument("fqrn")
@_config_dir_option
def probe(fqrn: str, config_dir: str | None) -> None:
    """Fetch .cvmfspublished from every configured server through the configured proxies."""
    cfg = load_client_config(fqrn, config_dir=config_dir)
    urls, proxies = cfg.server_urls, cfg.proxies
    timeout = cfg.timeout_direct if all(p == DIRECT for p in proxies) else cfg.timeout
    worked = 0
    for url in urls:
        reason = _probe_one(cfg, url, proxies, timeout)
        if reason is None:
            worked += 1
            click.echo(f"Probing {url}... OK")
        else:
            click.echo(f"Probing {url}... Failed ({reason})")
    if not worked:
        click.echo(f"pycvmfs: error: {fqrn}: no server answered", err=True)
        sys.exit(1)


def register(group: click.Group) -> None:
    group.add_command(config_group)
    group.add_command(probe)
