"""Compare two stacks through their summaries (release vs release, platform vs platform, nightly
day vs day): packages added, removed, at another version, or rebuilt at the same version (same
version, another hash: a dependency or the recipe changed).

Packages are matched by name. A name listed twice in a summary (the historic multi-version
generators: two ``pythia8`` lines) is matched by (name, version) instead, and when even that is
ambiguous, by hash; what stays unmatched is added or removed. The DIRECTORY field is not
compared (a release lists ``./`` paths, a nightly absolute ones).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from pycvmfs.stacks.summary import Summary, SummaryEntry

__all__ = ["StackDiff", "diff_summaries"]


def _entry_json(e: SummaryEntry) -> dict[str, Any]:
    return {"name": e.name, "version": e.version, "hash": e.hash}


@dataclass
class StackDiff:
    """What changed from stack ``a`` to stack ``b`` (each list sorted by name, version)."""

    a: str
    b: str
    added: list[SummaryEntry] = field(default_factory=list)
    removed: list[SummaryEntry] = field(default_factory=list)
    version_changed: list[tuple[SummaryEntry, SummaryEntry]] = field(default_factory=list)
    rebuilt: list[tuple[SummaryEntry, SummaryEntry]] = field(default_factory=list)
    unchanged: int = 0

    def is_empty(self) -> bool:
        """No package added, removed, changed or rebuilt."""
        return not (self.added or self.removed or self.version_changed or self.rebuilt)

    def to_json(self) -> dict[str, Any]:
        def pair(old: SummaryEntry, new: SummaryEntry) -> dict[str, Any]:
            return {"name": new.name, "from": {"version": old.version, "hash": old.hash},
                    "to": {"version": new.version, "hash": new.hash}}

        return {
            "a": self.a, "b": self.b,
            "added": [_entry_json(e) for e in self.added],
            "removed": [_entry_json(e) for e in self.removed],
            "version_changed": [pair(o, n) for o, n in self.version_changed],
            "rebuilt": [pair(o, n) for o, n in self.rebuilt],
            "unchanged": self.unchanged,
        }

    def render_text(self) -> str:
        """A short human report, one package a line."""
        lines = [f"{self.a} -> {self.b}: {len(self.added)} added, {len(self.removed)} removed, "
                 f"{len(self.version_changed)} version changed, {len(self.rebuilt)} rebuilt, "
                 f"{self.unchanged} unchanged"]
        if self.added:
            lines.append("added:")
            lines += [f"  + {e.name} {e.version} ({e.hash})" for e in self.added]
        if self.removed:
            lines.append("removed:")
            lines += [f"  - {e.name} {e.version} ({e.hash})" for e in self.removed]
        if self.version_changed:
            lines.append("version changed:")
            lines += [f"  ~ {n.name} {o.version} -> {n.version} ({o.hash} -> {n.hash})"
                      for o, n in self.version_changed]
        if self.rebuilt:
            lines.append("rebuilt (same version, new hash):")
            lines += [f"  * {n.name} {n.version} ({o.hash} -> {n.hash})"
                      for o, n in self.rebuilt]
        return "\n".join(lines) + "\n"


def _by_name(s: Summary) -> dict[str, list[SummaryEntry]]:
    groups: dict[str, list[SummaryEntry]] = defaultdict(list)
    for e in s.entries:
        groups[e.name].append(e)
    return groups


def _pair_up(old: list[SummaryEntry], new: list[SummaryEntry], diff: StackDiff) -> None:
    """Match the entries of one package name on both sides and record the outcome."""
    if len(old) == 1 and len(new) == 1:
        o, n = old[0], new[0]
        if o.version != n.version:
            diff.version_changed.append((o, n))
        elif o.hash != n.hash:
            diff.rebuilt.append((o, n))
        else:
            diff.unchanged += 1
        return
    old_v: dict[str, list[SummaryEntry]] = defaultdict(list)
    new_v: dict[str, list[SummaryEntry]] = defaultdict(list)
    for e in old:
        old_v[e.version].append(e)
    for e in new:
        new_v[e.version].append(e)
    for version in sorted(old_v.keys() | new_v.keys()):
        o_list, n_list = old_v.get(version, []), new_v.get(version, [])
        if len(o_list) == 1 and len(n_list) == 1:
            _pair_up(o_list, n_list, diff)
            continue
        new_hashes = {e.hash for e in n_list}
        old_hashes = {e.hash for e in o_list}
        diff.unchanged += len(old_hashes & new_hashes)
        diff.removed += [e for e in o_list if e.hash not in new_hashes]
        diff.added += [e for e in n_list if e.hash not in old_hashes]


def diff_summaries(a: Summary, b: Summary, *, a_label: str, b_label: str) -> StackDiff:
    """What changed from summary ``a`` to summary ``b`` (see the module docstring)."""
    diff = StackDiff(a=a_label, b=b_label)
    old, new = _by_name(a), _by_name(b)
    for name in sorted(old.keys() | new.keys()):
        _pair_up(old.get(name, []), new.get(name, []), diff)
    diff.added.sort(key=_sort_key)
    diff.removed.sort(key=_sort_key)
    diff.version_changed.sort(key=lambda p: _sort_key(p[1]))
    diff.rebuilt.sort(key=lambda p: _sort_key(p[1]))
    return diff


def _sort_key(e: SummaryEntry) -> tuple[str, str, str]:
    return (e.name, e.version, e.hash)
