"""Background mount errors reach the caller; umount -l; umount of something else refuses."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from pycvmfs.server.http import RepositoryServer

from helpers.daemons import free_port
from helpers.fuse import CLI, eventually, mount, needs_fuse, pid_alive

pytestmark = needs_fuse
GOLDEN = "golden.example.org"


def _run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, check=False,
                          timeout=120)


@pytest.fixture(scope="module")
def golden_http(golden_repo):
    with RepositoryServer({GOLDEN: golden_repo}) as srv:
        yield srv.repository_url(GOLDEN)


@pytest.fixture
def unmount_all(tmp_path):
    """Mount points to clean up at teardown, whatever the test left."""
    points: list[Path] = []
    yield points
    for mp in points:
        if os.path.ismount(mp):
            subprocess.run(["umount", "-l", str(mp)], check=False)


def _mount_args(mp: Path, url: str, keys: Path, cache: Path) -> list[object]:
    return ["mount", GOLDEN, mp, "--server-url", url, "-k", keys, "--cache-dir", cache]


def test_background_mount_reports_a_missing_tag(golden_http, golden_keys, tmp_path,
                                                unmount_all):
    mp = tmp_path / "mnt"
    mp.mkdir()
    unmount_all.append(mp)
    res = _run(*_mount_args(mp, golden_http, golden_keys, tmp_path / "c"), "--tag", "no-such")
    assert res.returncode == 1, res
    assert res.stderr.startswith(f"pycvmfs: error: mount of {GOLDEN} at {mp} failed: ")
    assert "no-such" in res.stderr and "Traceback" not in res.stderr
    assert not os.path.ismount(mp)


def test_background_mount_reports_an_unreachable_server_and_a_bad_mountpoint(
        golden_keys, golden_http, tmp_path, unmount_all):
    mp = tmp_path / "mnt"
    mp.mkdir()
    unmount_all.append(mp)
    url = f"http://127.0.0.1:{free_port()}/cvmfs/{GOLDEN}"
    res = _run(*_mount_args(mp, url, golden_keys, tmp_path / "c"))
    assert res.returncode == 1 and f"127.0.0.1:{url.split(':')[2].split('/')[0]}" in res.stderr
    assert not os.path.ismount(mp)
    afile = tmp_path / "a-file"
    afile.write_text("not a directory")
    res = _run(*_mount_args(afile, golden_http, golden_keys, tmp_path / "c"))
    assert res.returncode != 0 and str(afile) in res.stderr and "Traceback" not in res.stderr
    assert afile.read_text() == "not a directory"
    wrong_key = tmp_path / "other.pub"
    subprocess.run(["openssl", "genrsa", "-out", tmp_path / "other.key", "2048"],
                   capture_output=True, check=True)
    subprocess.run(["openssl", "rsa", "-in", tmp_path / "other.key", "-pubout", "-out",
                    wrong_key], capture_output=True, check=True)
    res = _run(*_mount_args(mp, golden_http, wrong_key, tmp_path / "c"))
    assert res.returncode == 1 and "whitelist" in res.stderr.lower(), res.stderr


def test_umount_lazy_detaches_a_busy_mount(golden_http, golden_keys, tmp_path, unmount_all):
    mp = mount(GOLDEN, tmp_path / "mnt", golden_http, golden_keys, tmp_path / "c",
               log_file=tmp_path / "mount.log")
    unmount_all.append(mp)
    pid = int(os.getxattr(mp, "user.pid"))
    with open(mp / "text" / "hello.txt", "rb") as held:  # a user of the mount
        busy = _run("umount", mp)
        assert busy.returncode == 1 and "busy" in busy.stderr.lower()
        assert "umount -l" in busy.stderr and os.path.ismount(mp)
        lazy = _run("umount", "-l", mp)
        assert lazy.returncode == 0, lazy.stderr
        assert not os.path.ismount(mp)
        assert held.read() and pid_alive(pid)  # still served for its last user
    assert eventually(lambda: not pid_alive(pid), 15)  # gone once that user let go
    again = _run("umount", mp)
    assert again.returncode == 1 and "not mounted" in again.stderr


def test_umount_refuses_what_pycvmfs_did_not_mount(tmp_path, unmount_all):
    mp = tmp_path / "tmpfs"
    mp.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mp)], check=True)
    unmount_all.append(mp)
    (mp / "inside").write_text("x")
    for args in (("umount", mp), ("umount", "-l", mp)):
        res = _run(*args)
        assert res.returncode == 1
        assert res.stderr == (f"pycvmfs: error: {mp}: not a pycvmfs mount (tmpfs is mounted "
                              "there); nothing unmounted\n")
        assert os.path.ismount(mp) and (mp / "inside").read_text() == "x"


def test_mount_and_status_json_have_typed_values(golden_http, golden_keys, tmp_path,
                                                 unmount_all):
    mp = tmp_path / "mnt"
    mp.mkdir()
    unmount_all.append(mp)
    res = _run(*_mount_args(mp, golden_http, golden_keys, tmp_path / "c"), "--json")
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)
    assert shown == {"fqrn": GOLDEN, "mountpoint": str(mp), "pid": shown["pid"]}
    assert isinstance(shown["pid"], int) and pid_alive(shown["pid"])
    status = json.loads(_run("status", mp, "--json").stdout)
    assert status["pid"] == shown["pid"] and status["revision"] == 3
    assert all(isinstance(status[k], int) for k in ("timestamp", "expires", "nclg", "nioerr",
                                                    "uptime"))
    assert isinstance(status["root_hash"], str) and status["fqrn"] == GOLDEN
    assert _run("umount", mp).returncode == 0


@pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare(1)")
def test_an_unusable_fuse_device_is_reported_by_mount_and_doctor(golden_http, golden_keys,
                                                                 tmp_path):
    """In a private mount namespace a plain file covers /dev/fuse (the machine's stays)."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    cover = tmp_path / "not-a-device"
    cover.touch()
    mount_cmd = shlex.join(map(str, [*CLI, *_mount_args(mp, golden_http, golden_keys,
                                                         tmp_path / "c")]))
    doctor_cmd = shlex.join([*CLI, "doctor", "--json", "--config-dir", str(tmp_path)])
    script = (f"mount --bind {shlex.quote(str(cover))} /dev/fuse && "
              f"{{ {mount_cmd}; echo mount-exit=$?; {doctor_cmd}; }}")
    res = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=120, check=False)
    assert "mount-exit=1" in res.stdout, res
    assert (f"pycvmfs: error: mount of {GOLDEN} at {mp} failed: cannot mount FUSE at {mp} "
            "(is /dev/fuse usable?)") in res.stderr
    checks = json.loads(res.stdout.split("mount-exit=1\n", 1)[1])
    assert checks[0] == {"name": "fuse device", "status": "fail",
                         "detail": "/dev/fuse: not a character device"}
    assert not os.path.ismount(mp) and os.path.exists("/dev/fuse")
