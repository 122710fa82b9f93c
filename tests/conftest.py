"""Shared test fixtures: the golden repository, its source trees, real HTTP servers on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.loopback import LoopbackServer, QuietHandler
from helpers.xattrs import xattrs_supported

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "fixtures" / "cvmfs-golden"
GOLDEN_FQRN = "golden.example.org"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The golden fixture folder (README, expected.json, keys/, golden.example.org/)."""
    if not (GOLDEN / GOLDEN_FQRN / ".cvmfspublished").exists():
        raise RuntimeError(f"golden fixture not found at {GOLDEN} (an incomplete clone?)")
    return GOLDEN


@pytest.fixture(scope="session")
def golden_repo(golden_dir: Path) -> Path:
    """The golden repository's storage directory (read-only)."""
    return golden_dir / GOLDEN_FQRN


@pytest.fixture(scope="session")
def golden_keys(golden_dir: Path) -> Path:
    return golden_dir / "keys"


@pytest.fixture(scope="session")
def golden_expected(golden_dir: Path) -> dict:
    import json

    return json.loads((golden_dir / "expected.json").read_text())


@pytest.fixture
def golden_copy(golden_repo: Path, tmp_path: Path) -> Path:
    """A writable copy of the golden repository storage, for tampering tests."""
    dest = tmp_path / GOLDEN_FQRN
    subprocess.run(["cp", "-r", str(golden_repo), str(dest)], check=True)
    subprocess.run(["chmod", "-R", "u+w", str(dest)], check=True)
    return dest


@pytest.fixture
def http_server() -> Iterator:
    """Factory: ``http_server(directory)`` starts a loopback server; all stop at teardown."""
    servers: list[LoopbackServer] = []

    def start(directory: Path, handler: type = QuietHandler) -> LoopbackServer:
        s = LoopbackServer(directory, handler)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def golden_server(golden_dir: Path) -> Iterator[LoopbackServer]:
    """The golden fixture folder served over HTTP; the repository URL is ``url + '/' + fqrn``."""
    s = LoopbackServer(golden_dir)
    yield s
    s.stop()


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
        if not xattrs_supported(base):
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


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory):
    """A real SeaweedFS S3 endpoint on loopback for the whole session (``helpers.seaweed``):
    ``seaweed.endpoint``, ``new_bucket()``, ``http_url(bucket)``, ``write_s3_conf(...)``."""
    from helpers.seaweed import SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("seaweed")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def deep_tmp_path(tmp_path: Path) -> Iterator[Path]:
    """A folder for trees thousands of levels deep, removed with ``rm -rf`` afterwards:
    ``shutil.rmtree``, and so pytest's own clean-up of old base folders, recurses once per
    level and fails on them with a RecursionError at the end of a later run."""
    path = tmp_path / "deep"
    path.mkdir()
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture
def mirror(golden_dir: Path) -> Iterator:
    """The golden repository served by a :class:`helpers.hostile.HostileMirror` on loopback:
    a test sets ``mirror.answers[url_path]`` to what a malicious mirror sends instead."""
    from helpers.hostile import HostileMirror

    m = HostileMirror(golden_dir)
    yield m
    m.stop()
