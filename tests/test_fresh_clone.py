"""A fresh clone is complete: its tests find their data inside it, and a plain user can install
it from a clone that root owns without writing into the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by every user (the tests' own may live under /root)


#: what a working tree has that a fresh clone has not (the test venv, builds, caches)
_NOT_IN_A_CLONE = shutil.ignore_patterns(".venv", "__pycache__", "*.so", ".pytest_cache",
                                         ".ruff_cache", ".hypothesis", "*.egg-info", "build")


def _tree(top: Path) -> dict[str, tuple[int, int, int]]:
    """Every path below ``top`` with its mode, size and mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), top)] = (
                st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def clone() -> Iterator[Path]:
    """The tree cloned (``git clone`` of a checkout, else a copy of the files a clone has) into
    a world-readable folder with no ``shared`` beside it."""
    top = Path(tempfile.mkdtemp(prefix="pycvmfs-clone-"))
    try:
        os.chmod(top, 0o755)
        dest = top / "pycvmfs"
        if (ROOT / ".git").exists():
            subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(dest)],
                           check=True)
        else:
            shutil.copytree(ROOT, dest, symlinks=True, ignore=_NOT_IN_A_CLONE)
            subprocess.run(["chmod", "-R", "a+rX", str(dest)], check=True)
        assert not (top / "shared").exists() and not (top.parent / "shared" / "fixtures").exists()
        yield dest
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_a_sample_of_the_suite_passes_in_a_clone_with_nothing_beside_it(clone):
    sample = ["tests/compat/test_golden_reader.py", "tests/compat/test_golden_catalogs.py",
              "tests/format/test_catalog_writer.py"]
    r = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p",
                        "no:cacheprovider", *sample],
                       cwd=clone, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    summary = r.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "error" not in summary and "skipped" not in summary, summary


def test_a_plain_user_installs_from_a_root_owned_clone_and_leaves_it_untouched(clone, tmp_path):
    if os.geteuid() != 0:
        pytest.fail("this test runs as root (it drops to nobody for the install)")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.fail(f"{SYSTEM_PYTHON} is missing (tools/test.sh installs python3-venv)")
    before = _tree(clone)
    home = Path(tempfile.mkdtemp(prefix="pycvmfs-user-"))
    try:
        os.chown(home, 65534, 65534)
        env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONFIG_FILE"):
            if key in os.environ:
                env[key] = os.environ[key]
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
        venv = home / "venv"
        subprocess.run([*as_nobody, SYSTEM_PYTHON, "-m", "venv", str(venv)], env=env, check=True,
                       capture_output=True, timeout=300)
        r = subprocess.run([*as_nobody, str(venv / "bin/pip"), "install", "-q", "--no-deps",
                            str(clone)], env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        r = subprocess.run([*as_nobody, str(venv / "bin/python"), "-c",
                            "import pycvmfs.client._fuse_lowlevel, pycvmfs.storage._httpcopy, "
                            "pycvmfs; print(pycvmfs.__file__)"],
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(str(venv)), r.stdout
        assert _tree(clone) == before
    finally:
        shutil.rmtree(home, ignore_errors=True)
