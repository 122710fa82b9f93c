"""Stratum-0 commands: mkfs, publish, ingest, rm, tag, rollback, resign."""

from __future__ import annotations

import datetime as _dt
import functools
import sys
from collections.abc import Callable

import click

from pycvmfs.cli.common import emit_json, make_progress
from pycvmfs.errors import ConfigError, CvmfsError

__all__ = ["register"]


def config_option(f: Callable) -> Callable:
    @click.option("--config-dir", type=click.Path(file_okay=False), envvar="PYCVMFS_CONFIG_DIR",
                  show_envvar=True,
                  help="Where repository configuration and keys live "
                       "(default /etc/pycvmfs for root, else ~/.config/pycvmfs).")
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)

    return wrapper


def _open(fqrn: str, config_dir: str | None):
    from pycvmfs.publish.repository import Publisher

    return Publisher.open(fqrn, config_dir=config_dir)


def _parse_chunks(text: str):
    from pycvmfs.format.chunking import ChunkingParams

    try:
        mn, av, mx = (int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"--chunk-sizes {text!r}: expected MIN,AVG,MAX in bytes") from None
    return ChunkingParams(mn, av, mx)


@click.command()
@click.argument("fqrn")
@click.option("--storage", "-s", type=click.Path(file_okay=False),
              help="Directory that will hold the repository (.cvmfspublished, data/); with "
                   "--s3-config, the local spool directory (default <config>/repositories.d/"
                   "<fqrn>/spool).")
@click.option("--s3-config", type=click.Path(dir_okay=False, exists=True),
              help="Publish into S3: a CernVM-FS s3.conf (CVMFS_S3_HOST, CVMFS_S3_BUCKET, ...); "
                   "objects go below <fqrn>/ in the bucket.")
@click.option("--upstream", "-u", metavar="SPEC",
              help="The stock upstream spec instead: S3,<spool dir>,<alias>@<s3.conf>.")
@config_option
@click.option("--hash-algorithm", type=click.Choice(["sha1", "rmd160", "shake128"]),
              default="sha1", show_default=True)
@click.option("--compression", type=click.Choice(["zlib", "none"]), default="zlib",
              show_default=True)
@click.option("--chunk-sizes", metavar="MIN,AVG,MAX",
              help="Content-defined chunking sizes in bytes (default 4/8/16 MiB).")
@click.option("--no-chunking", is_flag=True, help="Store every file as one object.")
@click.option("--xattrs", is_flag=True, help="Record user extended attributes.")
@click.option("--no-auto-tag", is_flag=True, help="Do not tag every publish automatically.")
@click.option("--garbage-collectable", "-z", is_flag=True,
              help="Allow `pycvmfs gc` (manifest G=yes).")
@click.option("--ttl", type=int, default=240, show_default=True, help="Client catalog TTL (s).")
@click.option("--whitelist-days", type=int, default=30, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def mkfs(fqrn: str, storage: str | None, s3_config: str | None, upstream: str | None,
         config_dir: str | None, hash_algorithm: str, compression: str,
         chunk_sizes: str | None, no_chunking: bool, xattrs: bool, no_auto_tag: bool,
         garbage_collectable: bool, ttl: int, whitelist_days: int, as_json: bool) -> None:
    """Create repository FQRN in --storage or in S3, with new keys (like `cvmfs_server mkfs`)."""
    from pycvmfs.format.compression import Compression
    from pycvmfs.format.hashes import Algorithm
    from pycvmfs.publish.config import ServerSettings, config_base
    from pycvmfs.publish.repository import Publisher, s3_upstream_spec

    if s3_config and upstream:
        raise ConfigError("give either --s3-config or --upstream, not both")
    if s3_config:
        spool = storage or config_base(config_dir) / "repositories.d" / fqrn / "spool"
        upstream = s3_upstream_spec(spool, fqrn, s3_config)
    elif upstream:
        if not upstream.startswith("S3,"):
            raise ConfigError(f"--upstream {upstream!r}: expected S3,<spool dir>,<alias>@<s3.conf>"
                              " (for a local storage use --storage)")
    elif not storage:
        raise ConfigError("give --storage DIR (or --s3-config FILE for S3)")

    settings = ServerSettings(hash_algorithm=Algorithm.from_config_name(hash_algorithm),
                              compression=Compression.from_config_name(compression),
                              use_chunking=not no_chunking, include_xattrs=xattrs,
                              auto_tag=not no_auto_tag, garbage_collection=garbage_collectable,
                              ttl=ttl)
    if chunk_sizes:
        settings.chunking = _parse_chunks(chunk_sizes)
    pub = Publisher.mkfs(fqrn, None if upstream else storage, upstream=upstream,
                         config_dir=config_dir, settings=settings,
                         whitelist_days=whitelist_days)
    head = pub.head()
    where = pub.store.describe() if upstream else str(pub.config.storage)
    info = {"fqrn": fqrn, "storage": where,
            "config": str(pub.config.server_conf), "public_key": str(pub.config.key_path("pub")),
            "revision": head.revision, "root_hash": str(head.root_catalog)}
    if as_json:
        emit_json(info)
        return
    click.echo(f"created {fqrn} (revision {head.revision}) in {info['storage']}")
    click.echo(f"configuration: {info['config']}")
    click.echo(f"public key for clients: {info['public_key']}")


def _summary_out(summary, as_json: bool) -> None:
    if as_json:
        emit_json(summary.to_dict())
        return
    for w in summary.warnings:
        click.echo(f"pycvmfs: warning: {w}", err=True)
    if summary.revision is None:
        click.echo(f"nothing changed; no new revision ({summary.seconds:.2f} s)")
        return
    mb = summary.bytes_in / 1e6
    click.echo(f"published revision {summary.revision} ({summary.root_hash}): "
               f"{summary.files} files read, {mb:.1f} MB, {summary.objects_new} new objects, "
               f"{summary.bytes_stored / 1e6:.1f} MB stored, {summary.entries_added} added, "
               f"{summary.entries_removed} removed, in {summary.seconds:.2f} s"
               + (f"; tagged {', '.join(summary.tags)}" if summary.tags else ""))


@click.command()
@click.argument("fqrn")
@click.option("--from", "source", required=True, type=click.Path(exists=True, file_okay=False),
              help="Local directory to publish.")
@click.option("--to", "dest", default="/", show_default=True,
              help="Repository directory it becomes.")
@click.option("--delete", is_flag=True, help="Remove entries that are not in --from.")
@click.option("--checksum", is_flag=True,
              help="Compare file contents, not just type/size/mtime/mode.")
@click.option("-a", "--tag", help="Tag the new revision (instead of an automatic tag).")
@click.option("-m", "--message", default="", help="Tag description.")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def publish(fqrn: str, source: str, dest: str, delete: bool, checksum: bool, tag: str | None,
            message: str, config_dir: str | None, as_json: bool) -> None:
    """Synchronise a local directory into repository FQRN as one new revision."""
    pub = _open(fqrn, config_dir)
    with make_progress("publishing") as display, \
            pub.transaction(tag=tag, message=message, progress=_stages(display)) as txn:
        txn.add_tree(source, dest, delete=delete, checksum=checksum)
    _summary_out(txn.summary, as_json)


#: the unit of each stage a transaction reports (see Transaction)
_STAGE_UNITS = {"scanning": "items", "ingesting": "bytes", "reading": "bytes",
                "cataloguing": "items"}


def _stages(display, hidden: tuple[str, ...] = ()) -> Callable[[str, int, int | None],
                                                                 None] | None:
    """A transaction's ``progress``: one line per stage on ``display`` (None when it shows
    nothing: the transaction then makes no reports at all)."""
    if not display.enabled:
        return None

    def update(stage: str, done: int, total: int | None) -> None:
        if stage not in hidden:
            display.show(stage, done, total, unit=_STAGE_UNITS.get(stage, "items"))

    return update


@click.command()
@click.argument("fqrn")
@click.option("--tar", "tarball", required=True,
              help="Tar archive (plain, gzip, bzip2, xz), or - for standard input.")
@click.option("--to", "dest", required=True, help="Repository directory to unpack into.")
@click.option("--uid", type=int, help="Owner of the ingested entries (default: from the tar).")
@click.option("--gid", type=int, help="Group of the ingested entries (default: from the tar).")
@click.option("-a", "--tag", help="Tag the new revision.")
@click.option("-m", "--message", default="", help="Tag description.")
@config_option
@click.option("--json", "as_json", is_flag=True)
def ingest(fqrn: str, tarball: str, dest: str, uid: int | None, gid: int | None,
           tag: str | None, message: str, config_dir: str | None, as_json: bool) -> None:
    """Unpack a tar archive into repository FQRN as one new revision (streamed)."""
    pub = _open(fqrn, config_dir)
    src = sys.stdin.buffer if tarball == "-" else tarball
    # an archive's own bytes read measure it ("ingesting" misses the members streamed)
    with make_progress("ingesting") as display, \
            pub.transaction(tag=tag, message=message,
                            progress=_stages(display, hidden=("ingesting",))) as txn:
        txn.add_tarball(src, dest, uid=uid, gid=gid)
    _summary_out(txn.summary, as_json)


@click.command(name="rm")
@click.argument("fqrn")
@click.argument("paths", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Ignore paths that do not exist.")
@config_option
@click.option("--json", "as_json", is_flag=True)
def rm_cmd(fqrn: str, paths: tuple[str, ...], force: bool, config_dir: str | None,
           as_json: bool) -> None:
    """Remove paths (directories recursively) from repository FQRN as one new revision."""
    pub = _open(fqrn, config_dir)
    with pub.transaction() as txn:
        for p in paths:
            txn.remove(p, missing_ok=force)
    _summary_out(txn.summary, as_json)


@click.command()
@click.argument("fqrn")
@click.option("-a", "--add", "add", metavar="NAME", help="Add a tag.")
@click.option("-m", "--message", default="", help="Description of the new tag.")
@click.option("-h", "--root-hash", help="Root catalog the new tag names (default: newest).")
@click.option("-r", "--remove", "remove", metavar="NAME", help="Remove a tag.")
@click.option("-l", "--list", "list_", is_flag=True, help="List the tags.")
@config_option
@click.option("--json", "as_json", is_flag=True)
def tag(fqrn: str, add: str | None, message: str, root_hash: str | None, remove: str | None,
        list_: bool, config_dir: str | None, as_json: bool) -> None:
    """Add, remove or list named tags (like `cvmfs_server tag`)."""
    from pycvmfs.format.hashes import ContentHash

    if sum(bool(x) for x in (add, remove, list_)) != 1:
        raise ConfigError("give exactly one of -a NAME, -r NAME, -l")
    pub = _open(fqrn, config_dir)
    if add:
        h = ContentHash.parse(root_hash, what="--root-hash") if root_hash else None
        pub.tag(add, root_hash=h, message=message)
        if as_json:
            emit_json({"added": add})
        else:
            click.echo(f"tagged {add}")
        return
    if remove:
        pub.tag(remove, remove=True)
        if as_json:
            emit_json({"removed": remove})
        else:
            click.echo(f"removed tag {remove}")
        return
    rows = pub.tags()
    if as_json:
        emit_json([{"name": t.name, "root_hash": str(t.root_hash), "revision": t.revision,
                    "timestamp": t.timestamp, "size": t.size, "description": t.description}
                   for t in rows])
        return
    for t in rows:
        when = _dt.datetime.fromtimestamp(t.timestamp, _dt.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        click.echo(f"{t.name:<32} r{t.revision:<5} {when}  {t.root_hash}  {t.description}")


@click.command()
@click.argument("fqrn")
@click.argument("target", default="trunk-previous")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("--no-undo-tag", is_flag=True,
              help="Do not tag the rolled-over head as pre-rollback-r<revision>.")
@config_option
@click.option("--json", "as_json", is_flag=True)
def rollback(fqrn: str, target: str, force: bool, no_undo_tag: bool, config_dir: str | None,
             as_json: bool) -> None:
    """Make the revision of tag TARGET (default: trunk-previous) current, as a new revision.

    Says which newer tags it deletes and asks first (unless -f). The rolled-over head stays
    reachable as tag pre-rollback-r<revision>: `pycvmfs rollback FQRN pre-rollback-r<N>` undoes
    the rollback."""
    pub = _open(fqrn, config_dir)
    plan = pub.rollback_plan(target, keep_undo=not no_undo_tag)
    if not force:
        names = ", ".join(t.name for t in plan.deleted_tags) or "none"
        click.echo(f"rolling {fqrn} back to {target} (revision {plan.target.revision}) as "
                   f"revision {plan.new_revision}; tags deleted: {names}", err=True)
        kept = f"tag {plan.undo_tag}" if plan.undo_tag else "nothing but the reflog, until gc"
        click.echo(f"leaving behind revision {plan.head_revision} ({plan.head_root}), kept by "
                   f"{kept}", err=True)
        click.confirm("roll back?", abort=True, err=True)
    m = pub.rollback(target, keep_undo=not no_undo_tag, expect_head=plan.head_root)
    if as_json:
        emit_json({"revision": m.revision, "root_hash": str(m.root_catalog), "target": target,
                   "deleted_tags": [t.name for t in plan.deleted_tags],
                   "undo_tag": plan.undo_tag})
        return
    click.echo(f"rolled back to {target}: revision {m.revision} ({m.root_catalog})")
    if plan.undo_tag:
        click.echo(f"undo with: pycvmfs rollback {fqrn} {plan.undo_tag}")


@click.command()
@click.argument("fqrn")
@click.option("-d", "--days", type=int, default=30, show_default=True,
              help="Validity of the new whitelist.")
@click.option("-p", "--published", is_flag=True,
              help="Re-sign the current manifest with the repository key instead (same "
                   "revision), e.g. after it was signed with a wrong key.")
@click.option("--rotate-certificate", is_flag=True,
              help="New repository key and certificate, a whitelist naming it (and, until the "
                   "next resign, the old one), manifest re-signed. Needs the master key.")
@click.option("--certificate-days", type=int, default=365, show_default=True,
              help="Validity of the new certificate (with --rotate-certificate).")
@config_option
def resign(fqrn: str, days: int, published: bool, rotate_certificate: bool,
           certificate_days: int, config_dir: str | None) -> None:
    """Renew the whitelist with the master key (like `cvmfs_server resign`); -p re-signs the
    manifest, --rotate-certificate replaces the repository key. See docs/recovery.md."""
    if published and rotate_certificate:
        raise ConfigError("give either -p or --rotate-certificate (which re-signs the manifest "
                          "too), not both")
    if min(days, certificate_days) < 1:
        raise ConfigError("--days and --certificate-days must be at least 1")
    from pycvmfs.publish.repository import Publisher

    pub = Publisher.open(fqrn, config_dir=config_dir, repository_key=not rotate_certificate)
    m = pub.resign(days=days, published=published, rotate_certificate=rotate_certificate,
                   certificate_days=certificate_days)
    if rotate_certificate:
        click.echo(f"{fqrn}: new certificate {pub.config.key_path('crt')} "
                   f"({pub.keys.certificate.fingerprint().fingerprint()}), whitelist renewed "
                   f"for {days} days, revision {m.revision} re-signed")
    elif published:
        click.echo(f"{fqrn}: revision {m.revision} re-signed")
    else:
        click.echo(f"whitelist of {fqrn} renewed for {days} days")
    try:
        pub.check_signing()
    except CvmfsError as e:
        click.echo(f"pycvmfs: warning: {e}", err=True)


@click.command()
@click.argument("fqrn")
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@click.option("-r", "--keep-revisions", type=int,
              help="Keep the newest revision plus this many previous ones.")
@click.option("--keep-hours", type=float, default=72.0, show_default=True,
              help="Keep revisions younger than this (the first older one too).")
@config_option
@click.option("--json", "as_json", is_flag=True)
def gc(fqrn: str, dry_run: bool, keep_revisions: int | None, keep_hours: float,
       config_dir: str | None, as_json: bool) -> None:
    """Delete objects no kept revision or named tag needs (like `cvmfs_server gc`)."""
    from pycvmfs.publish.gc import collect_garbage

    pub = _open(fqrn, config_dir)
    report = collect_garbage(pub, keep_revisions=keep_revisions,
                             keep_seconds=int(keep_hours * 3600), dry_run=dry_run)
    if as_json:
        emit_json(report.to_dict())
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{fqrn}: {verb} {report.objects} objects ({report.bytes / 1e6:.1f} MB), "
               f"swept {len(report.root_catalogs_swept)} root catalogs, kept revisions "
               f"{', '.join(map(str, report.revisions_kept))} and {len(report.tags_kept)} "
               f"tags, in {report.seconds:.2f} s")
    for w in report.warnings:
        click.echo(f"pycvmfs: warning: {w}", err=True)


@click.command()
@click.argument("target")
@click.option("-a", "--all-revisions", is_flag=True,
              help="Also check every tagged and previous revision still stored.")
@config_option
@click.option("--json", "as_json", is_flag=True)
def check(target: str, all_revisions: bool, config_dir: str | None, as_json: bool) -> None:
    """Check every object and catalog invariant of a repository (FQRN, or a storage path).

    Exit status 1 when anything is wrong; each problem names the object and path."""
    from pycvmfs.publish.check import check_repository

    is_path = "/" in target or target.startswith(".")
    subject = target if is_path else _open(target, config_dir)
    with make_progress("checking") as progress:
        report = check_repository(subject, all_revisions=all_revisions,
                                  progress=lambda _stage, done, total: progress(done, total))
    if as_json:
        emit_json(report.to_dict())
    else:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(report.checked.items()))
        click.echo(f"checked {sum(report.checked.values())} objects ({kinds}) in "
                   f"{report.catalogs} catalogs, revisions {report.revisions}, "
                   f"in {report.seconds:.2f} s")
        for n in report.notes:
            click.echo(f"note: {n}")
        for p in report.problems:
            click.echo(f"PROBLEM {p.object} {p.path or ''}: {p.message}")
        click.echo(f"{len(report.problems)} problems")
    if not report.ok:
        sys.exit(1)


def register(group: click.Group) -> None:
    for cmd in (mkfs, publish, ingest, rm_cmd, tag, rollback, resign, gc, check):
        group.add_command(cmd)
