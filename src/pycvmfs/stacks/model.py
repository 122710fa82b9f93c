"""What a software stack is made of: packages (version, source, recipe, dependencies), view
settings and the stack itself (a release or a nightly slot on one platform)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pycvmfs.stacks.platform import Platform

__all__ = ["Condition", "PackageSpec", "Patch", "Source", "Stack", "ViewSettings", "home_var"]


def home_var(name: str) -> str:
    """The variable naming a dependency's prefix: ``libxml2`` → ``LIBXML2_HOME``,
    ``tauola++`` → ``TAUOLA___HOME`` (upper case, every non-alphanumeric as ``_``)."""
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper() + "_HOME"


@dataclass(frozen=True)
class Source:
    """Where a package's sources come from: a tarball (one or several alternative URLs, all
    giving the bytes of ``sha256``) or a git repository at a fixed ``commit``."""

    urls: tuple[str, ...] = ()
    sha256: str | None = None
    git: str | None = None
    commit: str | None = None

    def identity(self) -> dict[str, str]:
        """What the bytes are (hashed): the checksum or the commit, never a mirror's URL."""
        if self.git is not None:
            return {"git-commit": self.commit or ""}
        return {"sha256": self.sha256 or ""}


@dataclass(frozen=True)
class Patch:
    """A patch applied (``patch -p<strip>``) to the unpacked sources before the build."""

    path: str          # absolute path of the patch file
    sha256: str        # of its bytes, read when the description is loaded
    strip: int = 1

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Condition:
    """Where a package is part of the stack (empty tuple: any); matched on the platform."""

    arch: tuple[str, ...] = ()
    os: tuple[str, ...] = ()
    compiler: tuple[str, ...] = ()
    buildtype: tuple[str, ...] = ()

    def matches(self, platform: Platform) -> bool:
        def ok(values: tuple[str, ...], *candidates: str) -> bool:
            return not values or any(c in values for c in candidates)

        return (ok(self.arch, platform.arch) and ok(self.os, platform.os, platform.os_name)
                and ok(self.compiler, platform.compiler, platform.compiler_family)
                and ok(self.buildtype, platform.buildtype))


@dataclass(frozen=True)
class PackageSpec:
    """One package of a stack, as the description gives it."""

    name: str
    version: str
    source: Source | None = None
    depends: tuple[str, ...] = ()
    build: str = ""                       # shell commands, run with ``bash -e``
    test: str | None = None               # shell commands of the test step
    directory: str = ""                   # e.g. ``MCGenerators/pythia8``; "" means ``name``
    patches: tuple[Patch, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # extra build environment (hashed)
    relocate: bool = False                # build at a temporary prefix, then relocate+verify
    iset: bool = False                    # installed under the full (instruction-set) platform
    metadata: tuple[tuple[str, str], ...] = ()  # description, license, homepage... (not hashed)
    view_env: tuple[tuple[str, str], ...] = ()  # setup.sh exports: VAR -> path below the prefix
    when: Condition = field(default_factory=Condition)

    @property
    def dest(self) -> str:
        """The directory below ``releases/`` (``name`` unless the description says otherwise)."""
        return self.directory or self.name

    @property
    def home_var(self) -> str:
        return home_var(self.name)

    @property
    def is_generator(self) -> bool:
        """Packages below ``MCGenerators/`` go to the generators summary and the GenSer suite."""
        return "MCGenerators" in self.dest.split("/")


@dataclass(frozen=True)
class ViewSettings:
    """How the view of a release × platform is made."""

    enabled: bool = True
    priority: tuple[str, ...] = ()   # packages whose files win a conflict, first = highest
    exclude: tuple[str, ...] = ()    # packages left out of the view
    pythonpath: bool = True          # setup.sh exports PYTHONPATH (off: leave venvs alone)
    absolute_links: bool = False     # view symlinks absolute (/cvmfs/...) instead of relative


@dataclass
class Stack:
    """A release (``LCG_900``) or nightly slot (``dev4``) on one platform."""

    name: str
    kind: str                        # "release" or "slot"
    platform: Platform
    packages: dict[str, PackageSpec]  # in the order the description declared them
    top: tuple[str, ...] = ()        # roots of the build (empty: every package)
    prefix: str = "lcg"              # the top folder inside the repository
    repository: str | None = None    # the FQRN, when the description names one
    env: tuple[tuple[str, str], ...] = ()  # build environment of every package (hashed)
    view: ViewSettings = field(default_factory=ViewSettings)
    warnings: list[str] = field(default_factory=list)
    origin: str = ""                 # the file the description came from

    @property
    def version_label(self) -> str:
        """The release without ``LCG_`` (``VERSION: 900`` in the summaries), or the slot."""
        return self.name[4:] if self.name.startswith("LCG_") else self.name

    @property
    def is_nightly(self) -> bool:
        return self.kind == "slot"
