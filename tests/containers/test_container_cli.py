"""The other container verbs through the command line: import-rootfs (a directory as a base
image), export (a published image back to an OCI layout, checked with umoci and skopeo), and
webhook (a real registry's push notifications published as one revision per batch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from containers.conftest import listing_from_view, umoci_rootfs, without
from containers.ocifixture import ImageSpec, Layer, Layout, base_members, section6_image
from containers.registry_server import Registry
from containers.treecompare import compare, listing_from_disk
from pycvmfs.containers.service import ContainerSettings, ingest_images

from helpers.daemons import free_port, wait_for_port

CLI = [sys.executable, "-m", "pycvmfs.cli.main"]


def _cli(pub, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "container", *args, "--config-dir",
                           str(pub.config.config_dir)], capture_output=True, text=True,
                          timeout=timeout, check=False)


def _tree(root) -> None:
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/passwd").write_bytes(b"root:x:0:0:root:/root:/bin/sh\n")
    (root / "bin/tool").write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(root / "bin/tool", 0o4755)
    os.link(root / "bin/tool", root / "bin/tool2")
    os.mkfifo(root / "etc/fifo")
    os.symlink("../bin/tool", root / "etc/tool-link")
    os.setxattr(root / "etc/passwd", "user.origin", b"mmdebstrap")
    os.chown(root / "etc/passwd", 12, 34)


def test_import_rootfs_publishes_a_directory_as_a_flat_image_once(cpub, tmp_path):
    root = tmp_path / "rootfs"
    _tree(root)
    res = _cli(cpub, "import-rootfs", cpub.fqrn, str(root), "--name",
               "cernvm.example.org/base/el9:2026.12", "--entrypoint", "/bin/tool", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["added"] == ["cernvm.example.org/base/el9:2026.12"]
    reader = cpub.open_reader(tmp_path / "rc")
    view = reader.open_revision()
    flat = os.path.normpath(os.path.join("/cernvm.example.org/base", view.readlink(
        "/cernvm.example.org/base/el9:2026.12")))
    got = listing_from_view(view, flat)
    want = listing_from_disk(root)
    ours = {p for p in got if p not in want}
    assert {b".singularity.d", b".cvmfscatalog", b"proc"} <= ours
    assert compare(want, without(got, ours), same_directory_links_only=True) == []
    images = json.loads(view.read_bytes("/podmanStore/overlay-images/images.json"))
    name, alias = images[0]["names"]
    assert name == "cernvm.example.org/base/el9:2026.12"
    assert alias.startswith("cernvm.example.org/base/el9@sha256:")
    cfg = json.loads(view.read_bytes("/.metadata/cernvm.example.org/base/el9:2026.12/"
                                     "config.json"))
    assert cfg["config"]["Entrypoint"] == ["/bin/tool"]
    view.close()
    reader.close()
    again = _cli(cpub, "import-rootfs", cpub.fqrn, str(root), "--name",
                 "cernvm.example.org/base/el9:2026.12", "--entrypoint", "/bin/tool", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["revision"] is None


def test_export_writes_a_layout_umoci_and_skopeo_read_as_the_same_tree(cpub, tmp_path):
    Layout(tmp_path / "img").add(section6_image(), "1.0")
    ingest_images(cpub, [f"oci:{tmp_path}/img:1.0"],
                  ContainerSettings(cache_dir=str(tmp_path / "blobs")))
    res = _cli(cpub, "export", cpub.fqrn, "localhost/img:1.0", f"oci:{tmp_path}/out:v1",
               "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["tag"] == "v1"
    original = listing_from_disk(umoci_rootfs(tmp_path / "img", "1.0", tmp_path / "b1"))
    exported = listing_from_disk(umoci_rootfs(tmp_path / "out", "v1", tmp_path / "b2"))
    # the empty mount points and bind targets Apptainer needs stay (harmless in any image)
    added = {p for p in exported if p not in original}
    assert added <= {b"dev", b"proc", b"sys", b"root", b"var/tmp", b"etc/resolv.conf"}, added
    assert compare(original, without(exported, added), same_directory_links_only=True) == []
    copy = subprocess.run(["skopeo", "--insecure-policy", "copy", f"oci:{tmp_path}/out:v1",
                           f"docker-archive:{tmp_path}/out.tar:x.org/out:v1"],
                          capture_output=True, text=True, check=False)
    assert copy.returncode == 0, copy.stderr
    refused = _cli(cpub, "export", cpub.fqrn, "localhost/none:1", f"oci:{tmp_path}/o2:v1")
    assert refused.returncode != 0 and "no image named" in refused.stderr


def test_webhook_publishes_pushed_tags_the_wish_list_covers(cpub, tmp_path):
    hook_port = free_port()
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    reg = Registry(tmp_path / "registry",
                   notifications=(f"http://127.0.0.1:{hook_port}/hook", "s3cret-token"))
    port = reg.port
    wishlist = tmp_path / "wish.yaml"
    wishlist.write_text(f"version: 1\nuser: u\ncvmfs_repo: {cpub.fqrn}\noutput_format: x\n"
                        f"input:\n  - 'http://127.0.0.1:{port}/hep/app:1.*'\n")
    hook = subprocess.Popen([*CLI, "container", "webhook", cpub.fqrn, str(wishlist),
                             "--listen", f"127.0.0.1:{hook_port}", "--path", "/hook",
                             "--token-file", str(token), "--batch-seconds", "1", "--insecure",
                             "--cache-dir", str(tmp_path / "blobs"), "--config-dir",
                             str(cpub.config.config_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(hook_port, hook, "pycvmfs container webhook")
        lay = Layout(tmp_path / "img")
        lay.add(ImageSpec([Layer(base_members())]), "1.0")
        lay.add(ImageSpec([Layer(base_members()), Layer([{"name": "x", "data": b"x"}])]),
                "2.0")
        for tag in ("2.0", "1.0"):
            reg.push(tmp_path / "img", tag, "hep/app")
        deadline = time.monotonic() + 60
        names: list[str] = []
        while time.monotonic() < deadline:
            res = _cli(cpub, "ls", cpub.fqrn, "--json")
            names = [r["name"] for r in json.loads(res.stdout or "[]")]
            if names:
                break
            time.sleep(0.5)
        assert names == [f"127.0.0.1:{port}/hep/app:1.0"]
    finally:
        hook.send_signal(signal.SIGTERM)
        try:
            _out, err = hook.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            hook.kill()
            _out, err = hook.communicate()
        reg.stop()
    assert hook.returncode == 0, err
    assert "published" in err
