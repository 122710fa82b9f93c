"""Tests of S3Storage against a real SeaweedFS: the ObjectStore protocol, errors, HTTP serving."""

from __future__ import annotations

import hashlib
import io
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pycvmfs.client.repository import open_repository
from pycvmfs.errors import ConfigError, FetchError, ObjectNotFoundError
from pycvmfs.storage.base import BLOCK_SIZE, ObjectStore, fetch_bytes
from pycvmfs.storage.locate import open_source, open_store, parse_s3_upstream
from pycvmfs.storage.s3 import S3Storage, S3StorageError, headers_for, parse_s3_config

from helpers.daemons import free_port

FQRN = "golden.example.org"


@pytest.fixture
def bucket(seaweed) -> str:
    return seaweed.new_bucket("st")


def make_store(seaweed, bucket: str, prefix: str = "repo.example.org", **kw) -> S3Storage:
    return S3Storage(bucket, endpoint_url=seaweed.endpoint, prefix=prefix,
                     access_key=seaweed.access_key, secret_key=seaweed.secret_key, **kw)


def http_get(url: str) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, b"", dict(e.headers)


def test_s3_storage_is_an_object_store(seaweed, bucket):
    assert isinstance(make_store(seaweed, bucket), ObjectStore)


def test_put_fetch_exists_list_delete_round_trip_below_the_prefix(seaweed, bucket):
    store = make_store(seaweed, bucket)
    store.put_bytes("data/ab/cdef", b"object one")
    store.put_file("data/ab/cdff", io.BytesIO(b"object two"))
    store.put_bytes(".cvmfspublished", b"manifest")
    assert fetch_bytes(store, "data/ab/cdef", what="one") == b"object one"
    assert fetch_bytes(store, "data/ab/cdff", what="two") == b"object two"
    assert store.exists("data/ab/cdef") and not store.exists("data/ab/0000")
    assert store.size("data/ab/cdff") == 10 and store.size("data/ab/0000") is None
    assert list(store.list("data/ab")) == ["data/ab/cdef", "data/ab/cdff"]
    assert list(store.list("data/a")) == ["data/ab/cdef", "data/ab/cdff"]
    assert list(store.list("data/b")) == []
    assert sorted(store.list("")) == [".cvmfspublished", "data/ab/cdef", "data/ab/cdff"]
    keys = [o["Key"] for o in seaweed.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == ["repo.example.org/.cvmfspublished", "repo.example.org/data/ab/cdef",
                            "repo.example.org/data/ab/cdff"]
    store.put_bytes("data/ab/cdef", b"replaced")
    assert fetch_bytes(store, "data/ab/cdef", what="one") == b"replaced"
    store.delete("data/ab/cdef")
    store.delete("data/ab/cdef")  # deleting a missing key is not an error
    assert not store.exists("data/ab/cdef")
    store.delete_many(["data/ab/cdff", ".cvmfspublished", "data/00/never-there"])
    assert list(store.list("")) == []


def test_a_large_object_goes_up_in_parts_and_reads_back_whole(seaweed, bucket):
    store = make_store(seaweed, bucket, multipart_threshold=5 << 20,
                       multipart_chunksize=5 << 20)
    data = hashlib.sha256(b"seed").digest() * ((12 << 20) // 32)
    store.put_bytes("data/12/big", data)
    etag = seaweed.client().head_object(Bucket=bucket, Key="repo.example.org/data/12/big")["ETag"]
    assert etag.strip('"').endswith("-3")  # three parts: 5 + 5 + 2 MiB
    assert fetch_bytes(store, "data/12/big", what="big") == data
    small = make_store(seaweed, bucket)
    small.put_bytes("data/12/small", data)
    etag = seaweed.client().head_object(Bucket=bucket,
                                        Key="repo.example.org/data/12/small")["ETag"]
    assert "-" not in etag  # below the default threshold: one PUT


def test_fetch_streams_blocks_without_holding_the_object(seaweed, bucket):
    store = make_store(seaweed, bucket)
    data = bytes(range(256)) * (3 * BLOCK_SIZE // 256) + b"tail"
    store.put_bytes("data/aa/stream", data)
    sizes: list[int] = []

    def consume(blocks: Iterator[bytes]) -> str:
        h = hashlib.sha1()
        for b in blocks:
            sizes.append(len(b))
            h.update(b)
        return h.hexdigest()

    assert store.fetch("data/aa/stream", consume, what="stream") == hashlib.sha1(data).hexdigest()
    assert len(sizes) >= 4 and max(sizes) <= BLOCK_SIZE and sum(sizes) == len(data)


def test_missing_key_is_object_not_found_naming_bucket_and_key(seaweed, bucket):
    store = make_store(seaweed, bucket)
    with pytest.raises(ObjectNotFoundError) as e:
        fetch_bytes(store, "data/00/missing", what="the object")
    assert f"s3://{bucket}/repo.example.org/data/00/missing" in str(e.value)
    assert str(e.value).startswith("the object")


def test_wrong_credentials_fail_naming_the_bucket(seaweed, bucket):
    bad = S3Storage(bucket, endpoint_url=seaweed.endpoint, access_key=seaweed.access_key,
                    secret_key="not-the-secret", max_retries=0)
    with pytest.raises(S3StorageError) as e:
        bad.put_bytes("data/00/x", b"x")
    assert f"s3://{bucket}/data/00/x" in str(e.value)
    assert "403" in str(e.value) and "CVMFS_S3_SECRET_KEY" in str(e.value)
    assert isinstance(e.value, OSError)  # a failed publish reports it like a full disk
    with pytest.raises(FetchError) as e2:
        fetch_bytes(bad, "data/00/x", what="x")
    assert bucket in str(e2.value) and not isinstance(e2.value, ObjectNotFoundError)


def test_without_credentials_requests_are_anonymous_reads(seaweed, bucket, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    make_store(seaweed, bucket).put_bytes("data/00/public", b"public")
    anonymous = S3Storage(bucket, endpoint_url=seaweed.endpoint, prefix="repo.example.org",
                          max_retries=0)
    assert fetch_bytes(anonymous, "data/00/public", what="x") == b"public"
    assert anonymous.exists("data/00/public")
    with pytest.raises(S3StorageError, match="403 AccessDenied"):
        anonymous.put_bytes("data/00/vandal", b"x")


def test_a_missing_bucket_is_named_in_the_error(seaweed):
    store = make_store(seaweed, "no-such-bucket-here", max_retries=0)
    with pytest.raises(S3StorageError, match=r"no-such-bucket-here.*NoSuchBucket"):
        store.put_bytes("data/00/x", b"x")


def test_an_unreachable_endpoint_is_a_fetch_error_naming_it():
    port = free_port()
    store = S3Storage("b", endpoint_url=f"http://127.0.0.1:{port}", access_key="a",
                      secret_key="b", max_retries=1, timeout=2)
    with pytest.raises(FetchError, match=f"s3://b/.cvmfspublished at http://127.0.0.1:{port}"):
        fetch_bytes(store, ".cvmfspublished", what="manifest")


@pytest.mark.parametrize("bad", ["../x", "data/../../x", "/etc/passwd", "data\\00", "a\0b", ""])
def test_path_traversal_is_refused_like_local_storage(seaweed, bucket, bad):
    store = make_store(seaweed, bucket)
    for op in (lambda: store.put_bytes(bad, b"x"), lambda: store.exists(bad),
               lambda: store.delete(bad), lambda: fetch_bytes(store, bad, what="x")):
        with pytest.raises(ConfigError):
            op()
    assert "Contents" not in seaweed.client().list_objects_v2(Bucket=bucket)


def test_uploads_carry_the_cache_headers_and_are_readable_over_plain_http(seaweed, bucket):
    store = make_store(seaweed, bucket)
    store.put_bytes("data/ab/cdef", b"object")
    store.put_bytes(".cvmfspublished", b"manifest")
    base = seaweed.http_url(bucket, "repo.example.org")
    status, body, headers = http_get(base + "/data/ab/cdef")
    assert (status, body) == (200, b"object")
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Cache-Control"] == "public, max-age=259200, immutable"
    status, body, headers = http_get(base + "/.cvmfspublished")
    assert (status, body, headers["Content-Type"]) == (200, b"manifest", "application/x-cvmfs")
    assert headers["Cache-Control"] == "max-age=61"
    assert http_get(base + "/data/ab/0000")[0] == 404
    anonymous_put = urllib.request.Request(base + "/data/ab/evil", data=b"x", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(anonymous_put, timeout=10)
    assert e.value.code == 403


def test_headers_follow_the_stock_apache_rules():
    assert headers_for(".cvmfswhitelist") == ("application/x-cvmfs", "max-age=61")
    assert headers_for(".cvmfs_status.json")[0] == "application/x-cvmfs"
    assert headers_for("info/v1/repositories.json") == ("application/json", "max-age=61")
    assert headers_for("data/43/4e27C")[1].endswith("immutable")
    assert headers_for("stats/stats.db") == ("application/octet-stream", "public, max-age=259200")


def test_stock_s3_config_file_is_parsed_with_cernvm_fs_names(tmp_path):
    conf = parse_s3_config("# comment\nCVMFS_S3_HOST=s3.example.org\nCVMFS_S3_PORT=9000\n"
                           "export CVMFS_S3_BUCKET='cvmfs'\nCVMFS_S3_ACCESS_KEY=AK\n"
                           "CVMFS_S3_SECRET_KEY=\"SK\"\nCVMFS_S3_DNS_BUCKETS=false\n"
                           "CVMFS_S3_MAX_NUMBER_OF_PARALLEL_CONNECTIONS=32\n"
                           "CVMFS_S3_USE_HTTPS=true\nCVMFS_S3_REGION=eu-west-1\n"
                           "CVMFS_S3_MAX_RETRIES=5\nCVMFS_S3_TIMEOUT=30\n", what="s3.conf")
    assert conf.endpoint_url == "https://s3.example.org:9000"
    assert (conf.bucket, conf.access_key, conf.secret_key) == ("cvmfs", "AK", "SK")
    assert (conf.dns_buckets, conf.max_connections, conf.region) == (False, 32, "eu-west-1")
    assert (conf.max_retries, conf.timeout, conf.peek_before_put) == (5, 30, True)
    dflt = parse_s3_config("CVMFS_S3_HOST=h\nCVMFS_S3_BUCKET=b\n", what="s3.conf")
    assert dflt.endpoint_url == "http://h:80" and dflt.dns_buckets and dflt.max_connections == 16
    with pytest.raises(ConfigError, match=r"s3\.conf: CVMFS_S3_BUCKET is not set"):
        parse_s3_config("CVMFS_S3_HOST=h\n", what="s3.conf")
    with pytest.raises(ConfigError, match="CVMFS_S3_PORT"):
        parse_s3_config("CVMFS_S3_HOST=h\nCVMFS_S3_BUCKET=b\nCVMFS_S3_PORT=eighty\n",
                        what="s3.conf")


def test_locations_name_s3_by_url_and_by_stock_upstream_spec(seaweed, bucket, tmp_path,
                                                             monkeypatch):
    conf = seaweed.write_s3_conf(tmp_path / "s3.conf", bucket)
    by_spec = open_store(f"S3,{tmp_path}/spool,repo.example.org@{conf}")
    by_spec.put_bytes("data/11/one", b"1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    by_url = open_source(f"s3://{bucket}/repo.example.org?endpoint={seaweed.endpoint}")
    assert isinstance(by_url, S3Storage)
    assert fetch_bytes(by_url, "data/11/one", what="one") == b"1"
    assert by_url.describe("data/11/one") == f"s3://{bucket}/repo.example.org/data/11/one"
    by_conf = open_source(f"s3://{bucket}/repo.example.org?config={conf}")
    assert fetch_bytes(by_conf, "data/11/one", what="one") == b"1"
    assert parse_s3_upstream("S3,/var/spool/cvmfs/x/tmp,x.org@/etc/cvmfs/s3.conf") == (
        "/var/spool/cvmfs/x/tmp", "x.org", "/etc/cvmfs/s3.conf")
    for bad in ("S3,/tmp,noconfig", "s3:///prefix", f"s3://{bucket}?colour=blue"):
        with pytest.raises(ConfigError):
            open_source(bad)
    with pytest.raises(ConfigError, match="read-only"):
        open_store(seaweed.http_url(bucket))


def test_golden_repository_in_a_bucket_reads_back_verified_over_plain_http(
        seaweed, bucket, golden_repo: Path, golden_keys, golden_expected, tmp_path):
    store = make_store(seaweed, bucket, prefix=FQRN)
    files = sorted(p for p in golden_repo.rglob("*") if p.is_file())
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: store.upload_path(p.relative_to(golden_repo).as_posix(), p),
                      files))
    expected = golden_expected["trees"]["rev2"]["entries"]
    picks = ["README.txt", "bin/blob-3m.bin", "nested/deeper/chunked-in-nested.bin",
             "text/hello.txt", "names/日本語ファイル.txt", "empty.txt"]
    with open_repository(seaweed.http_url(bucket, FQRN), keys=[golden_keys],
                         cache_dir=tmp_path / "cache") as repo:
        assert repo.refresh().manifest.revision == 3
        with repo.open_revision() as view:
            for p in picks:
                assert hashlib.sha1(view.read_bytes(p)).hexdigest() == expected[p]["sha1"], p
            assert view.readlink("links/rel-link", expand=False) == "../text/hello.txt"
