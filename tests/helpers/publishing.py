"""Helpers for publisher tests."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from pycvmfs.client.repository import open_repository
from pycvmfs.publish.repository import Publisher


def new_repository(base: Path, fqrn: str, settings) -> Publisher:
    """``mkfs`` of ``fqrn`` with its storage in ``base/srv`` and its config in ``base/etc``."""
    return Publisher.mkfs(fqrn, base / "srv" / fqrn, config_dir=base / "etc", settings=settings)


def reader(pub: Publisher, cache_dir: Path, **kw):
    """The verified client on a publisher's storage, trusting its master key."""
    return open_repository(str(pub.config.storage), keys=[pub.config.key_path("pub")],
                           cache_dir=cache_dir, **kw)


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` (relative path: contents) below ``root``; returns ``root``."""
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def describe_tree(root: Path) -> dict[str, dict]:
    """Every entry below a local directory: type, mode, size, mtime, sha1, target, xattrs, ino."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            e = {"mode": stat.S_IMODE(st.st_mode), "mtime": int(st.st_mtime)}
            if stat.S_ISLNK(st.st_mode):
                e.update(type="symlink", target=os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                e.update(type="dir")
            elif stat.S_ISREG(st.st_mode):
                data = p.read_bytes()
                e.update(type="file", size=len(data), sha1=hashlib.sha1(data).hexdigest(),
                         nlink=st.st_nlink, ino=st.st_ino)
                xa = {}
                for k in os.listxattr(p, follow_symlinks=False):
                    if k.startswith("user."):
                        xa[k] = os.getxattr(p, k, follow_symlinks=False)
                e["xattrs"] = xa
            else:
                e.update(type="special", rdev=st.st_rdev, fmt=stat.S_IFMT(st.st_mode))
            out[rel] = e
    return out


def describe_view(view) -> dict[str, dict]:
    """The same description read through the client."""
    out = {}
    for _d, dirs, files in view.walk("/"):
        for s in dirs + files:
            rel = s.path.lstrip("/")
            e = {"mode": s.permissions, "mtime": s.st_mtime}
            if s.is_symlink:
                e.update(type="symlink", target=view.readlink(s.path, expand=False))
            elif s.is_dir:
                e.update(type="dir")
            elif s.is_file:
                data = view.read_bytes(s.path)
                e.update(type="file", size=len(data), sha1=hashlib.sha1(data).hexdigest(),
                         nlink=s.st_nlink, ino=s.st_ino)
                e["xattrs"] = view.xattrs(s.path, follow_symlinks=False)
            else:
                e.update(type="special", rdev=s.st_rdev, fmt=stat.S_IFMT(s.st_mode))
            out[rel] = e
    return out
