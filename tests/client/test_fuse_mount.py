"""The FUSE mount, for real: /dev/fuse, libfuse3, plain OS calls on the mount point."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pycvmfs.server.http import RepositoryServer

from helpers.fuse import CLI, eventually, mount, needs_fuse, pid_alive
from helpers.mount_walk import assert_matches_expected, walk_mount

pytestmark = needs_fuse


def _run(*args, env=None, check=True):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, check=check,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def mounter(tmp_path):
    """``mount(fqrn, url, key, *opts)`` -> mount point; everything is unmounted at teardown."""
    mounted = []

    def mount_next(fqrn: str, url: str, key, *opts: str) -> Path:
        n = len(mounted)
        mounted.append(mount(fqrn, tmp_path / f"mnt{n}", url, key, tmp_path / f"cache{n}", *opts,
                             log_file=tmp_path / f"mount{n}.log"))
        return mounted[-1]

    yield mount_next
    for mp in mounted:
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", str(mp)], check=False)


@pytest.fixture(scope="module")
def golden_http(golden_repo):
    with RepositoryServer({"golden.example.org": golden_repo}) as srv:
        yield srv.repository_url("golden.example.org")


@pytest.mark.parametrize(("opts", "tree"), [((), "rev2"), (("--tag", "v1"), "rev1")])
def test_every_path_of_the_golden_repository_through_the_mount(mounter, golden_http, golden_keys,
                                                                golden_expected, opts, tree):
    mp = mounter("golden.example.org", golden_http, golden_keys, *opts)
    assert_matches_expected(walk_mount(mp), golden_expected["trees"][tree]["entries"])
    assert os.getxattr(mp, "user.fqrn") == b"golden.example.org"
    rev = b"3" if tree == "rev2" else b"2"
    assert os.getxattr(mp, "user.revision") == rev
    assert int(os.getxattr(mp / "bin" / "blob-3m.bin", "user.chunks")) == 28
    assert os.statvfs(mp).f_files == 1068 if tree == "rev2" else True
    with pytest.raises(OSError):
        (mp / "new-file").write_bytes(b"x")  # read-only


def _requests(mp: Path) -> dict[str, int]:
    import json

    return json.loads(os.getxattr(mp, "user.fuse_requests"))


def test_the_kernel_caches_listings_entries_attributes_and_data(mounter, golden_http,
                                                                  golden_keys, golden_expected):
    mp = mounter("golden.example.org", golden_http, golden_keys)
    first = walk_mount(mp)  # lists every directory, stats every entry, reads every file
    before = _requests(mp)
    assert before["readdir"] > 0 and before["open"] > 0
    again = walk_mount(mp)
    after = _requests(mp)
    assert again == first
    assert_matches_expected(again, golden_expected["trees"]["rev2"]["entries"])
    # the second walk is answered by the kernel: no listing, lookup or attribute request, and
    # the data comes from the page cache (the files are still opened and released)
    for kind in ("readdir", "lookup", "getattr", "readlink"):
        assert after[kind] == before[kind], kind
    # (this machine's kernel pages out memory left unused for a while, DAMON "pageout", so a
    # few cached pages may have to be read again; without the page cache all would be)
    reads = before["read"] + before["read_python"]
    again_read = after["read"] + after["read_python"] - reads
    assert again_read <= reads // 20, (again_read, reads)
    assert after["open"] > before["open"]


def test_random_access_reads_and_status(mounter, golden_http, golden_keys):
    mp = mounter("golden.example.org", golden_http, golden_keys)
    path = mp / "bin" / "blob-1m.bin"
    data = path.read_bytes()
    with open(path, "rb") as f:
        for off in (0, 72790, 500_000, len(data) - 5):
            f.seek(off)
            assert f.read(70_000) == data[off:off + 70_000]
    res = _run("status", str(mp), "--json")
    assert '"revision": 3,' in res.stdout and '"nioerr": 0,' in res.stdout


def test_new_revision_after_the_ttl_while_open_files_keep_theirs(mounter, tmp_path):
    from pycvmfs.publish.repository import Publisher

    pub = Publisher.mkfs("live.example.org", tmp_path / "srv" / "live.example.org",
                         config_dir=tmp_path / "etc")
    with pub.transaction() as txn:
        txn.add_file("/data.txt", b"first revision\n")
        txn.mkdir("/empty")
    with RepositoryServer({"live.example.org": pub.config.storage}) as srv:
        # the kernel would keep names for an hour: only the switch's invalidation can show
        # the new revision within the test
        mp = mounter("live.example.org", srv.repository_url("live.example.org"),
                     pub.config.key_path("pub"), "--ttl", "1", "--kcache-timeout", "3600")
        old = open(mp / "data.txt", "rb")  # noqa: SIM115 - kept open across the update
        try:
            assert old.read() == b"first revision\n"
            listed = sorted(os.listdir(mp))  # (the kernel keeps this listing)
            assert "data.txt" in listed and "new.txt" not in listed
            assert not (mp / "new.txt").exists()  # (and this missing name)
            assert os.listdir(mp / "empty") == []  # (and this listing without names)
            before = int(os.getxattr(mp, "user.revision"))
            with pub.transaction() as txn:
                txn.add_file("/data.txt", b"second revision, longer\n")
                txn.add_file("/new.txt", b"new\n")
                txn.add_file("/empty/now-full.txt", b"x\n")
            deadline = time.monotonic() + 20
            while int(os.getxattr(mp, "user.revision")) == before:
                assert time.monotonic() < deadline, "the new revision never appeared"
                time.sleep(0.3)
            deadline = time.monotonic() + 10
            while not (mp / "new.txt").exists():
                assert time.monotonic() < deadline
                time.sleep(0.3)
            # the kernel's cached names are invalidated at the switch (queued): new opens see
            # the new content
            deadline = time.monotonic() + 5
            while (mp / "data.txt").read_bytes() != b"second revision, longer\n":
                assert time.monotonic() < deadline, (mp / "data.txt").read_bytes()
                time.sleep(0.2)
            # the kernel's cached listing of the root was dropped at the switch
            assert sorted(os.listdir(mp)) == sorted([*listed, "new.txt"])
            assert os.listdir(mp / "empty") == ["now-full.txt"]
            old.seek(0)
            assert old.read() == b"first revision\n"  # the open file keeps its revision
        finally:
            old.close()


def test_mount_from_a_cernvmfs_configuration_directory(golden_http, golden_keys, tmp_path):
    """No --server-url: CVMFS_SERVER_URL, CVMFS_HTTP_PROXY, CVMFS_KEYS_DIR and
    CVMFS_REPOSITORY_TAG come from default.local and config.d/<fqrn>.conf."""
    etc = tmp_path / "etc-cvmfs"
    (etc / "config.d").mkdir(parents=True)
    base = golden_http.rsplit("/", 1)[0]
    (etc / "default.local").write_text(f'CVMFS_HTTP_PROXY="DIRECT"\n'
                                       f"CVMFS_SERVER_URL={base}/@fqrn@\n"
                                       f"CVMFS_KEYS_DIR={golden_keys}\n")
    (etc / "config.d" / "golden.example.org.conf").write_text("CVMFS_REPOSITORY_TAG=v1\n")
    mp = tmp_path / "mnt"
    mp.mkdir()
    res = _run("mount", "golden.example.org", str(mp), "--config-dir", str(etc), "--cache-dir",
               str(tmp_path / "cache"), check=False)
    assert res.returncode == 0, res.stderr
    try:
        assert os.getxattr(mp, "user.revision") == b"2"  # pinned to tag v1 by the config
        assert (mp / "text" / "hello.txt").read_bytes() == b"Hello, CernVM-FS!\n"
        shown = _run("config", "showconfig", "golden.example.org", "--config-dir", str(etc))
        assert "CVMFS_REPOSITORY_TAG=v1" in shown.stdout
    finally:
        _run("umount", str(mp))


def test_failover_to_the_second_server_through_the_mount(golden_repo, golden_copy,
                                                         golden_keys, golden_expected, tmp_path):
    """The first server serves a corrupted object, then dies in the middle of a walk: every
    read still returns the right bytes, from the second server, and the failures are counted."""
    from pycvmfs.format.hashes import ContentHash

    bad = golden_expected["published"]["files"]["rev2"]["text/about-200k.txt"]["chunk_list"][0]
    p = golden_copy / ContentHash.parse(bad["hash"]).object_path()
    p = p.with_name(p.name + "P")
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    first = RepositoryServer({"golden.example.org": golden_copy}).start()
    second = RepositoryServer({"golden.example.org": golden_repo}).start()
    mp = tmp_path / "mnt"
    mp.mkdir()
    res = _run("mount", "golden.example.org", str(mp),
               "--server-url", first.repository_url("golden.example.org"),
               "--server-url", second.repository_url("golden.example.org"),
               "-k", str(golden_keys), "--cache-dir", str(tmp_path / "cache"), check=False)
    assert res.returncode == 0, res.stderr
    try:
        expected = golden_expected["trees"]["rev2"]["entries"]
        files = sorted(p for p, e in expected.items() if e["type"] == "file")
        exp = expected["text/about-200k.txt"]["sha1"]
        assert hashlib.sha1((mp / "text/about-200k.txt").read_bytes()).hexdigest() == exp
        assert int(os.getxattr(mp, "user.nioerr")) >= 1  # the bad chunk was counted
        for i, rel in enumerate(files):
            if i == len(files) // 3:
                first.stop()  # the first server goes away mid-walk
            got = hashlib.sha1((mp / rel).read_bytes()).hexdigest()
            assert got == expected[rel]["sha1"], rel
        assert os.getxattr(mp, "user.host").decode().startswith(second.url)
    finally:
        _run("umount", str(mp), check=False)
        second.stop()
        first.stop()


def test_a_small_quota_holds_while_reading_the_whole_repository(golden_http, golden_keys,
                                                                golden_expected, tmp_path):
    """CVMFS_QUOTA_LIMIT=2 (MB) while reading every file (5 MB of content): the cache stays
    under the quota and every read is right."""
    etc = tmp_path / "etc-cvmfs"
    etc.mkdir()
    base = golden_http.rsplit("/", 1)[0]
    (etc / "default.local").write_text(f"CVMFS_HTTP_PROXY=DIRECT\nCVMFS_SERVER_URL={base}/@fqrn@\n"
                                       f"CVMFS_KEYS_DIR={golden_keys}\nCVMFS_QUOTA_LIMIT=2\n"
                                       f"CVMFS_CACHE_BASE={tmp_path / 'cache'}\n")
    mp = tmp_path / "mnt"
    mp.mkdir()
    _run("mount", "golden.example.org", str(mp), "--config-dir", str(etc))
    shared = tmp_path / "cache" / "shared"
    try:
        entries = golden_expected["trees"]["rev2"]["entries"]
        for n, (rel, e) in enumerate(sorted(entries.items())):
            if e["type"] == "file":
                assert hashlib.sha1((mp / rel).read_bytes()).hexdigest() == e["sha1"], rel
            if n % 100 == 0:
                used = sum(p.stat().st_size for p in shared.glob("[0-9a-f][0-9a-f]/*"))
                assert used <= 2 << 20, (rel, used)
    finally:
        _run("umount", str(mp))
    import json

    stats = json.loads(_run("cache", "stat", "--cache-dir", str(shared), "--json").stdout)
    assert 0 < stats["total_bytes"] <= 2 << 20 and stats["objects"] > 0


def test_sigterm_unmounts_an_idle_mount(mounter, golden_http, golden_keys):
    mp = mounter("golden.example.org", golden_http, golden_keys)
    pid = int(os.getxattr(mp, "user.pid"))
    assert (mp / "text" / "hello.txt").read_bytes().startswith(b"Hello again")
    os.kill(pid, signal.SIGTERM)
    assert eventually(lambda: not pid_alive(pid), 20) and not os.path.ismount(mp)


def test_sigterm_detaches_a_busy_mount_lazily_and_a_second_one_aborts(mounter, golden_http,
                                                                        golden_keys,
                                                                        golden_expected):
    """Users of a mount keep it served after the first signal (as ``umount -l``), and get a
    clear error, never a hang, after the second."""
    mp = mounter("golden.example.org", golden_http, golden_keys)
    pid = int(os.getxattr(mp, "user.pid"))
    holder = subprocess.Popen(["sleep", "120"], cwd=mp / "nested")  # a working directory
    try:
        with open(mp / "bin" / "blob-3m.bin", "rb") as f:
            head = f.read(1000)
            os.kill(pid, signal.SIGTERM)
            assert eventually(lambda: not os.path.ismount(mp), 20)  # gone from the name space
            assert pid_alive(pid)
            rest = f.read()  # the open file is still served, all of it
            entry = golden_expected["trees"]["rev2"]["entries"]["bin/blob-3m.bin"]
            assert hashlib.sha1(head + rest).hexdigest() == entry["sha1"]
            assert os.listdir(f"/proc/{holder.pid}/cwd")  # and the working directory
            os.kill(pid, signal.SIGTERM)
            assert eventually(lambda: not pid_alive(pid), 20)
            with pytest.raises(OSError) as err:  # (cached listings may still be shown)
                os.stat(f"/proc/{holder.pid}/cwd/a-name-never-looked-up")
            assert err.value.errno == errno.ENOTCONN
    finally:
        holder.kill()
        holder.wait()


def test_every_listed_xattr_can_be_read_and_magic_ones_can_be_hidden(mounter, golden_http,
                                                                     golden_keys):
    """`getfattr -d`, `cp -a` and rsync read every name listxattr gives. As in the stock
    client, the magic attributes are listed on the mount root only by default
    (CVMFS_MAGIC_XATTRS_VISIBILITY), and can always be read by name."""
    mp = mounter("golden.example.org", golden_http, golden_keys,
                 "--magic-xattrs-visibility", "always")
    files = [Path(d) / n for d, _dirs, names in os.walk(mp) for n in names]
    assert len(files) > 1000
    for p in files:
        for name in os.listxattr(p, follow_symlinks=False):
            os.getxattr(p, name, follow_symlinks=False)  # raises if listed but unreadable
    assert "user.hash" in os.listxattr(mp / "text" / "hello.txt")
    default = mounter("golden.example.org", golden_http, golden_keys)
    assert "user.revision" in os.listxattr(default)
    assert os.listxattr(default / "text" / "hello.txt") == []
    assert os.getxattr(default / "text" / "hello.txt", "user.hash")
    hidden = mounter("golden.example.org", golden_http, golden_keys, "--hide-magic-xattrs")
    assert os.listxattr(hidden / "text" / "hello.txt") == []
    assert sorted(os.listxattr(hidden / "xattr" / "with-xattr.txt")) == [
        "user.binary", "user.comment", "user.empty"]
    assert "user.revision" not in os.listxattr(hidden)
    assert os.getxattr(hidden, "user.revision") == b"3"  # still readable by name
