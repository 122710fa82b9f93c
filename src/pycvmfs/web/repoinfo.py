"""What the web portal shows about one repository: revisions, sizes, diffs and entries.

Every figure here is read through the verified reader (:class:`~pycvmfs.client.repository.
Repository`): the history database and each root catalog are checked against the hashes the
signed manifest (and the history) name before they are read. The functions answer plain,
JSON-ready dictionaries (ISO 8601 UTC dates ending in ``Z``, ints, strings).

Revisions are selected with a *reference*: ``None`` is the current revision, an ``int`` (or a
string of digits) a revision number, any other string a tag name.

Tree figures (``files``, ``directories``, ``symlinks``, ``bytes``...) come from the statistics
counters of a revision's root catalog (format doc §4.14): the root catalog's ``self_*`` plus
``subtree_*`` counters are the totals of the whole tree. ``directories`` counts the directories
below the root (the root itself is not counted, nor is a nested catalog's mount point counted
twice), so it matches ``find -mindepth 1 -type d`` on a copy of the tree. Catalogs older than
schema 2.5 have no counters: their figures are ``None``.
"""

from __future__ import annotations

import datetime as _dt
import os
from itertools import islice

from pycvmfs.client.diff import diff_revisions
from pycvmfs.client.repository import Repository
from pycvmfs.client.stat import Stat
from pycvmfs.client.view import RevisionView, normalize_path
from pycvmfs.format.catalog import Catalog
from pycvmfs.format.hashes import ContentHash
from pycvmfs.format.history import TRUNK, TRUNK_PREVIOUS, Tag, is_auto_tag_name

__all__ = ["CHILDREN_LIMIT", "DIFF_LIMIT", "Ref", "entry_details", "iso_date", "open_ref",
           "repository_summary", "revision_diff", "revisions", "size_history", "tree_counters"]

#: a revision reference: None (current), a revision number, or a tag name
Ref = int | str | None

#: changes a diff lists at most by default (then ``truncated`` is true)
DIFF_LIMIT = 1000
#: children a directory's details list at most by default (then ``truncated`` is true)
CHILDREN_LIMIT = 10000

_UNDO_TAGS = (TRUNK, TRUNK_PREVIOUS)


def iso_date(timestamp: int | float | None) -> str | None:
    """``2024-11-05T12:00:00Z`` for a UNIX time (None for None)."""
    if timestamp is None:
        return None
    d = _dt.datetime.fromtimestamp(timestamp, _dt.UTC)
    return d.replace(microsecond=0).isoformat().replace("+00:00", "Z")


# -- statistics counters -------------------------------------------------------------------

def tree_counters(catalog: Catalog) -> dict[str, int | None]:
    """Totals of the tree below a catalog from its statistics counters (``self + subtree``):
    ``files``, ``directories`` (below the catalog's root, mount points counted once),
    ``symlinks``, ``special``, ``bytes`` (file size sum), ``chunked_files``, ``file_chunks``,
    ``external_files``, ``nested_catalogs``. All None for a catalog without counters."""
    names = ("files", "directories", "symlinks", "special", "bytes", "chunked_files",
             "file_chunks", "external_files", "nested_catalogs")
    if catalog.schema < 2.5 - 1e-9:
        return dict.fromkeys(names, None)
    s = catalog.statistics()

    def total(field: str) -> int:
        return s[f"self_{field}"] + s[f"subtree_{field}"]

    nested = total("nested")
    values = (total("regular"), total("dir") - nested - 1, total("symlink"), total("special"),
              total("file_size"), total("chunked"), total("chunks"), total("external"), nested)
    return dict(zip(names, values, strict=True))


def _root_figures(repo: Repository, h: ContentHash) -> dict:
    """Revision, date and tree totals of the root catalog ``h`` (verified by its hash)."""
    with repo.load_catalog(h) as cat:
        return {"revision": cat.revision, "date": iso_date(cat.last_modified or None),
                "timestamp": cat.last_modified, **tree_counters(cat)}


# -- revisions -----------------------------------------------------------------------------

def _tag_kind(name: str) -> str:
    if name in _UNDO_TAGS:
        return "undo"
    return "auto" if is_auto_tag_name(name) else "named"


def _tag_dict(t: Tag) -> dict:
    return {"name": t.name, "kind": _tag_kind(t.name), "date": iso_date(t.timestamp or None),
            "timestamp": t.timestamp, "description": t.description, "branch": t.branch}


def revisions(repo: Repository, *, limit: int | None = None) -> list[dict]:
    """Every revision the history knows (one row per root catalog its tags name, plus the
    current revision), newest first; ``limit``: the newest ``limit`` only.

    Each row: ``revision``, ``root_hash``, ``date``/``timestamp`` (when it was published, from
    its root catalog), ``tags`` (name, kind ``undo``/``auto``/``named``, date, description,
    branch), ``named_tags``, ``trunk`` (the current head of the default branch), ``head`` (what
    the manifest serves), ``branch``, ``catalog_size`` (bytes, when the history records it) and
    the tree totals of :func:`tree_counters`."""
    m = repo.manifest
    groups: dict[ContentHash, list[Tag]] = {}
    for t in repo.tags():
        groups.setdefault(t.root_hash, []).append(t)
    order = [(max(t.revision for t in tags), max(t.timestamp for t in tags), h)
             for h, tags in groups.items()]
    if m.root_catalog not in groups:
        order.append((m.revision, m.publish_timestamp or 0, m.root_catalog))
    order.sort(key=lambda x: (x[0], x[1], str(x[2])), reverse=True)
    rows = []
    for _rev, _ts, h in order if limit is None else order[:max(limit, 0)]:
        tags = sorted(groups.get(h, []), key=lambda t: (_tag_kind(t.name) != "named", t.name))
        if tags:
            repo.resolve(tag=tags[0].name)  # the size the history records caps the download
        row = {"root_hash": str(h), **_root_figures(repo, h),
               "tags": [_tag_dict(t) for t in tags],
               "named_tags": [t.name for t in tags if _tag_kind(t.name) == "named"],
               "trunk": any(t.name == TRUNK for t in tags),
               "head": h == m.root_catalog,
               "branch": tags[0].branch if tags else "",
               "catalog_size": max((t.size for t in tags), default=0) or
               (m.root_catalog_size if h == m.root_catalog else None)}
        rows.append(row)
    return rows


def size_history(repo: Repository) -> list[dict]:
    """``revision``, ``date``, ``bytes``, ``files`` of each revision of the default branch,
    oldest first (the points of a size plot); one point per revision number."""
    seen: set[int] = set()
    points = []
    for row in reversed(revisions(repo)):
        if row["branch"] or row["revision"] in seen:
            continue
        seen.add(row["revision"])
        points.append({k: row[k] for k in ("revision", "date", "bytes", "files")})
    return points


def repository_summary(repo: Repository) -> dict:
    """The current revision at a glance (as of the reader's last
    :meth:`~pycvmfs.client.repository.Repository.refresh`): ``fqrn``, ``revision``,
    ``root_hash``, ``published`` (ISO date), ``published_timestamp`` and the tree totals; one
    of the ``repositories_info`` :func:`pycvmfs.web.replicas.prometheus_metrics` takes."""
    m = repo.manifest
    with repo.load_catalog(m.root_catalog) as cat:
        counters = tree_counters(cat)
    return {"fqrn": repo.fqrn, "revision": m.revision, "root_hash": str(m.root_catalog),
            "published": iso_date(m.publish_timestamp or None),
            "published_timestamp": m.publish_timestamp or None, **counters}


# -- one revision --------------------------------------------------------------------------

def open_ref(repo: Repository, ref: Ref) -> RevisionView:
    """The verified view of the revision ``ref`` names (see the module doc)."""
    if ref is None:
        return repo.open_revision()
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        return repo.open_revision(revision=int(ref))
    return repo.open_revision(tag=ref)


def _describe_view(view: RevisionView) -> dict:
    return {"revision": view.revision, "root_hash": str(view.root_hash)}


def revision_diff(repo: Repository, a: Ref, b: Ref, *, path: str = "/",
                  limit: int = DIFF_LIMIT) -> dict:
    """What changed from revision ``a`` to revision ``b`` below ``path``: ``added``,
    ``removed`` (each ``{path, type}``) and ``changed`` (``{path, type, fields}``, fields among
    type, mode, content, target, mtime, owner, xattrs, device), in path order; at most
    ``limit`` changes in all, ``truncated`` says whether there were more. Subtrees whose
    nested catalog did not change are not read (:func:`pycvmfs.client.diff.diff_revisions`)."""
    out: dict = {"added": [], "removed": [], "changed": []}
    with open_ref(repo, a) as va, open_ref(repo, b) as vb:
        changes = list(islice(diff_revisions(va, vb, path), max(limit, 0) + 1))
        result = {"a": _describe_view(va), "b": _describe_view(vb), "path": path}
    truncated = len(changes) > limit
    for c in changes[:limit]:
        item = {"path": c.path, "type": c.type}
        if c.kind == "changed":
            item["fields"] = list(c.fields)
        out[c.kind].append(item)
    return {**result, **out, "truncated": truncated, "limit": limit}


def _entry_dict(s: Stat) -> dict:
    e = s.entry
    return {"path": s.path, "name": s.name if s.path != "/" else "", "type": s.type,
            "size": s.st_size, "mode": s.permissions, "mode_octal": f"{s.permissions:04o}",
            "mtime": iso_date(e.mtime), "mtime_timestamp": e.mtime,
            "uid": e.uid, "gid": e.gid}


def entry_details(repo: Repository, path: str, revision: Ref = None, *,
                  max_children: int = CHILDREN_LIMIT) -> dict:
    """One path of a revision (a final symbolic link is not followed): its ``type``, ``size``,
    ``mode``, ``mtime``, owner and, by type,

    * file: ``hash`` (content hash, ``None`` for an empty file), ``compression``
      (``zlib``/``none``), ``chunked``, ``chunks`` (``offset``, ``size``, ``hash`` each),
      ``external``, ``links`` (hard link count), ``xattrs`` (names);
    * directory: ``children`` (``name``, ``type``, ``size``, ``mode``, ``mtime``; the first
      ``max_children``, ``truncated`` if there are more), ``nested_catalog`` (the hash of the
      catalog mounted there: the root catalog for ``/``, None if none is);
    * symbolic link: ``target`` as stored (variant symlinks unexpanded).

    A missing path raises :class:`~pycvmfs.errors.NoSuchPathError` naming it."""
    with open_ref(repo, revision) as view:
        s = view.lstat(path)
        e = s.entry
        out = {**_describe_view(view), **_entry_dict(s)}
        if s.is_file:
            chunks = view.chunks(s.path) if s.is_chunked else []
            out.update(hash=str(e.hash) if e.hash is not None else None,
                       compression=e.compression.config_name, chunked=s.is_chunked,
                       chunks=[{"offset": c.offset, "size": c.size, "hash": str(c.hash)}
                               for c in chunks],
                       external=e.is_external, links=e.linkcount,
                       xattrs=sorted(view.xattrs(s.path, follow_symlinks=False)))
        elif s.is_dir:
            children = view.scandir(s.path)
            out.update(children=[_entry_dict(c) for c in children[:max_children]],
                       truncated=len(children) > max_children,
                       nested_catalog=_nested_catalog(view, s.path))
        elif s.is_symlink:
            out["target"] = os.fsdecode(e.symlink)
        return out


def _nested_catalog(view: RevisionView, path: str) -> str | None:
    h = view.nested_hash(normalize_path(path))
    return str(h) if h is not None else None
