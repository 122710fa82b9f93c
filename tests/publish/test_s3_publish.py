"""Publishing into S3 (a real SeaweedFS): mkfs, publish, tag, rollback, gc, check, failures."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pycvmfs.client.repository import open_repository
from pycvmfs.errors import ConfigError, PublishError
from pycvmfs.format.chunking import ChunkingParams
from pycvmfs.format.hashes import ObjectKind
from pycvmfs.publish.check import check_repository
from pycvmfs.publish.config import ServerSettings
from pycvmfs.publish.gc import collect_garbage
from pycvmfs.publish.repository import Publisher, s3_upstream_spec
from pycvmfs.publish.upstream import SpooledStore
from pycvmfs.storage.s3 import S3Storage, S3StorageError

from helpers.publishing import write_files

FQRN = "s3.example.org"
SMALL_CHUNKS = ChunkingParams(65536, 131072, 262144)


@pytest.fixture
def s3repo(seaweed, tmp_path):
    """A fresh repository in a fresh bucket: (publisher, bucket)."""
    bucket = seaweed.new_bucket("pub")
    conf = seaweed.write_s3_conf(tmp_path / "s3.conf", bucket)
    settings = ServerSettings(garbage_collection=True)
    settings.chunking = SMALL_CHUNKS
    pub = Publisher.mkfs(FQRN, upstream=s3_upstream_spec(tmp_path / "spool", FQRN, conf),
                         config_dir=tmp_path / "etc", settings=settings)
    return pub, bucket


def bucket_keys(seaweed, bucket: str) -> set[str]:
    client = seaweed.client()
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.update(o["Key"] for o in page.get("Contents", ()))
    return keys


def read_back(seaweed, bucket: str, pub: Publisher, cache: Path) -> dict[str, bytes]:
    """Every regular file of the newest revision, read by the verifying client over plain HTTP
    from the bucket (anonymous GETs)."""
    out = {}
    with open_repository(seaweed.http_url(bucket, FQRN), keys=[pub.config.key_path("pub")],
                         cache_dir=cache) as repo, repo.open_revision() as view:
        for _d, _dirs, files in view.walk("/"):
            for st in files:
                if st.is_file:
                    out[st.path.lstrip("/")] = view.read_bytes(st.path)
    return out


def revision_over_http(seaweed, bucket: str, pub: Publisher, cache: Path) -> int:
    with open_repository(seaweed.http_url(bucket, FQRN), keys=[pub.config.key_path("pub")],
                         cache_dir=cache) as repo:
        return repo.refresh().manifest.revision


def blob(seed: str, size: int) -> bytes:
    out = bytearray()
    n = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}{n}".encode()).digest()
        n += 1
    return bytes(out[:size])


def test_mkfs_writes_a_stock_s3_upstream_and_a_readable_repository(seaweed, s3repo, tmp_path):
    pub, bucket = s3repo
    conf = pub.config.server_conf.read_text()
    assert f"CVMFS_UPSTREAM_STORAGE=S3,{tmp_path / 'spool'},{FQRN}@{tmp_path / 's3.conf'}" in conf
    keys = bucket_keys(seaweed, bucket)
    assert {f"{FQRN}/.cvmfspublished", f"{FQRN}/.cvmfswhitelist", f"{FQRN}/.cvmfsreflog",
            f"{FQRN}/.cvmfs_master_replica"} <= keys
    assert all(k.startswith(f"{FQRN}/") for k in keys)
    assert not any("/txn/" in k for k in keys)
    files = read_back(seaweed, bucket, pub, tmp_path / "cache")
    assert files == {"new_repository": f"New CernVM-FS repository for {FQRN}\n".encode()}
    reopened = Publisher.open(FQRN, config_dir=tmp_path / "etc")
    assert isinstance(reopened.store, SpooledStore)
    assert reopened.head().revision == 1
    old = seaweed.client().get_object(Bucket=bucket, Key=f"{FQRN}/.cvmfswhitelist")["Body"].read()
    reopened.resign(days=7)
    new = seaweed.client().get_object(Bucket=bucket, Key=f"{FQRN}/.cvmfswhitelist")["Body"].read()
    assert new != old
    assert revision_over_http(seaweed, bucket, reopened, tmp_path / "cache2") == 1
    assert not list(Path(tmp_path / "spool" / "data").rglob("*C"))  # the spool was emptied


def test_publish_incremental_tag_rollback_on_s3_read_back_over_http(seaweed, s3repo, tmp_path):
    pub, bucket = s3repo
    big = blob("big", 700_000)  # chunked with the small chunk sizes
    tree = write_files(tmp_path / "tree", {"a.txt": b"alpha\n", "sub/b.txt": b"beta\n",
                                         "sub/big.bin": big, "nested/.cvmfscatalog": b"",
                                         "nested/n.txt": b"inside\n"})
    with pub.transaction(tag="v1") as txn:
        txn.add_tree(tree, "/", delete=True)
    assert txn.summary.revision == 2
    files = read_back(seaweed, bucket, pub, tmp_path / "c1")
    assert files["sub/big.bin"] == big and files["nested/n.txt"] == b"inside\n"
    before = bucket_keys(seaweed, bucket)

    (tree / "a.txt").write_bytes(b"alpha, second edition\n")
    (tree / "sub" / "c.txt").write_bytes(b"gamma\n")
    with pub.transaction() as txn:
        txn.add_tree(tree, "/", delete=True)
    assert txn.summary.revision == 3
    files = read_back(seaweed, bucket, pub, tmp_path / "c2")
    assert files["a.txt"] == b"alpha, second edition\n" and files["sub/c.txt"] == b"gamma\n"
    new = bucket_keys(seaweed, bucket) - before
    assert new and all(k.startswith(f"{FQRN}/data/") for k in new)
    assert not any(k.endswith("P") for k in new)  # the big file's chunks were not sent again

    pub.tag("stable", message="validated")
    assert "stable" in {t.name for t in pub.tags()}
    pub.rollback("v1")
    assert revision_over_http(seaweed, bucket, pub, tmp_path / "c3") == 4  # a tag keeps S
    files = read_back(seaweed, bucket, pub, tmp_path / "c4")
    assert files["a.txt"] == b"alpha\n" and "sub/c.txt" not in files
    report = check_repository(pub, all_revisions=True)
    assert report.ok, report.problems
    assert set(report.revisions) >= {4, 3, 2}


def test_gc_on_s3_deletes_unreferenced_objects_and_check_passes(seaweed, s3repo, tmp_path):
    pub, bucket = s3repo
    doomed = blob("doomed", 5000)
    with pub.transaction() as txn:
        txn.add_file("/doomed.bin", doomed)
        txn.add_file("/kept.txt", b"kept\n")
    with pub.transaction() as txn:
        txn.remove("/doomed.bin")
    before = bucket_keys(seaweed, bucket)
    report = collect_garbage(pub, keep_revisions=0, keep_seconds=None)
    after = bucket_keys(seaweed, bucket)
    assert report.objects > 0 and report.bytes > 0
    gone = before - after
    assert len(gone) == report.objects and all(k.startswith(f"{FQRN}/data/") for k in gone)
    assert report.revisions_kept == [3]
    files = read_back(seaweed, bucket, pub, tmp_path / "cache")
    assert files == {"kept.txt": b"kept\n",
                     "new_repository": f"New CernVM-FS repository for {FQRN}\n".encode()}
    assert check_repository(pub).ok
    spec = pub.config.upstream
    by_location = check_repository(spec)  # the CLI's path: open the upstream spec directly
    assert by_location.ok and by_location.revisions == [3]


def _failing_uploads(monkeypatch, after: int) -> list[str]:
    """Make S3 uploads of objects fail after ``after`` succeeded; returns the uploaded keys."""
    done: list[str] = []
    real = S3Storage.upload_path

    def upload_path(self, relpath, path):
        if len(done) >= after:
            raise S3StorageError(self.describe(relpath), "upload failed: injected fault")
        real(self, relpath, path)
        done.append(relpath)

    monkeypatch.setattr(S3Storage, "upload_path", upload_path)
    return done


def test_an_interrupted_upload_leaves_the_previous_revision_and_takes_its_objects_back(
        seaweed, s3repo, tmp_path, monkeypatch):
    pub, bucket = s3repo
    before = bucket_keys(seaweed, bucket)
    pub.store.workers = 1  # deterministic: exactly two uploads succeed
    uploaded = _failing_uploads(monkeypatch, after=2)
    with pytest.raises(PublishError, match="stays at revision 1"), pub.transaction() as txn:
        for i in range(6):
            txn.add_file(f"/f{i}.txt", f"file {i}\n".encode())
    assert len(uploaded) == 2
    assert bucket_keys(seaweed, bucket) == before  # the two uploads were taken back
    assert revision_over_http(seaweed, bucket, pub, tmp_path / "c1") == 1
    assert not pub.config.repo_dir.joinpath("upload.journal").exists()

    monkeypatch.undo()
    with pub.transaction() as txn:
        for i in range(6):
            txn.add_file(f"/f{i}.txt", f"file {i}\n".encode())
    assert txn.summary.revision == 2
    files = read_back(seaweed, bucket, pub, tmp_path / "c2")
    assert files["f5.txt"] == b"file 5\n"
    assert check_repository(pub).ok


def test_uploads_of_a_publisher_that_died_are_taken_back_by_the_next_transaction(
        seaweed, s3repo, tmp_path, monkeypatch):
    pub, bucket = s3repo
    before = bucket_keys(seaweed, bucket)
    pub.store.workers = 1
    uploaded = _failing_uploads(monkeypatch, after=3)
    monkeypatch.setattr(SpooledStore, "discard_uploads", lambda self: 0)  # it died: no cleanup
    with pytest.raises(PublishError), pub.transaction() as txn:
        txn.add_file("/x.txt", b"x\n")
        txn.add_file("/y.txt", b"y\n")
        txn.add_file("/z.txt", b"z\n")
    orphans = bucket_keys(seaweed, bucket) - before
    assert len(orphans) == 3 == len(uploaded)
    assert revision_over_http(seaweed, bucket, pub, tmp_path / "c1") == 1

    monkeypatch.undo()
    survivor = Publisher.open(FQRN, config_dir=pub.config.config_dir)
    with survivor.transaction() as txn:
        txn.add_file("/other.txt", b"something else\n")
    assert survivor.recovered_objects >= 3
    assert not (bucket_keys(seaweed, bucket) & orphans)
    assert read_back(seaweed, bucket, survivor, tmp_path / "c2")["other.txt"] == \
        b"something else\n"


def test_a_tag_whose_upload_journal_survived_the_switch_keeps_its_objects(s3repo, monkeypatch):
    pub, _bucket = s3repo
    # the publisher dies right after the manifest switch, before dropping the upload journal
    monkeypatch.setattr(SpooledStore, "staged_committed", lambda self: self.clear_spool())
    pub.tag("kept", message="history object uploaded by a tag")
    assert pub.config.repo_dir.joinpath("upload.journal").exists()
    history = pub.head().history
    monkeypatch.undo()
    with pub.transaction() as txn:  # recovery sees the manifest moved on: nothing is deleted
        txn.add_file("/after-tag.txt", b"after\n")
    assert pub.recovered_objects == 0
    assert pub.store.upstream.exists(history.object_path(ObjectKind.HISTORY))
    assert "kept" in {t.name for t in pub.tags()}
    assert check_repository(pub, all_revisions=True).ok


def test_mkfs_refuses_a_bucket_prefix_that_holds_a_repository(seaweed, s3repo, tmp_path):
    pub, _bucket = s3repo
    with pytest.raises(ConfigError, match="holds a repository already"):
        Publisher.mkfs(FQRN, upstream=pub.config.upstream, config_dir=tmp_path / "etc2")


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("pycvmfs")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "pycvmfs.cli.main"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=120,
                          check=False)


def test_cli_mkfs_publish_check_gc_with_an_s3_config(seaweed, tmp_path):
    bucket = seaweed.new_bucket("cli")
    conf = seaweed.write_s3_conf(tmp_path / "s3.conf", bucket)
    env = {**os.environ, "PYCVMFS_CONFIG_DIR": str(tmp_path / "etc")}
    r = _cli("mkfs", FQRN, "--s3-config", str(conf), "-z", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["storage"] == f"s3://{bucket}/{FQRN}"
    tree = write_files(tmp_path / "tree", {"hello.txt": b"hello from the CLI\n"})
    r = _cli("publish", FQRN, "--from", str(tree), "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["revision"] == 2
    r = _cli("check", FQRN, "--json", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["problems"] == []
    r = _cli("gc", FQRN, "--dry-run", "--json", env=env)
    assert r.returncode == 0, r.stderr
    spool = tmp_path / "etc" / "repositories.d" / FQRN / "spool"
    assert f"CVMFS_UPSTREAM_STORAGE=S3,{spool},{FQRN}@{conf}" in \
        (tmp_path / "etc" / "repositories.d" / FQRN / "server.conf").read_text()
    pub = Publisher.open(FQRN, config_dir=tmp_path / "etc")
    assert read_back(seaweed, bucket, pub, tmp_path / "cache")["hello.txt"] == \
        b"hello from the CLI\n"
    r = _cli("mkfs", "other.example.org", "--s3-config", str(conf), "--upstream", "S3,x,y@z",
             env=env)
    assert r.returncode == 1 and "not both" in r.stderr


def test_keys_are_checked_and_rotated_on_s3(seaweed, s3repo, tmp_path):
    pub, bucket = s3repo
    cache = tmp_path / "cache"
    assert revision_over_http(seaweed, bucket, pub, cache) == 1
    client = seaweed.client()

    def manifest() -> bytes:
        return client.get_object(Bucket=bucket, Key=f"{FQRN}/.cvmfspublished")["Body"].read()

    key = pub.config.key_path("key")
    kept = key.read_bytes()
    os.chmod(key, 0o600)
    key.write_bytes(Publisher.mkfs("other.example.org", tmp_path / "other",
                                   config_dir=tmp_path / "etc2").config.key_path("key")
                    .read_bytes())
    before = (bucket_keys(seaweed, bucket), manifest())
    wrong = Publisher.open(FQRN, config_dir=tmp_path / "etc")
    with pytest.raises(ConfigError, match="does not belong to the certificate"), \
            wrong.transaction() as txn:
        txn.add_file("/f", b"x")
    assert (bucket_keys(seaweed, bucket), manifest()) == before
    key.write_bytes(kept)
    pub = Publisher.open(FQRN, config_dir=tmp_path / "etc")
    assert pub.resign(rotate_certificate=True).revision == 1
    assert revision_over_http(seaweed, bucket, pub, cache) == 1  # the client that saw r1
    assert pub.resign(published=True).revision == 1
    with pub.transaction() as txn:
        txn.add_file("/f", b"x")
    assert read_back(seaweed, bucket, pub, cache)["f"] == b"x"
