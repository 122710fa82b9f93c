"""What the portal knows about one repository revision, read through the verified reader.

:func:`read_snapshot` walks the stack layout (:mod:`pycvmfs.stacks.layout`) below ``top`` of a
:class:`~pycvmfs.client.view.RevisionView` and collects, as plain data:

- every release summary ``<top>/releases/LCG_*/LCG_{externals,generators}_<platform>.json``
  (the JSON twin; the ``.txt`` when a platform has no twin);
- every nightly day ``<top>/nightlies/<slot>/<Day>/``: its summaries and ``isDone`` markers;
- the ``latest`` links ``<top>/views/<slot>/latest/<platform>``;
- every results feed ``<top>/results/**/results.json``;
- the container images ``pycvmfs container`` published (``.metadata/images.json``).

Reads that fail verification (a bad object, catalog or signature) raise: the caller must not
index anything of that revision. A file that verifies but cannot be parsed (a summary of
another schema, a feed that is not JSON) is skipped and named in :attr:`Snapshot.warnings`.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from pycvmfs.containers import layout as container_layout
from pycvmfs.containers.state import PublishedState
from pycvmfs.errors import ContainerError, StackError
from pycvmfs.stacks.layout import DAYS
from pycvmfs.stacks.results import RunResults, results_from_feed
from pycvmfs.stacks.summary import parse_summary, split_dependency, summary_from_json

__all__ = ["NightlyDay", "Snapshot", "SummaryRecord", "read_snapshot"]

_SUMMARY = re.compile(r"^LCG_(?P<kind>externals|generators)_(?P<platform>.+)\.(?P<ext>json|txt)$")
_MARKER = re.compile(r"^isDone-(?P<unstable>unstable-)?(?P<platform>.+)$")


@dataclass
class SummaryRecord:
    """One summary file of a release or a nightly day, its packages as JSON-ready dicts."""

    kind: str                 # "release" | "nightly"
    stack: str                # release (LCG_900) or slot (dev4)
    day: str | None           # the nightly's day, None for a release
    platform: str
    category: str             # "externals" | "generators"
    path: str                 # where it was read, relative to the repository root
    version_label: str | None
    compiler: str | None
    packages: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class NightlyDay:
    """A nightly day × platform and its marker: ``done``, ``unstable`` or ``incomplete``."""

    slot: str
    day: str
    platform: str
    state: str


@dataclass
class Snapshot:
    """Everything indexed of one revision."""

    summaries: list[SummaryRecord] = field(default_factory=list)
    days: list[NightlyDay] = field(default_factory=list)
    latest: dict[tuple[str, str], str] = field(default_factory=dict)  # (slot, platform): day
    runs: list[tuple[str, RunResults]] = field(default_factory=list)  # (path, run)
    images: list[dict[str, Any]] = field(default_factory=list)  # container images
    warnings: list[str] = field(default_factory=list)


def _dirs(view, path: str) -> list[str]:
    if not view.exists(path) or not view.lstat(path).is_dir:
        return []
    return [s.name for s in view.scandir(path) if s.is_dir]


def _files(view, path: str) -> list[str]:
    return [s.name for s in view.scandir(path) if not s.is_dir]


def _prefix(fqrn: str, where: str, directory: str) -> str:
    """The absolute prefix a summary's DIRECTORY names (``./`` entries resolve in ``where``)."""
    if directory.startswith("/"):
        return directory
    return posixpath.normpath(posixpath.join(f"/cvmfs/{fqrn}/{where}", directory))


def _packages_from_json(doc: Any, fqrn: str, where: str) -> tuple[list[dict], str | None,
                                                                   str | None]:
    summary = summary_from_json(doc)  # validates the schema and every package
    compiler = f"{summary.compiler[0]} {summary.compiler[1]}" if summary.compiler else None
    out = []
    for p, e in zip(doc.get("packages") or (), summary.entries, strict=True):
        out.append({
            "name": e.name, "version": e.version, "hash": e.hash,
            "full_hash": p.get("full_hash") if isinstance(p.get("full_hash"), str) else None,
            "directory": e.directory, "prefix": _prefix(fqrn, where, e.directory),
            "depends": [dict(zip(("name", "hash"), split_dependency(d), strict=True))
                        for d in e.depends],
            "is_generator": bool(p.get("is_generator", e.is_generator)),
            "metadata": {str(k): str(v) for k, v in (p.get("metadata") or {}).items()},
        })
    return out, summary.version, compiler


def _packages_from_text(text: str, what: str, fqrn: str, where: str) -> tuple[list[dict],
                                                                              str | None,
                                                                              str | None]:
    summary = parse_summary(text, what=what)
    compiler = f"{summary.compiler[0]} {summary.compiler[1]}" if summary.compiler else None
    out = [{
        "name": e.name, "version": e.version, "hash": e.hash, "full_hash": None,
        "directory": e.directory, "prefix": _prefix(fqrn, where, e.directory),
        "depends": [dict(zip(("name", "hash"), split_dependency(d), strict=True))
                    for d in e.depends],
        "is_generator": e.is_generator, "metadata": {},
    } for e in summary.entries]
    return out, summary.version, compiler


def _read_summaries(view, fqrn: str, where: str, kind: str, stack: str, day: str | None,
                    names: list[str], snap: Snapshot) -> set[str]:
    """The summaries among ``names`` (files of ``where``); returns the platforms seen."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    for name in names:
        m = _SUMMARY.match(name)
        if m:
            found.setdefault((m["kind"], m["platform"]), {})[m["ext"]] = name
    for (category, platform), exts in sorted(found.items()):
        name = exts.get("json") or exts["txt"]
        path = f"{where}/{name}"
        data = view.read_bytes(path)  # verification errors propagate: nothing is indexed
        try:
            if name.endswith(".json"):
                packages, label, compiler = _packages_from_json(json.loads(data), fqrn, where)
            else:
                packages, label, compiler = _packages_from_text(
                    data.decode("utf-8", "replace"), f"/cvmfs/{fqrn}/{path}", fqrn, where)
        except (StackError, ValueError, TypeError, AttributeError) as e:
            snap.warnings.append(f"/cvmfs/{fqrn}/{path}: skipped, cannot be read ({e})")
            continue
        snap.summaries.append(SummaryRecord(kind, stack, day, platform, category, path, label,
                                            compiler, packages))
    return {p for (_c, p) in found}


def _read_images(view, fqrn: str, snap: Snapshot) -> None:
    """The container images of ``.metadata/images.json`` (when there is one) as dicts."""
    path = container_layout.images_index()
    if not view.exists(path):
        return
    what = f"/cvmfs/{fqrn}/{path}"
    data = view.read_bytes(path)  # verification errors propagate
    try:
        state = PublishedState.load(data, what=what)
    except ContainerError as e:
        snap.warnings.append(f"{what}: skipped, cannot be read ({e})")
        return
    for name, r in sorted(state.images.items()):
        snap.images.append({
            "name": name, "alias": r.alias, "manifest_digest": r.manifest_digest,
            "config_digest": r.config_digest, "platform": r.platform, "layers": list(r.layers),
            "size": r.size, "flat_size": r.flat_size,
            "flat": container_layout.flat_path(r.config_digest) if "flat" in r.outputs
            else None, "published": r.published, "source": r.source,
            "outputs": list(r.outputs)})


def read_snapshot(view, fqrn: str, top: str = "lcg") -> Snapshot:
    """Read the stacks below ``top`` of a verified revision view (see the module docstring)."""
    snap = Snapshot()
    releases = f"{top}/releases"
    for release in _dirs(view, releases):
        if release.startswith("LCG_"):
            where = f"{releases}/{release}"
            _read_summaries(view, fqrn, where, "release", release, None, _files(view, where),
                            snap)
    nightlies = f"{top}/nightlies"
    for slot in _dirs(view, nightlies):
        for day in _dirs(view, f"{nightlies}/{slot}"):
            if day not in DAYS:
                continue
            where = f"{nightlies}/{slot}/{day}"
            names = _files(view, where)
            platforms = _read_summaries(view, fqrn, where, "nightly", slot, day, names, snap)
            states: dict[str, str] = {p: "incomplete" for p in platforms}
            for name in names:
                m = _MARKER.match(name)
                if m:
                    states[m["platform"]] = "unstable" if m["unstable"] else "done"
            snap.days += [NightlyDay(slot, day, p, s) for p, s in sorted(states.items())]
    views = f"{top}/views"
    for slot in _dirs(view, views):
        latest = f"{views}/{slot}/latest"
        if not view.exists(latest):
            continue
        for s in view.scandir(latest):
            if s.is_symlink:
                target = view.readlink(f"{latest}/{s.name}", expand=False)
                day = target.split("/")[1] if target.startswith("../") else ""
                if day in DAYS:
                    snap.latest[(slot, s.name)] = day
    results = f"{top}/results"
    if view.exists(results) and view.lstat(results).is_dir:
        for dirpath, _dirs_here, files in view.walk(results):
            for s in files:
                if s.name != "results.json":
                    continue
                path = f"{dirpath}/{s.name}".lstrip("/")
                data = view.read_bytes(path)
                try:
                    snap.runs.append((path, results_from_feed(json.loads(data),
                                                              origin=f"/cvmfs/{fqrn}/{path}")))
                except (StackError, ValueError) as e:
                    snap.warnings.append(f"/cvmfs/{fqrn}/{path}: skipped, cannot be read ({e})")
    _read_images(view, fqrn, snap)
    return snap
