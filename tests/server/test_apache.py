"""The documented Apache configuration (docs/apache-cvmfs.conf), run by a real Apache 2.4 on
127.0.0.1."""

from __future__ import annotations

import email.utils
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from pycvmfs.client.cache import ObjectCache
from pycvmfs.client.repository import Repository
from pycvmfs.format.signature import load_public_keys
from pycvmfs.storage.http import HttpSource

from helpers.daemons import free_port, require_binary

ROOT = Path(__file__).resolve().parents[2]
SITE_CONF = ROOT / "docs" / "apache-cvmfs.conf"
APACHE = "/usr/sbin/apache2"
MODULES = Path("/usr/lib/apache2/modules")
FQRN = "golden.example.org"
CATALOG = "data/43/4e2742ad19baa1f5be5ffcb3c755ecabae7562C"
THREE_DAYS = 3 * 24 * 3600
STATUS_JSON = b'{"last_snapshot": "Tue Nov 24 20:50:00 UTC 2026"}\n'
META_JSON = b'{"administrator": "nobody"}\n'
IN_FLIGHT = b"half-written upload\n"

MAIN_CONF = """\
ServerRoot "{dir}"
ServerName 127.0.0.1
PidFile {dir}/apache2.pid
DefaultRuntimeDir {dir}
ErrorLog {dir}/error.log
LogLevel warn
{user}
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule alias_module {modules}/mod_alias.so
LoadModule dir_module {modules}/mod_dir.so
LoadModule mime_module {modules}/mod_mime.so
LoadModule headers_module {modules}/mod_headers.so
LoadModule expires_module {modules}/mod_expires.so
TypesConfig /etc/mime.types
<Directory />
    Require all denied
    AllowOverride None
</Directory>
Include {dir}/cvmfs.conf
"""


def storage_copy(golden_dir: Path, tmp: Path) -> Path:
    """A world-readable copy of the golden fixture folder (Apache's children run as ``nobody``
    when started by root) with the JSON files and a ``data/txn/`` upload."""
    storage = tmp / "storage"
    shutil.copytree(golden_dir / FQRN, storage / FQRN)
    (storage / FQRN / ".cvmfs_status.json").write_bytes(STATUS_JSON)
    (storage / FQRN / "meta.json").write_bytes(META_JSON)
    (storage / FQRN / "data" / "txn").mkdir(exist_ok=True)
    (storage / FQRN / "data" / "txn" / "upload.tmp").write_bytes(IN_FLIGHT)
    for p in [storage, *storage.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    tmp.chmod(0o755)
    return storage


def site_config(port: int, storage: Path) -> str:
    """docs/apache-cvmfs.conf with the listen address and the storage path substituted."""
    lines = [ln for ln in SITE_CONF.read_text().splitlines() if not ln.startswith("#")]
    text = "\n".join(lines) + "\n"
    for old, new, count in (("Listen 80\n", f"Listen 127.0.0.1:{port}\n", 1),
                            ("/srv/cvmfs", str(storage), 3)):
        assert text.count(old) == count, f"{SITE_CONF}: expected {count} x '{old}'"
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def apache(golden_dir: Path) -> Iterator[str]:
    """Apache serving a copy of the golden fixture folder; yields the ``/cvmfs/`` base URL."""
    require_binary(APACHE, "apache2")
    tmp = Path(tempfile.mkdtemp(prefix="pycvmfs-apache-"))
    storage = storage_copy(golden_dir, tmp)
    user = "User nobody\nGroup nogroup" if os.geteuid() == 0 else ""
    port = free_port()
    (tmp / "cvmfs.conf").write_text(site_config(port, storage))
    (tmp / "apache2.conf").write_text(MAIN_CONF.format(dir=tmp, user=user, modules=MODULES))
    out = open(tmp / "stderr.log", "wb")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen([APACHE, "-f", str(tmp / "apache2.conf"), "-D", "FOREGROUND"],
                            stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                logs = [tmp / "stderr.log", tmp / "error.log"]
                raise RuntimeError(f"apache2 exited with {proc.returncode}:\n" + "".join(
                    p.read_text() for p in logs if p.exists()))
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"apache2 did not listen on 127.0.0.1:{port}") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/cvmfs"
    finally:
        proc.terminate()  # SIGTERM: the parent stops its children and exits
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        out.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _expires_after(resp: urllib3.BaseHTTPResponse) -> float:
    date = email.utils.parsedate_to_datetime(resp.headers["Date"])
    expires = email.utils.parsedate_to_datetime(resp.headers["Expires"])
    return (expires - date).total_seconds()


def test_golden_repository_read_through_apache(apache: str, golden_keys: Path,
                                               golden_expected: dict, tmp_path: Path) -> None:
    src = HttpSource([f"{apache}/{FQRN}"], timeout=5.0)
    repo = Repository(src, public_keys=load_public_keys([golden_keys]), fqrn=FQRN,
                      cache=ObjectCache(tmp_path / "cache"))
    entries = golden_expected["trees"]["rev2"]["entries"]
    count = 0
    with repo, repo.open_revision() as view:
        for path, entry in entries.items():
            if entry["type"] == "file":
                data = view.read_bytes("/" + path)
                assert hashlib.sha1(data).hexdigest() == entry["sha1"], path
                count += 1
    assert count > 1000
    assert src.stats["failovers"] == 0 and src.stats["nioerr"] == 0


@pytest.mark.parametrize(("name", "body"), [
    (".cvmfspublished", None), (".cvmfswhitelist", None), (".cvmfsreflog", None),
    (".cvmfs_status.json", STATUS_JSON),
])
def test_cvmfs_files_expire_after_61_seconds(apache: str, golden_repo: Path, name: str,
                                             body: bytes | None) -> None:
    with urllib3.PoolManager() as pm:
        resp = pm.request("GET", f"{apache}/{FQRN}/{name}", retries=False)
    assert resp.status == 200
    assert resp.data == (body if body is not None else (golden_repo / name).read_bytes())
    assert resp.headers["Content-Type"] == "application/x-cvmfs"
    assert resp.headers["Cache-Control"] == "max-age=61"
    assert _expires_after(resp) == 61
    assert "Last-Modified" not in resp.headers and "ETag" not in resp.headers


def test_json_files_expire_after_61_seconds(apache: str) -> None:
    with urllib3.PoolManager() as pm:
        resp = pm.request("GET", f"{apache}/{FQRN}/meta.json", retries=False)
    assert resp.status == 200 and resp.data == META_JSON
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["Cache-Control"] == "max-age=61"
    assert _expires_after(resp) == 61
    assert "Last-Modified" not in resp.headers and "ETag" not in resp.headers


def test_data_objects_expire_after_three_days(apache: str, golden_repo: Path) -> None:
    with urllib3.PoolManager() as pm:
        resp = pm.request("GET", f"{apache}/{FQRN}/{CATALOG}", retries=False)
        assert resp.status == 200 and resp.data == (golden_repo / CATALOG).read_bytes()
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["Cache-Control"] == f"max-age={THREE_DAYS}"
        assert _expires_after(resp) == THREE_DAYS
        assert "Last-Modified" not in resp.headers and "ETag" not in resp.headers
        # If-Modified-Since is dropped: never a 304 a proxy could mishandle
        again = pm.request("GET", f"{apache}/{FQRN}/{CATALOG}", retries=False,
                           headers={"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"})
        assert again.status == 200 and again.data == resp.data
        part = pm.request("GET", f"{apache}/{FQRN}/{CATALOG}", retries=False,
                          headers={"Range": "bytes=100-199"})
        assert part.status == 206 and part.data == resp.data[100:200]
        missing = pm.request("GET", f"{apache}/{FQRN}/data/00/{'0' * 38}", retries=False)
        assert missing.status == 404


def test_uploads_in_flight_and_listings_are_not_served(apache: str) -> None:
    with urllib3.PoolManager() as pm:
        for path in ("data/txn/upload.tmp", "data/", "data", ""):
            resp = pm.request("GET", f"{apache}/{FQRN}/{path}", retries=False, redirect=False)
            assert resp.status in (403, 404), path
            assert IN_FLIGHT not in resp.data and b"Index of" not in resp.data


def test_connections_are_kept_alive(apache: str) -> None:
    port = int(apache.split(":")[2].split("/")[0])
    with urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1, block=True) as pool:
        for _ in range(3):
            resp = pool.request("GET", f"/cvmfs/{FQRN}/.cvmfspublished", retries=False)
            assert resp.status == 200 and resp.headers.get("Connection") != "close"
        assert pool.num_connections == 1
