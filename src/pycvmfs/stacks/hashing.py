"""Content hashes of stack packages: a Merkle hash over everything that changes the bytes a
build installs, the short display hash used in directory names, and lcgcmake's legacy hash.

A package's full hash is the SHA-256 of one canonical JSON document (sorted keys, UTF-8, no
whitespace, scheme ``pycvmfs-stack-hash/1``). The document holds, and so the hash changes with:

- ``scheme``: the version of these rules (a new rule set is a new scheme, never a silent change);
- ``name``, ``version`` and ``directory`` (the destination below ``releases/``);
- ``build`` and ``test``: the scripts, normalised by :func:`normalise_script` (comment-only and
  blank lines dropped, trailing white space stripped; here-documents and multi-line quoted
  strings are data and kept exactly);
- ``source``: what the source bytes are — the tarball's sha256 or the git commit, never a URL;
- ``patches``: name, sha256 and strip level of each patch, in the order they are applied;
- ``env`` and ``stack_env``: the package's and the stack's build environment, each sorted by
  variable name (the order of assignments to one variable is kept);
- ``relocate``: whether the package is built elsewhere and relocated afterwards;
- ``platform``: the platform string the package is built for (the stack's platform for
  instruction-set packages, the naked one otherwise, see :func:`stack_hashes`);
- ``toolchain``: the compiler identity (:meth:`Toolchain.identity`: ``--version`` lines, full
  version, target triple);
- ``store_root``: the absolute directory the package is installed below (paths compiled into
  the build depend on it);
- ``depends``: the FULL hashes of the direct dependencies by name — so a change anywhere below a
  package changes its hash and every dependent's (Merkle), and nothing else's.

The recipe hash (:func:`recipe_hashes`) is the same document without ``platform``,
``toolchain`` and ``store_root``, the dependencies given by their recipe hashes, scheme
``pycvmfs-stack-recipe/1``: one value for every platform of a stack, which the display hash in
``<dir>/<version>-<hash>/<platform>`` is cut from (:func:`display_hashes`).

Deliberately NOT hashed: metadata (description, license, homepage...), the ``when`` condition,
the ``iset`` flag itself, the parallelism (JOBS), source and mirror URLs, the stack's name,
release or nightly slot, timestamps and the build host.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pycvmfs.errors import StackError
from pycvmfs.stacks.model import PackageSpec, Stack
from pycvmfs.stacks.platform import Platform

__all__ = [
    "HASH_SCHEME",
    "RECIPE_SCHEME",
    "Toolchain",
    "canonical_json",
    "display_hashes",
    "hash_inputs",
    "legacy_hash",
    "normalise_script",
    "package_hash",
    "package_platform",
    "recipe_hashes",
    "recipe_inputs",
    "stack_hashes",
    "version_txt",
]

HASH_SCHEME = "pycvmfs-stack-hash/1"
RECIPE_SCHEME = "pycvmfs-stack-recipe/1"

_VERSION_NUMBER = re.compile(r"\b(\d+\.\d+(?:\.\d+)*)\b")


# -- the compiler identity --------------------------------------------------------------------

def _run_compiler(command: str, *args: str, variable: str) -> str:
    """Run ``command args`` (``command`` may hold words, e.g. ``ccache gcc``); its stdout."""
    words = shlex.split(command)
    if not words:
        raise StackError(f"{variable} is empty: no compiler to run")
    if shutil.which(words[0]) is None:
        raise StackError(f"compiler {command!r} (from {variable}) not found on PATH")
    try:
        done = subprocess.run([*words, *args], capture_output=True, text=True, check=False,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise StackError(f"compiler {command!r} (from {variable}): cannot run "
                         f"{' '.join(args)}: {e}") from e
    if done.returncode != 0:
        raise StackError(f"compiler {command!r} (from {variable}): {' '.join(args)} exited "
                         f"{done.returncode}: {done.stderr.strip()[:500]}")
    return done.stdout


@dataclass(frozen=True)
class Toolchain:
    """The C and C++ compilers of a build and what identifies them (hashed): the first line of
    ``--version``, the full version (``-dumpfullversion``) and the target (``-dumpmachine``)."""

    cc: str             # the command, as CC gives it (e.g. "gcc")
    cc_version: str     # first line of `<cc> --version`
    cxx: str
    cxx_version: str
    cc_full_version: str = ""   # `<cc> -dumpfullversion` (e.g. "12.2.0")
    target: str = ""            # `<cc> -dumpmachine` (e.g. "x86_64-linux-gnu")

    @classmethod
    def detect(cls, env: Mapping[str, str] | None = None) -> Toolchain:
        """The compilers ``CC``/``CXX`` name in ``env`` (default: this process's environment),
        ``gcc``/``g++`` when unset; StackError naming the command when one is missing."""
        env = os.environ if env is None else env
        cc = env.get("CC") or "gcc"
        cxx = env.get("CXX") or "g++"
        cc_line = _first_line(_run_compiler(cc, "--version", variable="CC"))
        cxx_line = _first_line(_run_compiler(cxx, "--version", variable="CXX"))
        try:
            full = _run_compiler(cc, "-dumpfullversion", variable="CC").strip()
        except StackError:
            full = ""
        if not _VERSION_NUMBER.fullmatch(full):
            # clang before 16 knows no -dumpfullversion; its -dumpversion is the full one
            full = _run_compiler(cc, "-dumpversion", variable="CC").strip()
        target = _run_compiler(cc, "-dumpmachine", variable="CC").strip()
        return cls(cc=cc, cc_version=cc_line, cxx=cxx, cxx_version=cxx_line,
                   cc_full_version=full, target=target)

    def identity(self) -> dict[str, str]:
        """What is hashed: the version lines, the full version and the target (not the
        command names, so ``gcc`` and ``/usr/bin/gcc`` are one toolchain)."""
        return {"cc_version": self.cc_version, "cxx_version": self.cxx_version,
                "full_version": self.full_version, "target": self.target}

    @property
    def family(self) -> str:
        """``clang`` or ``gcc`` (anything that does not say clang is taken as gcc)."""
        return "clang" if "clang" in self.cc_version.lower() else "gcc"

    @property
    def full_version(self) -> str:
        """``12.2.0``: the detected full version, else the last number of the version line."""
        if self.cc_full_version:
            return self.cc_full_version
        found = _VERSION_NUMBER.findall(self.cc_version)
        return found[-1] if found else ""

    @property
    def summary_compiler(self) -> tuple[str, str]:
        """The ``COMPILER: <family>;<version>`` pair of the release summaries."""
        return self.family, self.full_version

    @property
    def buildinfo_compiler(self) -> str:
        """The ``COMPILER:`` value of ``.buildinfo`` files: CMake's compiler id and version."""
        return ("Clang" if self.family == "clang" else "GNU") + " " + self.full_version


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text.strip() else ""


# -- script normalisation ---------------------------------------------------------------------

# Tokens that change the lexical state of a shell line: escapes, quotes, here-document
# operators, comments. ``<<<`` (a here-string) is matched first so it is not taken for ``<<``.
_TOKENS = re.compile(
    r"""\\.|\\$|\$'|'|"|<<<"""
    r"""|<<-?[ \t]*(?:'([^']*)'|"([^"]*)"|\\?([A-Za-z_][A-Za-z0-9_.:+@%-]*))"""
    r"""|(?:^|(?<=[\s;&|()]))\#""",
    re.DOTALL,
)
_IN_SINGLE = re.compile(r"'")
_IN_ANSI = re.compile(r"\\.|'", re.DOTALL)
_IN_DOUBLE = re.compile(r"\\.|\\$|\"", re.DOTALL)


class _ShellState:
    """Quote and here-document state carried from one line of a script to the next."""

    def __init__(self) -> None:
        self.quote = ""                  # "", "'", "$'" or '"'
        self.heredocs: list[tuple[str, bool]] = []   # (delimiter, strip leading tabs)
        self.in_heredoc: tuple[str, bool] | None = None
        self.continued = False           # the previous line ended with a backslash

    def in_data(self) -> bool:
        return bool(self.quote) or self.in_heredoc is not None

    def scan(self, line: str) -> None:
        """Update the state with one line that is shell code (not here-document data)."""
        pos = 0
        self.continued = False
        while pos <= len(line):
            if self.quote:
                pattern = {"'": _IN_SINGLE, "$'": _IN_ANSI, '"': _IN_DOUBLE}[self.quote]
                m = pattern.search(line, pos)
                if m is None:
                    return
                pos = m.end()
                if m.group() in ("'", '"'):
                    self.quote = ""
                continue
            m = _TOKENS.search(line, pos)
            if m is None:
                return
            pos = m.end()
            tok = m.group()
            if tok == "\\":
                self.continued = True
                return
            if tok.startswith("\\") or tok == "<<<":
                continue
            if tok in ("'", '"', "$'"):
                self.quote = tok
            elif tok == "#":
                return
            elif tok.startswith("<<"):
                delim = next(g for g in m.groups() if g is not None)
                self.heredocs.append((delim, tok.startswith("<<-")))


def normalise_script(text: str | None) -> str:
    """The script as hashed: comment-only and blank lines dropped, trailing white space
    stripped; every other byte kept. Lines inside a here-document or a quoted string spanning
    lines are data and kept exactly; so is a comment line after a backslash continuation (it
    ends the command there)."""
    if not text:
        return ""
    out: list[str] = []
    state = _ShellState()
    for line in text.split("\n"):
        if state.in_heredoc is not None:
            out.append(line)
            delim, tabs = state.in_heredoc
            if (line.lstrip("\t") if tabs else line) == delim:
                state.in_heredoc = state.heredocs.pop(0) if state.heredocs else None
            continue
        if state.quote:
            out.append(line)
            state.scan(line)
        else:
            stripped = line.strip()
            if not state.continued and (not stripped or stripped.startswith("#")):
                continue
            state.scan(line)
            out.append(line if state.quote else line.rstrip())
        if state.heredocs and not state.quote and not state.continued:
            state.in_heredoc = state.heredocs.pop(0)
    return "\n".join(out)


# -- the package hash -------------------------------------------------------------------------

def _sorted_env(env: Sequence[tuple[str, str]]) -> list[list[str]]:
    """By variable name; a stable sort, so repeated assignments to one name keep their order."""
    return [[k, v] for k, v in sorted(env, key=lambda kv: kv[0])]


def _recipe_fields(spec: PackageSpec, stack_env: Sequence[tuple[str, str]],
                   deps: Mapping[str, str]) -> dict[str, Any]:
    """The fields of both documents: the package itself and its dependencies' hashes."""
    for dep, h in deps.items():
        if not re.fullmatch(r"[0-9a-f]{64}", h):
            raise StackError(f"{spec.name}: dependency {dep} has no full hash ({h!r})")
    return {
        "name": spec.name,
        "version": spec.version,
        "directory": spec.dest,
        "build": normalise_script(spec.build),
        "test": normalise_script(spec.test),
        "source": spec.source.identity() if spec.source is not None else None,
        "patches": [{"name": p.name, "sha256": p.sha256, "strip": p.strip}
                    for p in spec.patches],
        "env": _sorted_env(spec.env),
        "stack_env": _sorted_env(stack_env),
        "relocate": spec.relocate,
        "depends": dict(sorted(deps.items())),
    }


def hash_inputs(spec: PackageSpec, *, platform: Platform, toolchain: Toolchain,
                store_root: str, stack_env: Sequence[tuple[str, str]],
                dep_hashes: Mapping[str, str]) -> dict[str, Any]:
    """The document :func:`package_hash` hashes (for ``--explain`` and hash diffs)."""
    if not os.path.isabs(store_root):
        raise StackError(f"{spec.name}: the store root {store_root!r} is not an absolute path")
    return {
        "scheme": HASH_SCHEME,
        **_recipe_fields(spec, stack_env, dep_hashes),
        "platform": str(platform),
        "toolchain": toolchain.identity(),
        "store_root": store_root.rstrip("/") or "/",
    }


def recipe_inputs(spec: PackageSpec, *, stack_env: Sequence[tuple[str, str]],
                  dep_recipes: Mapping[str, str]) -> dict[str, Any]:
    """The document :func:`recipe_hashes` hashes: the package document without what differs
    between the platforms of one stack (platform, toolchain, store root), the dependencies
    given by their recipe hashes."""
    return {"scheme": RECIPE_SCHEME, **_recipe_fields(spec, stack_env, dep_recipes)}


def canonical_json(doc: Mapping[str, Any]) -> bytes:
    """Sorted keys, no white space, UTF-8: one byte string per document."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def package_hash(spec: PackageSpec, *, platform: Platform, toolchain: Toolchain,
                 store_root: str, stack_env: Sequence[tuple[str, str]],
                 dep_hashes: Mapping[str, str]) -> str:
    """The full hash (64 hex digits of SHA-256) of one package; see the module docstring."""
    doc = hash_inputs(spec, platform=platform, toolchain=toolchain, store_root=store_root,
                      stack_env=stack_env, dep_hashes=dep_hashes)
    return hashlib.sha256(canonical_json(doc)).hexdigest()


def package_platform(spec: PackageSpec, stack_platform: Platform) -> Platform:
    """The platform a package is built (and hashed) for: the stack's own for instruction-set
    packages, the naked one (without ``+iset``) for the others, so those are shared."""
    return stack_platform if spec.iset else stack_platform.naked


def _merkle(stack: Stack, order: Sequence[str], deps: Callable[[str], Sequence[str]],
            hash_one: Callable[[PackageSpec, dict[str, str]], str]) -> dict[str, str]:
    """``hash_one(spec, dependency hashes)`` of every package in ``order`` (dependencies
    first), each given the hashes of its direct dependencies already computed."""
    out: dict[str, str] = {}
    for name in order:
        spec = stack.packages.get(name)
        if spec is None:
            raise StackError(f"{name}: not a package of stack {stack.name}")
        dep_hashes: dict[str, str] = {}
        for dep in deps(name):
            if dep not in out:
                raise StackError(f"{name}: dependency {dep} is not hashed before it "
                                 "(the order is not dependencies-first)")
            dep_hashes[dep] = out[dep]
        out[name] = hash_one(spec, dep_hashes)
    return out


def stack_hashes(stack: Stack, order: Sequence[str], deps: Callable[[str], Sequence[str]], *,
                 toolchain: Toolchain, store_root: str) -> dict[str, str]:
    """Full hashes of the packages named in ``order`` (dependencies first); ``deps(name)`` are
    a package's direct dependencies as resolved for this stack."""
    return _merkle(stack, order, deps, lambda spec, dep_hashes: package_hash(
        spec, platform=package_platform(spec, stack.platform), toolchain=toolchain,
        store_root=store_root, stack_env=stack.env, dep_hashes=dep_hashes))


def recipe_hashes(stack: Stack, order: Sequence[str],
                  deps: Callable[[str], Sequence[str]]) -> dict[str, str]:
    """Platform-independent hashes (Merkle, in ``order``): what one recipe is on every platform
    of a stack, so the display hash in ``<dir>/<version>-<hash>/<platform>`` is shared by the
    platforms. Everything :func:`package_hash` covers except the platform, the toolchain and
    the store root."""
    return _merkle(stack, order, deps, lambda spec, dep_recipes: hashlib.sha256(canonical_json(
        recipe_inputs(spec, stack_env=stack.env, dep_recipes=dep_recipes))).hexdigest())


def display_hashes(full: Mapping[str, str], specs: Mapping[str, PackageSpec], *,
                   taken: Callable[[str, str, str], str | None] = lambda d, v, s: None,
                   length: int = 5) -> dict[str, str]:
    """Short hashes for directory names: the first ``length`` hex digits, one more at a time
    while another package of the same directory and version shares the prefix with a
    different full hash, or ``taken(dest, version, short)`` names a different full hash
    already published under it."""
    groups: dict[tuple[str, str], set[str]] = {}
    for name, h in full.items():
        spec = specs[name]
        groups.setdefault((spec.dest, spec.version), set()).add(h)
    out: dict[str, str] = {}
    for name in sorted(full):
        h = full[name]
        spec = specs[name]
        others = groups[(spec.dest, spec.version)] - {h}
        n = length
        while n < len(h):
            short = h[:n]
            published = taken(spec.dest, spec.version, short)
            if (published is None or published == h) and not any(
                    o.startswith(short) for o in others):
                break
            n += 1
        out[name] = h[:n]
    return out


# -- the lcgcmake legacy identity -------------------------------------------------------------

def version_txt(name: str, closure_versions: Mapping[str, str]) -> str:
    """lcgcmake's ``version.txt``: the package and its transitive dependencies as
    ``name=version`` joined by ``/``, in the order lcgcmake sorts its ``name-version`` target
    names (byte order, upper case first). ``closure_versions`` includes the package itself."""
    if name not in closure_versions:
        raise StackError(f"{name}: its own version is missing from the closure given to "
                         "version_txt")
    items = sorted(closure_versions.items(), key=lambda kv: f"{kv[0]}-{kv[1]}")
    return "/".join(f"{n}={v}" for n, v in items)


def legacy_hash(version_txt: str) -> str:
    """lcgcmake's 5-hex hash: the first five digits of the SHA-1 of ``version.txt``."""
    return hashlib.sha1(version_txt.encode("utf-8")).hexdigest()[:5]
