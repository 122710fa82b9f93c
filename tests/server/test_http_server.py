"""Tests of the repository HTTP server: real servers on 127.0.0.1, real clients, raw sockets."""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import urllib3

from pycvmfs.client.repository import open_repository
from pycvmfs.errors import ConfigError
from pycvmfs.server.http import (
    LONG_TTL,
    SHORT_TTL,
    RepositoryServer,
    Site,
    find_repositories,
    parse_range,
    split_target,
)

FQRN = "golden.example.org"
TRAP = "trap.example.org"
CATALOG = "data/43/4e2742ad19baa1f5be5ffcb3c755ecabae7562C"  # 85919 bytes: the sendfile path
CERTIFICATE = "data/a9/668beea3a885622bfc513554b3b4dc42371cbdX"
CHUNK = "data/bb/7fbd6ce6e02bad45435f422fd222ecd744f26bP"
PLAIN = "data/b1/37a47fa5d9d461d85dcaef78530966a5298bd3"
SECRET = b"TOP-SECRET-d41d8cd98f00b204e9800998"
OBJECT = b"object bytes of data/ab/cdef0123\n"
IN_FLIGHT = b"half-written upload in data/txn\n"


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def read_reply(f, *, head: bool = False) -> Reply:
    """One HTTP/1.1 response from a socket file; the body is read by Content-Length."""
    status_line = f.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head else int(headers.get("content-length", "0"))
    body = f.read(length) if length else b""
    return Reply(int(status_line.split()[1]), headers, body)


def request_bytes(method: str, target: str | bytes, extra: str = "") -> bytes:
    t = target if isinstance(target, bytes) else target.encode()
    return method.encode() + b" " + t + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra.encode() \
        + b"\r\n"


def raw_roundtrip(server: RepositoryServer, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, then read everything until the server closes (Connection: close)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


@pytest.fixture(scope="module")
def trap(tmp_path_factory, golden_repo: Path) -> Path:
    """A storage directory surrounded by a secret, with hostile symlinks and special files."""
    base = tmp_path_factory.mktemp("trap")
    (base / "secret.txt").write_bytes(SECRET)
    store = base / "store"
    (store / "data" / "ab").mkdir(parents=True)
    (store / "data" / "txn").mkdir()
    (store / "subdir").mkdir()
    (store / "subdir" / "inner").write_bytes(b"inner\n")
    shutil.copyfile(golden_repo / ".cvmfspublished", store / ".cvmfspublished")
    (store / "data" / "ab" / "cdef0123").write_bytes(OBJECT)
    (store / "data" / "txn" / "tmp.upload").write_bytes(IN_FLIGHT)
    (store / ".cvmfs_status.json").write_text('{"last_gc": "never"}\n')
    (store / "meta.json").write_text('{"administrator": "nobody"}\n')
    (store / ".cvmfsalt-cdef0123").symlink_to("data/ab/cdef0123")  # inside: must be served
    (store / "link-out").symlink_to("../secret.txt")
    (store / "link-abs").symlink_to(base / "secret.txt")
    (store / "link-txn").symlink_to("data/txn/tmp.upload")
    (store / "link-loop").symlink_to("link-loop")
    (store / "data" / "zz").symlink_to(base)  # a directory symlink leading out
    (store / "data" / "etc").symlink_to("/etc")
    os.mkfifo(store / "fifo")
    return store


@pytest.fixture(scope="module")
def server(golden_repo: Path, trap: Path):
    with RepositoryServer({FQRN: golden_repo, TRAP: trap}) as s:
        yield s


@pytest.fixture(scope="module")
def http():
    pool = urllib3.PoolManager(retries=False, timeout=5.0)
    yield pool
    pool.clear()


# --- reading a repository back through the server ------------------------------------------

def test_golden_repository_reads_back_verified_through_the_server(server, golden_keys,
                                                                   golden_expected, tmp_path):
    expected = golden_expected["trees"]["rev2"]["entries"]
    files = {p: e["sha1"] for p, e in expected.items() if e["type"] == "file"}
    assert len(files) > 1000
    with open_repository(server.repository_url(FQRN), keys=[golden_keys],
                         cache_dir=tmp_path / "cache") as repo:
        assert repo.refresh().manifest.revision == 3
        with repo.open_revision() as view:
            for path, sha1 in files.items():
                assert hashlib.sha1(view.read_bytes(path)).hexdigest() == sha1, path


# --- headers --------------------------------------------------------------------------------

KINDS = [
    (FQRN, ".cvmfspublished", "application/x-cvmfs", "max-age=61", SHORT_TTL),
    (FQRN, ".cvmfswhitelist", "application/x-cvmfs", "max-age=61", SHORT_TTL),
    (FQRN, ".cvmfsreflog", "application/x-cvmfs", "max-age=61", SHORT_TTL),
    (FQRN, ".cvmfs_master_replica", "application/x-cvmfs", "max-age=61", SHORT_TTL),
    (TRAP, ".cvmfs_status.json", "application/x-cvmfs", "max-age=61", SHORT_TTL),
    (TRAP, ".cvmfsalt-cdef0123", "application/x-cvmfs", "max-age=61", SHORT_TTL),
    (TRAP, "meta.json", "application/json", "max-age=61", SHORT_TTL),
    *[(FQRN, p, "application/octet-stream", "public, max-age=259200, immutable", LONG_TTL)
      for p in (CATALOG, CERTIFICATE, CHUNK, PLAIN)],
]


@pytest.mark.parametrize(("repo", "path", "ctype", "cache_control", "ttl"), KINDS,
                         ids=[k[1].rsplit("/", 1)[-1][:12] for k in KINDS])
def test_cache_headers_follow_the_stock_apache_rules(server, http, golden_repo, trap, repo,
                                                     path, ctype, cache_control, ttl):
    r = http.request("GET", f"{server.repository_url(repo)}/{path}")
    storage = golden_repo if repo == FQRN else trap
    assert r.status == 200
    assert r.data == (storage / path).read_bytes()
    assert r.headers["Content-Type"] == ctype
    assert r.headers["Cache-Control"] == cache_control
    assert int(r.headers["Content-Length"]) == len(r.data)
    expires = email.utils.parsedate_to_datetime(r.headers["Expires"]).timestamp()
    date = email.utils.parsedate_to_datetime(r.headers["Date"]).timestamp()
    assert abs(expires - time.time() - ttl) < 5
    assert abs(expires - date - ttl) <= 1
    for absent in ("Last-Modified", "ETag"):
        assert absent not in r.headers


@pytest.mark.parametrize("header", [
    {"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"},
    {"If-None-Match": "*"},
    {"If-Match": '"no-such-etag"'},
    {"If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"},
], ids=lambda h: next(iter(h)))
def test_conditional_requests_are_ignored(server, http, golden_repo, header):
    for path in (".cvmfspublished", CATALOG):
        r = http.request("GET", f"{server.repository_url(FQRN)}/{path}", headers=header)
        assert r.status == 200, path
        assert r.data == (golden_repo / path).read_bytes()


def test_head_sends_the_headers_of_get_and_no_body(server, golden_repo):
    size = (golden_repo / CATALOG).stat().st_size
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        f = s.makefile("rb")
        # pipelined: if a body followed the HEAD answer, the GET answer would not parse
        s.sendall(request_bytes("HEAD", f"/cvmfs/{FQRN}/{CATALOG}")
                  + request_bytes("HEAD", f"/cvmfs/{FQRN}/nope")
                  + request_bytes("GET", f"/cvmfs/{FQRN}/.cvmfspublished"))
        head = read_reply(f, head=True)
        missing = read_reply(f, head=True)
        get = read_reply(f)
    assert head.status == 200
    assert head.headers["content-length"] == str(size)
    assert head.headers["content-type"] == "application/octet-stream"
    assert "immutable" in head.headers["cache-control"]
    assert missing.status == 404
    assert get.status == 200
    assert get.body == (golden_repo / ".cvmfspublished").read_bytes()


# --- ranges ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "spec", "start", "stop"), [
    (".cvmfspublished", "bytes=0-9", 0, 10),
    (".cvmfspublished", "bytes=590-", 590, 600),
    (".cvmfspublished", "bytes=-7", 593, 600),
    (".cvmfspublished", "bytes=5-5", 5, 6),
    (".cvmfspublished", "bytes=100-999999", 100, 600),
    (".cvmfspublished", "bytes=-100000", 0, 600),
    (CATALOG, "bytes=70000-80000", 70000, 80001),
    (CATALOG, "bytes=1-", 1, 85919),
])
def test_range_requests_get_206_with_exactly_those_bytes(server, http, golden_repo, path, spec,
                                                          start, stop):
    whole = (golden_repo / path).read_bytes()
    r = http.request("GET", f"{server.repository_url(FQRN)}/{path}", headers={"Range": spec})
    assert r.status == 206
    assert r.data == whole[start:stop]
    assert r.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{len(whole)}"
    assert "Last-Modified" not in r.headers


@pytest.mark.parametrize("spec", ["bytes=600-", "bytes=600-700", "bytes=99999999-",
                                  "bytes=-0", "bytes=" + "9" * 40 + "-"])
def test_unsatisfiable_range_gets_416(server, http, spec):
    r = http.request("GET", f"{server.repository_url(FQRN)}/.cvmfspublished",
                     headers={"Range": spec})
    assert r.status == 416
    assert r.headers["Content-Range"] == "bytes */600"


@pytest.mark.parametrize(("method", "headers"), [
    ("GET", {"Range": "bytes=0-1,5-6"}),  # several ranges: we send the whole file
    ("GET", {"Range": "lines=0-1"}),
    ("GET", {"Range": "bytes=9-3"}),
    ("GET", {"Range": "bytes=0-3", "If-Range": '"some-etag"'}),  # we never issue validators
    ("HEAD", {"Range": "bytes=0-3"}),
])
def test_ranges_that_must_be_ignored_get_the_whole_file(server, http, golden_repo, method,
                                                        headers):
    r = http.request(method, f"{server.repository_url(FQRN)}/.cvmfspublished", headers=headers)
    assert r.status == 200
    assert r.headers["Content-Length"] == "600"
    if method == "GET":
        assert r.data == (golden_repo / ".cvmfspublished").read_bytes()


def test_parse_range_edge_cases():
    assert parse_range("bytes=0-0", 1) == (0, 1)
    assert parse_range("BYTES = 2 - 4", 10) == (2, 3)
    assert parse_range("bytes=-5", 3) == (0, 3)
    assert parse_range("bytes=0-", 0) == (-1, -1)
    assert parse_range("bytes=-1", 0) == (-1, -1)
    assert parse_range("bytes=-", 10) is None
    assert parse_range("bytes=a-b", 10) is None


def test_split_target_decodes_only_plain_segments():
    assert split_target("/cvmfs/a.b/data/%61b/x?q=1") == ["cvmfs", "a.b", "data", "ab", "x"]
    assert split_target("http://h:80/cvmfs/a") == ["cvmfs", "a"]
    for bad in ("/a/../b", "/a/%2e%2E/b", "/a/./b", "/a//b", "/a/", "/a%2fb", "/a%5cb",
                "/a%00", "/a%c3%a9", "/a%ff", "/a b", "a/b", "http://h", "/a/%zz"):
        assert split_target(bad) is None, bad


def test_large_files_are_sent_without_loop_sendfile_too(golden_repo, http, monkeypatch):
    # event loops without loop.sendfile() (uvloop): the server then copies the file itself
    import asyncio

    def no_sendfile(*args, **kwargs):
        raise NotImplementedError

    monkeypatch.setattr(asyncio.BaseEventLoop, "sendfile", no_sendfile)
    whole = (golden_repo / CATALOG).read_bytes()
    with RepositoryServer({FQRN: golden_repo}) as s:
        r = http.request("GET", f"{s.repository_url(FQRN)}/{CATALOG}")
        assert r.status == 200 and r.data == whole
        r = http.request("GET", f"{s.repository_url(FQRN)}/{CATALOG}",
                         headers={"Range": "bytes=1000-79999"})
        assert r.status == 206 and r.data == whole[1000:80000]


# --- connections ----------------------------------------------------------------------------

def test_one_keep_alive_connection_serves_many_requests(server, golden_repo):
    paths = [".cvmfspublished", CATALOG, PLAIN, "nope", CHUNK]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        f = s.makefile("rb")
        for path in paths:  # one after the other
            s.sendall(request_bytes("GET", f"/cvmfs/{FQRN}/{path}"))
            r = read_reply(f)
            if path == "nope":
                assert r.status == 404
            else:
                assert r.status == 200 and r.body == (golden_repo / path).read_bytes(), path
            assert r.headers.get("connection", "").lower() != "close"
        s.sendall(b"".join(request_bytes("GET", f"/cvmfs/{FQRN}/{p}") for p in paths[:3]))
        for path in paths[:3]:  # pipelined
            assert read_reply(f).body == (golden_repo / path).read_bytes()


def test_many_concurrent_connections_are_served(server, golden_repo):
    expected = (golden_repo / PLAIN).read_bytes()
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10)
             for _ in range(200)]
    try:
        for s in socks:
            s.sendall(request_bytes("GET", f"/cvmfs/{FQRN}/{PLAIN}"))
        for s in socks:
            assert read_reply(s.makefile("rb")).body == expected
    finally:
        for s in socks:
            s.close()


# --- refusing -------------------------------------------------------------------------------

HOSTILE = [
    f"/cvmfs/{TRAP}/../secret.txt",
    f"/cvmfs/{TRAP}/../../secret.txt",
    f"/cvmfs/{TRAP}/data/../../secret.txt",
    f"/cvmfs/{TRAP}/./../secret.txt",
    f"/cvmfs/{TRAP}/.cvmfspublished/../../secret.txt",
    f"/cvmfs/{TRAP}/data/../.cvmfspublished",  # dot segments are refused even inside
    f"/cvmfs/{TRAP}/data/%2e%2e/.cvmfspublished",
    f"/cvmfs/{TRAP}/./.cvmfspublished",
    f"/cvmfs/{TRAP}/data/txn/../ab/cdef0123",
    f"/cvmfs/{TRAP}/%2e%2e/secret.txt",
    f"/cvmfs/{TRAP}/%2E%2E/secret.txt",
    f"/cvmfs/{TRAP}/.%2e/secret.txt",
    f"/cvmfs/{TRAP}/%2e./secret.txt",
    f"/cvmfs/{TRAP}/..%2fsecret.txt",
    f"/cvmfs/{TRAP}/..%2Fsecret.txt",
    f"/cvmfs/{TRAP}/%2e%2e%2fsecret.txt",
    f"/cvmfs/{TRAP}/%252e%252e/secret.txt",
    f"/cvmfs/{TRAP}/%c0%ae%c0%ae/secret.txt",
    f"/cvmfs/{TRAP}/..%5csecret.txt",
    f"/cvmfs/{TRAP}/..\\secret.txt",
    f"/cvmfs/{TRAP}\\..\\secret.txt",
    f"/cvmfs/{TRAP}/..;/secret.txt",
    f"/cvmfs/{TRAP}/link-out",
    f"/cvmfs/{TRAP}/link-abs",
    f"/cvmfs/{TRAP}/link-loop",
    f"/cvmfs/{TRAP}/data/zz/secret.txt",
    f"/cvmfs/{TRAP}/data/etc/passwd",
    f"/cvmfs/{TRAP}/data/etc/hostname",
    f"/cvmfs/{TRAP}//etc/passwd",
    f"/cvmfs/{TRAP}/%2fetc%2fpasswd",
    f"/cvmfs/{TRAP}/%2Fetc/passwd",
    "//etc/passwd",
    "/cvmfs/../../../../etc/passwd",
    "/cvmfs/%2e%2e/%2e%2e/etc/passwd",
    "/%63vmfs/../secret.txt",
    f"http://127.0.0.1/cvmfs/{TRAP}/../secret.txt",
    f"/cvmfs/{TRAP}/data/txn/tmp.upload",
    f"/cvmfs/{TRAP}/data/%74xn/tmp.upload",
    f"/cvmfs/{TRAP}/link-txn",
    f"/cvmfs/{TRAP}/fifo",
    f"/cvmfs/{TRAP}/subdir",
    f"/cvmfs/{TRAP}/subdir/",
    f"/cvmfs/{TRAP}/",
    f"/cvmfs/{TRAP}",
    f"/cvmfs/{TRAP}/data",
    f"/cvmfs/{TRAP}/data/ab/",
    f"/cvmfs/{TRAP}/.cvmfspublished%00",
    f"/cvmfs/{TRAP}/.cvmfspublished%00.txt",
    f"/cvmfs/{TRAP}/%00/../secret.txt",
    "/cvmfs/",
    "/",
    "*",
    "secret.txt",
]


@pytest.mark.parametrize("target", HOSTILE)
def test_hostile_request_targets_are_refused(server, trap, target):
    reply = raw_roundtrip(server, request_bytes("GET", target, "Connection: close\r\n"))
    assert reply.split(b" ", 2)[1] in (b"400", b"404"), reply[:200]
    for leak in (SECRET, IN_FLIGHT, b"root:", b"inner\n"):
        assert leak not in reply


@pytest.mark.parametrize("raw", [
    f"/cvmfs/{TRAP}/..\x00/secret.txt".encode(),
    f"/cvmfs/{TRAP}/.cvmfspublished\x00".encode(),
    f"/cvmfs/{TRAP}/\xc0\xae\xc0\xae/secret.txt".encode("latin-1"),
    f"/cvmfs/{TRAP}/../secret.txt\t".encode(),
])
def test_malformed_request_lines_are_refused(server, raw):
    reply = raw_roundtrip(server, request_bytes("GET", raw, "Connection: close\r\n"))
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", reply), reply[:200]
    assert SECRET not in reply


@pytest.mark.parametrize("target", [
    f"/cvmfs/{TRAP}/.cvmfsalt-cdef0123",  # a symlink that stays inside the storage
    f"/cvmfs/{TRAP}/data/ab/cdef0123",
    f"/cvmfs/{TRAP}/data/%61b/cdef0123",  # percent-encoded ordinary characters are fine
    f"http://127.0.0.1/cvmfs/{TRAP}/data/ab/cdef0123",  # absolute-form request target
    f"/cvmfs/{TRAP}/data/ab/cdef0123?cache-buster=1",
])
def test_files_inside_the_storage_are_served(server, target):
    reply = raw_roundtrip(server, request_bytes("GET", target, "Connection: close\r\n"))
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert reply.endswith(b"\r\n\r\n" + OBJECT)


def test_the_secret_next_to_the_storage_is_really_there(trap):
    # the hostile targets above would reach it if the server followed them
    assert (trap / "link-out").read_bytes() == SECRET
    assert (trap / "data" / "zz" / "secret.txt").read_bytes() == SECRET


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"])
def test_methods_other_than_get_and_head_get_405(server, http, trap, method):
    before = (trap / "data" / "ab" / "cdef0123").read_bytes()
    r = http.request(method, f"{server.repository_url(TRAP)}/data/ab/cdef0123", body=b"x" * 10)
    assert r.status == 405
    assert r.headers["Allow"] == "GET, HEAD"
    assert (trap / "data" / "ab" / "cdef0123").read_bytes() == before


def test_unknown_repository_is_404(server, http):
    for url in (f"{server.url}/cvmfs/unknown.example.org/.cvmfspublished",
                f"{server.url}/cvmfs/info/.cvmfspublished",
                f"{server.url}/cvmfs/{FQRN}/.cvmfspublishedx",
                f"{server.url}/{FQRN}/.cvmfspublished"):
        assert http.request("GET", url).status == 404, url


# --- repositories.json ----------------------------------------------------------------------

def test_repositories_json_lists_the_served_repositories(server, http, tmp_path, golden_repo):
    r = http.request("GET", f"{server.url}/cvmfs/info/v1/repositories.json")
    assert r.status == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["Cache-Control"] == "max-age=61"
    expires = email.utils.parsedate_to_datetime(r.headers["Expires"])
    assert (expires - email.utils.parsedate_to_datetime(r.headers["Date"])).total_seconds() == 61
    assert json.loads(r.data) == {
        "schema": 1,
        "repositories": [
            {"name": FQRN, "url": f"/cvmfs/{FQRN}"},
            # the trap storage holds golden's manifest: its real name is golden.example.org
            {"name": FQRN, "alias": TRAP, "url": f"/cvmfs/{TRAP}"},
        ],
        "replicas": [],
    }


def test_repositories_json_puts_snapshotted_storages_under_replicas(tmp_path, http,
                                                                    golden_repo):
    replica = tmp_path / "replica"
    replica.mkdir()
    shutil.copyfile(golden_repo / ".cvmfspublished", replica / ".cvmfspublished")
    (replica / ".cvmfs_last_snapshot").write_text("Tue Nov 24 20:50:00 UTC 2026\n")
    with RepositoryServer({FQRN: golden_repo, "replica.example.org": replica}) as s:
        data = json.loads(http.request("GET", f"{s.url}/cvmfs/info/v1/repositories.json").data)
    assert data["repositories"] == [{"name": FQRN, "url": f"/cvmfs/{FQRN}"}]
    assert data["replicas"] == [{"name": FQRN, "alias": "replica.example.org",
                                 "url": "/cvmfs/replica.example.org"}]


# --- access log -----------------------------------------------------------------------------

CLF = re.compile(r'(\S+) - - \[(\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] '
                 r'"([^"\\]*(?:\\.[^"\\]*)*)" (\d{3}) (\d+|-)')


def test_access_log_has_one_common_log_format_line_per_request(tmp_path, golden_repo, http):
    log = tmp_path / "logs" / "access.log"
    log.parent.mkdir()
    with RepositoryServer({FQRN: golden_repo}, access_log=log) as s:
        base = s.repository_url(FQRN)
        http.request("GET", f"{base}/.cvmfspublished")
        http.request("HEAD", f"{base}/.cvmfspublished")
        http.request("GET", f"{base}/{CATALOG}", headers={"Range": "bytes=0-99"})
        http.request("GET", f"{base}/{CATALOG}")
        http.request("GET", f"{base}/missing")
        http.request("POST", f"{base}/.cvmfspublished")
        raw_roundtrip(s, request_bytes("GET", f'/cvmfs/{FQRN}/a"b%22',
                                       "Connection: close\r\n"))
    lines = log.read_text().splitlines()
    parsed = [CLF.fullmatch(line) for line in lines]
    assert all(parsed), lines
    assert [(m[1], m[3], m[4], m[5]) for m in parsed] == [
        ("127.0.0.1", f"GET /cvmfs/{FQRN}/.cvmfspublished HTTP/1.1", "200", "600"),
        ("127.0.0.1", f"HEAD /cvmfs/{FQRN}/.cvmfspublished HTTP/1.1", "200", "-"),
        ("127.0.0.1", f"GET /cvmfs/{FQRN}/{CATALOG} HTTP/1.1", "206", "100"),
        ("127.0.0.1", f"GET /cvmfs/{FQRN}/{CATALOG} HTTP/1.1", "200", "85919"),
        ("127.0.0.1", f"GET /cvmfs/{FQRN}/missing HTTP/1.1", "404", "14"),
        ("127.0.0.1", f"POST /cvmfs/{FQRN}/.cvmfspublished HTTP/1.1", "405", "23"),
        ("127.0.0.1", f"GET /cvmfs/{FQRN}/a\\x22b%22 HTTP/1.1", "404", "14"),
    ]
    stamp = time.strptime(parsed[0][2], "%d/%b/%Y:%H:%M:%S %z")
    assert abs(time.mktime(stamp) - time.timezone - time.time()) < 60


# --- discovery and configuration ------------------------------------------------------------

def test_find_repositories_accepts_one_storage_or_a_folder_of_them(tmp_path, golden_repo,
                                                                    trap):
    assert find_repositories(golden_repo) == {FQRN: golden_repo}
    (tmp_path / "a.example.org").mkdir()
    (tmp_path / "a.example.org" / ".cvmfspublished").write_bytes(b"Cx\n")
    (tmp_path / "not-a-repo").mkdir()
    (tmp_path / "stray-file").write_text("x")
    assert find_repositories(tmp_path) == {"a.example.org": tmp_path / "a.example.org"}
    with pytest.raises(ConfigError, match="no repository storage"):
        find_repositories(tmp_path / "not-a-repo")
    with pytest.raises(ConfigError, match="not a directory"):
        find_repositories(tmp_path / "stray-file")


def test_site_refuses_unusable_names_and_missing_storage(tmp_path, golden_repo):
    for name in ("info", "..", "a/b", "a b", ""):
        with pytest.raises(ConfigError):
            Site({name: golden_repo})
    with pytest.raises(ConfigError, match="not a directory"):
        Site({FQRN: tmp_path / "missing"})
    with pytest.raises(ConfigError, match="access log"):
        Site({FQRN: golden_repo}, access_log=tmp_path / "no-such-dir" / "access.log")


def test_repository_server_picks_a_free_port_and_stops_cleanly(golden_repo, http):
    s = RepositoryServer({FQRN: golden_repo})
    with pytest.raises(RuntimeError):
        _ = s.url
    with s:
        assert s.port > 0
        assert http.request("GET", s.repository_url(FQRN) + "/.cvmfspublished").status == 200
        port = s.port
    s.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


# --- the serve command ----------------------------------------------------------------------

SERVE_SCRIPT = """
import sys
from pycvmfs.cli.common import CvmfsGroup
from pycvmfs.cli.serve_cmd import register
group = CvmfsGroup()
register(group)
group(sys.argv[1:], prog_name="pycvmfs")
"""


class ServeCommand:
    """``pycvmfs serve`` in a child process, started until its ready line; ``stop()`` sends
    SIGINT and returns its stderr, the process is killed if it is still there at the end."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SERVE_SCRIPT, "serve", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        assert ready, "the serve command printed nothing"
        self.line = self.proc.stdout.readline()

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.communicate(timeout=30)[1]

    def __enter__(self) -> ServeCommand:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_command_serves_until_sigint_and_exits_0(golden_repo, tmp_path, workers, http):
    log = tmp_path / "access.log"
    with ServeCommand(str(golden_repo), "--port", "0", "--access-log", str(log),
                      "--workers", str(workers)) as serve:
        m = re.match(rf"(http://127\.0\.0\.1:\d+/cvmfs/{re.escape(FQRN)})  \(", serve.line)
        assert m, serve.line
        for _ in range(4):
            r = http.request("GET", m[1] + "/.cvmfspublished")
            assert r.status == 200
            assert r.data == (golden_repo / ".cvmfspublished").read_bytes()
        err = serve.stop()
    assert serve.proc.returncode == 0, err
    assert "Traceback" not in err
    assert len(log.read_text().splitlines()) == 4  # flushed at shutdown


def test_serve_command_rejects_a_folder_without_repositories(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SERVE_SCRIPT, "serve", str(tmp_path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "no repository storage" in proc.stderr


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_a_stop_right_after_the_ready_line_ends_the_server_cleanly(golden_repo, tmp_path,
                                                                    workers):
    """SIGINT the moment the command says it listens, while its workers are still starting:
    the stop waits for their handlers instead of killing them (exit 0, no traceback)."""
    for _ in range(3):
        with ServeCommand(str(golden_repo), "--port", "0", "--workers", str(workers)) as serve:
            assert serve.line.startswith("http://127.0.0.1:")
            err = serve.stop()
        assert serve.proc.returncode == 0, err
        assert "Traceback" not in err and "exited with" not in err
