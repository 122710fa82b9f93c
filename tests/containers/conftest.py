"""Fixtures for the container tests: a repository that records xattrs, reading flats back
through the verified client and through a FUSE mount, and the umoci oracle."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from containers.treecompare import USER_XATTRS, Record, content_store, file_sha256
from pycvmfs.publish.config import ServerSettings
from pycvmfs.publish.repository import Publisher

from helpers.fuse import mount
from helpers.loopback import LoopbackServer
from helpers.publishing import new_repository

FQRN = "unpacked.example.org"
_KINDS = {"file": "file", "dir": "dir", "symlink": "symlink", "chardev": "char",
          "blockdev": "block", "fifo": "fifo"}


def require_tool(name: str, package: str | None = None) -> str:
    """The path of the program ``name``; when it is missing the test fails (never skips),
    saying how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed" + (f" (Debian package '{package}')" if package
                                                  else "")
                    + ": run tools/test.sh (it installs the container test tools)")
    return path


@pytest.fixture
def make_cpub(tmp_path):
    """Factory of repositories for images (xattrs recorded, as the graphdriver docs ask)."""
    made = []

    def make(fqrn: str = FQRN, **overrides) -> Publisher:
        settings = ServerSettings()
        settings.override(include_xattrs=True, **overrides)
        pub = new_repository(tmp_path / f"crepo{len(made)}", fqrn, settings)
        made.append(pub)
        return pub

    return make


@pytest.fixture
def cpub(make_cpub) -> Publisher:
    return make_cpub()


@pytest.fixture
def sink(tmp_path):
    """(a real Ingester, its LocalStorage) below ``tmp_path``: where layers' contents go."""
    ing, store = content_store(tmp_path / "store")
    with ing:
        yield ing, store


def listing_from_view(view, top: str, *, xattr_prefixes=USER_XATTRS,
                      sha256_of=None) -> dict[bytes, Record]:
    """Every path below repository path ``top`` read through the verified client (``b""``
    for ``top`` itself); file contents hashed as the client returns them."""
    import hashlib

    def content_sha(path: str) -> str:
        h = hashlib.sha256()
        with view.open(path) as f:
            while block := f.read(1 << 20):
                h.update(block)
        return h.hexdigest()

    out: dict[bytes, Record] = {}
    base = os.fsencode(top.rstrip("/"))
    groups: dict = {}

    def record(s, rel: bytes) -> Record:
        e = s.entry
        kind = _KINDS[e.file_type]
        xattrs = tuple(sorted((k, v) for k, v in e.xattrs(what=s.path).items()
                              if k.startswith(xattr_prefixes)))
        link = None
        if kind == "file" and e.hardlink_group and e.linkcount > 1:
            link = groups.setdefault((rel.rpartition(b"/")[0], e.hardlink_group), len(groups))
        return Record(kind, stat.S_IMODE(e.mode), e.uid, e.gid,
                      size=e.size if kind == "file" else 0,
                      sha256=content_sha(s.path) if kind == "file" else "",
                      target=e.symlink if kind == "symlink" else b"",
                      rdev=e.rdev if kind in ("char", "block") else 0, xattrs=xattrs, link=link,
                      mtime=e.mtime)

    out[b""] = record(view.lstat(top), b"")
    for dirpath, dirs, files in view.walk(top):
        rel_dir = os.fsencode(dirpath)[len(base) + 1:]
        for s in dirs + files:
            rel = rel_dir + b"/" + s.entry.name if rel_dir else s.entry.name
            out[rel] = record(s, rel)
    return out


def umoci_rootfs(layout: Path, tag: str, dest: Path) -> Path:
    """The oracle: ``umoci unpack`` (as root, owners and devices kept) of ``layout:tag`` into
    the bundle ``dest`` (its runtime ``config.json`` too); the bundle's rootfs."""
    umoci = require_tool("umoci")
    if os.geteuid() != 0:
        pytest.fail("the umoci oracle unpacks as root (owners, devices): run the tests as root")
    res = subprocess.run([umoci, "unpack", "--image", f"{layout}:{tag}", str(dest)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    return dest / "rootfs"


def without(listing: dict[bytes, Record], drop: set[bytes]) -> dict[bytes, Record]:
    """``listing`` without the paths in ``drop`` and everything below them."""
    def dropped(p: bytes) -> bool:
        return any(p == d or p.startswith(d + b"/") for d in drop)
    return {p: r for p, r in listing.items() if not dropped(p)}


class MountedRepository:
    """A repository served over loopback HTTP and mounted with ``pycvmfs mount``."""

    def __init__(self, pub: Publisher, where: Path, *options: str) -> None:
        self.pub = pub
        self.server = LoopbackServer(pub.config.storage)
        where.mkdir(parents=True, exist_ok=True)
        self.mp = mount(pub.fqrn, where / "mnt", self.server.url, pub.config.key_path("pub"),
                        where / "cache", *options, log_file=where / "mount.log")

    def close(self) -> None:
        if os.path.ismount(self.mp):
            subprocess.run(["umount", "-l", str(self.mp)], check=False)
        self.server.stop()


@pytest.fixture
def mount_repo(tmp_path):
    """``mount_repo(pub, *options)`` -> MountedRepository; unmounted at teardown."""
    made: list[MountedRepository] = []

    def make(pub: Publisher, *options: str) -> MountedRepository:
        m = MountedRepository(pub, tmp_path / f"m{len(made)}", "--no-claim-ownership",
                              *options)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


__all__ = ["FQRN", "MountedRepository", "file_sha256", "listing_from_view", "require_tool",
           "umoci_rootfs", "without"]
