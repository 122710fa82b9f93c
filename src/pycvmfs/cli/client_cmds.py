"""Client commands: info, ls, cat, get, tags, diff, verify."""

from __future__ import annotations

import datetime as _dt
import stat as _stat
import sys

import click

from pycvmfs.cli.common import (
    emit_json,
    make_progress,
    open_repo,
    repository_options,
    revision_options,
    revision_selector,
)

__all__ = ["register"]


def _iso(ts: int | None) -> str | None:
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@click.command()
@click.argument("url")
@repository_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(url: str, as_json: bool, **kw) -> None:
    """Show a repository's name, revision, root hash, keys and expiry."""
    with open_repo(url, kw) as repo:
        st = repo.refresh()
        m, cert, wl = st.manifest, st.certificate, st.whitelist
        with repo.open_revision() as view:
            root = view.root_catalog
            data = {
                "fqrn": m.fqrn, "url": repo.source.describe(""),
                "revision": m.revision, "root_hash": str(m.root_catalog),
                "root_catalog_size": m.root_catalog_size, "ttl": root.ttl,
                "published": _iso(m.publish_timestamp),
                "root_catalog_modified": _iso(root.last_modified),
                "hash_algorithm": m.root_catalog.algorithm.config_name,
                "garbage_collectable": m.garbage_collectable,
                "certificate": str(m.certificate),
                "certificate_subject": cert.subject_cn,
                "certificate_fingerprint": cert.fingerprint(m.root_catalog.algorithm).fingerprint(),
                "whitelist_expires": wl.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "history": str(m.history) if m.history else None,
                "meta_info": str(m.meta_info) if m.meta_info else None,
                "tags": len(repo.tags()),
            }
    if as_json:
        emit_json(data)
        return
    labels = {
        "fqrn": "Repository", "url": "URL", "revision": "Revision", "root_hash": "Root catalog",
        "root_catalog_size": "Root catalog size", "ttl": "TTL (s)", "published": "Published",
        "root_catalog_modified": "Root catalog modified", "hash_algorithm": "Hash algorithm",
        "garbage_collectable": "Garbage collectable", "certificate": "Certificate object",
        "certificate_subject": "Certificate subject",
        "certificate_fingerprint": "Certificate fingerprint",
        "whitelist_expires": "Whitelist expires", "history": "History object",
        "meta_info": "Meta-info object", "tags": "Tags",
    }
    width = max(len(v) for v in labels.values())
    for key, label in labels.items():
        click.echo(f"{label:<{width}}  {data[key]}")


def _mode_string(mode: int) -> str:
    return _stat.filemode(mode)


@click.command(name="ls")
@click.argument("url")
@click.argument("path", default="/")
@click.option("-l", "long", is_flag=True, help="Long listing (mode, links, owner, size, time).")
@click.option("-a", "--all", "show_hidden", is_flag=True,
              help="Include names starting with '.' and entries hidden by the catalog.")
@repository_options
@revision_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ls_cmd(url: str, path: str, long: bool, show_hidden: bool, as_json: bool, **kw) -> None:
    """List a directory (or show one entry) of a revision."""
    sel = revision_selector(kw)
    with open_repo(url, kw) as repo, repo.open_revision(**sel) as view:
        st = view.lstat(path)
        if st.is_symlink and not long:
            st = view.stat(path)  # like ls: a link to a directory lists the directory...
        if st.is_dir:  # ...unless -l, which shows the link itself
            entries = [s for s in view.scandir(path, include_hidden=show_hidden)
                       if show_hidden or not s.name.startswith(".")]
        else:
            entries = [view.lstat(path)]
        if as_json:
            emit_json([_stat_json(s) for s in entries])
            return
        for s in entries:
            if not long:
                click.echo(s.name)
                continue
            when = _dt.datetime.fromtimestamp(s.st_mtime, _dt.UTC).strftime("%Y-%m-%d %H:%M")
            line = (f"{_mode_string(s.st_mode)} {s.st_nlink:>3} {s.st_uid:>5} {s.st_gid:>5} "
                    f"{s.st_size:>12} {when} {s.name}")
            if s.is_symlink:
                line += f" -> {(s.symlink_target or b'').decode('utf-8', 'surrogateescape')}"
            click.echo(line)


def _stat_json(s) -> dict:
    d = {"path": s.path, "name": s.name, "type": s.type, "mode": f"{s.permissions:o}",
         "size": s.st_size, "mtime": s.st_mtime, "nlink": s.st_nlink, "uid": s.st_uid,
         "gid": s.st_gid, "inode": s.st_ino}
    if s.is_symlink:
        d["target"] = (s.symlink_target or b"").decode("utf-8", "surrogateescape")
        d["raw_target"] = (s.raw_symlink or b"").decode("utf-8", "surrogateescape")
    if s.is_file:
        d["chunked"] = s.is_chunked
        if s.hash is not None:
            d["hash"] = str(s.hash)
        d["compression"] = s.compression.config_name
    if s.hardlink_group:
        d["hardlink_group"] = s.hardlink_group
    return d


@click.command()
@click.argument("url")
@click.argument("path")
@repository_options
@revision_options
def cat(url: str, path: str, **kw) -> None:
    """Write a file's content to standard output."""
    sel = revision_selector(kw)
    with open_repo(url, kw) as repo, repo.open_revision(**sel) as view, view.open(path) as f:
        out = sys.stdout.buffer
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            out.write(block)
        out.flush()


@click.command()
@click.argument("url")
@click.argument("path")
@click.argument("dest", type=click.Path())
@click.option("--raw-symlinks", is_flag=True,
              help="Keep variant symlinks unexpanded ($(VAR) as stored).")
@click.option("-p", "--preserve-permissions", "--preserve-setid", "preserve_setid", is_flag=True,
              help="Also recreate setuid, setgid and sticky bits (off: cleared, as tar does "
                   "for other users than root).")
@click.option("--devices", is_flag=True, help="Recreate device nodes (off: skipped, as rsync).")
@click.option("--specials", is_flag=True, help="Recreate FIFOs and sockets (off: skipped).")
@click.option("--xattrs-include", "xattr_include", multiple=True, metavar="PATTERN",
              help="Also write extended attributes matching PATTERN, e.g. 'security.*' or "
                   "'trusted.*' (repeatable; 'user.*' always).")
@click.option("--no-xattrs", is_flag=True, help="Write no extended attributes.")
@click.option("-j", "--jobs", type=int, default=4, show_default=True,
              help="Parallel downloads.")
@repository_options
@revision_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def get(url: str, path: str, dest: str, raw_symlinks: bool, preserve_setid: bool, devices: bool,
        specials: bool, xattr_include: tuple[str, ...], no_xattrs: bool, jobs: int,
        as_json: bool, **kw) -> None:
    """Export PATH (a file or a subtree) of a revision to the local DEST.

    Nothing below DEST is followed: files, symlinks and specials already there are replaced,
    directories merged into. A name in the repository that is not a plain file name is refused
    before anything is written.
    """
    import time

    from pycvmfs.client.export import ExportOptions, export_tree

    options = ExportOptions(raw_symlinks=raw_symlinks, xattrs=not no_xattrs,
                            xattr_include=("user.*", *xattr_include),
                            preserve_setid=preserve_setid, devices=devices, specials=specials)
    sel = revision_selector(kw)
    t0 = time.monotonic()
    with open_repo(url, kw) as repo, repo.open_revision(**sel) as view, \
            make_progress("exporting", unit="bytes") as progress:
        report = export_tree(view, path, dest, workers=jobs, progress=progress, options=options)
    seconds = time.monotonic() - t0
    for w in report.warnings:
        click.echo(f"pycvmfs: warning: {w}", err=True)
    summary = {"files": report.files, "directories": report.dirs, "symlinks": report.symlinks,
               "hardlinks": report.hardlinks, "special": report.special, "bytes": report.bytes,
               "seconds": round(seconds, 3), "warnings": report.warnings}
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"exported {report.files} files, {report.dirs} directories, "
                   f"{report.symlinks} symlinks, {report.hardlinks} hard links "
                   f"({report.bytes} bytes) in {seconds:.2f} s")


@click.command()
@click.argument("url")
@repository_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def tags(url: str, as_json: bool, **kw) -> None:
    """List the named tags of a repository, newest first."""
    with open_repo(url, kw) as repo:
        rows = repo.tags()
    if as_json:
        emit_json([{"name": t.name, "root_hash": str(t.root_hash), "revision": t.revision,
                    "timestamp": t.timestamp, "date": _iso(t.timestamp), "size": t.size,
                    "branch": t.branch, "description": t.description} for t in rows])
        return
    width = max([len(t.name) for t in rows] + [4])
    click.echo(f"{'NAME':<{width}}  {'REV':>5}  {'DATE':<20}  ROOT HASH{' ' * 32}  DESCRIPTION")
    for t in rows:
        click.echo(f"{t.name:<{width}}  {t.revision:>5}  {_iso(t.timestamp):<20}  "
                   f"{t.root_hash!s:<41}  {t.description}")


def _parse_rev(text: str) -> dict:
    """A revision argument: a number, ``tag:NAME`` / a tag name, or a root hash."""
    from pycvmfs.errors import FormatError
    from pycvmfs.format.hashes import ContentHash

    if text.isdigit():
        return {"revision": int(text)}
    if text.startswith("tag:"):
        return {"tag": text[4:]}
    try:
        return {"root_hash": ContentHash.parse(text)}
    except FormatError:
        return {"tag": text}


@click.command()
@click.argument("url")
@click.argument("rev_a")
@click.argument("rev_b")
@click.option("--path", default="/", show_default=True, help="Compare below this path only.")
@repository_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def diff(url: str, rev_a: str, rev_b: str, path: str, as_json: bool, **kw) -> None:
    """Show paths added (A), removed (D) and changed (M) from REV_A to REV_B.

    A revision is a number, a tag name (or tag:NAME) or a root catalog hash."""
    from pycvmfs.client.diff import diff_revisions

    with open_repo(url, kw) as repo, repo.open_revision(**_parse_rev(rev_a)) as a, \
            repo.open_revision(**_parse_rev(rev_b)) as b:
        changes = list(diff_revisions(a, b, path))
    if as_json:
        emit_json([c.to_dict() for c in changes])
        return
    letter = {"added": "A", "removed": "D", "changed": "M"}
    for c in changes:
        extra = f"  ({', '.join(c.fields)})" if c.fields else ""
        click.echo(f"{letter[c.kind]} {c.type:<7} {c.path}{extra}")


@click.command()
@click.argument("url")
@click.option("--all-tags", is_flag=True, help="Also check every tagged revision.")
@click.option("-j", "--jobs", type=int, default=4, show_default=True, help="Parallel downloads.")
@repository_options
@revision_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def verify(url: str, all_tags: bool, jobs: int, as_json: bool, **kw) -> None:
    """Download every object reachable from a revision once and check its hash."""
    from pycvmfs.client.verify import verify_repository

    sel = revision_selector(kw)
    with open_repo(url, kw) as repo, make_progress("verifying") as progress:
        report = verify_repository(repo, tags=all_tags, revisions=[sel] if sel else None,
                                   workers=jobs, progress=progress)
    if as_json:
        emit_json(report.to_dict())
    else:
        kinds = ", ".join(f"{n} {k}s" for k, n in sorted(report.checked.items()))
        rate = report.objects / report.seconds if report.seconds else 0.0
        click.echo(f"{report.fqrn}: checked {report.objects} objects ({kinds}), "
                   f"{report.stored_bytes} bytes, revisions {report.revisions}, "
                   f"in {report.seconds:.2f} s ({rate:.0f} objects/s)")
        for obj, msg in report.failures:
            click.echo(f"FAILED {obj}: {msg}")
        click.echo(f"{len(report.failures)} failed")
    if report.failures:
        sys.exit(1)


def register(group: click.Group) -> None:
    for cmd in (info, ls_cmd, cat, get, tags, diff, verify):
        group.add_command(cmd)


