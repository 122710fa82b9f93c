"""Comparing two revisions: added, removed and changed paths, skipping identical catalogs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pycvmfs.client.stat import Stat
from pycvmfs.client.view import RevisionView, normalize_path

__all__ = ["Change", "diff_revisions"]


@dataclass(frozen=True)
class Change:
    """``kind`` is ``added``, ``removed`` or ``changed``; ``fields`` says what changed."""

    kind: str
    path: str
    type: str
    fields: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = {"change": self.kind, "path": self.path, "type": self.type}
        if self.fields:
            d["fields"] = list(self.fields)
        return d


def _content(view: RevisionView, s: Stat) -> object:
    if s.is_chunked:
        return tuple(str(c.hash) for c in view.chunks(s.path))
    return str(s.hash) if s.hash else None


def _changed_fields(a: RevisionView, sa: Stat, b: RevisionView, sb: Stat) -> tuple[str, ...]:
    if sa.type != sb.type:
        return ("type",)
    out = []
    ea, eb = sa.entry, sb.entry
    if ea.mode != eb.mode:
        out.append("mode")
    if sa.is_file and (ea.size != eb.size or _content(a, sa) != _content(b, sb)):
        out.append("content")
    if sa.is_symlink and ea.symlink != eb.symlink:
        out.append("target")
    if not sa.is_dir and ea.mtime != eb.mtime:
        out.append("mtime")
    if (ea.uid, ea.gid) != (eb.uid, eb.gid):
        out.append("owner")
    if ea.xattr_blob != eb.xattr_blob:
        out.append("xattrs")
    if sa.is_special and ea.size != eb.size:
        out.append("device")
    return tuple(out)


def _subtree(view: RevisionView, s: Stat, kind: str) -> Iterator[Change]:
    yield Change(kind, s.path, s.type)
    if s.is_dir:
        for _dirpath, dirs, files in view.walk(s.path):
            for x in sorted(dirs + files, key=lambda t: t.name):
                yield Change(kind, x.path, x.type)


def diff_revisions(a: RevisionView, b: RevisionView, path: str = "/") -> Iterator[Change]:
    """Changes from ``a`` to ``b`` below ``path``, in path order. Subtrees whose nested catalog
    has the same hash in both revisions are skipped without being loaded."""
    sa, sb = _maybe_lstat(a, path), _maybe_lstat(b, path)
    if sa is None and sb is None:
        a.lstat(path)  # raises: the path exists in neither revision
    if sa is not None and sb is not None and sa.is_dir and sb.is_dir:
        yield from _diff_dir(a, b, sa.path)
    else:
        yield from _diff_entry(a, sa, b, sb)


def _maybe_lstat(view: RevisionView, path: str) -> Stat | None:
    from pycvmfs.errors import NoSuchPathError, NotADirectoryPathError

    try:
        return view.lstat(path)
    except (NoSuchPathError, NotADirectoryPathError):
        return None


def _diff_entry(a: RevisionView, sa: Stat | None, b: RevisionView,
                sb: Stat | None) -> Iterator[Change]:
    """One name in both revisions (either side may be missing), then below it."""
    if sb is None:
        yield from _subtree(a, sa, "removed")
        return
    if sa is None:
        yield from _subtree(b, sb, "added")
        return
    fields = _changed_fields(a, sa, b, sb)
    if "type" in fields:
        yield from _subtree(a, sa, "removed")
        yield from _subtree(b, sb, "added")
        return
    if fields:
        yield Change("changed", sa.path, sa.type, fields)
    if sa.is_dir:
        yield from _diff_dir(a, b, sa.path)


def _diff_dir(a: RevisionView, b: RevisionView, path: str) -> Iterator[Change]:
    ha, hb = a.nested_hash(normalize_path(path)), b.nested_hash(normalize_path(path))
    if ha is not None and ha == hb:
        return
    la = {s.name: s for s in a.scandir(path, include_hidden=True)}
    lb = {s.name: s for s in b.scandir(path, include_hidden=True)}
    for name in sorted(la.keys() | lb.keys()):
        yield from _diff_entry(a, la.get(name), b, lb.get(name))
