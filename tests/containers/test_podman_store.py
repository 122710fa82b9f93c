"""The podman additional image store: deterministic bytes, the layout podman itself writes,
and real podman listing and running images from it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from containers.ocifixture import ImageSpec, Layer, Layout, base_members
from pycvmfs.containers.layout import flat_path
from pycvmfs.containers.model import materialise, sha256_digest
from pycvmfs.containers.podman import (
    PodmanImage,
    big_data_file_name,
    flat_layer_id,
    is_rfc3339,
    link_id,
    podman_store_entries,
)
from pycvmfs.errors import ContainerError

PODMAN = "/usr/bin/podman"
RUN = ["run", "--rm", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
       "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", "--network", "none"]
CREATED = "2026-01-02T03:04:05Z"


def _config(greeting: str) -> bytes:
    return json.dumps({
        "architecture": "amd64", "os": "linux", "created": CREATED,
        "config": {"Env": ["PATH=/bin", f"GREETING={greeting}"],
                   "Entrypoint": ["/bin/sh", "-c"], "Cmd": ['echo "$GREETING" "$0"']},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(greeting.encode())]},
    }, sort_keys=True).encode()


def _manifest(config: bytes, layer_note: str) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256_digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256_digest(layer_note.encode()), "size": 1}]},
        sort_keys=True).encode()


def _image(greeting: str, *names: str, layer_note: str = "gzip") -> PodmanImage:
    config = _config(greeting)
    return PodmanImage(sha256_digest(config), config, _manifest(config, layer_note), names,
                       CREATED, 4096)


def _alias(image: PodmanImage, repo: str) -> str:
    return f"{repo}@{sha256_digest(image.manifest_bytes)}"


def _rootfs(dest: Path) -> int:
    """A tiny real root file system: dash and the libraries ldd names; its size in bytes."""
    sh = os.path.realpath("/bin/sh")
    ldd = subprocess.run(["ldd", sh], capture_output=True, text=True, check=True).stdout
    files = [sh, *re.findall(r"(/\S+) \(0x", ldd)]
    for f in files:
        target = dest / f.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
    if not (dest / "bin" / "sh").exists():
        (dest / "bin").mkdir(exist_ok=True)
        os.symlink(sh, dest / "bin" / "sh")
    for d in ("etc", "proc", "sys", "dev", "tmp"):
        (dest / d).mkdir(exist_ok=True)
    return sum(os.path.getsize(f) for f in files)


def test_identical_input_identical_output() -> None:
    a = _image("hi", "h.org/r:1")
    b = _image("ho", "h.org/r:2")
    first = podman_store_entries([a, b])
    assert podman_store_entries([a, b]) == first
    assert podman_store_entries([b, a]) == first  # images are ordered by config digest
    assert len({e.path for e in first}) == len(first)
    changed = podman_store_entries([a, _image("hu", "h.org/r:2")])
    assert changed != first


def test_layout_and_identifiers(tmp_path: Path) -> None:
    a = _image("hi", "127.0.0.1:5000/t/a:1.0")
    same_config = _image("hi", "127.0.0.1:5000/t/a:latest", layer_note="zstd")
    entries = podman_store_entries([a, same_config])
    flat = tmp_path / flat_path(a.config_digest)
    flat.mkdir(parents=True)
    (flat / "marker").write_text("flat")
    materialise(entries, tmp_path)
    store = tmp_path / "podmanStore"
    layer = flat_layer_id(a.config_digest)
    assert layer == hashlib.sha256(
        b"cvmfs-flat-layer:" + a.config_digest[7:].encode()).hexdigest()
    short = link_id(layer)
    assert re.fullmatch(r"[A-Z2-7]{26}", short)
    assert (store / "overlay" / layer / "link").read_text() == short
    assert os.readlink(store / "overlay" / layer / "diff") == \
        f"../../../.flat/{a.config_digest[7:9]}/{a.config_digest[7:]}"
    assert (store / "overlay" / layer / "diff" / "marker").read_text() == "flat"
    assert (store / "overlay" / "l" / short / "marker").read_text() == "flat"
    assert (store / "overlay-layers" / "layers.lock").read_bytes() == b""
    assert (store / "overlay-images" / "images.lock").read_bytes() == b""
    layers = json.loads((store / "overlay-layers" / "layers.json").read_text())
    assert layers == [{"id": layer, "created": CREATED, "diff-digest": "sha256:" + layer,
                       "diff-size": 4096}]
    images = json.loads((store / "overlay-images" / "images.json").read_text())
    assert len(images) == 1  # one config, one store image with both names and manifests
    image = images[0]
    m1, m2 = sha256_digest(a.manifest_bytes), sha256_digest(same_config.manifest_bytes)
    assert image["id"] == a.config_digest[7:]
    assert image["names"] == ["127.0.0.1:5000/t/a:1.0", "127.0.0.1:5000/t/a:latest"]
    assert (image["layer"], image["digest"], image["created"]) == (layer, m1, CREATED)
    assert image["big-data-names"] == sorted([a.config_digest, "manifest", f"manifest-{m1}",
                                              f"manifest-{m2}"])
    image_dir = store / "overlay-images" / image["id"]
    for key in image["big-data-names"]:
        data = (image_dir / big_data_file_name(key)).read_bytes()
        assert image["big-data-sizes"][key] == len(data)
        assert image["big-data-digests"][key] == sha256_digest(data)
    assert (image_dir / "manifest").read_bytes() == a.manifest_bytes
    config_file = "=" + base64.b64encode(a.config_digest.encode()).decode()
    assert (image_dir / config_file).read_bytes() == a.config_bytes


@pytest.fixture
def podman_dir() -> Iterator[Path]:
    """A short private directory for podman's graph root, run root and tmp dir: under
    pytest's long tmp_path names the attach socket path is too long for a unix socket and
    every ``podman run`` waits 20 s before it gives up attaching."""
    if not os.access(PODMAN, os.X_OK):
        pytest.fail(f"{PODMAN} not found: run tools/test.sh (Debian package podman)")
    path = Path(tempfile.mkdtemp(prefix="pm", dir="/tmp"))
    yield path
    # podman leaves its graph root's overlay directory bind-mounted on itself
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{path}/")), reverse=True):
        subprocess.run(["umount", mount], check=True)
    shutil.rmtree(path)


def _podman(podman_dir: Path, store: Path | None, *args: str,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """podman with a private graph root in ``podman_dir`` whose storage.conf adds the
    additional image store ``store`` (podman's --root would drop the additional image
    stores of the configuration, so the graph root is set there too)."""
    conf = podman_dir / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{podman_dir}/g"\n'
                    f'runroot = "{podman_dir}/r"\n[storage.options]\n'
                    + (f'additionalimagestores = ["{store}"]\n' if store else ""))
    env = dict(os.environ, CONTAINERS_STORAGE_CONF=str(conf))
    return subprocess.run([PODMAN, "--tmpdir", str(podman_dir / "t"), *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


def test_podman_lists_and_runs_images_from_the_store(tmp_path: Path,
                                                     podman_dir: Path) -> None:
    repo = tmp_path / "repo"
    a = _image("hello from a", "127.0.0.1:5000/test/small:1.0")
    a = PodmanImage(a.config_digest, a.config_bytes, a.manifest_bytes,
                    (*a.names, _alias(a, "127.0.0.1:5000/test/small")), a.created,
                    _rootfs(repo / flat_path(a.config_digest)))
    b = _image("hello from b", "registry.hub.docker.com/library/tiny:2")
    b = PodmanImage(b.config_digest, b.config_bytes, b.manifest_bytes, b.names, b.created,
                    _rootfs(repo / flat_path(b.config_digest)))
    materialise(podman_store_entries([a, b]), repo)
    # podman reads the store from a read-only file system, as from a CernVM-FS mount
    store = podman_dir / "ro"
    store.mkdir()
    subprocess.run(["mount", "--bind", str(repo), str(store)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(store)], check=True)
        _list_and_run(podman_dir, store / "podmanStore", a, b)
    finally:
        subprocess.run(["umount", str(store)], check=True)


def _list_and_run(podman_dir: Path, store: Path, a: PodmanImage, b: PodmanImage) -> None:
    # the command-line form: --root with the store as a storage option (and the system's
    # storage.conf, which has no additional image stores)
    env = {k: v for k, v in os.environ.items() if k != "CONTAINERS_STORAGE_CONF"}
    flags = subprocess.run(
        [PODMAN, "--root", str(podman_dir / "g2"), "--runroot", str(podman_dir / "r2"),
         "--tmpdir", str(podman_dir / "t2"), "--storage-driver", "overlay",
         "--storage-opt", f"overlay.imagestore={store}", "images", "--format", "json"],
        capture_output=True, text=True, env=env, timeout=120)
    assert flags.returncode == 0, flags.stderr
    assert {i["Id"] for i in json.loads(flags.stdout)} == {a.config_digest[7:],
                                                           b.config_digest[7:]}

    listed = _podman(podman_dir, store, "images", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    by_id = {i["Id"]: i for i in json.loads(listed.stdout)}
    assert set(by_id) == {a.config_digest[7:], b.config_digest[7:]}
    got = by_id[a.config_digest[7:]]
    assert got["Names"] == list(a.names)
    assert got["Digest"] == sha256_digest(a.manifest_bytes)
    assert got["ReadOnly"] is True
    # podman's size: the layer's diff-size and the big data ("manifest" and "manifest-<d>")
    assert got["Size"] == a.flat_size + len(a.config_bytes) + 2 * len(a.manifest_bytes)
    assert by_id[b.config_digest[7:]]["Names"] == list(b.names)

    for name, expected in ((a.names[0], "hello from a /bin/sh"),
                           (a.names[1], "hello from a /bin/sh"),  # the @sha256 alias
                           (b.names[0], "hello from b /bin/sh")):
        run = _podman(podman_dir, store, *RUN, name)
        assert (run.returncode, run.stdout) == (0, expected + "\n"), run.stderr
    run = _podman(podman_dir, store, *RUN, a.names[0], 'echo "$GREETING" args "$0" "$1"',
                  "x", "y z")
    assert (run.returncode, run.stdout) == (0, "hello from a args x y z\n"), run.stderr
    # nothing was pulled or copied into the private store: the image is still read-only
    listed = _podman(podman_dir, store, "images", "--format", "json")
    assert all(i["ReadOnly"] for i in json.loads(listed.stdout))


def test_same_names_and_fields_as_podmans_own_store(tmp_path: Path,
                                                    podman_dir: Path) -> None:
    """The oracle: podman pulls an OCI layout into its own store; the JSON fields and the
    big-data file names we write are the ones it writes (signatures aside)."""
    w = Layout(tmp_path / "oci").add(ImageSpec([Layer(base_members())],
                                               cmd=["/usr/bin/hello"]), "1.0")
    pulled = _podman(podman_dir, None, "pull", "-q", f"oci:{tmp_path}/oci:1.0")
    assert pulled.returncode == 0, pulled.stderr
    own = json.loads((podman_dir / "g" / "overlay-images" / "images.json").read_text())[0]
    ours_entries = podman_store_entries([PodmanImage(w.config_digest, w.config, w.manifest,
                                                     ("h.org/x:1.0",), CREATED, 1)])
    ours = json.loads(next(e.data for e in ours_entries if e.path.endswith("images.json")))[0]
    own_keys = {k for k in own["big-data-names"] if not k.startswith("signature-")}
    assert own_keys == set(ours["big-data-names"])
    own_files = set(os.listdir(podman_dir / "g" / "overlay-images" / own["id"]))
    ours_files = {e.path.rsplit("/", 1)[1] for e in ours_entries
                  if e.path.startswith(f"podmanStore/overlay-images/{own['id']}/")}
    assert ours_files == {f for f in own_files if f in map(big_data_file_name, own_keys)}
    assert len(ours_files) == len(own_keys)
    for key in own_keys:
        assert own["big-data-digests"][key] == ours["big-data-digests"][key]
        assert own["big-data-sizes"][key] == ours["big-data-sizes"][key]
    assert (own["id"], own["digest"]) == (ours["id"], ours["digest"])
    assert set(ours) <= set(own) | {"layer"}
    own_layer = json.loads((podman_dir / "g" / "overlay-layers" / "layers.json").read_text())
    ours_layer = json.loads(next(e.data for e in ours_entries
                                 if e.path.endswith("layers.json")))
    assert set(ours_layer[0]) <= set(own_layer[0])
    link = next(p for p in (podman_dir / "g" / "overlay").iterdir() if p.name != "l")
    assert re.fullmatch(r"[A-Z2-7]{26}", (link / "link").read_text())


def test_is_rfc3339() -> None:
    for good in ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00.123456789+02:00"):
        assert is_rfc3339(good)
    for bad in ("2026-01-01 00:00:00", "2026-01-01T00:00:00", "", None, 0,
                "2026-01-01T00:00:00.1234567890Z"):
        assert not is_rfc3339(bad)


def test_one_name_two_images_refused() -> None:
    with pytest.raises(ContainerError, match=r"the name h\.org/r:1 is given to two images"):
        podman_store_entries([_image("hi", "h.org/r:1"),
                              _image("ho", "h.org/r:2", "h.org/r:1")])


@pytest.mark.parametrize("change, needle", [
    ({"names": ()}, "no names"),
    ({"names": ("h.org/R:1",)}, "lower case"),
    ({"names": ("ubuntu:22.04",)}, "is not HOST/REPO:TAG"),
    ({"names": ("h.org/r:1*",)}, "glob is not allowed"),
    ({"created": "yesterday"}, "not an RFC 3339 time"),
    ({"flat_size": -1}, "not a byte count"),
    ({"config_bytes": b"{}"}, "do not have this digest"),
    ({"config_digest": "sha256:xyz"}, "not a sha256 digest"),
    ({"manifest_bytes": b"<html>"}, "manifest: not valid JSON"),
    ({"manifest_bytes": _manifest(_config("other"), "gzip")}, "names another config"),
])
def test_bad_input_refused(change: dict, needle: str) -> None:
    good = _image("hi", "h.org/r:1")
    fields = {**good.__dict__, **change}
    with pytest.raises(ContainerError, match=needle):
        podman_store_entries([good, PodmanImage(**fields)])
