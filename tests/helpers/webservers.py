"""Real nginx and Apache httpd on 127.0.0.1 with the documented site configurations
(docs/nginx-cvmfs.conf, docs/apache-cvmfs.conf), for the tests and the benchmarks."""

from __future__ import annotations

import email.utils
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from helpers.daemons import free_port, stop_process, wait_for_port

if TYPE_CHECKING:
    import urllib3

ROOT = Path(__file__).resolve().parents[2]
NGINX = "/usr/sbin/nginx"
NGINX_SITE = ROOT / "docs" / "nginx-cvmfs.conf"
APACHE = "/usr/sbin/apache2"
APACHE_SITE = ROOT / "docs" / "apache-cvmfs.conf"
APACHE_MODULES = Path("/usr/lib/apache2/modules")
GOLDEN_FQRN = "golden.example.org"
GOLDEN_CATALOG = "data/43/4e2742ad19baa1f5be5ffcb3c755ecabae7562C"  # an object of the golden repo
OBJECT_MAX_AGE = 3 * 24 * 3600  # the configurations' expiry of data objects (3 days)

# What the copy of the golden repository adds: the JSON files and an upload in flight.
STATUS_JSON = b'{"last_snapshot": "Tue Nov 24 20:50:00 UTC 2026"}\n'
META_JSON = b'{"administrator": "nobody"}\n'
IN_FLIGHT = b"half-written upload\n"

NGINX_MAIN = """\
{user}daemon off;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{main_tuning}events {{ worker_connections {connections}; }}
http {{
{http_tuning}    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    include {dir}/cvmfs.conf;
}}
"""

APACHE_MAIN = """\
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


@dataclass(frozen=True)
class WebServer:
    """A running server: its loopback port and process."""

    port: int
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        """The ``/cvmfs`` base URL (a repository is at ``url + "/" + fqrn``)."""
        return f"http://127.0.0.1:{self.port}/cvmfs"


def _substitute(conf: Path, text: str, changes: Sequence[tuple[str, str, int]]) -> str:
    for old, new, count in changes:
        if text.count(old) != count:
            raise RuntimeError(f"{conf}: expected {count} x '{old}'")
        text = text.replace(old, new)
    return text


def nginx_site(port: int, serve_root: Path) -> str:
    """docs/nginx-cvmfs.conf with the listen address and the storage path substituted."""
    return _substitute(NGINX_SITE, NGINX_SITE.read_text(), [
        ("listen 80;", f"listen 127.0.0.1:{port};", 1),
        ("alias /srv/cvmfs/;", f"alias {serve_root}/;", 1)])


def apache_site(port: int, serve_root: Path) -> str:
    """docs/apache-cvmfs.conf (comments dropped) with the listen address and the storage path
    substituted."""
    lines = [ln for ln in APACHE_SITE.read_text().splitlines() if not ln.startswith("#")]
    return _substitute(APACHE_SITE, "\n".join(lines) + "\n", [
        ("Listen 80\n", f"Listen 127.0.0.1:{port}\n", 1),
        ("/srv/cvmfs", str(serve_root), 3)])


@contextmanager
def _daemon(argv: list[str], workdir: Path, port: int, what: str) -> Iterator[WebServer]:
    """Run ``argv`` (output into ``workdir/stderr.log``) until it listens on ``port``; stop it
    (SIGTERM) afterwards."""
    out = open(workdir / "stderr.log", "wb")  # noqa: SIM115 (closed below)
    try:
        proc = subprocess.Popen(argv, stdout=out, stderr=out)
        try:
            wait_for_port(port, proc, what, [workdir / "stderr.log", workdir / "error.log"])
            yield WebServer(port, proc)
        finally:
            stop_process(proc)
    finally:
        out.close()


@contextmanager
def _workdir(prefix: str) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        tmp.chmod(0o755)  # workers that dropped root write their temp files below it
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _require(path: str, package: str) -> None:
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{path} not found: install the Debian package {package}")


@contextmanager
def nginx_server(serve_root: Path, *, workers: int = 1, benchmark: bool = False,
                 user: tuple[str, str] = ("nobody", "nogroup")) -> Iterator[WebServer]:
    """nginx with docs/nginx-cvmfs.conf serving ``serve_root/<fqrn>/`` at ``/cvmfs/<fqrn>/``.

    Its configuration and logs are in a temporary folder removed afterwards; started by root,
    its workers run as ``user`` (user, group). ``benchmark``: no access log, ``sendfile``,
    ``tcp_nopush`` and 16,384 connections per worker (else 64, with an access log)."""
    _require(NGINX, "nginx-light")
    with _workdir("pycvmfs-nginx-") as tmp:
        port = free_port()
        (tmp / "cvmfs.conf").write_text(nginx_site(port, serve_root))
        if benchmark:
            main, http = "worker_rlimit_nofile 65536;\n", (
                "    access_log off;\n    sendfile on;\n    tcp_nopush on;\n")
        else:
            main, http = "", f"    access_log {tmp}/access.log;\n"
        (tmp / "nginx.conf").write_text(NGINX_MAIN.format(
            user=f"user {user[0]} {user[1]};\n" if os.geteuid() == 0 else "", dir=tmp,
            workers=workers, connections=16384 if benchmark else 64, main_tuning=main,
            http_tuning=http))
        with _daemon([NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf"),
                      "-e", str(tmp / "error.log")], tmp, port, "nginx") as server:
            yield server


@contextmanager
def apache_server(serve_root: Path) -> Iterator[WebServer]:
    """Apache 2.4 (mpm_event) with docs/apache-cvmfs.conf serving ``serve_root/<fqrn>/`` at
    ``/cvmfs/<fqrn>/``; started by root, its children run as nobody."""
    _require(APACHE, "apache2")
    with _workdir("pycvmfs-apache-") as tmp:
        port = free_port()
        (tmp / "cvmfs.conf").write_text(apache_site(port, serve_root))
        user = "User nobody\nGroup nogroup" if os.geteuid() == 0 else ""
        (tmp / "apache2.conf").write_text(APACHE_MAIN.format(dir=tmp, user=user,
                                                             modules=APACHE_MODULES))
        with _daemon([APACHE, "-f", str(tmp / "apache2.conf"), "-D", "FOREGROUND"], tmp, port,
                     "apache2") as server:
            yield server


@contextmanager
def golden_storage_copy(golden_dir: Path) -> Iterator[Path]:
    """A world-readable copy of the golden repository (a server's workers may run as
    ``nobody``) with the JSON files and a ``data/txn/`` upload a storage can also hold; yields
    the folder that holds ``golden.example.org/``, removed afterwards."""
    with _workdir("pycvmfs-golden-") as tmp:
        storage = tmp / "storage"
        repo = storage / GOLDEN_FQRN
        shutil.copytree(golden_dir / GOLDEN_FQRN, repo)
        (repo / ".cvmfs_status.json").write_bytes(STATUS_JSON)
        (repo / "meta.json").write_bytes(META_JSON)
        (repo / "data" / "txn").mkdir(exist_ok=True)
        (repo / "data" / "txn" / "upload.tmp").write_bytes(IN_FLIGHT)
        for p in [storage, *storage.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        yield storage


def assert_cached_for(resp: urllib3.BaseHTTPResponse, seconds: int) -> None:
    """The caching headers of the documented configurations: ``Cache-Control: max-age``,
    ``Expires`` that many seconds after ``Date``, and no ``Last-Modified`` or ``ETag`` (no
    conditional request a proxy could answer with a stale 304)."""
    headers = resp.headers
    assert headers["Cache-Control"] == f"max-age={seconds}", headers
    date = email.utils.parsedate_to_datetime(headers["Date"])
    expires = email.utils.parsedate_to_datetime(headers["Expires"])
    assert (expires - date).total_seconds() == seconds, headers
    assert "Last-Modified" not in headers and "ETag" not in headers, headers
