"""Where a stack's pieces go inside a repository (the layout of ``/cvmfs/sft.cern.ch/lcg``).

Every path here is relative to the repository root (``lcg/releases/...``) unless its name
says ``prefix`` or ``abs`` (``/cvmfs/FQRN/lcg/releases/...``)::

    <top>/releases/<dir>/<version>-<hash>/<platform>/    one build, never changed once published
    <top>/releases/LCG_<v>/<dir>/<version>/<platform>
                                 -> ../../../<dir>/<version>-<hash>/<platform>
    <top>/releases/LCG_<v>/LCG_externals_<platform>.txt, LCG_generators_<platform>.txt
                                 and their .json twins
    <top>/views/LCG_<v>/<platform>/                      view, setup.sh, setup.csh, view.json
    <top>/nightlies/<slot>/<Day>/<dir>/<version>/<platform>  -> the build in <top>/releases
    <top>/nightlies/<slot>/<Day>/isDone-<platform> | isDone-unstable-<platform>, summaries
    <top>/views/<slot>/<Day>/<platform>/
    <top>/views/<slot>/latest/<platform>                 -> ../<Day>/<platform>
    <top>/results/<LCG_v | slot/Day>/<platform>/         results.json, Build.xml, Test.xml
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from pycvmfs.errors import StackError

__all__ = ["DAYS", "StackLayout", "check_name", "relative_link"]

#: the nightly ring: English three-letter weekdays, Monday first (datetime.weekday() order)
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

_FQRN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


def check_name(name: str, what: str = "release or slot") -> str:
    """A release or slot name usable as one path component (``LCG_900``, ``dev4``)."""
    if not _NAME.match(name) or name in (".", ".."):
        raise StackError(f"bad {what} name {name!r}: letters, digits and _ . + - "
                         "(not starting with '.' or '-')")
    return name


def relative_link(link: str, target: str) -> str:
    """The relative symlink text that makes ``link`` point at ``target`` (both relative to the
    same root)."""
    return posixpath.relpath(target, posixpath.dirname(link) or ".")


@dataclass(frozen=True)
class StackLayout:
    """The layout of the stacks below ``top`` (default ``lcg``) in repository ``fqrn``."""

    fqrn: str
    top: str = "lcg"

    def __post_init__(self) -> None:
        if not _FQRN.match(self.fqrn):
            raise StackError(f"bad repository name {self.fqrn!r}")
        norm = posixpath.normpath(self.top) if self.top else ""
        if (not self.top or self.top.startswith("/") or norm != self.top or norm == "."
                or norm.startswith("..")):
            raise StackError(f"bad stack top folder {self.top!r}: a relative path inside "
                             "the repository, e.g. lcg")

    # -- builds ------------------------------------------------------------------------------
    @property
    def mount_root(self) -> str:
        return f"/cvmfs/{self.fqrn}"

    @property
    def releases(self) -> str:
        return f"{self.top}/releases"

    @property
    def store_root(self) -> str:
        """The absolute directory every build is installed below (a hash input)."""
        return f"{self.mount_root}/{self.releases}"

    def package_rel(self, dest: str, version: str, short: str, platform: str) -> str:
        return f"{self.releases}/{dest}/{version}-{short}/{platform}"

    def package_prefix(self, dest: str, version: str, short: str, platform: str) -> str:
        return f"{self.mount_root}/{self.package_rel(dest, version, short, platform)}"

    def abs(self, rel: str) -> str:
        return f"{self.mount_root}/{rel}"

    # -- releases ----------------------------------------------------------------------------
    def release_rel(self, release: str) -> str:
        return f"{self.releases}/{check_name(release)}"

    def release_link(self, release: str, dest: str, version: str, short: str,
                     platform: str) -> tuple[str, str]:
        """``(link, relative target)`` of a package in a release's index."""
        link = f"{self.release_rel(release)}/{dest}/{version}/{platform}"
        return link, relative_link(link, self.package_rel(dest, version, short, platform))

    def summary_rel(self, where: str, kind: str, platform: str, ext: str = "txt") -> str:
        """``where``: a release or nightly day directory; ``kind``: externals, generators."""
        return f"{where}/LCG_{kind}_{platform}.{ext}"

    # -- views -------------------------------------------------------------------------------
    def view_rel(self, name: str, platform: str) -> str:
        for part in name.split("/"):
            check_name(part)
        return f"{self.top}/views/{name}/{platform}"

    # -- nightlies ---------------------------------------------------------------------------
    def nightly_rel(self, slot: str) -> str:
        return f"{self.top}/nightlies/{check_name(slot, 'slot')}"

    def day_rel(self, slot: str, day: str) -> str:
        if day not in DAYS:
            raise StackError(f"bad nightly day {day!r}: one of {', '.join(DAYS)}")
        return f"{self.nightly_rel(slot)}/{day}"

    def nightly_link(self, slot: str, day: str, dest: str, version: str, short: str,
                     platform: str) -> tuple[str, str]:
        link = f"{self.day_rel(slot, day)}/{dest}/{version}/{platform}"
        return link, relative_link(link, self.package_rel(dest, version, short, platform))

    def marker_rel(self, slot: str, day: str, platform: str, *, unstable: bool = False) -> str:
        name = f"isDone-unstable-{platform}" if unstable else f"isDone-{platform}"
        return f"{self.day_rel(slot, day)}/{name}"

    def nightly_view_rel(self, slot: str, day: str, platform: str) -> str:
        return self.view_rel(f"{slot}/{day}", platform)

    def latest_link(self, slot: str, day: str, platform: str) -> tuple[str, str]:
        link = f"{self.top}/views/{slot}/latest/{platform}"
        return link, f"../{day}/{platform}"

    # -- CI results --------------------------------------------------------------------------
    def results_rel(self, name: str, platform: str, day: str | None = None) -> str:
        return f"{self.top}/results/{name}/{day}/{platform}" if day else \
            f"{self.top}/results/{name}/{platform}"
