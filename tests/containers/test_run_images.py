"""A real multi-layer image pushed to a local docker-registry, ingested with the pycvmfs
command, mounted, and run: bubblewrap on the flat tree (the entrypoint, and the Apptainer
runscript), podman from the additional image store on the mount."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from containers.engines import PODMAN_RUN, bwrap, podman
from containers.ocifixture import Layout, runnable_image
from containers.registry_server import Registry

from helpers.fuse import needs_fuse

pytestmark = needs_fuse
CLI = [sys.executable, "-m", "pycvmfs.cli.main"]


@pytest.fixture
def pushed(tmp_path):
    """The runnable image in a real registry on loopback: its reference."""
    lay = Layout(tmp_path / "img")
    lay.add(runnable_image(), "1.0")
    reg = Registry(tmp_path / "registry")
    try:
        yield reg.push(tmp_path / "img", "1.0", "hep/runner")
    finally:
        reg.stop()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300,
                          check=False)


def test_an_image_from_a_registry_runs_from_the_mounted_repository(cpub, pushed, tmp_path,
                                                                   mount_repo):
    res = _cli("container", "ingest", cpub.fqrn, f"docker://{pushed}", "--insecure",
               "--config-dir", str(cpub.config.config_dir), "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["added"] == [pushed] and len(report["layers_new"]) == 2
    listed = json.loads(_cli("container", "ls", cpub.fqrn, "--config-dir",
                             str(cpub.config.config_dir), "--json").stdout)
    assert [(r["name"], r["layers"], r["platform"]) for r in listed] == [
        (pushed, 2, "linux/amd64")]

    m = mount_repo(cpub)
    root = m.mp / pushed
    run = bwrap(root, ["/usr/bin/hello", "from", "cvmfs"],
                {"PATH": "/usr/bin:/bin", "GREETING": "world"})
    assert run.returncode == 0, run.stderr
    assert run.stdout == "hello from the image: world from cvmfs\n"
    # the deleted file of the lower layer is gone, the upper layer's file is there
    assert not (root / "etc/motd").exists() and (root / "etc/release").read_bytes()

    # Apptainer's way: the env scripts and the runscript generated from the config
    apptainer = bwrap(root, ["/bin/sh", "-c", "for f in /.singularity.d/env/*.sh; do . $f; "
                             "done; exec /.singularity.d/runscript \"$@\"", "sh"], {})
    assert apptainer.returncode == 0, apptainer.stderr
    assert apptainer.stdout == "hello from the image: world from cvmfs\n"
    with_args = bwrap(root, ["/bin/sh", "-c", "for f in /.singularity.d/env/*.sh; do . $f; "
                             "done; exec /.singularity.d/runscript \"$@\"", "sh", "x", "y"], {})
    assert with_args.stdout == "hello from the image: world x y\n"

    store = m.mp / "podmanStore"
    images = json.loads(podman(tmp_path / "podman", store, "images", "--format",
                               "json").stdout)
    assert any(pushed in n for img in images for n in img.get("Names", [])), images
    ran = podman(tmp_path / "podman", store, *PODMAN_RUN, pushed)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "hello from the image: world from cvmfs\n"
