"""Fixtures for the compatibility tests: the golden fixture's source trees, regenerated."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _xattrs_supported(directory: Path) -> bool:
    probe = directory / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.pycvmfs-probe", b"1")
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise
    finally:
        probe.unlink()
    return True


@pytest.fixture(scope="session")
def golden_source_trees(golden_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with ``rev1/`` and ``rev2/``: the golden repository's source trees.

    Written by the fixture's own ``gen_fixture.py trees`` (deterministic, with user xattrs).
    The temporary directory must accept user xattrs; ``PYCVMFS_XATTR_TMPDIR`` names another
    base directory when it does not. Fails (never skips) when no candidate accepts them.
    """
    candidates = [tmp_path_factory.mktemp("golden-trees")]
    if extra := os.environ.get("PYCVMFS_XATTR_TMPDIR"):
        candidates.append(Path(extra))
    refused = []
    for base in candidates:
        base.mkdir(parents=True, exist_ok=True)
        if not _xattrs_supported(base):
            refused.append(str(base))
            continue
        out = base / "trees"
        proc = subprocess.run(
            [sys.executable, str(golden_dir / "gen_fixture.py"), "trees", str(out)],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"gen_fixture.py trees {out} failed:\n{proc.stderr}")
        if not (out / "rev1").is_dir() or not (out / "rev2").is_dir():
            raise RuntimeError(f"gen_fixture.py trees {out} did not write rev1/ and rev2/")
        return out
    raise RuntimeError(
        "no directory accepting user xattrs for the golden source trees (tried "
        + ", ".join(refused) + "); set PYCVMFS_XATTR_TMPDIR to one that does"
    )
