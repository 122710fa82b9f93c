"""Spack externals for a published stack: a ``packages.yaml`` that lets Spack build on top of
a release (or nightly) instead of rebuilding what it already holds, as FCC once layered Spack
over LCG releases.

Every (name, version, prefix) becomes an external of the Spack package of that name, marked not
buildable, so Spack takes the stack's build::

    packages:
      python:
        externals:
        - spec: python@3.11.9 %gcc@13.1.0
          prefix: /cvmfs/sft.example.org/lcg/releases/Python/3.11.9-a1b2c/x86_64-el9-gcc13-opt
        buildable: false

Spack's package names are lower case with ``-`` between words (``xerces-c``, ``py-numpy``).
A stack name is turned into one by, first match wins: the caller's ``aliases`` (exact name,
then lower-cased), the table :data:`SPACK_ALIASES` below (lower-cased name), else the name in
lower case with ``_`` as ``-``. A result that is still no valid Spack name (``tauola++``
without its alias) is an error naming the package: add an alias rather than guess.

Several versions of one package become several externals of it. The spec has no
``arch=`` part: a platform's OS token (``el9``) does not say which Spack OS name (``rhel9``,
``almalinux9``, ``rocky9``) the consumer's host reports.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import yaml

from pycvmfs.errors import StackError
from pycvmfs.stacks.platform import Platform

__all__ = ["SPACK_ALIASES", "spack_name", "spack_packages_yaml"]

#: Stack (LCG) package names, lower-cased, whose Spack package has another name. Each one is
#: a Spack package directory of spack/spack-packages (``repos/spack_repo/builtin/packages``).
SPACK_ALIASES: dict[str, str] = {
    # "tbb" is a virtual package in Spack; the open-source oneTBB build is intel-tbb (the
    # rename FCC's LCG-to-Spack scripts applied, "tbb" -> "intel-tbb")
    "tbb": "intel-tbb",
    # Xerces-C++: LCG spells it XercesC / xercesc, Spack xerces-c
    "xercesc": "xerces-c",
    # nlohmann's "JSON for Modern C++": LCG's jsonmcpp, Spack's nlohmann-json
    "jsonmcpp": "nlohmann-json",
    # LCG's java is an OpenJDK build (FCC's scripts renamed it to jdk, since replaced by openjdk)
    "java": "openjdk",
    # "+" marks a variant in a Spack spec: the C++ generators drop their "++"
    "tauola++": "tauola",
    "photos++": "photos",
    "herwig++": "herwigpp",
    # Qt 5 is Spack's qt; Qt 6 is split into qt-base and friends (the core is qt-base)
    "qt5": "qt",
    "qt6": "qt-base",
    # the libuuid of util-linux: Spack's provider of the uuid library
    "uuid": "util-linux-uuid",
    "libuuid": "util-linux-uuid",
    # Python modules: Spack names them py-<name>; LCG by the module's own name
    "cython": "py-cython",
    "matplotlib": "py-matplotlib",
    "numpy": "py-numpy",
    "pandas": "py-pandas",
    "pip": "py-pip",
    "pytest": "py-pytest",
    "pyyaml": "py-pyyaml",
    "scipy": "py-scipy",
    "setuptools": "py-setuptools",
    "six": "py-six",
}

_SPACK_NAME = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
_VERSION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_NUMBER = re.compile(r"(\d+)")


def spack_name(name: str, aliases: Mapping[str, str] | None = None) -> str:
    """The Spack package name of the stack package ``name`` (see the module docstring)."""
    aliases = aliases or {}
    out = aliases.get(name) or aliases.get(name.lower()) or SPACK_ALIASES.get(name.lower())
    if out is None:
        out = name.lower().replace("_", "-")
    if not _SPACK_NAME.match(out):
        raise StackError(f"package {name!r}: {out!r} is not a Spack package name (lower case, "
                         "digits and '-'); give its Spack name as an alias")
    return out


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Orders ``3.9`` before ``3.11`` (numbers compared as numbers)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part)
                 for part in _NUMBER.split(version) if part)


def _compiler_part(compiler: tuple[str, str] | None) -> str:
    if compiler is None:
        return ""
    family, version = compiler
    if not _SPACK_NAME.match(family) or not _VERSION.match(version):
        raise StackError(f"compiler {family}@{version}: not a Spack compiler spec "
                         "(e.g. ('gcc', '13.1.0'))")
    return f" %{family}@{version}"


def spack_packages_yaml(entries: Sequence[tuple[str, str, str]], *,
                        compiler: tuple[str, str] | None, platform: str,
                        aliases: Mapping[str, str] | None = None,
                        release: str | None = None) -> str:
    """A Spack ``packages.yaml`` with one external per (name, version, absolute prefix),
    built with ``compiler`` (family, version); sorted by Spack name, then version. The header
    comment names ``release`` and ``platform``."""
    plat = Platform.parse(platform)
    suffix = _compiler_part(compiler)
    found: dict[str, dict[str, tuple[str, str]]] = {}   # spack name -> version -> (prefix, name)
    for name, version, prefix in entries:
        spack = spack_name(name, aliases)
        if not _VERSION.match(version):
            raise StackError(f"package {name!r}: version {version!r} is not a Spack version "
                             "(letters, digits, '.', '-', '_')")
        if not prefix.startswith("/"):
            raise StackError(f"package {name!r} {version}: prefix {prefix!r} is not absolute")
        prefix = prefix.rstrip("/") or "/"
        seen = found.setdefault(spack, {}).get(version)
        if seen is not None and seen[0] != prefix:
            raise StackError(f"Spack package {spack}@{version} has two prefixes: {seen[0]} "
                             f"({seen[1]}) and {prefix} ({name})")
        found[spack][version] = (prefix, name)
    packages: dict[str, object] = {}
    for spack in sorted(found):
        versions = sorted(found[spack], key=_version_key)
        packages[spack] = {
            "externals": [{"spec": f"{spack}@{v}{suffix}", "prefix": found[spack][v][0]}
                          for v in versions],
            "buildable": False,
        }
    what = f"{release} on {plat}" if release else str(plat)
    header = (f"# Spack externals of {what}: {len(entries)} package(s), generated by pycvmfs "
              "(pycvmfs.stacks.spack).\n"
              "# Save it as packages.yaml in a Spack configuration scope to build on top of "
              "this stack.\n")
    body = yaml.safe_dump({"packages": packages}, sort_keys=False, default_flow_style=False,
                          width=1000)
    return header + body
