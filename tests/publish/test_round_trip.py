"""What we publish reads back identically through our client."""

from __future__ import annotations

import os
import stat

import pytest

from pycvmfs.errors import CvmfsError

from helpers.publishing import describe_tree, describe_view, reader


def _compare(src_desc: dict, view_desc: dict) -> None:
    """Equal trees. Hard links follow CernVM-FS (format doc §4.7): a group lives in one
    directory, so names of one inode in other directories are separate entries."""
    assert sorted(view_desc) == sorted(src_desc)
    src_groups: dict[tuple, set] = {}
    view_inodes: dict[int, set] = {}
    for path, s in src_desc.items():
        if s["type"] == "file":
            src_groups.setdefault((s["ino"], os.path.dirname(path)), set()).add(path)
    for path, s in src_desc.items():
        v = view_desc[path]
        assert v["type"] == s["type"], path
        assert v["mode"] == s["mode"], path
        if s["type"] != "dir":
            assert v["mtime"] == s["mtime"], path
        if s["type"] == "symlink":
            assert v["target"] == s["target"], path
        if s["type"] == "file":
            names_here = len(src_groups[(s["ino"], os.path.dirname(path))])
            assert (v["size"], v["sha1"], v["nlink"]) == (s["size"], s["sha1"], names_here), path
            assert v["xattrs"] == s["xattrs"], path
            view_inodes.setdefault(v["ino"], set()).add(path)
        if s["type"] == "special":
            assert (v["rdev"], v["fmt"]) == (s["rdev"], s["fmt"]), path
    # hard-link identity: the same groups of names share an inode on both sides
    assert sorted(map(sorted, src_groups.values())) == sorted(map(sorted, view_inodes.values()))


def _make_tree(root):
    (root / "empty-dir").mkdir(parents=True)
    (root / "empty-file").write_bytes(b"")
    (root / "ünïcödé ñame 日本語 😀.txt").write_bytes(b"unicode\n")
    deep = root.joinpath(*[f"l{i}" for i in range(12)])
    deep.mkdir(parents=True)
    (deep / "leaf").write_bytes(b"deep\n")
    big = bytes((i * 7919) % 251 for i in range(700_000))
    (root / "big.bin").write_bytes(big)  # chunked with 64/128/256 KiB
    (root / "exact-min.bin").write_bytes(b"x" * 65536)
    (root / "hl").mkdir()
    (root / "hl" / "a").write_bytes(b"linked\n")
    os.link(root / "hl" / "a", root / "hl" / "b")
    os.link(root / "hl" / "a", root / "empty-dir" / "cross-dir")  # another directory
    (root / "exec.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "exec.sh", 0o4755)
    os.symlink("exec.sh", root / "rel-link")
    os.symlink("/cvmfs/$(ARCH:-x86)/abs", root / "variant-link")
    os.symlink("does/not/exist", root / "dangling")
    os.mkfifo(root / "fifo", 0o600)
    (root / "attrs").write_bytes(b"x")
    os.setxattr(root / "attrs", "user.one", b"1")
    os.setxattr(root / "attrs", "user.empty", b"")
    (root / "sub").mkdir()
    (root / "sub" / ".cvmfscatalog").write_bytes(b"")
    (root / "sub" / "inner").write_bytes(b"in a nested catalog\n")
    for p in [root, *root.rglob("*")]:
        os.utime(p, (1_600_000_000, 1_600_000_000), follow_symlinks=False)


@pytest.fixture
def source(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    _make_tree(root)
    return root


def test_every_file_kind_round_trips(make_publisher, source, tmp_path):
    pub = make_publisher(include_xattrs=True)
    with pub.transaction() as txn:
        txn.add_tree(source, "/", delete=True)
    with reader(pub, tmp_path / "c") as r, r.open_revision() as view:
        _compare(describe_tree(source), describe_view(view))
        assert view.stat("big.bin").is_chunked and not view.stat("exact-min.bin").is_chunked
        assert view.nested_hash(b"/sub") is not None
        assert view.readlink("variant-link", expand=False) == "/cvmfs/$(ARCH:-x86)/abs"


def test_an_unchanged_tree_makes_no_new_revision(publisher, source):
    with publisher.transaction() as txn:
        txn.add_tree(source, "/", delete=True)
    rev = publisher.head().revision
    with publisher.transaction() as txn:
        txn.add_tree(source, "/", delete=True)
    assert txn.summary.revision is None and txn.summary.files == 0
    assert publisher.head().revision == rev
    with publisher.transaction():
        pass
    assert publisher.head().revision == rev


def test_incremental_changes_touch_only_what_changed(make_publisher, source, tmp_path):
    pub = make_publisher(include_xattrs=True)
    with pub.transaction() as txn:
        txn.add_tree(source, "/", delete=True)
    first = pub.head()
    (source / "sub" / "inner").write_bytes(b"changed\n")
    os.utime(source / "sub" / "inner", (1_700_000_000, 1_700_000_000))
    (source / "empty-file").unlink()
    (source / "new-dir").mkdir()
    (source / "new-dir" / "f").write_bytes(b"new\n")
    with pub.transaction() as txn:
        txn.add_tree(source, "/", delete=True)
    s = txn.summary
    assert s.files == 2 and s.revision == first.revision + 1
    with reader(pub, tmp_path / "c") as r, r.open_revision() as view:
        _compare(describe_tree(source), describe_view(view))
        old = r.open_revision(revision=first.revision)
        assert old.read_bytes("sub/inner") == b"in a nested catalog\n"
        assert old.exists("empty-file") and not view.exists("empty-file")


def test_markers_split_and_merge_nested_catalogs(publisher, source, tmp_path):
    with publisher.transaction() as txn:
        txn.add_tree(source, "/", delete=True)
    (source / "sub" / ".cvmfscatalog").unlink()
    (source / "l0" / ".cvmfscatalog").write_bytes(b"")
    (source / "l0" / "l1" / "l2" / ".cvmfscatalog").write_bytes(b"")
    with publisher.transaction() as txn:
        txn.add_tree(source, "/", delete=True)
    with reader(publisher, tmp_path / "c") as r, r.open_revision() as view:
        assert view.nested_hash(b"/sub") is None
        assert view.nested_hash(b"/l0") is not None
        assert view.nested_hash(b"/l0/l1/l2") is not None
        cats = dict(view.catalogs())
        assert sorted(cats) == [b"", b"/l0", b"/l0/l1/l2"]
        assert view.read_bytes("sub/inner") == b"in a nested catalog\n"
        deep = "/".join(f"l{i}" for i in range(12)) + "/leaf"
        assert view.read_bytes(deep) == b"deep\n"
        # counters: root self+subtree equals everything
        stats = cats[b""].statistics()
        total_regular = stats["self_regular"] + stats["subtree_regular"]
        assert total_regular == sum(1 for _d, _ds, fs in view.walk("/") for f in fs if f.is_file)
    # removing the directory of a nested catalog removes the catalog
    import shutil

    shutil.rmtree(source / "l0")
    with publisher.transaction() as txn:
        txn.add_tree(source, "/", delete=True)
    with reader(publisher, tmp_path / "c2") as r, r.open_revision() as view:
        assert sorted(dict(view.catalogs())) == [b""]


def test_transaction_api_and_abort(publisher, tmp_path):
    rev = publisher.head().revision
    with pytest.raises(RuntimeError), publisher.transaction() as txn:
        txn.add_file("/a/b/c.txt", b"hello")
        raise RuntimeError("user code failed")
    assert publisher.head().revision == rev
    with publisher.transaction(tag="api", message="made by the API") as txn:
        txn.add_file("/a/b/c.txt", b"hello", mode=0o600, mtime=1_234_567_890)
        txn.mkdir("/d/e", mode=0o750)
        txn.symlink("/d/link", "../a/b/c.txt")
        txn.special("/d/fifo", stat.S_IFIFO, mode=0o600)
        txn.remove("/new_repository")
    with reader(publisher, tmp_path / "c") as r, r.open_revision(tag="api") as view:
        assert view.read_bytes("a/b/c.txt") == b"hello"
        assert view.stat("a/b/c.txt").permissions == 0o600
        assert view.stat("a/b/c.txt").st_mtime == 1_234_567_890
        assert view.read_bytes("d/link") == b"hello"
        assert view.stat("d/e").permissions == 0o750
        assert not view.exists("new_repository")
        tag = {t.name: t for t in r.tags()}["api"]
        assert tag.description == "made by the API"


@pytest.mark.parametrize("bad", [b"/x/" + b"n" * 256, b"/.cvmfs/x", b"/a/../b"])
def test_names_cvmfs_cannot_store_are_refused_without_change(publisher, bad):
    rev = publisher.head()
    with pytest.raises(CvmfsError), publisher.transaction() as txn:
        txn.add_file(bad, b"x")
    assert publisher.head() == rev


_UNREADABLE = """
import os, sys
from pathlib import Path
from pycvmfs.publish.repository import Publisher
from pycvmfs.errors import PublishError
base = Path(sys.argv[1])
pub = Publisher.mkfs("test.example.org", base / "srv", config_dir=base / "etc")
src = base / "src"
(src / "d").mkdir(parents=True)
(src / "d" / "ok").write_bytes(b"fine")
(src / "d" / "secret").write_bytes(b"s")
os.chmod(src / "d" / "secret", 0)
before = pub.head()
try:
    with pub.transaction() as txn:
        txn.add_tree(src, "/")
except PublishError as e:
    assert "secret" in str(e) and "cannot read" in str(e), e
    assert pub.head() == before
    assert not any(p.name.startswith("ingest.") for p in (base / "srv" / "data" / "txn").iterdir())
    print("refused:", e)
    sys.exit(0)
sys.exit("the unreadable file was not refused")
"""


def test_unreadable_input_aborts_the_whole_publish(tmp_path):
    """In a real child process; as root without the capabilities that bypass file modes."""
    import shutil
    import subprocess
    import sys

    cmd = [sys.executable, "-c", _UNREADABLE, str(tmp_path)]
    if os.geteuid() == 0:  # util-linux's setpriv (Debian essential)
        cmd = [shutil.which("setpriv") or "/usr/bin/setpriv",
               "--bounding-set", "-dac_override,-dac_read_search", "--", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "refused:" in proc.stdout


def test_files_over_the_size_limit_are_refused(make_publisher, tmp_path):
    pub = make_publisher(file_mbyte_limit=1)
    big = tmp_path / "big"
    big.write_bytes(b"\0" * (2 << 20))
    rev = pub.head()
    with pytest.raises(CvmfsError, match="size limit"), pub.transaction() as txn:
        txn.add_file("/big", big)
    assert pub.head() == rev


@pytest.mark.parametrize("settings", [{"hash_algorithm": "rmd160"},
                                      {"hash_algorithm": "shake128"},
                                      {"compression": "none"},
                                      {"use_chunking": False}])
def test_other_algorithms_and_compression_round_trip(make_publisher, source, tmp_path, settings):
    from pycvmfs.format.compression import Compression
    from pycvmfs.format.hashes import Algorithm

    conv = {"hash_algorithm": Algorithm.from_config_name,
            "compression": Compression.from_config_name}
    pub = make_publisher(**{k: conv.get(k, lambda v: v)(v) for k, v in settings.items()})
    with pub.transaction() as txn:
        txn.add_tree(source, "/", delete=True)
    with reader(pub, tmp_path / "c") as r, r.open_revision() as view:
        desc_src = describe_tree(source)
        for d in desc_src.values():
            d.get("xattrs", {}).clear()  # xattrs are off here
        _compare(desc_src, describe_view(view))
        algo = pub.settings.hash_algorithm
        assert r.manifest.root_catalog.algorithm is algo
        assert view.stat("README" if False else "exec.sh").hash.algorithm is algo


def test_automatic_catalogs_split_heavy_and_merge_light_catalogs(make_publisher, tmp_path):
    pub = make_publisher(autocatalogs=True, autocatalogs_max_weight=400,
                         autocatalogs_min_weight=50)
    src = tmp_path / "auto"
    for pkg in range(4):
        for sub in range(3):
            d = src / f"pkg{pkg}" / f"v{sub}"
            d.mkdir(parents=True)
            for i in range(60):
                (d / f"f{i}").write_bytes(f"{pkg}.{sub}.{i}\n".encode())
    with pub.transaction() as txn:
        txn.add_tree(src, "/", delete=True)
    with reader(pub, tmp_path / "c1") as r, r.open_revision() as view:
        cats = dict(view.catalogs())
        assert len(cats) > 1  # 4*3*61 + dirs > 400 rows: split
        for mp, cat in cats.items():
            assert cat.statistics()["self_regular"] + 5 <= 400 or mp == b"", mp
            if mp:
                names = view.listdir(mp)
                assert ".cvmfscatalog" in names and ".cvmfsautocatalog" in names
                assert view.lstat(mp.decode() + "/.cvmfsautocatalog").permissions == 0o600
        total = sum(1 for _d, _ds, fs in view.walk("/") for f in fs
                    if not f.name.startswith(".cvmfs"))
        assert total == 4 * 3 * 60
    rev = pub.head().revision
    with pub.transaction() as txn:  # the markers it made are kept: nothing changed
        txn.add_tree(src, "/", delete=True)
    assert txn.summary.revision is None and pub.head().revision == rev
    # shrink everything: the automatic catalogs fall under the minimum and are merged back
    import shutil

    for pkg in range(4):
        for sub in range(3):
            d = src / f"pkg{pkg}" / f"v{sub}"
            shutil.rmtree(d)
            d.mkdir()
            (d / "only").write_bytes(b"x")
    with pub.transaction() as txn:
        txn.add_tree(src, "/", delete=True)
    with reader(pub, tmp_path / "c2") as r, r.open_revision() as view:
        assert sorted(dict(view.catalogs())) == [b""]
        assert not any(f.name == ".cvmfsautocatalog" for _d, _ds, fs in view.walk("/")
                       for f in fs)


def test_syncing_the_same_tree_again_is_no_change_even_for_dirtab_directories(publisher,
                                                                              tmp_path):
    """The markers a dirtab rule makes do not move the mtime of directories the sync gave
    (their attributes are the source's): the next sync of the same tree finds nothing to do,
    however much later it runs."""
    src = tmp_path / "dt"
    for ver in ("1.0", "2.0"):
        (src / "sw" / "ROOT" / ver).mkdir(parents=True)
        (src / "sw" / "ROOT" / ver / "x.so").write_bytes(b"so")
    (src / ".cvmfsdirtab").write_bytes(b"/sw/*/*\n")
    old = 1_600_000_000  # long before this publish: a bumped mtime would show
    for d in (src / "sw" / "ROOT" / "1.0", src / "sw" / "ROOT" / "2.0", src / "sw" / "ROOT",
              src / "sw", src):
        os.utime(d, (old, old))
    with publisher.transaction() as txn:
        txn.add_tree(src, "/", delete=True)
    rev = publisher.head().revision
    with reader(publisher, tmp_path / "c") as r, r.open_revision() as view:
        assert sorted(mp for mp, _ in view.catalogs()) == [b"", b"/sw/ROOT/1.0",
                                                             b"/sw/ROOT/2.0"]
        assert view.lstat("sw/ROOT/2.0").st_mtime == old
    with publisher.transaction() as txn:
        txn.add_tree(src, "/", delete=True)
    assert publisher.head().revision == rev


def test_dirtab_rules_make_nested_catalogs(publisher, tmp_path):
    src = tmp_path / "dt"
    for pkg in ("ROOT", "Geant4", ".hidden"):
        for ver in ("1.0", "2.0"):
            (src / "sw" / pkg / ver / "lib").mkdir(parents=True)
            (src / "sw" / pkg / ver / "lib" / "x.so").write_bytes(b"so")
    (src / "sw" / "ROOT" / "latest").symlink_to("2.0")
    (src / "sw" / "scratch").mkdir()
    (src / ".cvmfsdirtab").write_bytes(b"# one catalog per version\n/sw/*/*\n! /sw/Geant4/1.0\n")
    with publisher.transaction() as txn:
        txn.add_tree(src, "/", delete=True)
    with reader(publisher, tmp_path / "c") as r, r.open_revision() as view:
        roots = sorted(mp for mp, _ in view.catalogs())
        # glibc: a wildcard in a middle component skips dot names (/sw/.hidden/*)
        assert roots == [b"", b"/sw/Geant4/2.0", b"/sw/ROOT/1.0", b"/sw/ROOT/2.0"]
        assert b"/sw/ROOT/latest" not in roots  # a symlink matched last is skipped
        assert view.exists("sw/ROOT/2.0/.cvmfscatalog")
        assert not view.exists("sw/Geant4/1.0/.cvmfscatalog")  # the negative rule
    rev = publisher.head().revision
    with publisher.transaction() as txn:  # markers it made are kept: no change
        txn.add_tree(src, "/", delete=True)
    assert publisher.head().revision == rev


UNGUARDED_SCRIPT = """
import os, sys
from pycvmfs.publish.repository import Publisher
base = sys.argv[1]
with open(os.path.join(base, "runs.log"), "a") as log:  # each run of this top level
    log.write(f"{os.getpid()}\\n")
if not os.path.exists(os.path.join(base, "srv")):
    Publisher.mkfs("unguarded.example.org", os.path.join(base, "srv"),
                   config_dir=os.path.join(base, "etc"))
pub = Publisher.open("unguarded.example.org", config_dir=os.path.join(base, "etc"))
with pub.transaction() as txn:
    txn.add_tree(os.path.join(base, "tree"), "/")
    print("workers", len(txn.ingester._procs))
print("revision", pub.head().revision)
"""


def test_a_script_without_a_main_guard_is_not_run_again_by_the_workers(tmp_path):
    """Worker processes (forkserver) would re-run the caller's main module: a script that
    publishes at its top level ran its publish again in every worker, each failing on the
    publish lock with a traceback."""
    import subprocess
    import sys

    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(400):
        (tree / f"f{i:03d}").write_bytes(os.urandom(100 + i * 50))
    script = tmp_path / "publish_unguarded.py"
    script.write_text(UNGUARDED_SCRIPT)
    res = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                         text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert "revision 2" in res.stdout
    assert len((tmp_path / "runs.log").read_text().split()) == 1  # only the script itself
    if (os.cpu_count() or 1) >= 2:
        assert "workers 0" not in res.stdout  # the tree was ingested by worker processes
