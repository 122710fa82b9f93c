"""The documented nginx configuration (docs/nginx-cvmfs.conf), run by a real nginx on 127.0.0.1."""

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
SITE_CONF = ROOT / "docs" / "nginx-cvmfs.conf"
NGINX = "/usr/sbin/nginx"
FQRN = "golden.example.org"
CATALOG = "data/43/4e2742ad19baa1f5be5ffcb3c755ecabae7562C"
THREE_DAYS = 3 * 24 * 3600

MAIN_CONF = """\
{user}daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    include {dir}/cvmfs.conf;
}}
"""


STATUS_JSON = b'{"last_snapshot": "Tue Nov 24 20:50:00 UTC 2026"}\n'
META_JSON = b'{"administrator": "nobody"}\n'
IN_FLIGHT = b"half-written upload\n"


def storage_copy(golden_dir: Path, tmp: Path) -> Path:
    """A world-readable copy of the golden fixture folder (a server's workers may run as
    ``nobody``) with the JSON files and the ``data/txn/`` upload a storage can also hold."""
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
    """docs/nginx-cvmfs.conf with the listen address and the storage path substituted."""
    text = SITE_CONF.read_text()
    for old, new in (("listen 80;", f"listen 127.0.0.1:{port};"),
                     ("alias /srv/cvmfs/;", f"alias {storage}/;")):
        assert text.count(old) == 1, f"{SITE_CONF}: expected one '{old}'"
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def nginx(golden_dir: Path) -> Iterator[str]:
    """nginx serving the golden fixture folder; yields the ``/cvmfs/`` base URL."""
    require_binary(NGINX, "nginx-light")
    tmp = Path(tempfile.mkdtemp(prefix="pycvmfs-nginx-"))
    storage = storage_copy(golden_dir, tmp)
    # workers drop root; they must reach the files
    user = "user nobody nogroup;\n" if os.geteuid() == 0 else ""
    port = free_port()
    (tmp / "cvmfs.conf").write_text(site_config(port, storage))
    (tmp / "nginx.conf").write_text(MAIN_CONF.format(user=user, dir=tmp))
    out = open(tmp / "stderr.log", "wb")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen([NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf"),
                             "-e", str(tmp / "error.log")], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {proc.returncode}:\n"
                                   + (tmp / "stderr.log").read_text()
                                   + (tmp / "error.log").read_text())
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not listen on 127.0.0.1:{port}") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/cvmfs"
    finally:
        proc.terminate()  # SIGTERM: fast shutdown of master and workers
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        out.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_golden_repository_read_through_nginx(nginx: str, golden_keys: Path,
                                              golden_expected: dict, tmp_path: Path) -> None:
    src = HttpSource([f"{nginx}/{FQRN}"], timeout=5.0)
    repo = Repository(src, public_keys=load_public_keys([golden_keys]), fqrn=FQRN,
                      cache=ObjectCache(tmp_path / "cache"))
    count = 0
    with repo:
        for tag, tree in (("v1", "rev1"), ("v2", "rev2")):
            entries = golden_expected["trees"][tree]["entries"]
            with repo.open_revision(tag=tag) as view:
                seen = set()
                for _dirpath, dirs, files in view.walk("/"):
                    for s in dirs + files:
                        path = s.path.lstrip("/")
                        seen.add(path)
                        if entries[path]["type"] == "file":
                            data = view.read_bytes(s.path)
                            assert hashlib.sha1(data).hexdigest() == entries[path]["sha1"], path
                            count += 1
                assert seen == set(entries)
    assert count > 1000
    assert src.stats["failovers"] == 0 and src.stats["nioerr"] == 0


def _expires_after(resp: urllib3.BaseHTTPResponse) -> float:
    date = email.utils.parsedate_to_datetime(resp.headers["Date"])
    expires = email.utils.parsedate_to_datetime(resp.headers["Expires"])
    return (expires - date).total_seconds()


@pytest.mark.parametrize("name", [".cvmfspublished", ".cvmfswhitelist", ".cvmfsreflog"])
def test_cvmfs_files_expire_after_61_seconds(nginx: str, golden_repo: Path, name: str) -> None:
    with urllib3.PoolManager() as pm:
        resp = pm.request("GET", f"{nginx}/{FQRN}/{name}", retries=False)
    assert resp.status == 200 and resp.data == (golden_repo / name).read_bytes()
    assert resp.headers["Content-Type"] == "application/x-cvmfs"
    assert resp.headers["Cache-Control"] == "max-age=61"
    assert _expires_after(resp) == 61
    assert "Last-Modified" not in resp.headers and "ETag" not in resp.headers


@pytest.mark.parametrize(("name", "ctype", "body"), [
    (".cvmfs_status.json", "application/x-cvmfs", STATUS_JSON),
    ("meta.json", "application/json", META_JSON),
])
def test_json_files_expire_after_61_seconds(nginx: str, name: str, ctype: str,
                                            body: bytes) -> None:
    with urllib3.PoolManager() as pm:
        resp = pm.request("GET", f"{nginx}/{FQRN}/{name}", retries=False)
    assert resp.status == 200 and resp.data == body
    assert resp.headers["Content-Type"] == ctype
    assert resp.headers["Cache-Control"] == "max-age=61"
    assert _expires_after(resp) == 61
    assert "Last-Modified" not in resp.headers and "ETag" not in resp.headers


def test_uploads_in_flight_are_not_served(nginx: str) -> None:
    with urllib3.PoolManager() as pm:
        resp = pm.request("GET", f"{nginx}/{FQRN}/data/txn/upload.tmp", retries=False)
    assert resp.status == 404
    assert IN_FLIGHT not in resp.data


def test_data_objects_expire_after_three_days(nginx: str, golden_repo: Path) -> None:
    with urllib3.PoolManager() as pm:
        resp = pm.request("GET", f"{nginx}/{FQRN}/{CATALOG}", retries=False)
        assert resp.status == 200 and resp.data == (golden_repo / CATALOG).read_bytes()
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["Cache-Control"] == f"max-age={THREE_DAYS}"
        assert _expires_after(resp) == THREE_DAYS
        assert "Last-Modified" not in resp.headers and "ETag" not in resp.headers
        # If-Modified-Since is ignored: never a 304 a proxy could mishandle
        again = pm.request("GET", f"{nginx}/{FQRN}/{CATALOG}", retries=False,
                           headers={"If-Modified-Since": resp.headers["Date"]})
        assert again.status == 200 and again.data == resp.data
        missing = pm.request("GET", f"{nginx}/{FQRN}/data/00/{'0' * 38}", retries=False)
        assert missing.status == 404
        assert "max-age" not in missing.headers.get("Cache-Control", "")


def test_connections_are_kept_alive(nginx: str) -> None:
    with urllib3.HTTPConnectionPool("127.0.0.1", int(nginx.split(":")[2].split("/")[0]),
                                    maxsize=1, block=True) as pool:
        for _ in range(3):
            resp = pool.request("GET", f"/cvmfs/{FQRN}/.cvmfspublished", retries=False)
            assert resp.status == 200 and resp.headers.get("Connection") != "close"
        assert pool.num_connections == 1


def test_golden_repository_mounted_through_nginx(nginx: str, golden_keys: Path,
                                                 golden_expected: dict, tmp_path: Path) -> None:
    """The FUSE mount against nginx: every file of the newest revision through plain reads."""
    import hashlib
    import os
    import sys

    if not (os.path.exists("/dev/fuse") and os.geteuid() == 0):
        if os.environ.get("CI"):
            raise RuntimeError("CI needs /dev/fuse and root for the FUSE tests")
        pytest.skip("needs /dev/fuse and root")
    mp = tmp_path / "mnt"
    mp.mkdir()
    cli = [sys.executable, "-m", "pycvmfs.cli.main"]
    res = subprocess.run([*cli, "mount", "golden.example.org", str(mp), "--server-url",
                          f"{nginx}/@fqrn@", "-k", str(golden_keys), "--cache-dir",
                          str(tmp_path / "cache")], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    try:
        entries = golden_expected["trees"]["rev2"]["entries"]
        for rel, e in entries.items():
            if e["type"] == "file":
                assert hashlib.sha1((mp / rel).read_bytes()).hexdigest() == e["sha1"], rel
            elif e["type"] == "symlink":
                assert os.readlink(mp / rel) == e["target"], rel
        assert os.getxattr(mp, "user.host").decode().startswith(nginx)
    finally:
        subprocess.run([*cli, "umount", str(mp)], capture_output=True, check=False)
