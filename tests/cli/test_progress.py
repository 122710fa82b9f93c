"""The progress display of long commands: bytes of a known total with a rate, shown where
stderr is not a terminal only when PYCVMFS_PROGRESS=1 asks for it."""

from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path

import pytest

from helpers.progress import bytes_line

FQRN = "progress.example.org"


@pytest.fixture
def repo(pycvmfs, tmp_path: Path) -> list[str]:
    """A new repository; the --config-dir arguments that name it."""
    etc = tmp_path / "etc"
    pycvmfs("mkfs", FQRN, "--storage", tmp_path / "srv", "--config-dir", etc)
    return ["--config-dir", str(etc)]


def test_publish_shows_bytes_of_the_total_with_a_rate(pycvmfs, cli_env, repo, tmp_path):
    src = tmp_path / "src"
    total = 0
    for i in range(40):
        (src / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        data = os.urandom(40_000 + 1000 * i)
        (src / f"d{i % 3}" / f"f{i}").write_bytes(data)
        total += len(data)
    env = cli_env()
    env["PYCVMFS_PROGRESS"] = "1"
    r = pycvmfs("publish", FQRN, "--from", src, *repo, env=env)
    m = bytes_line(r.stderr, "ingesting")
    assert m.group(1) == m.group(2) == f"{total / 1e6:.1f} MB"
    assert re.search(r"^scanning .* 40/40\b", r.stderr, re.MULTILINE), r.stderr

    # not a terminal and not asked for: nothing on stderr
    (src / "d0" / "f0").write_bytes(b"changed")
    r = pycvmfs("publish", FQRN, "--from", src, *repo)
    assert r.stderr == ""
    env["PYCVMFS_PROGRESS"] = "0"
    (src / "d0" / "f0").write_bytes(b"changed again")
    assert pycvmfs("publish", FQRN, "--from", src, *repo, env=env).stderr == ""


def test_ingest_shows_archive_bytes_read_of_its_size(pycvmfs, cli_env, repo, tmp_path):
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tf:
        for i in range(40):  # over 1 MB
            data = os.urandom(30_000)
            ti = tarfile.TarInfo(f"m{i}")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    env = cli_env()
    env["PYCVMFS_PROGRESS"] = "1"
    r = pycvmfs("ingest", FQRN, "--tar", archive, "--to", "/t", *repo, env=env)
    m = bytes_line(r.stderr, "reading")
    assert m.group(1) == m.group(2) == f"{archive.stat().st_size / 1e6:.1f} MB"


def test_snapshot_shows_objects_and_bytes_with_a_rate(pycvmfs, cli_env, golden_server,
                                                      golden_keys, tmp_path):
    env = cli_env()
    env["PYCVMFS_PROGRESS"] = "1"
    r = pycvmfs("snapshot", f"{golden_server.url}/golden.example.org", tmp_path / "replica",
                "-k", golden_keys, "--state-dir", tmp_path / "state", env=env)
    m = bytes_line(r.stderr, "file data")
    assert m.group(1) == m.group(2)
    objects = re.search(r"^objects .*? ([\d,]+)/([\d,]+) ", r.stderr, re.MULTILINE)
    assert objects and objects.group(1) == objects.group(2) != "0", r.stderr
    assert "+" not in r.stderr  # the walk is over: every total is final
