"""CVMFS_LOW_SPEED_LIMIT from the client configuration reaches the HTTP sources the mount and
the CLI make: a server at 40 kB/s is too slow under a limit of 100 kB/s."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.client.config import load_client_config
from pycvmfs.client.repository import open_configured_repository
from pycvmfs.errors import FetchError

from helpers.hostile import SlowServer

FQRN = "golden.example.org"


@pytest.fixture
def forty_kb_per_s() -> Iterator[SlowServer]:
    s = SlowServer(piece=4000, interval=0.1, length=200_000)
    yield s
    s.stop()


def _config(tmp_path: Path, url: str, golden_keys: Path, limit: int | None) -> Path:
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "default.conf").write_text(
        f"CVMFS_SERVER_URL={url}/@fqrn@\nCVMFS_HTTP_PROXY=DIRECT\nCVMFS_TIMEOUT_DIRECT=1\n"
        f"CVMFS_MAX_RETRIES=0\nCVMFS_KEYS_DIR={golden_keys}\n"
        + ("" if limit is None else f"CVMFS_LOW_SPEED_LIMIT={limit}\n"))
    return conf


def test_the_mount_source_takes_the_configured_limit(forty_kb_per_s, golden_keys, tmp_path):
    conf = _config(tmp_path, forty_kb_per_s.url, golden_keys, 100_000)
    cfg = load_client_config(FQRN, config_dir=conf)
    with open_configured_repository(cfg, cache_dir=tmp_path / "cache") as repo:
        assert repo.source.low_speed_limit == 100_000
        with pytest.raises(FetchError, match=r"too slow: .* under the low-speed limit of "
                                            r"100000 bytes/s"):
            repo.refresh()


def test_pycvmfs_probe_gives_up_a_server_under_the_configured_limit(forty_kb_per_s,
                                                                    golden_keys, tmp_path):
    conf = _config(tmp_path, forty_kb_per_s.url, golden_keys, 100_000)
    run = subprocess.run([sys.executable, "-m", "pycvmfs.cli.main", "probe", FQRN,
                          "--config-dir", str(conf)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "too slow" in run.stdout and "100000 bytes/s" in run.stdout, run.stdout
