"""The stack verbs as a Python API (``pycvmfs stack ...`` is a thin layer over these): plan,
build into a binary cache, publish a release or a nightly as one transaction."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pycvmfs.errors import RepositoryBusyError, StackError
from pycvmfs.publish.transaction import repo_path
from pycvmfs.stacks.binarycache import BinaryCache, open_binary_cache
from pycvmfs.stacks.ctest import write_ctest
from pycvmfs.stacks.description import load_stack
from pycvmfs.stacks.layout import StackLayout
from pycvmfs.stacks.model import Stack
from pycvmfs.stacks.nightly import (
    NightlyLedger,
    clear_day,
    day_platforms,
    prune_platform_links,
    release_references,
    today,
)
from pycvmfs.stacks.plan import BUILD, CACHED, PUBLISHED, PlannedPackage, StackPlan, make_plan
from pycvmfs.stacks.results import RunResults, merged_results, results_feed
from pycvmfs.stacks.scheduler import StackBuilder, installed_dir
from pycvmfs.stacks.sources import SourceCache
from pycvmfs.stacks.writer import RECORD_FILE, StackWriter, newest_finish

__all__ = ["PublishReport", "StackBuildFailed", "StackSettings", "build_stack", "plan_stack",
           "publish_nightly", "publish_release"]


class StackBuildFailed(StackError):
    """Builds failed, nothing was published; ``report`` holds the plan and the results."""

    def __init__(self, message: str, report: PublishReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class StackSettings:
    """Where a node keeps its work and which binary cache it shares."""

    work_dir: Path
    cache: str | None = None          # directory or s3://bucket/prefix; default work/cache
    sources_dir: Path | None = None   # default work/sources
    parallel: int = 2
    jobs: int | None = None
    sandbox: str = "auto"
    run_tests: bool = True
    lock_wait: float = 0.0
    results_dir: Path | None = None   # where results.json / Build.xml / Test.xml also go
    progress: Callable[[str, str, int, int], None] | None = None

    def open_cache(self) -> BinaryCache:
        return open_binary_cache(self.cache or str(Path(self.work_dir) / "cache"))

    def source_cache(self) -> SourceCache:
        return SourceCache(Path(self.sources_dir or Path(self.work_dir) / "sources"))


@dataclass
class PublishReport:
    plan: dict
    results: dict | None = None
    revision: int | None = None
    published: bool = False
    added: list[str] = field(default_factory=list)
    conflicts: list[dict] = field(default_factory=list)
    day: str | None = None
    complete: bool = True
    publish: dict | None = None
    plan_text: str = ""

    def to_dict(self) -> dict:
        return {"plan": self.plan, "results": self.results, "revision": self.revision,
                "published": self.published, "added": self.added,
                "conflicts": self.conflicts, "day": self.day, "complete": self.complete,
                "publish": self.publish}


# -- reading what is published ----------------------------------------------------------------
def _published_lookups(view, layout: StackLayout):
    """``published(rel)`` and ``taken(dest, version, short)`` on a revision view."""

    seen: dict[str, dict | None] = {}

    def published(rel: str) -> dict | None:
        if view is None:
            return None
        if rel not in seen:
            path = f"{rel}/{RECORD_FILE}"
            seen[rel] = json.loads(view.read_bytes(path)) if view.exists(path) else None
        return seen[rel]

    def taken(dest: str, version: str, short: str) -> str | None:
        if view is None:
            return None
        d = f"{layout.releases}/{dest}/{version}-{short}"
        if not view.exists(d):
            return None
        for plat in view.listdir(d):
            rec = published(f"{d}/{plat}")
            if rec is not None:
                return rec.get("recipe_hash")
        return None

    return published, taken


@contextlib.contextmanager
def _head_view(pub, work_dir: Path):
    if pub is None:
        yield None
        return
    import hashlib

    where = hashlib.sha1(str(pub.config.storage).encode()).hexdigest()[:16]
    reader = pub.open_reader(os.path.join(work_dir, "reader-cache", where))
    view = reader.open_revision()
    try:
        yield view
    finally:
        view.close()
        reader.close()


def plan_stack(stack: Stack, fqrn: str, settings: StackSettings, *, pub=None, view=None,
               force: Iterable[str] = ()) -> StackPlan:
    """The plan of ``stack`` against the binary cache and (``pub`` or ``view``) the repository."""
    layout = StackLayout(fqrn, stack.prefix)
    cache = settings.open_cache()
    with (_head_view(pub, settings.work_dir) if view is None
          else contextlib.nullcontext(view)) as v:
        published, taken = _published_lookups(v, layout)
        return make_plan(stack, layout, cache=cache, published=published, taken=taken,
                         force=frozenset(force))


@contextlib.contextmanager
def work_lock(work_dir: Path):
    """One process at a time in a work directory (builds, sources and install trees are
    shared there); a second one waits."""
    import fcntl

    Path(work_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(work_dir) / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _revalidate(plan: StackPlan, view) -> None:
    """The plan against the revision the transaction starts from (it was made before the lock:
    another publish may have added a build, or a nightly's retention removed one)."""
    published, _ = _published_lookups(view, plan.layout)
    for p in plan.packages.values():
        rec = published(p.rel)
        if rec is not None:
            if rec.get("hash") != p.full:
                raise StackError(f"{p.name}: /{p.rel} was published meanwhile with build "
                                 f"{str(rec.get('hash', '?'))[:12]}, not {p.full[:12]}; "
                                 "nothing published")
            p.state = PUBLISHED
            p.record = rec
        elif p.state == PUBLISHED:  # removed meanwhile: published again from this node
            p.state = CACHED
            p.record = None


def _fqrn_for(stack: Stack, fqrn: str | None) -> str:
    fq = fqrn or stack.repository
    if not fq:
        raise StackError(f"{stack.origin or 'the stack'}: no repository given (--fqrn, or "
                         "'repository:' in the description): the install prefix "
                         "/cvmfs/<fqrn>/... is part of every build")
    return fq


def _save_results(run: RunResults, settings: StackSettings, day: str | None) -> Path:
    base = Path(settings.results_dir or Path(settings.work_dir) / "results")
    where = base / run.stack / (day or "") / run.platform if day else \
        base / run.stack / run.platform
    where.mkdir(parents=True, exist_ok=True)
    (where / "results.json").write_text(json.dumps(results_feed(run), indent=1,
                                                   sort_keys=True) + "\n")
    write_ctest(run, where)
    return where


def build_stack(stack_file: str | os.PathLike, settings: StackSettings, *,
                fqrn: str | None = None, platform: str | None = None,
                only: Iterable[str] | None = None, force: Iterable[str] = (),
                dry_run: bool = False, pub=None) -> tuple[StackPlan, RunResults | None]:
    """Build what the binary cache lacks (a CI build node: no repository needed)."""
    stack = load_stack(stack_file, platform=platform)
    plan = plan_stack(stack, _fqrn_for(stack, fqrn), settings, pub=pub, force=force)
    if dry_run:
        return plan, None
    with work_lock(settings.work_dir):
        run = _builder(plan, settings).run(only=only)
        _save_results(run, settings, None)
    return plan, run


def _builder(plan: StackPlan, settings: StackSettings, view=None) -> StackBuilder:
    b = StackBuilder(plan, cache=settings.open_cache(), work_dir=Path(settings.work_dir),
                     sources=settings.source_cache(), parallel=settings.parallel,
                     jobs=settings.jobs, run_tests=settings.run_tests,
                     sandbox=settings.sandbox, progress=settings.progress)
    return b


def _local_getter(builder: StackBuilder, view_holder: list):
    """Install trees on this node: built here, unpacked from the cache, else exported from
    the repository through the verified reader."""
    from pycvmfs.client.export import export_tree

    def local(p: PlannedPackage) -> Path:
        where = installed_dir(builder.work_dir, p.full)
        if where.is_dir():
            return where
        if builder.cache.has(p.full):
            return builder.ensure_local(p)
        view = view_holder[0] if view_holder else None
        if view is None or not view.exists(p.rel):
            raise StackError(f"{p.name} {p.spec.version}: no install tree on this node, in the "
                             f"binary cache or in the repository (/{p.rel})")
        tmp = where.with_name(where.name + ".exporting")
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        export_tree(view, "/" + p.rel, tmp)
        os.replace(tmp, where)
        return where

    return local


def _transaction(pub, settings: StackSettings, held: contextlib.ExitStack, tag, message):
    deadline = time.monotonic() + settings.lock_wait
    while True:
        txn = pub.transaction(tag=tag, message=message)
        try:
            return held.enter_context(txn)
        except RepositoryBusyError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def _failures(run: RunResults) -> list[str]:
    return [f"{p.name} {p.version}: {p.status}" + (f" ({p.error.splitlines()[0]})"
                                                    if p.error else "")
            for p in run.packages if p.status in ("failed", "skipped")]


def publish_release(pub, stack_file: str | os.PathLike, settings: StackSettings, *,
                    platform: str | None = None, tag: str | None = None,
                    no_build: bool = False, dry_run: bool = False,
                    force: Iterable[str] = (),
                    merge_results: str | os.PathLike | None = None) -> PublishReport:
    """Build whatever the binary cache lacks, then put the release × platform (packages,
    links, summaries, view, results) into ``pub`` as one transaction; any error leaves the
    repository unchanged."""
    stack = load_stack(stack_file, platform=platform)
    if stack.is_nightly:
        raise StackError(f"{stack.origin}: a slot ({stack.name}) is published with "
                         "'stack nightly', not 'stack publish'")
    plan = plan_stack(stack, pub.fqrn, settings, pub=pub, force=force)
    report = PublishReport(plan=plan.to_json(), plan_text=plan.render_text())
    if dry_run:
        return report
    with work_lock(settings.work_dir):
        return _publish_release(pub, plan, settings, report, tag=tag, no_build=no_build,
                                merge_results=merge_results)


def _publish_release(pub, plan: StackPlan, settings: StackSettings, report: PublishReport, *,
                     tag: str | None, no_build: bool,
                     merge_results: str | os.PathLike | None = None) -> PublishReport:
    stack = plan.stack
    builder = _builder(plan, settings)
    run = None
    todo = [p for p in plan.packages.values() if p.state == BUILD]
    if todo:
        if no_build:
            raise StackError("--no-build, but the binary cache lacks "
                             + ", ".join(f"{p.name} {p.spec.version}" for p in todo))
        run = builder.run()
        _save_results(run, settings, None)
        report.results = results_feed(run)
        bad = _failures(run)
        if bad:
            report.complete = False
            raise StackBuildFailed(f"{stack.name} on {plan.platform}: not published, builds "
                                   "failed: " + "; ".join(bad), report)
    if run is None and merge_results is not None:  # the build jobs' results, published too
        run = merged_results(Path(merge_results), stack.name, plan.platform, None,
                             list(plan.packages))
        if run is not None:
            report.results = results_feed(run)
    layout = plan.layout
    with contextlib.ExitStack() as held:
        txn = _transaction(pub, settings, held, tag, f"pycvmfs stack publish {stack.name}")
        view = held.enter_context(_head_view(pub, settings.work_dir))
        if view.revision != txn.head.revision:
            raise StackError("the repository changed while the transaction opened; retry")
        _revalidate(plan, view)
        writer = StackWriter(txn, plan, local=_local_getter(builder, [view]), view=view,
                             mtime=0)
        writer.mtime = newest_finish(writer.records())
        report.added = writer.add_builds()
        ledger = NightlyLedger.load(layout, view)
        for p in plan.packages.values():  # a release now owns these builds
            ledger.forget(p.rel)
        if ledger.builds != NightlyLedger.load(layout, view).builds:
            writer.file(ledger.rel, ledger.dumps())
        release_rel = layout.release_rel(stack.name)
        links = frozenset(layout.release_link(stack.name, p.spec.dest, p.spec.version, p.short,
                                              plan.platform)[0]
                          for p in plan.packages.values())
        prune_platform_links(txn, release_rel, plan.platform, links)  # packages dropped
        writer.release_links(stack.name)
        writer.summaries(release_rel)
        vp = writer.write_view(layout.view_rel(stack.name, plan.platform), stack.name) \
            if stack.view.enabled else None
        if vp is not None:
            report.conflicts = [c.__dict__ for c in vp.conflicts]
        if run is not None:
            writer.results(run, layout.results_rel(stack.name, plan.platform))
    report.publish = txn.summary.to_dict()
    report.revision = txn.summary.revision
    report.published = True
    if tag and report.revision is None:  # nothing changed: tag the head as it is
        head = pub.head()
        if not any(t.name == tag and t.root_hash == head.root_catalog for t in pub.tags()):
            pub.tag(tag, message=f"pycvmfs stack publish {stack.name}")
    return report


def publish_nightly(pub, stack_file: str | os.PathLike, settings: StackSettings, *,
                    slot: str | None = None, day: str | None = None,
                    platform: str | None = None, partial: bool = False,
                    dry_run: bool = False) -> PublishReport:
    """Tonight's build of ``slot`` into ``nightlies/<slot>/<Day>``: the day is replaced for
    this platform, ``isDone-<platform>`` (complete) or ``isDone-unstable-<platform>``
    (``partial``: published with failures) marks it, and ``views/<slot>/latest/<platform>``
    moves only after a complete build. A failed build without ``partial`` publishes nothing."""
    stack = load_stack(stack_file, platform=platform)
    if slot:
        stack.name, stack.kind = slot, "slot"
    if not stack.is_nightly:
        raise StackError(f"{stack.origin}: a nightly needs a slot (--slot, or 'slot:' in "
                         "the description)")
    day = day or today()
    layout = StackLayout(pub.fqrn, stack.prefix)
    layout.day_rel(stack.name, day)  # validates the slot and the day before any build
    plan = plan_stack(stack, pub.fqrn, settings, pub=pub)
    report = PublishReport(plan=plan.to_json(), day=day, plan_text=plan.render_text())
    if dry_run:
        return report
    with work_lock(settings.work_dir):
        return _publish_nightly(pub, plan, settings, report, day=day, partial=partial)


def _publish_nightly(pub, plan: StackPlan, settings: StackSettings, report: PublishReport, *,
                     day: str, partial: bool) -> PublishReport:
    stack, layout = plan.stack, plan.layout
    builder = _builder(plan, settings)
    run = builder.run()
    run.day = day
    _save_results(run, settings, day)
    report.results = results_feed(run)
    bad = {p.name for p in run.packages if p.status in ("failed", "skipped")}
    report.complete = not bad
    if bad and not partial:
        return report
    good = StackPlan(stack=plan.stack, layout=plan.layout, graph=plan.graph,
                     toolchain=plan.toolchain,
                     packages={n: p for n, p in plan.packages.items() if n not in bad})
    with contextlib.ExitStack() as held:
        txn = _transaction(pub, settings, held, None,
                           f"pycvmfs stack nightly {stack.name} {day}")
        view = held.enter_context(_head_view(pub, settings.work_dir))
        if view.revision != txn.head.revision:
            raise StackError("the repository changed while the transaction opened; retry")
        _revalidate(good, view)
        writer = StackWriter(txn, good, local=_local_getter(builder, [view]), view=view,
                             mtime=int(run.finished))
        ledger = NightlyLedger.load(layout, view)
        ref = clear_day(txn, layout, stack.name, day, good.platform)
        orphans = ledger.release(ref)
        existing = {p.rel for p in good.packages.values() if writer.exists(p.rel)}
        report.added = writer.add_builds()
        for p in good.packages.values():
            if p.rel not in existing or ledger.owned(p.rel):
                ledger.use(p.rel, ref)
        keep = release_references(layout, view) | {p.rel for p in good.packages.values()}
        for rel in orphans:
            if rel in keep:
                continue
            ledger.forget(rel)
            writer.remove_build(rel)
        writer.file(ledger.rel, ledger.dumps())
        writer.nightly_links(stack.name, day)
        day_rel = layout.day_rel(stack.name, day)
        writer.summaries(day_rel, directory_base=layout.abs(day_rel))
        writer.file(layout.marker_rel(stack.name, day, good.platform, unstable=bool(bad)), b"")
        link, target = layout.latest_link(stack.name, day, good.platform)
        if stack.view.enabled:
            vp = writer.write_view(layout.nightly_view_rel(stack.name, day, good.platform),
                                   stack.name)
            report.conflicts = [c.__dict__ for c in vp.conflicts]
        latest = txn.lookup(repo_path(link))
        if not bad and stack.view.enabled:
            if latest is not None:
                txn.remove(link)
            writer.symlink(link, target)
        elif latest is not None and latest.symlink == target.encode():
            txn.remove(link)  # it pointed at this day, which is no longer complete
        writer.results(run, layout.results_rel(stack.name, good.platform, day))
    report.publish = txn.summary.to_dict()
    report.revision = txn.summary.revision
    report.published = True
    return report


def remove_nightly(pub, slot: str, settings: StackSettings, *, day: str | None = None,
                   platform: str | None = None, top: str = "lcg") -> dict:
    """Take a slot's days out (all of them, or ``day``; every platform, or ``platform``) in one
    transaction: links, markers, summaries, views, results and ``latest``; the builds only
    those days used are deleted (never one a release or another day uses)."""
    from pycvmfs.stacks.layout import DAYS

    layout = StackLayout(pub.fqrn, top)
    layout.nightly_rel(slot)
    days = [day] if day else list(DAYS)
    for d in days:
        layout.day_rel(slot, d)
    removed: list[str] = []
    deleted: list[str] = []
    with contextlib.ExitStack() as held:
        txn = _transaction(pub, settings, held, None, f"pycvmfs stack nightly-rm {slot}")
        view = held.enter_context(_head_view(pub, settings.work_dir))
        ledger = NightlyLedger.load(layout, view)
        orphans: set[str] = set()
        for d in days:
            plats = {platform} if platform else day_platforms(txn, layout, slot, d)
            for plat in sorted(plats):
                ref = clear_day(txn, layout, slot, d, plat)
                orphans.update(ledger.release(ref))
                removed.append(ref)
                link, target = layout.latest_link(slot, d, plat)
                row = txn.lookup(repo_path(link))
                if row is not None and row.symlink == target.encode():
                    txn.remove(link)
            for rel in (layout.day_rel(slot, d), f"{layout.top}/views/{slot}/{d}"):
                row = txn.lookup(repo_path(rel))
                if row is not None and not txn.tree.listdir(repo_path(rel)):
                    txn.remove(rel)
        keep = release_references(layout, view)
        writer = StackWriter(txn, StackPlan(stack=None, layout=layout, graph=None,
                                            toolchain=None), local=None, view=view,
                             mtime=int(time.time()))
        for rel in sorted(orphans - keep):
            ledger.forget(rel)
            writer.remove_build(rel)
            deleted.append(rel)
        for rel in (f"{layout.top}/views/{slot}/latest", f"{layout.top}/views/{slot}",
                    layout.nightly_rel(slot)):
            row = txn.lookup(repo_path(rel))
            if row is not None and not txn.tree.listdir(repo_path(rel)):
                txn.remove(rel)
        if txn.lookup(repo_path(ledger.rel)) is not None or ledger.builds:
            writer.file(ledger.rel, ledger.dumps())
    return {"slot": slot, "removed": removed, "deleted_builds": deleted,
            "revision": txn.summary.revision}


__all__ += ["CACHED", "PUBLISHED", "remove_nightly"]
