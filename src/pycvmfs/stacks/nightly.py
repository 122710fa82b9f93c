"""Nightly slots: the Mon..Sun ring of day directories, completion markers, ``latest`` moved
only after a complete build, and retention of the builds only nightlies used.

A night's builds live in the shared store (``<top>/releases/<dir>/<version>-<hash>/<platform>``)
like a release's, so a nightly build identical to a release build *is* that build (the day's
link points at it). The builds a nightly introduced are listed in a ledger
(``<top>/nightlies/.pycvmfs-nightly-builds.json``) with the slot days that use them; when a day
is replaced seven days later, a build no day and no release uses any more is deleted.
Builds a release published are never in the ledger, so never deleted."""

from __future__ import annotations

import json
import posixpath
from datetime import UTC, datetime

from pycvmfs.format.dirent import Flags
from pycvmfs.publish.transaction import repo_path
from pycvmfs.stacks.layout import DAYS, StackLayout

__all__ = ["NightlyLedger", "clear_day", "day_platforms", "prune_platform_links", "today"]

LEDGER = ".pycvmfs-nightly-builds.json"


def today(now: datetime | None = None) -> str:
    """The day of the ring, fixed once per run, in UTC."""
    return DAYS[(now or datetime.now(UTC)).astimezone(UTC).weekday()]


class NightlyLedger:
    """``{package rel: sorted list of "slot/Day/platform" using it}`` for nightly-made builds."""

    def __init__(self, layout: StackLayout, builds: dict[str, list[str]] | None = None) -> None:
        self.layout = layout
        self.builds = {k: sorted(set(v)) for k, v in (builds or {}).items()}

    @property
    def rel(self) -> str:
        return f"{self.layout.top}/nightlies/{LEDGER}"

    @classmethod
    def load(cls, layout: StackLayout, view) -> NightlyLedger:
        rel = f"{layout.top}/nightlies/{LEDGER}"
        if view is None or not view.exists(rel):
            return cls(layout)
        doc = json.loads(view.read_bytes(rel))
        return cls(layout, doc.get("builds", {}))

    def dumps(self) -> bytes:
        return (json.dumps({"schema": "pycvmfs-nightly-builds/1", "builds": self.builds},
                           indent=1, sort_keys=True) + "\n").encode()

    def use(self, rel: str, ref: str) -> None:
        self.builds.setdefault(rel, [])
        if ref not in self.builds[rel]:
            self.builds[rel] = sorted([*self.builds[rel], ref])

    def owned(self, rel: str) -> bool:
        return rel in self.builds

    def release(self, ref: str) -> list[str]:
        """Drop ``ref`` everywhere; returns the builds nothing in the ledger uses any more."""
        orphans = []
        for rel, refs in list(self.builds.items()):
            if ref in refs:
                refs.remove(ref)
            if not refs:
                orphans.append(rel)
        return orphans

    def forget(self, rel: str) -> None:
        self.builds.pop(rel, None)


def release_references(layout: StackLayout, view) -> set[str]:
    """Every package prefix a published release's summary names (they are never deleted)."""
    refs: set[str] = set()
    root = layout.releases
    if view is None or not view.exists(root):
        return refs
    for release in view.listdir(root):
        rdir = f"{root}/{release}"
        if not release.startswith("LCG_") or not view.lstat(rdir).is_dir:
            continue
        for name in view.listdir(rdir):
            if name.startswith("LCG_") and name.endswith(".json"):
                doc = json.loads(view.read_bytes(f"{rdir}/{name}"))
                for pkg in doc.get("packages", []):
                    d = pkg.get("directory", "")
                    if d.startswith("./"):
                        link = posixpath.normpath(f"{rdir}/{d[2:]}")
                        try:
                            target = view.readlink(link)
                        except Exception:
                            continue
                        refs.add(posixpath.normpath(posixpath.join(
                            posixpath.dirname(link), target)))
    return refs


def clear_day(txn, layout: StackLayout, slot: str, day: str, platform: str) -> str:
    """Empty ``slot``/``day`` for ``platform`` (its links, markers, summaries, view, results);
    returns the ledger reference of that day and platform."""
    day_rel = layout.day_rel(slot, day)
    lookup = txn.lookup
    for rel in (layout.marker_rel(slot, day, platform),
                layout.marker_rel(slot, day, platform, unstable=True),
                layout.summary_rel(day_rel, "externals", platform),
                layout.summary_rel(day_rel, "externals", platform, "json"),
                layout.summary_rel(day_rel, "generators", platform),
                layout.summary_rel(day_rel, "generators", platform, "json"),
                layout.nightly_view_rel(slot, day, platform),
                layout.results_rel(slot, platform, day)):
        if lookup(repo_path(rel)) is not None:
            txn.remove(rel)
    _remove_platform_links(txn, day_rel, platform)
    return f"{slot}/{day}/{platform}"


def day_platforms(txn, layout: StackLayout, slot: str, day: str) -> set[str]:
    """The platforms ``slot``/``day`` holds (by their markers and summaries)."""
    day_rel = layout.day_rel(slot, day)
    if txn.lookup(repo_path(day_rel)) is None:
        return set()
    found = set()
    for raw, _row in txn.tree.listdir(repo_path(day_rel)):
        name = raw.decode("utf-8", "surrogateescape")
        for prefix in ("isDone-unstable-", "isDone-", "LCG_externals_", "LCG_generators_"):
            if name.startswith(prefix):
                found.add(name[len(prefix):].removesuffix(".txt").removesuffix(".json"))
                break
    return found


def _remove_platform_links(txn, day_rel: str, platform: str,
                           keep: frozenset[str] = frozenset()) -> None:
    """``<day>/<dir...>/<version>/<platform>`` entries (but those in ``keep``), and the
    directories left empty."""
    prune_platform_links(txn, day_rel, platform, keep)


def prune_platform_links(txn, where_rel: str, platform: str,
                         keep: frozenset[str] = frozenset()) -> None:
    """Remove the ``<dir...>/<version>/<platform>`` links below ``where_rel`` that are not in
    ``keep`` (repository-relative paths), and the directories that leaves empty."""
    tree = txn.tree

    def walk(rel: str) -> bool:  # True when rel is empty afterwards
        rows = tree.listdir(repo_path(rel))
        left = len(rows)
        for raw, row in rows:
            name = raw.decode("utf-8", "surrogateescape")
            child = f"{rel}/{name}"
            is_dir = bool(row.flags & Flags.DIR)
            gone = walk(child) if is_dir else (name == platform and child not in keep)
            if gone:
                txn.remove(child)
                left -= 1
        return left == 0

    if txn.lookup(repo_path(where_rel)) is not None:
        walk(where_rel)
