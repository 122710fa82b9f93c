"""Validly signed repositories with hostile catalogs: each reader gives one clear error, no spin."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.client.catalogs import list_catalogs
from pycvmfs.client.repository import open_repository
from pycvmfs.errors import CatalogError, SizeLimitError
from pycvmfs.format.hashes import ContentHash, md5_pair
from pycvmfs.publish.repository import Publisher
from pycvmfs.publish.signing import switch_manifest
from pycvmfs.server.http import RepositoryServer

from helpers.fuse import FUSE_OK, eventually

FQRN = "hostile.example.org"
CLI = [sys.executable, "-m", "pycvmfs.cli.main"]
SUB_HASH = "SELECT sha1 FROM nested_catalogs WHERE path = '/sub'"


def _publish(base: Path) -> Publisher:
    pub = Publisher.mkfs(FQRN, base / "srv" / FQRN, config_dir=base / "etc")
    with pub.transaction() as txn:
        txn.add_file("/top.txt", b"top\n")
        txn.add_file("/ok/a.txt", b"a\n")
        txn.add_file("/ok/b.txt", b"b\n")
        txn.add_file("/sub/.cvmfscatalog", b"")
        txn.add_file("/sub/x/f.txt", b"f\n")
        txn.add_file("/sub/deep/.cvmfscatalog", b"")
        txn.add_file("/sub/deep/leaf.txt", b"leaf\n")
    return pub


def forge(pub: Publisher, work: Path, edits: dict[str, list[str]]) -> None:
    """Run SQL on the catalogs mounted at the keys of ``edits`` (``""``, ``"/sub"``), store
    them with their parents re-pointed, and sign a new manifest: a publisher gone bad."""
    head = pub.head()
    storage = Path(pub.config.storage)

    def load(h: str, name: str) -> Path:
        db = work / f"{name}.db"
        db.write_bytes(zlib.decompress((storage / "data" / h[:2] / f"{h[2:]}C").read_bytes()))
        return db

    def run(db: Path, statements: list[str]) -> None:
        conn = sqlite3.connect(db)
        for statement in statements:
            conn.execute(statement)
        conn.commit()
        conn.close()

    def save(db: Path) -> tuple[str, int]:
        raw = db.read_bytes()
        packed = zlib.compress(raw)
        h = hashlib.sha1(packed).hexdigest()
        pub.store.put_bytes(f"data/{h[:2]}/{h[2:]}C", packed)
        return h, len(raw)

    root = load(str(head.root_catalog), "root")
    if "/sub" in edits:
        conn = sqlite3.connect(root)
        (sub_hash,) = conn.execute(SUB_HASH).fetchone()
        conn.close()
        sub = load(sub_hash, "sub")
        run(sub, [s.format(sub=sub_hash) for s in edits["/sub"]])
        edited, size = save(sub)
        run(root, [f"UPDATE nested_catalogs SET sha1 = '{edited}', size = {size} "
                   "WHERE path = '/sub'"])
    run(root, edits.get("", []))
    root_hash, root_size = save(root)
    new = dataclasses.replace(head, root_catalog=ContentHash.parse(root_hash),
                              root_catalog_size=root_size)
    switch_manifest(pub.store, pub.config, pub.keys, new, previous=head)


def _rename(path: bytes, name_sql: str) -> str:
    m1, m2 = md5_pair(path)
    return f"UPDATE catalog SET name = {name_sql} WHERE md5path_1 = {m1} AND md5path_2 = {m2}"


#: The catalog at /sub registers a nested catalog at its own mount point (its old self).
SELF_MOUNT = ["INSERT INTO nested_catalogs VALUES ('/sub', '{sub}', 1024)"]
#: A view: SQL that SQLite would run while the catalog is read.
VIEW = "CREATE VIEW everything AS SELECT * FROM catalog"
#: A NUL byte in a name of the root catalog (/ok/a.txt becomes "a\0x").
NUL_NAME = [_rename(b"/ok/a.txt", "CAST(X'610078' AS TEXT)")]


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[tuple[Publisher, str]]:
    """Both malformations at once, served over HTTP: (publisher, repository URL)."""
    pub = _publish(tmp_path)
    forge(pub, tmp_path, {"": NUL_NAME, "/sub": SELF_MOUNT})
    with RepositoryServer({FQRN: pub.config.storage}) as srv:
        yield pub, srv.repository_url(FQRN)


def _cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The command, killed (and the test failed) if it spins instead of answering."""
    try:
        return subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"pycvmfs {' '.join(argv)} did not finish within {timeout} s")


def test_client_api_refuses_the_hostile_parts_and_reads_the_rest(hostile, tmp_path: Path):
    pub, url = hostile
    repo = open_repository(url, keys=[pub.config.key_path("pub")], cache_dir=tmp_path / "c")
    with repo, repo.open_revision() as view:
        assert view.read_bytes("/top.txt") == b"top\n"
        with pytest.raises(CatalogError, match=r"root catalog \w+C: entry 'a\\x00x' .*not one "
                                               r"path component.*in directory '/ok'"):
            view.listdir("/ok")
        with pytest.raises(CatalogError, match=r"nested catalog \w+C at /sub: nested_catalogs "
                                               r"'/sub' is not a canonical path below"):
            view.listdir("/sub/x")  # looped forever before: /sub's own mount point
        assert view.read_bytes("/ok/b.txt") == b"b\n"


def test_a_file_bigger_than_its_catalog_size_is_refused_as_such(tmp_path: Path):
    """The object is the right one (its hash matches) but the catalog records fewer bytes: the
    publisher lied about the size, and nothing past that size is inflated or served."""
    pub = _publish(tmp_path)
    m1, m2 = md5_pair(b"/ok/a.txt")
    forge(pub, tmp_path, {"": [f"UPDATE catalog SET size = 1 WHERE md5path_1 = {m1} "
                               f"AND md5path_2 = {m2}"]})
    repo = open_repository(str(pub.config.storage), keys=[pub.config.key_path("pub")],
                           cache_dir=tmp_path / "c")
    with repo, repo.open_revision() as view:
        with pytest.raises(SizeLimitError, match="decompresses to more than its size limit of "
                                                 "1 bytes"):
            view.read_bytes("/ok/a.txt")
        assert view.read_bytes("/ok/b.txt") == b"b\n"
    assert not any((tmp_path / "c").glob("txn/*"))


def test_list_catalogs_checks_mount_points_and_recorded_sizes(tmp_path: Path):
    """list-catalogs walks a tree as the readers do: each catalog where its root_prefix says,
    each download capped by the size its parent records."""
    pub = _publish(tmp_path / "moved")
    forge(pub, tmp_path / "moved", {"/sub": ["DELETE FROM nested_catalogs",
                                             "UPDATE properties SET value = '/elsewhere' "
                                             "WHERE key = 'root_prefix'"]})
    with open_repository(str(pub.config.storage), keys=[pub.config.key_path("pub")],
                         cache_dir=tmp_path / "c1") as repo, \
            pytest.raises(CatalogError, match="root_prefix '/elsewhere' does not match its "
                                              "mount point '/sub'"):
        list_catalogs(repo)
    pub = _publish(tmp_path / "small")
    forge(pub, tmp_path / "small", {"": ["UPDATE nested_catalogs SET size = 100 "
                                         "WHERE path = '/sub'"]})
    with open_repository(str(pub.config.storage), keys=[pub.config.key_path("pub")],
                         cache_dir=tmp_path / "c2") as repo, \
            pytest.raises(SizeLimitError, match="size limit of 100 bytes"):
        list_catalogs(repo)


@pytest.mark.parametrize("argv", [["ls", "/ok"], ["ls", "/sub/x"], ["get", "/sub/x/f.txt"]])
def test_cli_readers_fail_with_one_clear_line(hostile, tmp_path: Path, argv: list[str]):
    pub, url = hostile
    out = tmp_path / "out"
    extra = [str(out)] if argv[0] == "get" else []
    res = _cli(argv[0], url, argv[1], *extra, "-k", str(pub.config.key_path("pub")),
               "--cache-dir", str(tmp_path / "c"))
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr
    assert "catalog" in res.stderr and ("/ok" in res.stderr or "/sub" in res.stderr), res.stderr


def test_verify_reports_the_self_mounted_catalog(hostile, tmp_path: Path):
    pub, url = hostile
    res = _cli("verify", url, "-k", str(pub.config.key_path("pub")),
               "--cache-dir", str(tmp_path / "c"))
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr
    assert "nested_catalogs '/sub' is not a canonical path below" in res.stdout + res.stderr


def test_snapshot_refuses_the_hostile_revision(hostile, tmp_path: Path):
    pub, url = hostile
    dest = tmp_path / "replica" / FQRN
    res = _cli("snapshot", url, str(dest), "-k", str(pub.config.key_path("pub")))
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr
    assert "nested_catalogs '/sub' is not a canonical path below" in res.stderr, res.stderr
    assert not (dest / ".cvmfspublished").exists()


def test_check_names_the_catalog_with_a_view(tmp_path: Path):
    pub = _publish(tmp_path)
    forge(pub, tmp_path, {"/sub": [VIEW]})
    res = _cli("check", str(pub.config.storage), "--config-dir", str(tmp_path / "etc"))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    problems = [ln for ln in res.stdout.splitlines() if ln.startswith("PROBLEM")]
    assert len(problems) == 1 and "view 'everything' is not part of the format" in problems[0]
    assert "/sub" in problems[0], problems


def _run(mount_pid: int, *argv: str) -> subprocess.CompletedProcess:
    """A reader of the mount in its own process; if the mount spins instead of answering, the
    mount is killed (which lets the reader go) and the test fails."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.kill(mount_pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        pytest.fail(f"{' '.join(argv)}: no answer from the mount within 30 s")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.skipif(not FUSE_OK, reason="needs /dev/fuse and root")
def test_mount_answers_eio_for_the_hostile_parts_and_keeps_serving(hostile, tmp_path: Path):
    from helpers.fuse import mount, pid_alive

    pub, url = hostile
    log = tmp_path / "mount.log"
    mp = mount(FQRN, tmp_path / "mnt", url, pub.config.key_path("pub"), tmp_path / "cache",
               log_file=log)
    pid = int(os.getxattr(mp, "user.pid"))
    try:
        assert _run(pid, "cat", str(mp / "top.txt")).stdout == b"top\n"
        for bad in ("ok", "sub/x", "sub"):
            probe = _run(pid, "ls", str(mp / bad))
            assert probe.returncode != 0 and b"Input/output error" in probe.stderr, probe
        assert _run(pid, "cat", str(mp / "ok" / "b.txt")).stdout == b"b\n"  # still serving
        assert eventually(lambda: "is not a canonical path below" in log.read_text())
        text = log.read_text()
        lines = [ln for ln in text.splitlines() if "nested_catalogs '/sub'" in ln]
        assert lines and all("nested catalog" in ln and "at /sub" in ln for ln in lines)
        assert any("root catalog" in ln and "not one path component" in ln
                   for ln in text.splitlines())
        assert "Traceback" not in text
    finally:
        subprocess.run(["fusermount3", "-u", str(mp)], check=False, timeout=30)
        if not eventually(lambda: not pid_alive(pid), 10):
            os.kill(pid, signal.SIGKILL)  # spinning: it would not let go of the mount
            subprocess.run(["umount", "-l", str(mp)], check=False, timeout=30)


DEPTH = 520  # the recursive walks met Python's recursion limit: check at ~160, snapshot ~490


def test_deep_legal_nesting_reads_verifies_checks_and_replicates(tmp_path: Path):
    """Nested catalogs as deep as paths allow are no cycle: every walker follows them."""
    from pycvmfs.client.verify import verify_repository
    from pycvmfs.publish.check import check_repository

    pub = Publisher.mkfs("deep.example.org", tmp_path / "srv" / "deep.example.org",
                         config_dir=tmp_path / "etc")
    leaf = "/d" * DEPTH
    with pub.transaction() as txn:
        for level in range(1, DEPTH + 1):
            txn.add_file("/d" * level + "/.cvmfscatalog", b"")
        txn.add_file(leaf + "/leaf.txt", b"leaf\n")
    report = check_repository(pub)
    assert report.ok and report.catalogs == DEPTH + 1, report
    repo = open_repository(str(pub.config.storage), keys=[pub.config.key_path("pub")],
                           cache_dir=tmp_path / "c")
    with repo:
        with repo.open_revision() as view:
            assert view.read_bytes(leaf + "/leaf.txt") == b"leaf\n"
            assert len(list(view.catalogs())) == DEPTH + 1
        verified = verify_repository(repo)
        assert verified.ok and verified.checked["catalog"] == DEPTH + 1, verified
    replica = tmp_path / "replica" / "deep.example.org"
    res = _cli("snapshot", str(pub.config.storage), str(replica), "-k",
               str(pub.config.key_path("pub")), timeout=300)
    assert res.returncode == 0 and (replica / ".cvmfspublished").exists(), res.stderr
    assert f"{DEPTH + 2} catalogs" in res.stderr + res.stdout  # the tree and revision 0's
