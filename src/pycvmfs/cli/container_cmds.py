"""``pycvmfs container``: container images into a repository (DUCC's verbs, one transaction)."""

from __future__ import annotations

import contextlib

import click

from pycvmfs.cli.common import emit_json, make_progress
from pycvmfs.cli.publish_cmds import _open, _stages, config_option
from pycvmfs.errors import ConfigError

__all__ = ["register"]

_OUTPUTS = ("flat", "layers", "podman", "thin")


def _settings(platforms, credentials_file, insecure, cache_dir):
    from pycvmfs.containers.credentials import Credentials
    from pycvmfs.containers.model import DEFAULT_PLATFORM, Platform
    from pycvmfs.containers.service import ContainerSettings

    return ContainerSettings(cache_dir=cache_dir,
                             credentials=Credentials.load(credentials_file),
                             insecure=insecure,
                             platforms=[Platform.parse(p) for p in platforms] or
                             [DEFAULT_PLATFORM])


def source_options(f):
    f = click.option("--platform", "platforms", multiple=True, metavar="OS/ARCH[/VARIANT]",
                     help="Platform to publish from a multi-architecture image (repeatable; "
                          "default linux/amd64). The first keeps the plain name, the others "
                          "get -OS-ARCH appended to the tag.")(f)
    f = click.option("--credentials", "credentials_file", type=click.Path(dir_okay=False),
                     envvar="PYCVMFS_REGISTRY_AUTH", show_envvar=True,
                     help="Registry credentials: a Docker config.json (auths). DUCC_* "
                          "variables are read too. Never given on the command line.")(f)
    f = click.option("--insecure", is_flag=True,
                     help="Plain HTTP to a registry on a loopback address.")(f)
    f = click.option("--cache-dir", type=click.Path(file_okay=False),
                     help="Verified blob cache (default: <repository dir>/container-blobs).")(f)
    return f


def lock_wait_option(f):
    return click.option("--lock-wait", type=click.FloatRange(min=0), default=0.0,
                        show_default=True, metavar="SECONDS",
                        help="Wait this long while another process publishes to the "
                             "repository (default: refuse at once).")(f)


def _report(report, as_json: bool) -> None:
    if as_json:
        emit_json(report.to_dict())
        return
    for label, items in (("added", report.added), ("updated", report.updated),
                         ("unchanged", report.unchanged), ("removed", report.removed)):
        for n in items:
            click.echo(f"{label:9} {n}")
    click.echo(f"layers: {len(report.layers_new)} new, {len(report.layers_reused)} reused; "
               f"flats: {len(report.flats_new)} new; retired {len(report.retired)}, "
               f"deleted {len(report.deleted)}")
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)
    if report.dry_run:
        click.echo("dry run: nothing published")
    elif report.revision is None:
        click.echo("nothing changed: no new revision")
    else:
        click.echo(f"published revision {report.revision}")


def _outputs(text: str) -> frozenset[str]:
    out = frozenset(x.strip() for x in text.split(",") if x.strip())
    bad = out - set(_OUTPUTS)
    if bad or not out:
        raise ConfigError(f"--outputs {text!r}: choose from {', '.join(_OUTPUTS)}")
    return out


@click.group(name="container")
def container() -> None:
    """Container images in a repository: ingest, sync a DUCC wish list, ls, gc,
    import-rootfs, export, webhook."""


@container.command()
@click.argument("fqrn")
@click.argument("images", nargs=-1, required=True)
@click.option("--name", "names", multiple=True,
              help="Public name (HOST/REPO:TAG) of each IMAGE, in order (default: the "
                   "reference's own, localhost/<dir>:<tag> for local sources).")
@click.option("--outputs", default="flat,layers,podman", show_default=True,
              help="What to write: flat, layers, podman, thin (comma separated).")
@source_options
@click.option("--dry-run", is_flag=True, help="Resolve and plan, publish nothing.")
@click.option("-a", "--tag", help="Tag the new revision.")
@lock_wait_option
@config_option
@click.option("--json", "as_json", is_flag=True)
def ingest(fqrn, images, names, outputs, platforms, credentials_file, insecure, cache_dir,
           dry_run, tag, lock_wait, config_dir, as_json) -> None:
    """Publish IMAGEs (oci:DIR[:TAG], docker-archive:FILE[:NAME], docker://HOST/REPO:TAG or
    https://HOST/REPO:TAG) into FQRN as one revision."""
    from pycvmfs.containers.service import ingest_images

    if names and len(names) != len(images):
        raise ConfigError(f"{len(names)} --name for {len(images)} images: give one per image")
    pub = _open(fqrn, config_dir)
    settings = _settings(platforms, credentials_file, insecure, cache_dir)
    with make_progress("publishing") as display:
        report = ingest_images(pub, images, settings, names=list(names) or None,
                               outputs=_outputs(outputs), dry_run=dry_run,
                               progress=_stages(display), tag=tag, lock_wait=lock_wait)
    _report(report, as_json)


@container.command()
@click.argument("fqrn")
@click.argument("wishlist", type=click.Path(dir_okay=False, exists=True))
@click.option("--grace-period", type=click.FloatRange(min=0), metavar="DAYS",
              help="Days an unused flat or layer is kept (default: the wish list's, else 7).")
@source_options
@click.option("--dry-run", is_flag=True, help="Print the change set, publish nothing.")
@click.option("-a", "--tag", help="Tag the new revision.")
@lock_wait_option
@config_option
@click.option("--json", "as_json", is_flag=True)
def sync(fqrn, wishlist, grace_period, platforms, credentials_file, insecure, cache_dir,
         dry_run, tag, lock_wait, config_dir, as_json) -> None:
    """Apply a DUCC wish list (v1 or v2) to FQRN as one revision: new and moved tags, names no
    longer wanted removed, unused flats and layers collected after the grace period."""
    from pycvmfs.containers.service import sync_wishlist
    from pycvmfs.containers.wishlist import load_wishlist

    pub = _open(fqrn, config_dir)
    settings = _settings(platforms, credentials_file, insecure, cache_dir)
    wl = load_wishlist(wishlist)
    with make_progress("publishing") as display:
        report = sync_wishlist(pub, wl, settings, dry_run=dry_run, grace_days=grace_period,
                               progress=_stages(display), tag=tag, lock_wait=lock_wait)
    _report(report, as_json)
    if report.incomplete:  # an image could not be resolved: published the rest, removed nothing
        raise SystemExit(1)


@container.command(name="ls")
@click.argument("fqrn")
@config_option
@click.option("--json", "as_json", is_flag=True)
def ls_cmd(fqrn, config_dir, as_json) -> None:
    """List the images published in FQRN (name, digest, platform, layers, size, when)."""
    import datetime as _dt

    from pycvmfs.containers.service import list_images

    rows = list_images(_open(fqrn, config_dir))
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        when = _dt.datetime.fromtimestamp(r["published"], _dt.UTC).strftime("%Y-%m-%d %H:%M")
        click.echo(f"{r['name']}  {r['manifest_digest'][:19]}  {r['platform']}  "
                   f"{r['layers']} layers  {r['size'] / 1e6:.1f} MB  {when}")


@container.command()
@click.argument("fqrn")
@click.option("--grace-period", type=click.FloatRange(min=0), default=7.0, show_default=True,
              metavar="DAYS",
              help="Delete flats and layers unused for at least this many days.")
@click.option("--ducc-leftovers", is_flag=True,
              help="Also remove DUCC's .chains, .dirty-chains and remove-schedule.json.")
@click.option("--include-unknown", is_flag=True,
              help="Also retire flats and layers that no image in images.json uses (e.g. "
                   "made by DUCC); they go after the grace period like ours.")
@click.option("--dry-run", is_flag=True)
@lock_wait_option
@config_option
@click.option("--json", "as_json", is_flag=True)
def gc(fqrn, grace_period, ducc_leftovers, include_unknown, dry_run, lock_wait, config_dir,
       as_json) -> None:
    """Remove flats and layers no published image uses once the grace period is over."""
    from pycvmfs.containers.service import container_publisher

    pub = _open(fqrn, config_dir)
    report = container_publisher(pub, lock_wait=lock_wait).collect(
        grace_days=grace_period, dry_run=dry_run, ducc_leftovers=ducc_leftovers,
        include_unknown=include_unknown)
    _report(report, as_json)


def _runtime(env, entrypoint, cmd, workdir) -> dict:
    import shlex

    from pycvmfs.containers.rootfs import DEFAULT_PATH

    def words(option: str, text: str) -> list[str]:
        try:
            return shlex.split(text)
        except ValueError as e:  # an unclosed quote
            raise ConfigError(f"{option} {text!r}: {e}") from None

    runtime: dict = {"Env": list(env) or [DEFAULT_PATH]}
    if entrypoint:
        runtime["Entrypoint"] = words("--entrypoint", entrypoint)
    if cmd:
        runtime["Cmd"] = words("--cmd", cmd)
    if workdir:
        runtime["WorkingDir"] = workdir
    return runtime


@container.command(name="import-rootfs")
@click.argument("fqrn")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option("--name", required=True, help="Public name, HOST/REPO:TAG.")
@click.option("--env", multiple=True, metavar="K=V", help="Image environment (repeatable).")
@click.option("--entrypoint", help="ENTRYPOINT, a shell-quoted command line.")
@click.option("--cmd", help="CMD, a shell-quoted command line.")
@click.option("--workdir", help="WorkingDir.")
@click.option("--platform", "platform_text", metavar="OS/ARCH[/VARIANT]",
              help="Platform recorded in the config (default: this machine's).")
@click.option("--outputs", default="flat,podman", show_default=True,
              help="flat, layers, podman, thin (comma separated).")
@click.option("-a", "--tag", help="Tag the new revision.")
@config_option
@click.option("--json", "as_json", is_flag=True)
def import_rootfs(fqrn, directory, name, env, entrypoint, cmd, workdir, platform_text, outputs,
                  tag, config_dir, as_json) -> None:
    """Publish a root file system DIRECTORY (e.g. made by mmdebstrap) as the image NAME: a flat
    tree with the Apptainer files and a podman store entry, in one revision."""
    from pycvmfs.containers.model import Platform
    from pycvmfs.containers.service import import_rootfs as run_import

    pub = _open(fqrn, config_dir)
    with make_progress("publishing") as display:
        report = run_import(pub, directory, name,
                            runtime=_runtime(env, entrypoint, cmd, workdir),
                            platform=Platform.parse(platform_text) if platform_text else None,
                            outputs=_outputs(outputs), progress=_stages(display), tag=tag)
    _report(report, as_json)


@container.command()
@click.argument("fqrn")
@click.argument("name")
@click.argument("dest", metavar="oci:DIR[:TAG]")
@click.option("--keep-apptainer", is_flag=True,
              help="Keep the .singularity.d files the publisher added to the flat tree.")
@config_option
@click.option("--json", "as_json", is_flag=True)
def export(fqrn, name, dest, keep_apptainer, config_dir, as_json) -> None:
    """Write the published image NAME out as a standard OCI image layout (one layer), for
    `podman build FROM`, `skopeo copy` or a registry push."""
    import dataclasses

    from pycvmfs.containers.service import export_image

    if not dest.startswith("oci:"):
        raise ConfigError(f"{dest!r}: the destination is oci:DIR[:TAG]")
    path, _, tag = dest[4:].partition(":")
    result = export_image(_open(fqrn, config_dir), name, path, tag or None,
                          keep_generated=keep_apptainer)
    if as_json:
        emit_json(dataclasses.asdict(result))
        return
    click.echo(f"wrote oci:{result.dest}:{result.tag} ({result.entries} entries, "
               f"{result.layer_size / 1e6:.1f} MB layer {result.layer_digest[:19]})")


@container.command()
@click.argument("fqrn")
@click.argument("wishlist", type=click.Path(dir_okay=False, exists=True))
@click.option("--listen", default="127.0.0.1:8090", show_default=True, metavar="HOST:PORT")
@click.option("--path", "url_path", default="/", show_default=True,
              help="URL path the registry POSTs its notifications to.")
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="File holding the bearer token the registry must send (else "
                   "$PYCVMFS_WEBHOOK_TOKEN; none: no check).")
@click.option("--batch-seconds", type=float, default=30.0, show_default=True,
              help="Pushes arriving within this window are published as one revision.")
@source_options
@config_option
def webhook(fqrn, wishlist, listen, url_path, token_file, batch_seconds, platforms,
            credentials_file, insecure, cache_dir, config_dir) -> None:
    """Receive a Distribution registry's push notifications and publish the pushed tags the
    WISHLIST covers, one revision per batch (runs until interrupted)."""
    import signal
    import threading

    from pycvmfs.containers.service import ingest_images
    from pycvmfs.containers.webhook import WebhookServer, read_token
    from pycvmfs.containers.wishlist import load_wishlist

    pub = _open(fqrn, config_dir)
    wl = load_wishlist(wishlist)
    settings = _settings(platforms, credentials_file, insecure, cache_dir)
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen {listen!r}: expected HOST:PORT (a port 1-65535)")

    def publish(names: list[str]) -> None:
        refs = [("http://" if settings.insecure else "https://") + n for n in names]
        report = ingest_images(pub, refs, settings, names=names)
        click.echo(f"published {', '.join(names)}: revision {report.revision}", err=True)

    server = WebhookServer((host.strip("[]") or "127.0.0.1", int(port)), covers=wl.covers,
                           on_batch=publish, batch_seconds=batch_seconds,
                           token=read_token(token_file), path=url_path)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with server:
        click.echo(f"listening on http://{listen}{url_path} for {fqrn}", err=True)
        with contextlib.suppress(KeyboardInterrupt):
            done.wait()


def register(group: click.Group) -> None:
    group.add_command(container)
