"""Import an lcgcmake toolchain file (``heptools-<release>.cmake``) into a stack description.

The CMake is read, never run, by :class:`~pycvmfs.stacks.cmakescript.CMakeReader` (variables,
includes, ``if()`` conditions; see there for what is understood). On top of it:

- The platform gives lcgcmake's variables (``LCG_OS``, ``LCG_OSVERS``, ``LCG_COMP``,
  ``LCG_COMPVERS``, ``LCG_ARCH``, ``LCG_HOST_ARCH``, ``LCG_TARGET``, ``LCG_SYSTEM``,
  ``LCG_BUILD_TYPE``, ``BINARY_TAG``...), against which conditions are evaluated; ``MCGENPATH``
  starts as ``MCGenerators``. ``include(heptools-common)`` (lcgcmake's platform detection, which
  these variables replace) is skipped.
- ``LCG_external_package(Name version [directory] [key=value ...] [GIT=url])`` and
  ``LCG_AA_project(...)`` (same arguments). A ``key`` naming another declared package pins that
  dependency's version (``metadata: {pin.<dep>: <version>}``, with a warning when the stack
  declares another version); other keys (``author``, ``tag``, ``hepevt``) go to ``metadata``.
  A package declared again replaces the earlier declaration, with a warning (lcgcmake MR 232:
  one version per package, last wins).
- ``LCG_top_packages(...)`` (calls add up); ``LCG_compiler(...)`` is ignored.

``heptools_version`` names the stack: a number-led value gives the release ``LCG_<v>``, anything
else (``dev3``) a slot. Recipes (source, build, depends... in the description schema) come from
``recipes[name]``; packages without one are emitted without a build, listed in one warning.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycvmfs.errors import StackError
from pycvmfs.stacks.cmakescript import CMakeReader
from pycvmfs.stacks.description import to_yaml
from pycvmfs.stacks.packagefields import PACKAGE_KEYS, PACKAGE_NAME, did_you_mean
from pycvmfs.stacks.platform import Platform, host_platform

__all__ = ["import_heptools", "write_stack_yaml"]

_COMMIT = re.compile(r"[0-9a-f]{40}\Z")


def _platform_variables(platform: Platform) -> dict[str, str]:
    """What lcgcmake's heptools-common derives from the binary tag."""
    build = {"opt": "Release", "dbg": "Debug", "o2g": "RelWithDebInfo", "min": "MinSizeRel",
             "cov": "Coverage"}.get(platform.buildtype, "")
    mac = platform.os_name == "mac"
    out = {
        "LCG_ARCH": str(platform).split("-")[0], "LCG_HOST_ARCH": platform.arch,
        "LCG_OS": platform.os_name, "LCG_OSVERS": platform.os_version,
        "LCG_COMP": platform.compiler_family, "LCG_COMPVERS": platform.compiler_version,
        "LCG_TARGET": platform.system, "LCG_SYSTEM": platform.system,
        "LCG_BUILD_TYPE": platform.buildtype, "BINARY_TAG": str(platform),
        "LCG_platform": str(platform), "LCG_system": str(platform),
        "CMAKE_BUILD_TYPE": build, "MCGENPATH": "MCGenerators",
        "UNIX": "1", "APPLE": "1" if mac else "0", "WIN32": "0",
        "CMAKE_SYSTEM_NAME": "Darwin" if mac else "Linux",
    }
    for key in ("OS", "OSVERS", "COMP", "COMPVERS"):
        out[f"LCG_HOST_{key}"] = out[f"LCG_{key}"]
    return out


@dataclass
class _Declaration:
    version: str
    directory: str | None
    keys: dict[str, str]           # key=value arguments other than GIT
    git: str | None
    where: str                     # file:line


@dataclass
class _Reader(CMakeReader):
    """The CMake reader, with lcgcmake's package declarations."""

    platform: Platform = field(kw_only=True)
    packages: dict[str, _Declaration] = field(default_factory=dict)
    top: list[str] = field(default_factory=list)

    def extra_command(self, name: str, args: list[str], where: str) -> bool:
        if name in ("lcg_external_package", "lcg_aa_project"):
            self.declare(args, where)
        elif name == "lcg_top_packages":
            self.top.extend(a for a in args if a not in self.top)
        elif name != "lcg_compiler":
            return False
        return True

    def include(self, name: str, optional: bool, where: str, path: Path) -> None:
        if Path(name).name in ("heptools-common", "heptools-common.cmake"):
            return
        super().include(name, optional, where, path)

    def declare(self, args: list[str], where: str) -> None:
        if len(args) < 2:
            self.warnings.append(f"{where}: package declaration needs a name and a version "
                                 f"({' '.join(args)}); ignored")
            return
        name, version = args[0], args[1]
        if not PACKAGE_NAME.match(name) or re.search(r"[\s/]", version):
            self.warnings.append(f"{where}: package {name} {version}: name or version not "
                                 "usable in a stack description; ignored")
            return
        decl = _Declaration(version=version, directory=None, keys={}, git=None, where=where)
        for arg in args[2:]:
            key, sep, value = arg.partition("=")
            if sep and key.upper() == "GIT":
                decl.git = value
            elif sep:
                decl.keys[key] = value
            elif decl.directory is None:
                decl.directory = arg
            else:
                self.warnings.append(f"{where}: package {name}: extra argument {arg} ignored")
        old = self.packages.get(name)
        if old is not None:
            self.warnings.append(f"{where}: package {name} {old.version} ({old.where}) "
                                 f"replaced by {version}")
        self.packages[name] = decl


def _stack_name(version: str, where: str) -> tuple[str, str]:
    if version.startswith("LCG_"):
        kind, name = "release", version
    elif version[:1].isdigit():
        kind, name = "release", f"LCG_{version}"
    else:
        kind, name = "slot", version
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise StackError(f"{where}: heptools_version {version!r} does not make a release or "
                         "slot name (letters, digits and _.+-)")
    return kind, name


def _package_entry(name: str, decl: _Declaration, declared: Mapping[str, _Declaration],
                   recipe: Mapping[str, Any] | None, warnings: list[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"version": decl.version}
    if decl.directory and decl.directory != name:
        entry["directory"] = decl.directory
    metadata: dict[str, str] = {}
    for key, value in decl.keys.items():
        if key in declared and key != name:
            metadata[f"pin.{key}"] = value
            if value != declared[key].version:
                warnings.append(f"{decl.where}: {name} {decl.version} pins {key}={value}, but "
                                f"the stack declares {key} {declared[key].version}")
        else:
            metadata[key] = value
    if decl.git and "source" not in (recipe or {}):
        if _COMMIT.match(decl.version):
            entry["source"] = {"git": decl.git, "commit": decl.version}
        else:                     # a branch or tag: a recipe has to name the commit
            metadata["git"] = decl.git
    if recipe is not None:
        for key, value in recipe.items():
            if key not in PACKAGE_KEYS or key == "version":
                raise StackError(f"recipe of {name}: key {key!r} is not a recipe field"
                                 f"{did_you_mean(str(key), PACKAGE_KEYS)} (versions come "
                                 "from the heptools file)")
            if key == "depends":
                deps = [value] if isinstance(value, str) else list(value)
                missing = [d for d in deps if d not in declared]
                if missing:
                    warnings.append(f"recipe of {name} depends on {', '.join(missing)}, which "
                                    "the heptools file does not declare here; left out")
                entry["depends"] = [d for d in deps if d in declared]
            elif key == "metadata":
                metadata = {**dict(value), **metadata}
            elif key != "directory" or "directory" not in entry:
                entry[key] = value
    if metadata:
        entry["metadata"] = metadata
    return entry


def import_heptools(path: str | os.PathLike[str], *, platform: Platform | None = None,
                    recipes: Mapping[str, dict] | None = None,
                    search_path: Sequence[Path] = ()) -> tuple[dict, list[str]]:
    """Read ``heptools-<x>.cmake`` (and what it includes) for ``platform`` (default: the
    host's) and return ``(description, warnings)``: the description is a mapping in the
    :func:`~pycvmfs.stacks.description.load_stack` schema; ``recipes[name]`` supplies each
    package's source/build/depends/... ."""
    root = Path(os.path.abspath(path))
    platform = platform or host_platform()
    reader = _Reader(platform=platform, search_path=[Path(p) for p in search_path],
                     root_dir=root.parent, variables=_platform_variables(platform))
    reader.read(root)
    version = reader.variables.get("heptools_version")
    if not version:
        m = re.fullmatch(r"heptools-(.+)\.cmake", root.name)
        if m is None:
            raise StackError(f"{root.name}: heptools_version is not set and the file name is "
                             "not heptools-<version>.cmake")
        version = m[1]
        reader.warnings.append(f"{root.name}: heptools_version is not set; taken from the "
                               f"file name ({version})")
    kind, name = _stack_name(version, root.name)
    desc: dict[str, Any] = {kind: name, "platform": str(platform)}
    top = [t for t in reader.top if t in reader.packages]
    unknown = [t for t in reader.top if t not in reader.packages]
    if unknown:
        reader.warnings.append(f"{root.name}: LCG_top_packages names {', '.join(unknown)}, "
                               f"which no package declaration gives on {platform}; left out")
    if top:
        desc["top"] = top
    recipes = recipes or {}
    desc["packages"] = {
        pkg: _package_entry(pkg, decl, reader.packages, recipes.get(pkg), reader.warnings)
        for pkg, decl in reader.packages.items()}
    lacking = [pkg for pkg in reader.packages if pkg not in recipes]
    if lacking:
        reader.warnings.append(f"no recipe for {len(lacking)} package(s), emitted without a "
                               f"build: {', '.join(lacking)}")
    return desc, reader.warnings


def write_stack_yaml(desc: Mapping[str, Any]) -> str:
    """The YAML text of an imported description (recipes as literal blocks)."""
    return to_yaml(desc)
