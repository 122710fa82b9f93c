"""Walking a mounted repository with plain OS calls, in the shape of expected.json entries."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

_XATTRS = ("user.comment", "user.empty", "user.binary")  # the golden fixture's user xattrs


def walk_mount(root: Path) -> dict[str, dict]:
    """Every entry below a mount point: type, mode, mtime, size, sha1, target, xattrs_hex."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            e: dict = {"mode": f"{stat.S_IMODE(st.st_mode):o}", "mtime": int(st.st_mtime)}
            if stat.S_ISLNK(st.st_mode):
                e.update(type="symlink", target=os.readlink(p), size=st.st_size)
            elif stat.S_ISDIR(st.st_mode):
                e["type"] = "dir"
            else:
                data = p.read_bytes()
                e.update(type="file", size=st.st_size, sha1=hashlib.sha1(data).hexdigest(),
                         nlink=st.st_nlink)
                xa = {k: os.getxattr(p, k).hex() for k in os.listxattr(p) if k in _XATTRS}
                if xa:
                    e["xattrs_hex"] = xa
                assert len(data) == st.st_size, p
            out[str(p.relative_to(root))] = e
    return out


def assert_matches_expected(got: dict[str, dict], expected: dict[str, dict]) -> None:
    """Compare :func:`walk_mount` output with ``expected.json``'s ``trees.<rev>.entries``."""
    assert sorted(got) == sorted(expected)
    for path, exp in expected.items():
        g = got[path]
        assert (g["type"], g["mode"], g["mtime"]) == (exp["type"], exp["mode"], exp["mtime"]), path
        if exp["type"] == "file":
            assert (g["size"], g["sha1"]) == (exp["size"], exp["sha1"]), path
            assert g["nlink"] == exp["published_nlink"], path
            assert g.get("xattrs_hex", {}) == exp.get("xattrs_hex", {}), path
        elif exp["type"] == "symlink":
            assert (g["target"], g["size"]) == (exp["target"], exp["size"]), path
