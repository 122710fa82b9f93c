"""Put a built stack into an open repository transaction: the hashed package directories (each
its own nested catalog, never rewritten once published), the release or nightly index links,
the summary files and their JSON twins, the view with its setup scripts, and the CI results."""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Callable, Iterable
from pathlib import Path

from pycvmfs.errors import StackError
from pycvmfs.format.dirent import Flags
from pycvmfs.publish.rows import Meta
from pycvmfs.publish.transaction import repo_path
from pycvmfs.stacks.ctest import build_xml, test_xml
from pycvmfs.stacks.plan import PUBLISHED, PlannedPackage, StackPlan
from pycvmfs.stacks.results import RunResults, results_feed
from pycvmfs.stacks.setupscripts import render_setup_csh, render_setup_sh
from pycvmfs.stacks.summary import render_summary, summaries_for, summary_json
from pycvmfs.stacks.view import ViewInput, ViewPlan, plan_view

__all__ = ["RECORD_FILE", "StackWriter", "view_variables"]

#: the JSON build record inside every package prefix
RECORD_FILE = ".pycvmfs-build.json"


def _json_bytes(doc) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


class StackWriter:
    """Writes one stack × platform into ``txn``.

    ``local(p)`` returns the install tree of a planned package on this node (built here,
    unpacked from the binary cache or exported from the repository); ``view`` is the verified
    reader's view of the revision the transaction started from; ``mtime`` the time given to
    everything generated (the newest build's finish time: publishing the same stack twice
    changes nothing)."""

    def __init__(self, txn, plan: StackPlan, *, local: Callable[[PlannedPackage], Path],
                 view, mtime: int) -> None:
        self.txn = txn
        self.plan = plan
        self.local = local
        self.view = view
        self.mtime = int(mtime)
        self.layout = plan.layout
        self.added: list[str] = []
        self._records: dict[str, dict] = {}

    # -- helpers ------------------------------------------------------------------------------
    def _meta(self, perm: int = 0o755) -> Meta:
        s = self.txn.pub.settings
        return Meta(perm, self.mtime, s.owner_uid or 0, s.owner_gid or 0)

    def file(self, rel: str, data: bytes, mode: int = 0o644) -> None:
        self.txn.add_file(rel, data, mode=mode, mtime=self.mtime)

    def symlink(self, rel: str, target: str) -> None:
        self._mkdirs(posixpath.dirname(rel))
        self.txn.symlink(rel, target, mtime=self.mtime)

    def _mkdirs(self, rel: str) -> None:
        """Missing directories down to ``rel`` with the generated time (existing ones kept)."""
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if self.txn.lookup(repo_path(d)) is None:
                self.txn.mkdir(d, mtime=self.mtime)

    def exists(self, rel: str) -> bool:
        return self.txn.lookup(repo_path(rel)) is not None

    def record(self, p: PlannedPackage) -> dict:
        """The build record of ``p``: the published one when it is published (whichever node
        writes, the generated files come out the same), else its local tree's."""
        if p.name not in self._records:
            if p.state == PUBLISHED and p.record is not None:
                self._records[p.name] = p.record
            else:
                local = self.local(p)
                self._records[p.name] = json.loads((local / RECORD_FILE).read_bytes())
        return self._records[p.name]

    def remove_build(self, rel: str) -> None:
        """Delete a build and the ``<version>-<hash>`` and ``<dir>`` directories it leaves
        empty (up to ``releases/``)."""
        if not self.exists(rel):
            return
        self.txn.remove(rel)
        parent = posixpath.dirname(rel)
        while parent != self.layout.releases and parent.startswith(self.layout.releases + "/"):
            if self.txn.tree.listdir(repo_path(parent)):
                break
            self.txn.remove(parent)
            parent = posixpath.dirname(parent)

    def records(self) -> list[dict]:
        return [self.record(p) for p in self.plan.packages.values()]

    # -- package builds -----------------------------------------------------------------------
    def add_builds(self) -> list[str]:
        """Every package not yet published, each below its hashed prefix as a nested catalog;
        a published prefix is left exactly as it is."""
        for p in self.plan.packages.values():
            if p.state == PUBLISHED:
                continue
            if self.exists(p.rel):
                raise StackError(f"{p.name}: /{p.rel} exists but holds no build record of "
                                 f"{p.full[:12]}; a published build is never overwritten")
            local = self.local(p)
            rec = json.loads((local / RECORD_FILE).read_bytes())
            if rec.get("hash") != p.full:
                raise StackError(f"{p.name}: the install tree {local} holds build "
                                 f"{rec.get('hash', '?')[:12]}, not {p.full[:12]}")
            self._records[p.name] = rec
            self._mkdirs(posixpath.dirname(p.rel))
            self.txn.nested_catalog(p.rel, self._meta())
            self.txn.add_tree(local, p.rel)
            self.added.append(p.rel)
        return self.added

    # -- index links ---------------------------------------------------------------------------
    def release_links(self, release: str) -> None:
        for p in self.plan.packages.values():
            link, target = self.layout.release_link(release, p.spec.dest, p.spec.version,
                                                    p.short, self.plan.platform)
            self.symlink(link, target)

    def nightly_links(self, slot: str, day: str) -> None:
        for p in self.plan.packages.values():
            link, target = self.layout.nightly_link(slot, day, p.spec.dest, p.spec.version,
                                                    p.short, self.plan.platform)
            self.symlink(link, target)

    # -- summaries -----------------------------------------------------------------------------
    def summaries(self, where_rel: str, *, directory_base: str | None = None) -> None:
        """``LCG_externals_<platform>.txt`` / ``LCG_generators_<platform>.txt`` and JSON twins;
        a generators file is written only when the stack has generators (an externals file
        always, empty or not)."""
        records = self.records()
        label = self.plan.stack.version_label
        made = summaries_for(records, platform=self.plan.platform, version_label=label,
                             directory_base=directory_base)
        self._mkdirs(where_rel)
        for kind, summary in made.items():
            if kind != "externals" and not summary.entries:
                continue
            self.file(self.layout.summary_rel(where_rel, kind, self.plan.platform),
                       render_summary(summary).encode())
            self.file(self.layout.summary_rel(where_rel, kind, self.plan.platform, "json"),
                       _json_bytes(summary_json(summary, records)))

    # -- the view ------------------------------------------------------------------------------
    def view_plan(self, view_rel: str) -> ViewPlan:
        inputs = [ViewInput(name=p.name, version=p.spec.version, short=p.short,
                            install_dir=self.local(p), prefix_rel=p.rel)
                  for p in self.plan.packages.values()]
        return plan_view(inputs, view_rel=view_rel, settings=self.plan.stack.view,
                         mount_root=self.layout.mount_root)

    def write_view(self, view_rel: str, name: str) -> ViewPlan:
        """Make the view at ``view_rel`` (its own nested catalog) exactly the planned one:
        entries no longer planned are removed, unchanged ones are left as they are (so
        publishing the same stack again changes nothing)."""
        vp = self.view_plan(view_rel)
        homes = view_variables((p for p in self.plan.packages.values()
                                if p.name not in self.plan.stack.view.exclude), view_rel)
        row = self.txn.lookup(repo_path(view_rel))
        if row is not None and not row.flags & Flags.DIR:
            self.txn.remove(view_rel)
        self._mkdirs(posixpath.dirname(view_rel))
        self.txn.nested_catalog(view_rel, self._meta())
        dirs: set[str] = set()
        wanted: dict[str, object] = {}
        for e in vp.entries:
            wanted[e.path] = e
        dirs = {e.path for e in vp.entries if e.kind == "dir"}
        common = dict(view_rel=view_rel, mount_root=self.layout.mount_root, name=name,
                      platform=self.plan.platform, generated=_ctime(self.mtime), dirs=dirs,
                      pythonpath=self.plan.stack.view.pythonpath, homes=homes)
        generated = {
            "setup.sh": render_setup_sh(**common).encode(),
            "setup.csh": render_setup_csh(**common).encode(),
            "view.json": _json_bytes(vp.to_json(name=name, platform=self.plan.platform,
                                                repository=self.layout.fqrn)),
        }
        self._prune(view_rel, set(wanted) | set(generated) | {".cvmfscatalog"})
        for e in vp.entries:
            rel = f"{view_rel}/{e.path}"
            if e.kind == "dir":
                self._mkdirs(rel)
            elif e.kind == "symlink":
                old = self.txn.lookup(repo_path(rel))
                if old is not None and old.flags & Flags.DIR:
                    self.txn.remove(rel)
                self.txn.symlink(rel, e.target, mtime=self.mtime)
            else:
                self.file(rel, e.content or b"")
        for fname, data in generated.items():
            self.file(f"{view_rel}/{fname}", data)
        return vp

    def _prune(self, top: str, keep: set[str]) -> None:
        """Remove what is below ``top`` and not in ``keep`` (paths relative to ``top``)."""
        if self.txn.lookup(repo_path(top)) is None:
            return
        stack = [""]
        while stack:
            rel = stack.pop()
            here = f"{top}/{rel}" if rel else top
            for raw, row in self.txn.tree.listdir(repo_path(here)):
                name = raw.decode("utf-8", "surrogateescape")
                sub = f"{rel}/{name}" if rel else name
                if sub not in keep:
                    self.txn.remove(f"{top}/{sub}")
                elif row.flags & Flags.DIR:
                    stack.append(sub)

    # -- CI results ----------------------------------------------------------------------------
    def results(self, run: RunResults, rel: str) -> None:
        self._mkdirs(rel)
        self.file(f"{rel}/results.json", _json_bytes(results_feed(run)))
        self.file(f"{rel}/Build.xml", build_xml(run))
        self.file(f"{rel}/Test.xml", test_xml(run))


def view_variables(packages: Iterable[PlannedPackage], view_rel: str) -> dict[str, str]:
    """The variables the setup scripts of the view ``view_rel`` export for ``packages`` (the
    view's members): every package's ``<NAME>_HOME`` and its ``view_env`` hooks, each → its
    repository-relative path. Two packages claiming one name is a StackError naming both."""
    owner: dict[str, str] = {}
    out: dict[str, str] = {}
    members = list(packages)
    for p in members:
        var = p.spec.home_var
        if var in owner:
            raise StackError(f"view {view_rel}: packages {owner[var]} and {p.name} both get the "
                             f"generated variable {var}")
        owner[var] = p.name
        out[var] = p.rel
    generated = dict(owner)
    for p in members:
        for var, sub in p.spec.view_env:  # the package's hooks, as data
            if var in generated:
                raise StackError(f"view {view_rel}: view_env variable {var} of package "
                                 f"{p.name} is the generated <NAME>_HOME of package "
                                 f"{generated[var]}")
            if var in owner:
                raise StackError(f"view {view_rel}: packages {owner[var]} and {p.name} both "
                                 f"set the view_env variable {var}")
            owner[var] = p.name
            out[var] = f"{p.rel}/{sub}" if sub else p.rel
    return out


def _ctime(t: int) -> str:
    import time

    return time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(t))


def newest_finish(records: list[dict]) -> int:
    """The generated time of a stack: its newest build's finish time (UTC epoch)."""
    from datetime import datetime

    newest = 0
    for r in records:
        try:
            newest = max(newest, int(datetime.fromisoformat(
                str(r.get("finished", "")).replace("Z", "+00:00")).timestamp()))
        except ValueError:
            continue
    return newest or int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)
