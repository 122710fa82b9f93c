"""Tests of ``pycvmfs config showconfig`` and ``pycvmfs probe`` run as the real command."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

GOLDEN_FQRN = "golden.example.org"


def write(config_dir: Path, relpath: str, text: str) -> Path:
    p = config_dir / relpath
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


@pytest.fixture(scope="module")
def dead_url() -> str:
    """A loopback URL nobody listens on (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_showconfig_prints_every_variable_with_its_file(pycvmfs, tmp_path: Path) -> None:
    default = write(tmp_path, "default.conf",
                    "CVMFS_HTTP_PROXY=DIRECT\nCVMFS_TIMEOUT=5\nCVMFS_QUOTA_LIMIT=4000\n")
    local = write(tmp_path, "config.d/golden.example.org.local",
                  'CVMFS_TIMEOUT=9\nCVMFS_SERVER_URL="http://a/@fqrn@;http://b/@fqrn@"\n')
    r = pycvmfs("config", "showconfig", GOLDEN_FQRN, "--config-dir", tmp_path)
    assert r.lines == [
        "CVMFS_REPOSITORY_NAME=golden.example.org",
        f"CVMFS_HTTP_PROXY=DIRECT    # from {default}",
        f"CVMFS_QUOTA_LIMIT=4000    # from {default}",
        f"CVMFS_SERVER_URL='http://a/@fqrn@;http://b/@fqrn@'    # from {local}",
        f"CVMFS_TIMEOUT=9    # from {local}",
    ]


def test_showconfig_json_has_values_sources_and_lines(pycvmfs, cli_env, tmp_path: Path) -> None:
    write(tmp_path, "default.conf", "CVMFS_HTTP_PROXY=DIRECT\n")
    domain = write(tmp_path, "domain.d/example.org.conf", "# keys\nCVMFS_KEYS_DIR=/k\n")
    env = cli_env()
    env["PYCVMFS_CONFIG_DIR"] = str(tmp_path)  # no --config-dir: the environment names it
    data = pycvmfs("config", "showconfig", GOLDEN_FQRN, "--json", env=env).json()
    assert data["fqrn"] == GOLDEN_FQRN
    assert data["files"] == [str(tmp_path / "default.conf"), str(domain)]
    assert data["variables"]["CVMFS_KEYS_DIR"] == {"value": "/k", "source": str(domain),
                                                   "line": 2}
    assert sorted(data["variables"]) == ["CVMFS_HTTP_PROXY", "CVMFS_KEYS_DIR"]


def test_showconfig_reports_malformed_line(pycvmfs, tmp_path: Path) -> None:
    bad = write(tmp_path, "default.local", "CVMFS_A=ok\nCVMFS_B='open\n")
    r = pycvmfs("config", "showconfig", GOLDEN_FQRN, "--config-dir", tmp_path, expect=1)
    assert f"{bad}:2: unterminated single quote" in r.stderr
    assert r.stdout == b""


def test_probe_reports_each_server_and_succeeds_if_one_works(pycvmfs, golden_server,
                                                             dead_url: str,
                                                             tmp_path: Path) -> None:
    write(tmp_path, "default.conf", "CVMFS_HTTP_PROXY=DIRECT\nCVMFS_MAX_RETRIES=0\n")
    write(tmp_path, "domain.d/example.org.conf",
          f'CVMFS_SERVER_URL="{dead_url}/@fqrn@;{golden_server.url}/@fqrn@"\n')
    r = pycvmfs("probe", GOLDEN_FQRN, "--config-dir", tmp_path)
    assert len(r.lines) == 2
    assert r.lines[0].startswith(f"Probing {dead_url}/{GOLDEN_FQRN}... Failed (")
    assert "connection failed" in r.lines[0]
    assert r.lines[1] == f"Probing {golden_server.url}/{GOLDEN_FQRN}... OK"


def test_probe_falls_back_from_dead_proxy_to_direct(pycvmfs, golden_server, dead_url: str,
                                                    tmp_path: Path) -> None:
    write(tmp_path, "default.conf",
          f'CVMFS_HTTP_PROXY="{dead_url}"\nCVMFS_FALLBACK_PROXY=DIRECT\n'
          f"CVMFS_SERVER_URL={golden_server.url}/@fqrn@\n")
    r = pycvmfs("probe", GOLDEN_FQRN, "--config-dir", tmp_path)
    assert r.lines == [f"Probing {golden_server.url}/{GOLDEN_FQRN}... OK"]


def test_probe_fails_when_no_server_works(pycvmfs, golden_server, dead_url: str,
                                          tmp_path: Path) -> None:
    # the second URL serves a real manifest, but for another repository
    write(tmp_path, "default.conf",
          "CVMFS_HTTP_PROXY=DIRECT\n"
          f'CVMFS_SERVER_URL="{dead_url}/@fqrn@;{golden_server.url}/{GOLDEN_FQRN}"\n')
    r = pycvmfs("probe", "other.example.org", "--config-dir", tmp_path, expect=1)
    assert r.lines[0].startswith(f"Probing {dead_url}/other.example.org... Failed (")
    assert r.lines[1] == (f"Probing {golden_server.url}/{GOLDEN_FQRN}... Failed (manifest is "
                          f"for {GOLDEN_FQRN}, not other.example.org)")
    assert "no server answered" in r.stderr


def test_probe_without_http_proxy_is_an_error(pycvmfs, golden_server, tmp_path: Path) -> None:
    write(tmp_path, "default.conf", f"CVMFS_SERVER_URL={golden_server.url}/@fqrn@\n")
    r = pycvmfs("probe", GOLDEN_FQRN, "--config-dir", tmp_path, expect=1)
    assert "CVMFS_HTTP_PROXY is required" in r.stderr
