"""Plan a view: one merged tree of symlinks into the package prefixes of a release × platform
(``lcg/views/LCG_<ver>/<platform>/{bin,lib,include,...}``). Pure: the plan lists what to create;
the caller applies it in its repository transaction.

What is taken from a package (``install_dir``, walked without following any symlink):

* at its top, only the entries of :data:`TOP_WHITELIST` (``bin lib include share ...``), so
  ``logs/``, ``.buildinfo_*``, ``.pycvmfs-build.json``, ``<name>-env.sh``, ``README``... stay out;
* below, everything except hidden entries (``.*``), per-package environment scripts
  (``*-env.sh``) and editor backups (``*~``, ``*.swp``); outside Python module trees (paths
  without a ``site-packages``/``dist-packages`` component) also the non-functional files of
  :data:`NON_FUNCTIONAL` (``README*``, ``LICENSE*``, ``COPYING*``, ``INSTALL``, ``dir`` — the
  ``share/info/dir`` index every GNU package ships — and ``.filelist``).

Directories become real directories of the view; files and symlinks become symlinks to the same
path inside the package's prefix. A symlink of the package (even one to a directory) is linked,
never followed, so a link that leaves the package cannot pull foreign files into the view. Link
targets are relative (from the view entry's directory to ``<prefix_rel>/<path>``, both relative
to the repository root, so the view works wherever the repository is mounted) or, with
``ViewSettings.absolute_links``, ``<mount_root>/<prefix_rel>/<path>``.

Packages are taken in the order given (the caller passes a topological order); the ones in
``ViewSettings.exclude`` are left out. When two packages give the same path, every case is
recorded as a :class:`Conflict` and decided by the first matching rule:

1. ``directory``: a directory and a file (or symlink) — the directory wins;
2. ``merged``: ``*.pth`` files (``easy-install.pth``, ``setuptools.pth``...) — one real file
   whose content is the packages' contents in package order, a line already present dropped;
3. ``priority``: one of the packages is in ``ViewSettings.priority`` — the one earlier in that
   list wins (a listed package over an unlisted one);
4. ``grey``: the path is in the grey list (:data:`GREY_NAMES`, :data:`GREY_PATHS`: files every
   Python package ships, such as ``__init__.py``, ``site.py``, ``bin/pytest``) — the first stays,
   the caller need not warn;
5. ``first``: otherwise the first package wins (the caller should warn).

A conflict holds the final winner, every loser and the policy of the last decision.
Entries come out sorted by path, so the same inputs always give the same plan.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycvmfs.errors import StackError
from pycvmfs.stacks.model import ViewSettings

__all__ = [
    "GREY_NAMES",
    "GREY_PATHS",
    "NON_FUNCTIONAL",
    "TOP_WHITELIST",
    "Conflict",
    "ViewEntry",
    "ViewInput",
    "ViewPlan",
    "plan_view",
]

#: top-level entries of a package prefix that go into the view
TOP_WHITELIST = frozenset({
    "bin", "lib", "lib64", "libexec", "include", "share", "etc", "man", "python", "scripts",
    "cmake", "plugins", "tests", "tutorials", "fonts", "icons", "macros", "mkspecs", "aclocal",
    "config", "emacs", "jre", "src", "nvvm"})
#: names (glob patterns) never linked, at any depth
ALWAYS_SKIPPED = (".*", "*-env.sh", "*~", "*.swp")
#: non-functional file names (glob patterns) skipped outside Python module trees
NON_FUNCTIONAL = ("README*", "LICENSE*", "COPYING*", "INSTALL", "dir", ".filelist")
#: file names whose duplicates are expected (first one stays, no warning needed)
GREY_NAMES = frozenset({"site.py", "__init__.py", "conftest.py"})
#: view paths whose duplicates are expected (console scripts many Python packages install)
GREY_PATHS = frozenset({"bin/pytest", "bin/py.test", "bin/f2py", "bin/f2py3", "bin/pip",
                        "bin/pip3", "bin/easy_install", "bin/wheel"})
_PYTHON_TREES = frozenset({"site-packages", "dist-packages"})


@dataclass(frozen=True)
class ViewInput:
    """One package to put in the view: where its files are on this machine (``install_dir``)
    and where its prefix is inside the repository (``prefix_rel``)."""

    name: str
    version: str
    short: str
    install_dir: Path
    prefix_rel: str


@dataclass(frozen=True)
class ViewEntry:
    """One path of the view (relative to the view root): a real directory, a symlink with its
    target, or a file with its content (merged ``.pth`` files)."""

    path: str
    kind: str           # "dir" | "symlink" | "file"
    target: str = ""
    content: bytes | None = None
    package: str = ""   # the package that gave it (the first one for a directory or merge)


@dataclass(frozen=True)
class Conflict:
    """A view path given by several packages and how it was decided."""

    path: str
    winner: str
    losers: tuple[str, ...]
    policy: str         # "first" | "priority" | "grey" | "merged" | "directory"


@dataclass
class ViewPlan:
    """What the view at ``view_rel`` (relative to the repository root) is made of."""

    view_rel: str
    entries: list[ViewEntry]
    conflicts: list[Conflict]
    packages: list[ViewInput]
    excluded: list[str] = field(default_factory=list)

    def to_json(self, **extra: Any) -> dict[str, Any]:
        """The content of ``view.json``: packages (version, hash, prefix), conflicts, counts,
        and whatever the caller adds (``extra``)."""
        kinds = [e.kind for e in self.entries]
        doc: dict[str, Any] = {
            "schema": "pycvmfs-view/1",
            "view": self.view_rel,
            "packages": [{"name": p.name, "version": p.version, "hash": p.short,
                          "prefix": p.prefix_rel} for p in self.packages],
            "excluded": list(self.excluded),
            "conflicts": [{"path": c.path, "winner": c.winner, "losers": list(c.losers),
                           "policy": c.policy} for c in self.conflicts],
            "counts": {"directories": kinds.count("dir"), "symlinks": kinds.count("symlink"),
                       "files": kinds.count("file")},
        }
        doc.update(extra)
        return doc


# -- walking one package ------------------------------------------------------------------------
def _skipped(name: str, rel: str, is_dir: bool) -> bool:
    if any(fnmatch.fnmatchcase(name, pat) for pat in ALWAYS_SKIPPED):
        return True
    if is_dir or _PYTHON_TREES.intersection(rel.split("/")):
        return False
    return any(fnmatch.fnmatchcase(name, pat) for pat in NON_FUNCTIONAL)


def _walk(root: Path, package: str) -> list[tuple[str, bool]]:
    """(path relative to the package root, is a real directory) for every entry the view takes,
    parents before children. Symlinks are entries, never followed."""
    found: list[tuple[str, bool]] = []
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        try:
            with os.scandir(root / rel_dir if rel_dir else root) as it:
                children = sorted(it, key=lambda d: d.name)
        except OSError as exc:
            raise StackError(f"view: cannot read {root / rel_dir} of package {package!r}: "
                             f"{exc.strerror}") from None
        for child in children:
            rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
            is_dir = child.is_dir(follow_symlinks=False)
            if not rel_dir and child.name not in TOP_WHITELIST:
                continue
            if not (is_dir or child.is_symlink() or child.is_file(follow_symlinks=False)):
                continue  # sockets, fifos, devices
            if _skipped(child.name, rel, is_dir):
                continue
            found.append((rel, is_dir))
            if is_dir:
                pending.append(rel)
    found.sort()
    return found


def _read_inside(pkg: ViewInput, root: Path, rel: str) -> bytes:
    """The bytes of a package file, refusing a symlink that leads out of the package."""
    path = root / rel
    try:
        real = path.resolve(strict=True)
    except OSError:
        raise StackError(f"view: {path} of package {pkg.name!r} is a dangling symlink") from None
    if not real.is_relative_to(root):
        raise StackError(f"view: {path} of package {pkg.name!r} is a symlink leaving the "
                         f"package (to {real}); its content cannot be merged")
    try:
        return real.read_bytes()
    except OSError as exc:
        raise StackError(f"view: cannot read {path} of package {pkg.name!r}: "
                         f"{exc.strerror}") from None


def _merge_lines(chunks: list[bytes]) -> bytes:
    """The chunks concatenated in order, a line seen before dropped, every line ended."""
    seen: set[bytes] = set()
    out: list[bytes] = []
    for chunk in chunks:
        for line in chunk.splitlines():
            if line not in seen:
                seen.add(line)
                out.append(line + b"\n")
    return b"".join(out)


# -- the plan -----------------------------------------------------------------------------------
@dataclass
class _Claim:
    """Who holds a view path during planning."""

    package: ViewInput
    is_dir: bool
    pth: list[tuple[ViewInput, bytes]] = field(default_factory=list)  # merged .pth contents
    losers: list[str] = field(default_factory=list)
    policy: str = ""


def _priority_rank(settings: ViewSettings, name: str) -> int | None:
    return settings.priority.index(name) if name in settings.priority else None


def _challenger_wins(rel: str, held: _Claim, new: ViewInput,
                     settings: ViewSettings) -> tuple[bool, str]:
    """Whether ``new`` takes a file path held by another package, and by which policy."""
    held_rank = _priority_rank(settings, held.package.name)
    new_rank = _priority_rank(settings, new.name)
    if held_rank is not None or new_rank is not None:
        if held_rank is None:
            return True, "priority"
        return new_rank is not None and new_rank < held_rank, "priority"
    if posixpath.basename(rel) in GREY_NAMES or rel in GREY_PATHS or _grey_pyc(rel):
        return False, "grey"
    return False, "first"


def _grey_pyc(rel: str) -> bool:
    """Byte-compiled grey files: ``__pycache__/__init__.cpython-311.pyc`` and the like."""
    parent, name = posixpath.split(rel)
    return posixpath.basename(parent) == "__pycache__" and name.split(".", 1)[0] in {
        n.removesuffix(".py") for n in GREY_NAMES}


def _link_target(view_rel: str, rel: str, pkg: ViewInput, settings: ViewSettings,
                 mount_root: str) -> str:
    dest = f"{pkg.prefix_rel}/{rel}"
    if settings.absolute_links:
        return f"{mount_root.rstrip('/')}/{dest}"
    return posixpath.relpath(dest, posixpath.dirname(f"{view_rel}/{rel}"))


def _check_rel(value: str, what: str) -> str:
    norm = value.strip("/")
    if not norm or norm != posixpath.normpath(norm) or norm.startswith(".."):
        raise StackError(f"view: {what} {value!r} is not a plain path relative to the "
                         "repository root")
    return norm


def plan_view(inputs: Sequence[ViewInput], *, view_rel: str, settings: ViewSettings,
              mount_root: str) -> ViewPlan:
    """The view of ``inputs`` (in that order) at ``view_rel``; see the module docstring for the
    rules. Raises :class:`StackError` naming the package for a missing prefix, a package given
    twice or a ``.pth`` file that cannot be read."""
    view_rel = _check_rel(view_rel, "view path")
    claims: dict[str, _Claim] = {}
    used: list[ViewInput] = []
    excluded: list[str] = []
    seen: set[str] = set()
    roots: dict[str, Path] = {}
    for pkg in inputs:
        if pkg.name in seen:
            raise StackError(f"view {view_rel}: package {pkg.name!r} given twice")
        seen.add(pkg.name)
        if pkg.name in settings.exclude:
            excluded.append(pkg.name)
            continue
        _check_rel(pkg.prefix_rel, f"prefix of package {pkg.name!r}")
        root = Path(pkg.install_dir)
        if not root.is_dir():
            raise StackError(f"view {view_rel}: install directory {root} of package "
                             f"{pkg.name!r} does not exist")
        root = roots[pkg.name] = root.resolve()
        used.append(pkg)
        for rel, is_dir in _walk(root, pkg.name):
            held = claims.get(rel)
            if held is None:
                claims[rel] = _Claim(pkg, is_dir)
                continue
            if held.is_dir and is_dir:
                continue  # directories merge
            if held.is_dir or is_dir:
                if is_dir:  # a directory replaces the file held so far
                    claims[rel] = _Claim(pkg, True, losers=[*held.losers, held.package.name],
                                         policy="directory")
                else:
                    held.losers.append(pkg.name)
                    held.policy = "directory"
                continue
            if rel.endswith(".pth"):
                if not held.pth:
                    first = held.package
                    held.pth.append((first, _read_inside(first, roots[first.name], rel)))
                held.pth.append((pkg, _read_inside(pkg, root, rel)))
                held.losers.append(pkg.name)
                held.policy = "merged"
                continue
            wins, policy = _challenger_wins(rel, held, pkg, settings)
            if wins:
                claims[rel] = _Claim(pkg, False, losers=[*held.losers, held.package.name],
                                     policy=policy)
            else:
                held.losers.append(pkg.name)
                held.policy = policy
    entries: list[ViewEntry] = []
    conflicts: list[Conflict] = []
    for rel in sorted(claims):
        claim = claims[rel]
        if claim.is_dir:
            entries.append(ViewEntry(rel, "dir", package=claim.package.name))
        elif claim.pth:
            entries.append(ViewEntry(rel, "file", content=_merge_lines([c for _, c in claim.pth]),
                                     package=claim.package.name))
        else:
            entries.append(ViewEntry(rel, "symlink", package=claim.package.name,
                                     target=_link_target(view_rel, rel, claim.package, settings,
                                                         mount_root)))
        if claim.losers:
            conflicts.append(Conflict(rel, claim.package.name, tuple(claim.losers),
                                      claim.policy))
    return ViewPlan(view_rel=view_rel, entries=entries, conflicts=conflicts, packages=used,
                    excluded=excluded)
