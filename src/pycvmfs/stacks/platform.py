"""Platform strings (``arch-os-compiler-buildtype``, e.g. ``x86_64-el9-gcc13-opt``) parsed once
into a structured value, and the host's own platform."""

from __future__ import annotations

import platform as _platform
import re
import shutil
import subprocess
from dataclasses import dataclass, replace

from pycvmfs.errors import StackError

__all__ = ["BUILD_TYPES", "Platform", "host_os", "host_platform"]

#: lcgcmake's build types (opt = Release, dbg = Debug, o2g = RelWithDebInfo, ...)
BUILD_TYPES = ("opt", "dbg", "o2g", "fst", "min", "cov")

_ARCH = re.compile(r"^(?P<arch>[a-z0-9]+(?:_[a-z0-9]+)*?)"
                   r"(?:\+(?P<iset>[a-z0-9_.]+)|_(?P<level>v[1-4]))?$")
_OS = re.compile(r"^(?P<name>[a-z]+)(?P<version>[0-9]*)$")
_COMPILER = re.compile(r"^(?P<family>[a-z]+)(?P<version>[0-9]+)"
                       r"(?:\+(?P<variant>[A-Za-z0-9_.]+))?$")


@dataclass(frozen=True, order=True)
class Platform:
    """One binary tag: architecture (with an instruction set ``+avx2`` or a level ``_v3``),
    operating system, compiler (family and version, an optional ``+variant``), build type."""

    arch: str
    os: str
    compiler: str
    buildtype: str
    iset: str | None = None
    level: str | None = None
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``x86_64[+iset|_vN]-os-compiler[+variant]-buildtype``; a clear error otherwise."""
        parts = text.split("-")
        if len(parts) != 4 or not all(parts):
            raise StackError(f"bad platform string {text!r}: expected four '-'-separated fields "
                             "arch-os-compiler-buildtype, e.g. x86_64-el9-gcc13-opt")
        arch_s, os_s, comp_s, bt = parts
        a = _ARCH.match(arch_s)
        if not a:
            raise StackError(f"bad platform string {text!r}: architecture {arch_s!r}")
        if not _OS.match(os_s):
            raise StackError(f"bad platform string {text!r}: operating system {os_s!r} "
                             "(letters then digits, e.g. el9, debian12, ubuntu2204)")
        c = _COMPILER.match(comp_s)
        if not c:
            raise StackError(f"bad platform string {text!r}: compiler {comp_s!r} "
                             "(family then version, e.g. gcc13, clang16)")
        if bt not in BUILD_TYPES:
            raise StackError(f"bad platform string {text!r}: build type {bt!r} "
                             f"(one of {', '.join(BUILD_TYPES)})")
        return cls(arch=a["arch"], os=os_s, compiler=f"{c['family']}{c['version']}",
                   buildtype=bt, iset=a["iset"], level=a["level"], variant=c["variant"])

    def __str__(self) -> str:
        arch = self.arch + (f"+{self.iset}" if self.iset else "") + (
            f"_{self.level}" if self.level else "")
        comp = self.compiler + (f"+{self.variant}" if self.variant else "")
        return f"{arch}-{self.os}-{comp}-{self.buildtype}"

    # -- the pieces lcgcmake derives (LCG_OS, LCG_OSVERS, LCG_COMP, LCG_COMPVERS) --------------
    @property
    def os_name(self) -> str:
        return _OS.match(self.os)["name"]  # type: ignore[index]

    @property
    def os_version(self) -> str:
        return _OS.match(self.os)["version"]  # type: ignore[index]

    @property
    def compiler_family(self) -> str:
        return _COMPILER.match(self.compiler)["family"]  # type: ignore[index]

    @property
    def compiler_version(self) -> str:
        return _COMPILER.match(self.compiler)["version"]  # type: ignore[index]

    @property
    def system(self) -> str:
        """Without the build type (lcgcmake's ``LCG_SYSTEM``), e.g. ``x86_64-el9-gcc13``."""
        return str(self).rsplit("-", 1)[0]

    @property
    def naked(self) -> Platform:
        """The platform without its instruction set (where non-ISET packages are installed)."""
        return replace(self, iset=None)

    def with_buildtype(self, buildtype: str) -> Platform:
        return Platform.parse(f"{self.system}-{buildtype}")

    def fallbacks(self) -> list[Platform]:
        """This platform, then the ones a consumer falls back to: ``x86_64+avx2`` →
        ``x86_64_v3`` → ``x86_64_v2`` → ``x86_64``; a compiler variant is dropped last."""
        out = [self]
        base = replace(self, iset=None, level=None)
        if self.iset == "avx2" or self.level in ("v3", "v4"):
            out += [replace(base, level="v3"), replace(base, level="v2")]
        elif self.level == "v2":
            pass
        out.append(base)
        if self.variant:
            out += [replace(p, variant=None) for p in list(out)]
        seen: list[Platform] = []
        for p in out:
            if p not in seen:
                seen.append(p)
        return seen


def _os_release() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                k, sep, v = line.strip().partition("=")
                if sep:
                    out[k] = v.strip().strip('"')
    except OSError:
        pass
    return out


def host_os() -> str:
    """The host's OS token: ``el9`` (RHEL, Alma, Rocky, CentOS Stream 9; ``centos7``),
    ``debian12``, ``ubuntu2204``, ``fedora40``; ``linux`` when unknown."""
    info = _os_release()
    ident = info.get("ID", "").lower()
    like = info.get("ID_LIKE", "").lower().split()
    ver = info.get("VERSION_ID", "")
    major = ver.split(".")[0]
    if ident == "centos" and major == "7":
        return "centos7"
    if ident in ("rhel", "almalinux", "rocky", "centos") or "rhel" in like:
        return f"el{major}"
    if ident == "ubuntu":
        return "ubuntu" + ver.replace(".", "")
    if ident and major.isdigit():
        return f"{ident}{major}"
    return "linux"


def host_platform(buildtype: str = "opt", compiler: str | None = None) -> Platform:
    """The platform of this machine with its default C compiler (``cc``/``gcc``), e.g.
    ``x86_64-debian12-gcc12-opt``."""
    if compiler is None:
        cc = shutil.which("gcc") or shutil.which("cc")
        if cc is None:
            raise StackError("no C compiler (gcc or cc) on PATH to name the host platform; "
                             "give the platform explicitly")
        ver = subprocess.run([cc, "-dumpversion"], capture_output=True, text=True,
                             check=False).stdout.strip()
        family = "clang" if "clang" in subprocess.run(
            [cc, "--version"], capture_output=True, text=True, check=False).stdout else "gcc"
        compiler = f"{family}{ver.split('.')[0] or '0'}"
    arch = _platform.machine() or "x86_64"
    return Platform.parse(f"{arch}-{host_os()}-{compiler}-{buildtype}")
