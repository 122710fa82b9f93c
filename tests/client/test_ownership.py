"""Owners and permissions through a real FUSE mount: CVMFS_CLAIM_OWNERSHIP, CVMFS_UID_MAP /
CVMFS_GID_MAP, CVMFS_CHECK_PERMISSIONS, CVMFS_WORLD_READABLE, and the warnings about settings
pycvmfs does not honour."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from pycvmfs.publish.repository import Publisher
from pycvmfs.server.http import RepositoryServer

from helpers.fuse import CLI, mount, needs_fuse
from helpers.publishing import reader

pytestmark = needs_fuse

FQRN = "owners.example.org"
#: path -> (uid, gid, mode) in the source tree, kept by the publisher
OWNERS = {"shared": (1001, 2001, 0o755), "shared/alice.txt": (1001, 2001, 0o644),
          "shared/bob.txt": (1002, 2002, 0o600), "root.txt": (0, 0, 0o644)}
STRANGER = 4321  # a uid nobody in the repository has


@pytest.fixture(scope="module")
def owners_repo(tmp_path_factory: pytest.TempPathFactory):
    """A repository published from a tree of several owners, served on loopback:
    ``(url, public key)``."""
    root = tmp_path_factory.mktemp("owners")
    src = root / "src"
    (src / "shared").mkdir(parents=True)
    for rel, (uid, gid, mode) in OWNERS.items():
        p = src / rel
        if not p.exists():
            p.write_text(f"{rel}\n")
        os.chmod(p, mode)
        os.chown(p, uid, gid)
    pub = Publisher.mkfs(FQRN, root / "srv" / FQRN, config_dir=root / "etc")
    with pub.transaction() as txn:
        txn.add_tree(src)
    with reader(pub, root / "check-cache") as repo, repo.open_revision() as view:
        for rel, (uid, gid, mode) in OWNERS.items():  # the catalog keeps the tree's owners
            s = view.lstat(rel)
            assert (s.st_uid, s.st_gid, s.permissions) == (uid, gid, mode), rel
    with RepositoryServer({FQRN: pub.config.storage}) as srv:
        yield srv.repository_url(FQRN), pub.config.key_path("pub")


@pytest.fixture
def mounts(tmp_path: Path):
    """``mount(name, *options)``: a mount point; every mount is unmounted at teardown."""
    mounted: list[Path] = []

    def mount_one(name: str, url: str, key: Path, *options: str) -> Path:
        mounted.append(mount(FQRN, tmp_path / name, url, key, tmp_path / f"cache-{name}",
                             *options, log_file=tmp_path / f"{name}.log"))
        return mounted[-1]

    yield mount_one
    for mp in mounted:
        subprocess.run(["fusermount3", "-u", str(mp)], check=False, capture_output=True)


def owners(mp: Path) -> dict[str, tuple[int, int]]:
    return {rel: (st.st_uid, st.st_gid) for rel in OWNERS for st in [os.lstat(mp / rel)]}


def config_dir(tmp_path: Path, url: str, key: Path, text: str) -> Path:
    etc = tmp_path / "etc-cvmfs"
    (etc / "config.d").mkdir(parents=True, exist_ok=True)
    (etc / "default.local").write_text(
        f"CVMFS_HTTP_PROXY=DIRECT\nCVMFS_SERVER_URL={url.rsplit('/', 1)[0]}/@fqrn@\n"
        f"CVMFS_PUBLIC_KEY={key}\nCVMFS_CACHE_BASE={tmp_path / 'cache'}\n")
    (etc / "config.d" / f"{FQRN}.local").write_text(text)
    return etc


def mount_configured(etc: Path, mp: Path) -> subprocess.CompletedProcess:
    mp.mkdir()
    return subprocess.run([*CLI, "mount", FQRN, str(mp), "--config-dir", str(etc)],
                          capture_output=True, text=True, check=False)


def umount(mp: Path) -> None:
    subprocess.run(["fusermount3", "-u", str(mp)], check=False, capture_output=True)


def test_the_mounting_user_owns_everything_by_default_as_stock(mounts, owners_repo) -> None:
    mp = mounts("claimed", *owners_repo)
    me = (os.geteuid(), os.getegid())
    assert owners(mp) == dict.fromkeys(OWNERS, me)
    assert (os.lstat(mp).st_uid, os.lstat(mp).st_gid) == me


def test_no_claim_ownership_shows_the_catalog_owners(mounts, owners_repo, tmp_path) -> None:
    mp = mounts("catalog", *owners_repo, "--no-claim-ownership")
    assert owners(mp) == {rel: (uid, gid) for rel, (uid, gid, _m) in OWNERS.items()}
    (tmp_path / "gid.map").write_text("2002 7002\n* 100\n")
    mp = mounts("mapped", *owners_repo, "--no-claim-ownership", "--gid-map",
                str(tmp_path / "gid.map"))
    assert owners(mp) == {"shared": (1001, 100), "shared/alice.txt": (1001, 100),
                          "shared/bob.txt": (1002, 7002), "root.txt": (0, 100)}


def test_uid_and_gid_maps_from_the_configuration(owners_repo, tmp_path: Path) -> None:
    """CVMFS_CLAIM_OWNERSHIP=no with maps: mapped ids, '*' for the rest, unmapped gids stay;
    a set but unhonoured setting and a typo each get one warning naming them."""
    (tmp_path / "uid.map").write_text("# catalog local\n1001 5001\n*  65534\n")
    (tmp_path / "gid.map").write_text("2001\t6001\n")
    etc = config_dir(tmp_path, *owners_repo,
                     f"CVMFS_CLAIM_OWNERSHIP=no\nCVMFS_UID_MAP={tmp_path / 'uid.map'}\n"
                     f"CVMFS_GID_MAP={tmp_path / 'gid.map'}\nCVMFS_USE_GEOAPI=yes\n"
                     "CVMFS_KCACHE_TIMOUT=5\n")
    mp = tmp_path / "mnt"
    res = mount_configured(etc, mp)
    assert res.returncode == 0, res.stderr
    try:
        assert owners(mp) == {"shared": (5001, 6001), "shared/alice.txt": (5001, 6001),
                              "shared/bob.txt": (65534, 2002), "root.txt": (65534, 0)}
    finally:
        umount(mp)
    local = etc / "config.d" / f"{FQRN}.local"
    warnings = [line for line in res.stderr.splitlines() if "warning" in line]
    assert warnings == [
        f"pycvmfs: warning: unknown setting CVMFS_KCACHE_TIMOUT ({local}:5); did you mean "
        "CVMFS_KCACHE_TIMEOUT?",
        f"pycvmfs: warning: CVMFS_USE_GEOAPI ({local}:4): 'yes' is not honoured: servers are "
        "not ordered by the Geo API; they are tried in the configured order"]
    shown = subprocess.run([*CLI, "config", "showconfig", FQRN, "--config-dir", str(etc)],
                           capture_output=True, text=True, check=True)
    assert [line for line in shown.stderr.splitlines() if "warning" in line] == warnings
    assert "CVMFS_USE_GEOAPI=yes" in shown.stdout


def test_claimed_ownership_wins_over_the_maps_as_stock(owners_repo, tmp_path: Path) -> None:
    (tmp_path / "uid.map").write_text("* 7\n")
    etc = config_dir(tmp_path, *owners_repo,
                     f"CVMFS_CLAIM_OWNERSHIP=yes\nCVMFS_UID_MAP={tmp_path / 'uid.map'}\n")
    mp = tmp_path / "mnt"
    res = mount_configured(etc, mp)
    assert res.returncode == 0, res.stderr
    try:
        assert set(owners(mp).values()) == {(os.geteuid(), os.getegid())}
    finally:
        umount(mp)
    assert "warning" not in res.stderr


def test_a_bad_map_or_a_refused_setting_stops_the_mount_naming_it(owners_repo,
                                                                   tmp_path: Path) -> None:
    (tmp_path / "uid.map").write_text("1001 5001\nalice 5002\n")
    etc = config_dir(tmp_path, *owners_repo,
                     f"CVMFS_CLAIM_OWNERSHIP=no\nCVMFS_UID_MAP={tmp_path / 'uid.map'}\n")
    res = mount_configured(etc, tmp_path / "mnt")
    assert res.returncode == 1 and not os.path.ismount(tmp_path / "mnt")
    assert "CVMFS_UID_MAP" in res.stderr and f"{tmp_path / 'uid.map'}:2" in res.stderr
    assert "Traceback" not in res.stderr
    etc = config_dir(tmp_path, *owners_repo, "CVMFS_ENFORCE_ACLS=yes\n")
    res = mount_configured(etc, tmp_path / "mnt2")
    assert res.returncode == 1 and not os.path.ismount(tmp_path / "mnt2")
    assert "CVMFS_ENFORCE_ACLS" in res.stderr and "refused" in res.stderr
    assert "Traceback" not in res.stderr


def _read_as_stranger(path: Path) -> int:
    """0 if a process of uid STRANGER can read ``path``, else its exit code."""
    def become_stranger() -> None:
        os.setgroups([])
        os.setgid(STRANGER)
        os.setuid(STRANGER)

    return subprocess.run(["cat", str(path)], preexec_fn=become_stranger,
                          capture_output=True, check=False).returncode


@pytest.mark.parametrize(("settings", "readable"), [
    ("", False),  # CVMFS_CHECK_PERMISSIONS=yes by default: the kernel checks modes
    ("CVMFS_CHECK_PERMISSIONS=no\n", True),
    ("CVMFS_WORLD_READABLE=yes\n", True),
])
def test_permission_checks_follow_the_configuration(owners_repo, tmp_path: Path, settings: str,
                                                    readable: bool) -> None:
    """bob.txt is 0600 and owned by uid 1002 in the catalog: another user reads it only when
    the kernel does not check modes, or when the mount makes everything world-readable."""
    etc = config_dir(tmp_path, *owners_repo, "CVMFS_CLAIM_OWNERSHIP=no\n" + settings)
    where = Path(tempfile.mkdtemp(prefix="pycvmfs-owners-"))  # (tmp_path: only root enters)
    where.chmod(0o755)
    mp = where / "mnt"
    mp.mkdir()
    res = subprocess.run([*CLI, "mount", FQRN, str(mp), "--config-dir", str(etc),
                          "--allow-other"], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    try:
        mode = os.lstat(mp / "shared" / "bob.txt").st_mode & 0o777
        assert mode == (0o644 if "WORLD" in settings else 0o600)
        assert (_read_as_stranger(mp / "shared" / "bob.txt") == 0) is readable
        assert _read_as_stranger(mp / "shared" / "alice.txt") == 0
    finally:
        umount(mp)
        shutil.rmtree(where, ignore_errors=True)


def test_open_files_debug_log_and_cache_dir_from_the_configuration(owners_repo,
                                                                    tmp_path: Path) -> None:
    """CVMFS_NFILES sets the mount's open-file limit, CVMFS_DEBUGLOG gets its debug log,
    CVMFS_CACHE_DIR is the cache itself (not CVMFS_CACHE_BASE/shared)."""
    log, cache = tmp_path / "debug.log", tmp_path / "exact-cache"
    etc = config_dir(tmp_path, *owners_repo, f"CVMFS_NFILES=4321\nCVMFS_DEBUGLOG={log}\n"
                                             f"CVMFS_CACHE_DIR={cache}\n")
    mp = tmp_path / "mnt"
    res = mount_configured(etc, mp)
    assert res.returncode == 0, res.stderr
    try:
        pid = int(res.stdout.rsplit("(pid ", 1)[1].split(")")[0])
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert [line.split()[3] for line in limits.splitlines()
                if line.startswith("Max open files")] == ["4321"]  # (the soft limit)
        assert (mp / "root.txt").read_text() == "root.txt\n"
    finally:
        umount(mp)
    assert " DEBUG " in log.read_text()
    assert any(cache.glob("[0-9a-f][0-9a-f]/*")) and not (tmp_path / "cache").exists()
