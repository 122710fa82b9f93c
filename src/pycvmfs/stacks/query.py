"""Find the package list of a release, a nightly day or a stack description, for ``stack show``,
``stack diff`` and ``stack export spack``.

A *spec* is one of:

- a summary file: ``LCG_externals_<platform>.txt`` (with its ``LCG_generators`` sibling when
  there is one) or a JSON twin ``LCG_*_<platform>.json``;
- a published release or nightly day: ``FQRN:LCG_900/<platform>`` or
  ``FQRN:<slot>/<Day>/<platform>`` (``<slot>/latest/<platform>`` follows the latest link), read
  through the verified reader of the repository's own storage;
- a stack description (``.yaml``/``.yml``/``.toml``): its plan, hashed as it would be built.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from pycvmfs.errors import StackError
from pycvmfs.stacks.layout import DAYS, StackLayout
from pycvmfs.stacks.summary import Summary, SummaryEntry, parse_summary, summary_from_json

__all__ = ["Listing", "is_repository_spec", "listing_from_plan", "read_listing"]

_SPEC = re.compile(r"^(?P<fqrn>[A-Za-z0-9][A-Za-z0-9_.-]*\.[A-Za-z0-9_.-]+):(?P<what>.+)$")


@dataclass
class Listing:
    """What a spec names: its label, summary (externals + generators together) and, for a
    published one, the absolute directory relative ``./`` entries resolve against."""

    label: str
    summary: Summary
    base: str | None = None

    def prefix_of(self, entry: SummaryEntry) -> str:
        d = entry.directory
        if d.startswith("/") or self.base is None:
            return d
        return posixpath.normpath(posixpath.join(self.base, d))


def is_repository_spec(text: str) -> bool:
    return bool(_SPEC.match(text)) and not os.path.exists(text)


def _merge(parts: list[Summary]) -> Summary:
    first = parts[0]
    entries = [e for s in parts for e in s.entries]
    return Summary(platform=first.platform, version=first.version, compiler=first.compiler,
                   entries=entries)


def _read_files(path: Path) -> Summary:
    name = path.name
    m = re.match(r"^LCG_(externals|generators|contrib)_(?P<plat>.+)\.(txt|json)$", name)
    paths = [path]
    if m:
        ext = path.suffix
        for kind in ("externals", "generators"):
            sib = path.with_name(f"LCG_{kind}_{m['plat']}{ext}")
            if sib != path and sib.exists():
                paths.append(sib)
    parts = []
    for p in paths:
        try:
            data = p.read_bytes()
        except OSError as e:
            raise StackError(f"{p}: cannot read ({e.strerror})") from None
        if p.suffix == ".json":
            parts.append(summary_from_json(json.loads(data)))
        else:
            parts.append(parse_summary(data.decode("utf-8", "replace"), what=str(p)))
    return _merge(parts)


def _read_view_summaries(view, where: str, platform: str, what: str) -> Summary:
    parts = []
    for kind in ("externals", "generators"):
        rel = f"{where}/LCG_{kind}_{platform}.txt"
        if view.exists(rel):
            parts.append(parse_summary(view.read_bytes(rel).decode("utf-8", "replace"),
                                       what=f"{what} ({rel})"))
    if not parts:
        raise StackError(f"{what}: no LCG_externals_{platform}.txt in /{where}")
    return _merge(parts)


def read_repository(view, fqrn: str, what: str, *, top: str = "lcg") -> Listing:
    """``what`` = ``LCG_900/<platform>`` or ``<slot>/<Day|latest>/<platform>``."""
    layout = StackLayout(fqrn, top)
    parts = what.strip("/").split("/")
    label = f"{fqrn}:{what}"
    if len(parts) == 2:
        release, platform = parts
        where = layout.release_rel(release)
        return Listing(label, _read_view_summaries(view, where, platform, label),
                       base=layout.abs(where))
    if len(parts) == 3:
        slot, day, platform = parts
        if day == "latest":
            link = layout.latest_link(slot, "Mon", platform)[0]
            if not view.exists(link):
                raise StackError(f"{label}: slot {slot} has no complete build for {platform}")
            day = view.readlink(link).split("/")[1]
        if day not in DAYS:
            raise StackError(f"{label}: {day!r} is not a day of the nightly ring")
        where = layout.day_rel(slot, day)
        return Listing(label, _read_view_summaries(view, where, platform, label),
                       base=layout.abs(where))
    raise StackError(f"{label}: expected RELEASE/PLATFORM or SLOT/DAY/PLATFORM")


def listing_from_plan(plan) -> Listing:
    """A stack description's plan as a listing (hashes as they would be published)."""
    entries = []
    for p in plan.packages.values():
        deps = tuple(f"{d}-{plan.packages[d].short}" for d in p.deps)
        entries.append(SummaryEntry(name=p.name, hash=p.short, version=p.spec.version,
                                    directory=p.prefix, depends=deps))
    tc = plan.toolchain.summary_compiler
    return Listing(f"{plan.stack.name} ({plan.stack.origin})",
                   Summary(platform=plan.platform, version=plan.stack.version_label,
                           compiler=tc, entries=entries))


def read_listing(spec: str, *, open_view=None, plan_for=None, top: str = "lcg") -> Listing:
    """The listing of ``spec``: ``open_view(fqrn)`` gives a context manager yielding the
    verified view of a repository; ``plan_for(path)`` the plan of a description."""
    m = _SPEC.match(spec)
    if m and not os.path.exists(spec):
        if open_view is None:
            raise StackError(f"{spec}: reading a repository is not possible here")
        with open_view(m["fqrn"]) as view:
            return read_repository(view, m["fqrn"], m["what"], top=top)
    path = Path(spec)
    if not path.exists():
        raise StackError(f"{spec}: no such file, and not FQRN:RELEASE/PLATFORM")
    if path.suffix in (".yaml", ".yml", ".toml"):
        if plan_for is None:
            raise StackError(f"{spec}: a stack description needs a repository name (--fqrn)")
        return listing_from_plan(plan_for(path))
    listing = Listing(str(path), _read_files(path), base=str(path.parent.resolve()))
    return listing
