"""Build one package of a stack: its recipe runs in a sandbox where the install tree being made
is mounted at the package's FINAL prefix (so nothing needs relocating), or — when bubblewrap is
missing or the package asks for it — at a temporary prefix that is relocated and verified
afterwards; the records (§3.4) are written into the tree, which then appears atomically.

Work directory (``Builder(work_dir)``)::

    stage/<full>/                 the install tree being made (removed first: a crashed run)
    logs/<name>-<short>/          build.log, test.log
    home/<full>/                  the build's HOME (and TMPDIR in relocate mode), removed after
    scratch/<full>/               the empty working directory of a package without sources
    installs/<full>/              finished trees (stage renamed here when everything succeeded)

Environment of the build and test steps — cleared, then exactly:

- ``PREFIX`` the install prefix (the final one in the sandbox, ``stage/<full>`` when
  relocating), ``JOBS``, ``NAME``, ``VERSION``, ``PLATFORM``, ``BUILDTYPE`` (opt, dbg...);
- ``CMAKE_BUILD_TYPE`` (opt→Release, dbg→Debug, o2g→RelWithDebInfo, min→MinSizeRel,
  fst→Release, cov→Debug); ``CFLAGS`` = ``CXXFLAGS`` (opt ``-O2``, dbg ``-O0 -g``,
  o2g ``-O2 -g``, min ``-Os``, fst ``-O3``, cov ``-O0 -g --coverage``);
- ``LDFLAGS`` = ``-Wl,-rpath,<prefix>/lib -Wl,-rpath,<prefix>/lib64`` for the package, then
  for every dependency (search order below), always with the FINAL prefixes — also when
  relocating — so installed programs find their libraries in the repository without
  ``LD_LIBRARY_PATH``;
- ``CC``, ``CXX`` from the toolchain; ``SOURCE_DIR`` (``/build/src`` in the sandbox);
  ``<NAME>_HOME`` for every dependency of the closure;
- ``PATH`` (bin), ``CMAKE_PREFIX_PATH`` (the homes), ``PKG_CONFIG_PATH`` (lib/pkgconfig,
  lib64/pkgconfig, share/pkgconfig), ``CPATH`` (include), ``LIBRARY_PATH`` and
  ``LD_LIBRARY_PATH`` (lib, lib64) over the closure in search order: the direct dependencies
  in the order the request lists them, then the others in reverse topological order
  (dependents before what they depend on); ``PATH`` ends with ``/usr/local/bin:/usr/bin:/bin``,
  the others are left unset when there is no dependency (an empty element would mean the
  current directory to the compiler and the dynamic loader);
- ``HOME`` (``/build/home``), ``TMPDIR`` (``/tmp``), ``LANG=C.UTF-8``, ``TZ=UTC``,
  ``SOURCE_DATE_EPOCH=315532800``;
- then the stack's env, then the package's env, overriding the above; in their values
  ``${VAR}`` and ``$VAR`` are expanded from the environment built so far (``$$`` is a ``$``;
  an unknown name, such as ``$ORIGIN``, is left as written).

Steps: ``build`` = ``bash -e -o pipefail -c <recipe>`` in the source top directory, output
streamed to ``build.log``; then, when tests run and the package has one, ``test`` the same way
into ``test.log`` (a failing test is recorded, the build still succeeds). A step's timeout
kills its whole process group. After the build, the tree is checked for build paths (the host
work directory in the sandbox; after relocation the temporary prefix, the dependencies' local
directories, the source directory, HOME, TMPDIR and the work directory, each also resolved)
and refused with a :class:`~pycvmfs.errors.BuildError` if any is left.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import shutil
import socket
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pycvmfs import __version__
from pycvmfs.errors import BuildError, StackError
from pycvmfs.stacks.buildinfo import RECORD_SCHEMA, write_records
from pycvmfs.stacks.model import PackageSpec, home_var
from pycvmfs.stacks.platform import Platform
from pycvmfs.stacks.relocate import find_build_paths, relocate_tree
from pycvmfs.stacks.sandbox import (
    SANDBOX_HOME,
    SANDBOX_SRC,
    Mount,
    StepOutcome,
    bwrap_argv,
    bwrap_available,
    run_logged,
)

if TYPE_CHECKING:
    from pycvmfs.stacks.hashing import Toolchain

__all__ = ["BuildRequest", "BuildResult", "Builder", "DepInstall", "expand", "search_order"]

CMAKE_BUILD_TYPES = {"opt": "Release", "dbg": "Debug", "o2g": "RelWithDebInfo",
                     "min": "MinSizeRel", "fst": "Release", "cov": "Debug"}
COMPILE_FLAGS = {"opt": "-O2", "dbg": "-O0 -g", "o2g": "-O2 -g", "min": "-Os", "fst": "-O3",
                 "cov": "-O0 -g --coverage"}
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
SOURCE_DATE_EPOCH = "315532800"   # 1980-01-01, the earliest date a zip file can hold
SANDBOXES = ("auto", "bwrap", "relocate")
_LEFTOVERS_SHOWN = 5

_REF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*)|(\$))")


@dataclass(frozen=True)
class DepInstall:
    """One installed dependency (from an earlier build or the binary cache)."""

    name: str
    version: str
    full_hash: str
    short: str
    prefix: str          # its FINAL absolute prefix
    local_dir: Path      # where its install tree is on this machine


@dataclass(frozen=True)
class BuildRequest:
    """Everything one build needs; ``deps`` is the transitive closure, dependencies before
    dependents; ``extra_record`` adds keys to the JSON record (never replacing its own)."""

    spec: PackageSpec
    platform: Platform
    full_hash: str
    short: str
    prefix: str                        # this package's final absolute prefix
    source_dir: Path | None            # unpacked + patched sources (writable); None: none
    deps: Sequence[DepInstall]
    direct: tuple[str, ...]            # names of the direct dependencies
    toolchain: Toolchain
    stack_env: tuple[tuple[str, str], ...] = ()
    jobs: int = 2
    run_tests: bool = True
    sandbox: str = "auto"              # "auto" | "bwrap" | "relocate"
    timeout: float = 7200.0            # per step
    extra_record: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class BuildResult:
    """A finished build: its install tree (``installs/<full>``), record and log directory."""

    install_dir: Path
    record: dict
    log_dir: Path


def expand(value: str, env: Mapping[str, str]) -> str:
    """``${VAR}`` and ``$VAR`` replaced from ``env``; ``$$`` → ``$``; unknown names kept."""
    def sub(m: re.Match[str]) -> str:
        if m.group(3):
            return "$"
        return env.get(m.group(1) or m.group(2), m.group(0))
    return _REF.sub(sub, value)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _remove(path: Path) -> None:
    """Remove a file or a whole tree, also one with read-only directories in it."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    try:
        shutil.rmtree(path)
    except OSError:
        for dirpath, dirnames, _ in os.walk(path):
            for d in [dirpath, *(os.path.join(dirpath, n) for n in dirnames)]:
                if not os.path.islink(d):
                    with contextlib.suppress(OSError):
                        os.chmod(d, os.stat(d).st_mode | stat.S_IRWXU)
        shutil.rmtree(path)


def _fresh(path: Path) -> Path:
    _remove(path)
    path.mkdir(parents=True)
    return path


def search_order(req: BuildRequest) -> list[DepInstall]:
    """The closure in search-path order: direct dependencies as listed, then the rest in
    reverse topological order."""
    by_name = {d.name: d for d in req.deps}
    missing = [n for n in req.direct if n not in by_name]
    if missing:
        raise StackError(f"{req.spec.name} {req.spec.version}: direct dependencies "
                         f"{', '.join(missing)} are not in the dependency closure given")
    direct = [by_name[n] for n in req.direct]
    return direct + [d for d in reversed(req.deps) if d.name not in req.direct]


def _record(req: BuildRequest, *, sandbox: str, started: str, finished: str, duration: float,
            build: StepOutcome, test: StepOutcome | None) -> dict[str, Any]:
    spec, src = req.spec, req.spec.source
    by_name = {d.name: d for d in req.deps}
    if src is None:
        source: dict[str, Any] | None = None
    elif src.git is not None:
        source = {"git": src.git, "commit": src.commit}
    else:
        source = {"urls": list(src.urls), "sha256": src.sha256}
    tc = req.toolchain
    record: dict[str, Any] = {
        "schema": RECORD_SCHEMA, "name": spec.name, "version": spec.version,
        "directory": spec.dest, "hash": req.full_hash, "short": req.short,
        "platform": str(req.platform), "prefix": req.prefix, "source": source,
        "patches": [{"name": p.name, "sha256": p.sha256} for p in spec.patches],
        "depends": [{"name": n, "version": by_name[n].version, "hash": by_name[n].full_hash,
                     "short": by_name[n].short} for n in req.direct],
        "closure": {**{d.name: d.version for d in req.deps}, spec.name: spec.version},
        "compiler": {"family": tc.family, "version": tc.full_version, "cc": tc.cc,
                     "cc_version": tc.cc_version},
        "builder": {"host": socket.gethostname(), "user": getpass.getuser(),
                    "pycvmfs": __version__, "sandbox": sandbox},
        "started": started, "finished": finished, "duration": round(duration, 3),
        "steps": {
            "build": {"status": "ok", "duration": round(build.duration, 3)},
            "test": ({"status": "none", "duration": 0.0, "log": None} if test is None else
                     {"status": "passed" if test.ok else "failed",
                      "duration": round(test.duration, 3), "log": "logs/test.log"}),
        },
        "metadata": dict(spec.metadata), "is_generator": spec.is_generator,
    }
    for key, value in req.extra_record.items():
        record.setdefault(key, value)
    return record


class Builder:
    """Builds packages in ``work_dir`` (layout in the module docstring)."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = Path(work_dir).absolute()

    # -- environment --------------------------------------------------------------------------
    def environment(self, req: BuildRequest, *, prefix: str, homes: Mapping[str, str],
                    source_dir: str = SANDBOX_SRC, home: str = SANDBOX_HOME,
                    tmpdir: str = "/tmp") -> dict[str, str]:
        """The environment of the build and test steps (see the module docstring); ``prefix``
        and ``homes`` (dependency name → its directory) as the build sees them."""
        spec, bt = req.spec, req.platform.buildtype
        order = search_order(req)
        for d in order:
            if d.name not in homes:
                raise StackError(f"{spec.name}: no directory given for dependency {d.name}")
        dirs = [homes[d.name] for d in order]

        def over(*subdirs: str) -> list[str]:
            return [f"{h}/{s}" for h in dirs for s in subdirs]

        rpath = [req.prefix, *(d.prefix for d in order)]
        env = {
            "PREFIX": prefix, "JOBS": str(req.jobs), "NAME": spec.name,
            "VERSION": spec.version, "PLATFORM": str(req.platform), "BUILDTYPE": bt,
            "CMAKE_BUILD_TYPE": CMAKE_BUILD_TYPES[bt], "CFLAGS": COMPILE_FLAGS[bt],
            "CXXFLAGS": COMPILE_FLAGS[bt],
            "LDFLAGS": " ".join(f"-Wl,-rpath,{p}/{lib}" for p in rpath
                                for lib in ("lib", "lib64")),
            "CC": req.toolchain.cc, "CXX": req.toolchain.cxx, "SOURCE_DIR": source_dir,
        }
        env.update({home_var(d.name): homes[d.name] for d in order})
        env["PATH"] = ":".join([*over("bin"), SYSTEM_PATH])
        searched = {"CMAKE_PREFIX_PATH": dirs,
                    "PKG_CONFIG_PATH": over("lib/pkgconfig", "lib64/pkgconfig", "share/pkgconfig"),
                    "CPATH": over("include"), "LIBRARY_PATH": over("lib", "lib64"),
                    "LD_LIBRARY_PATH": over("lib", "lib64")}
        # unset, not empty, without dependencies (an empty element means "the current dir")
        env.update({key: ":".join(value) for key, value in searched.items() if value})
        env.update({"HOME": home, "TMPDIR": tmpdir, "LANG": "C.UTF-8", "TZ": "UTC",
                    "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH})
        for key, value in (*req.stack_env, *spec.env):
            env[key] = expand(value, env)
        return env

    # -- the build ----------------------------------------------------------------------------
    def sandbox_mode(self, req: BuildRequest) -> str:
        """``bwrap`` or ``relocate``: what this request builds with."""
        if req.sandbox not in SANDBOXES:
            raise StackError(f"{req.spec.name}: unknown sandbox {req.sandbox!r} "
                             f"(one of {', '.join(SANDBOXES)})")
        if req.spec.relocate or req.sandbox == "relocate":
            return "relocate"
        if bwrap_available():
            return "bwrap"
        if req.sandbox == "bwrap":
            raise StackError(f"{req.spec.name}: the bwrap sandbox was asked for but bwrap does "
                             "not work here (Debian package bubblewrap; user namespaces)")
        return "relocate"

    def build(self, req: BuildRequest) -> BuildResult:
        """Build, test, check and record one package; its finished tree is
        ``installs/<full>``. BuildError (naming the log) when a step fails or build paths are
        left in the tree; StackError for a bad request."""
        spec, full = req.spec, req.full_hash
        mode = self.sandbox_mode(req)
        for d in req.deps:
            if not Path(d.local_dir).is_dir():
                raise StackError(f"{spec.name}: dependency {d.name} {d.version} has no install "
                                 f"tree at {d.local_dir}")
        if req.source_dir is not None and not Path(req.source_dir).is_dir():
            raise StackError(f"{spec.name}: source directory {req.source_dir} does not exist")
        stage = _fresh(self.work_dir / "stage" / full)
        log_dir = _fresh(self.work_dir / "logs" / f"{spec.name}-{req.full_hash[:16]}")
        home = _fresh(self.work_dir / "home" / full)
        scratch = None if req.source_dir is not None else _fresh(self.work_dir / "scratch" / full)
        src = Path(req.source_dir) if req.source_dir is not None else scratch
        assert src is not None
        build_log, test_log = log_dir / "build.log", log_dir / "test.log"
        started, t0 = _now(), time.monotonic()
        try:
            step = self._stepper(req, mode, stage=stage, home=home, src=src)
            build = step(spec.build, build_log)
            if not build.ok:
                why = (f"timed out after {req.timeout:g} s" if build.timed_out
                       else f"exit status {build.returncode}")
                raise BuildError(f"{spec.name} {spec.version}", "build", str(build_log), why)
            test = step(spec.test, test_log) if req.run_tests and spec.test else None
            self._check_tree(req, mode, stage, build_log,
                             build_dirs=(src, home, home / "tmp"))
            record = _record(req, sandbox=mode, started=started, finished=_now(),
                             duration=time.monotonic() - t0, build=build, test=test)
            write_records(stage, record, logs={"build.log": build_log, "test.log": test_log})
            install_dir = self._install(stage, full)
        finally:
            _remove(home)
            if scratch is not None:
                _remove(scratch)
        return BuildResult(install_dir=install_dir, record=record, log_dir=log_dir)

    def _stepper(self, req: BuildRequest, mode: str, *, stage: Path, home: Path,
                 src: Path) -> Callable[[str, Path], StepOutcome]:
        """A function running one recipe (``bash -e -o pipefail -c``) into a log."""
        if mode == "bwrap":
            env = self.environment(req, prefix=req.prefix,
                                   homes={d.name: d.prefix for d in req.deps})
            mounts = [Mount(src, SANDBOX_SRC, writable=True),
                      Mount(home, SANDBOX_HOME, writable=True),
                      Mount(stage, req.prefix, writable=True),
                      *(Mount(Path(d.local_dir), d.prefix) for d in req.deps)]

            def run(script: str, log: Path) -> StepOutcome:
                argv = bwrap_argv(["/bin/bash", "-e", "-o", "pipefail", "-c", script],
                                  mounts=mounts, env=env, cwd=SANDBOX_SRC)
                return run_logged(argv, log=log, env={"PATH": SYSTEM_PATH}, cwd=self.work_dir,
                                  timeout=req.timeout)
            return run
        tmp = _fresh(home / "tmp")
        env = self.environment(req, prefix=str(stage),
                               homes={d.name: str(d.local_dir) for d in req.deps},
                               source_dir=str(src), home=str(home), tmpdir=str(tmp))

        def run_here(script: str, log: Path) -> StepOutcome:
            return run_logged(["/bin/bash", "-e", "-o", "pipefail", "-c", script], log=log,
                              env=env, cwd=src, timeout=req.timeout)
        return run_here

    def _check_tree(self, req: BuildRequest, mode: str, stage: Path, log: Path, *,
                    build_dirs: Sequence[Path] = ()) -> None:
        """Relocate (relocate mode), then refuse a tree that still names a build path: the
        work directory in the sandbox; after relocation also the temporary prefix, the
        dependencies' local trees and ``build_dirs`` (the source directory, HOME with its
        TMPDIR), each also spelled resolved."""
        work = [str(self.work_dir)]
        if mode == "relocate":
            moves = [(str(stage), req.prefix)]
            moves += [(str(d.local_dir), d.prefix) for d in req.deps]
            for old, new in list(moves):   # the resolved spelling of a path too
                real = os.path.realpath(old)
                if real != old:
                    moves.append((real, new))
            relocate_tree(stage, moves)
            leftover = [old for old, _ in moves]
            leftover += [*(os.path.abspath(p) for p in build_dirs), *work]
        else:
            leftover = work
        forbidden = sorted({*leftover, *(os.path.realpath(p) for p in leftover)})
        found = find_build_paths(stage, forbidden)
        if found:
            text = "; ".join(str(x) for x in found[:_LEFTOVERS_SHOWN])
            if len(found) > _LEFTOVERS_SHOWN:
                text += f"; and {len(found) - _LEFTOVERS_SHOWN} more"
            raise BuildError(f"{req.spec.name} {req.spec.version}", f"{mode} check", str(log),
                             text)

    def _install(self, stage: Path, full: str) -> Path:
        """Rename the finished stage to ``installs/<full>`` (an older tree there is replaced)."""
        dest = self.work_dir / "installs" / full
        dest.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if os.path.lexists(dest):
            old = self.work_dir / "stage" / f"{full}.replaced"
            _remove(old)
            os.rename(dest, old)
        os.rename(stage, dest)
        if old is not None:
            _remove(old)
        return dest
