"""Fixtures of the portal tests: one repository filled by the real stack pipelines (two
releases, a nightly slot with a complete and a partial night), indexed from its storage
directory, and the portal served by a real uvicorn server; and for the repository browser,
replica and container pages a second one (``browsed``: a release, plain transactions, a
container image ingested by the containers code, tags) served over HTTP with a stratum 1 made
by ``pycvmfs snapshot`` one revision behind."""

from __future__ import annotations

import datetime as _dt
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from containers.ocifixture import ImageSpec, Layer, Layout, Written, base_members
from pycvmfs.containers.service import ContainerSettings, ingest_images
from pycvmfs.format.chunking import ChunkingParams
from pycvmfs.publish.config import ServerSettings
from pycvmfs.publish.repository import Publisher
from pycvmfs.stacks.platform import host_platform
from pycvmfs.stacks.service import StackSettings, publish_nightly, publish_release
from pycvmfs.web.index import RepoSource, WebIndex

from helpers.loopback import LoopbackServer
from helpers.publishing import new_repository
from helpers.stacks import tiny_stack

FQRN = "portal.example.org"
PLAT = str(host_platform())


@dataclass
class Published:
    """The repository the portal tests read, and the short hashes of what went in."""

    pub: Publisher
    root: Path
    cache: Path
    hashes: dict[str, dict[str, str]]  # stack label -> package -> short hash

    def settings(self, name: str) -> StackSettings:
        return StackSettings(work_dir=self.root / name, cache=str(self.cache), parallel=2,
                             jobs=2)

    def source(self) -> RepoSource:
        return RepoSource(str(self.pub.config.storage), (str(self.pub.config.key_path("pub")),),
                          FQRN)


def _hashes(report) -> dict[str, str]:
    return {p["name"]: p["hash"] for p in report.plan["packages"]}


def second_release(root: Path) -> Path:
    """LCG_901: zeta's source changed (zeta, eta, toygen rebuilt at the same version), theta
    at 0.6, iota dropped, kappa new."""
    desc = tiny_stack(root, release="LCG_901", repository=FQRN, zeta_base=43)
    data = yaml.safe_load(desc.read_text())
    del data["packages"]["iota"]
    data["packages"]["theta"]["version"] = "0.6"
    data["packages"]["kappa"] = {"version": "1.2",
                                 "build": "mkdir -p \"$PREFIX/share\"\n"
                                          "echo kappa > \"$PREFIX/share/kappa.txt\"\n"}
    desc.write_text(yaml.safe_dump(data, sort_keys=False))
    return desc


def publish_history(base: Path) -> Published:
    """mkfs, LCG_900, LCG_901, nightly dev4 Mon (complete), dev4 Tue (eta fails: partial)."""
    pub = new_repository(base / "repo", FQRN, ServerSettings())
    done = Published(pub, base, base / "bincache", {})
    src = base / "src"
    r900 = publish_release(pub, tiny_stack(src / "900", repository=FQRN), done.settings("n1"),
                           tag="LCG_900")
    done.hashes["LCG_900"] = _hashes(r900)
    r901 = publish_release(pub, second_release(src / "901"), done.settings("n1"))
    done.hashes["LCG_901"] = _hashes(r901)
    mon = publish_nightly(pub, tiny_stack(src / "mon", slot="dev4", repository=FQRN),
                          done.settings("n1"), day="Mon")
    done.hashes["dev4/Mon"] = _hashes(mon)
    tue = publish_nightly(pub, tiny_stack(src / "tue", slot="dev4", repository=FQRN,
                                          zeta_base=51, fail="eta"),
                          done.settings("n1"), day="Tue", partial=True)
    assert tue.published and not tue.complete
    done.hashes["dev4/Tue"] = _hashes(tue)
    return done


@pytest.fixture(scope="session")
def published(tmp_path_factory) -> Published:
    return publish_history(tmp_path_factory.mktemp("portal"))


@pytest.fixture(scope="session")
def index(published, tmp_path_factory) -> Iterator[WebIndex]:
    idx = WebIndex(tmp_path_factory.mktemp("index") / "web.sqlite", [published.source()])
    outcome = idx.refresh()
    assert outcome[0]["error"] is None, outcome
    yield idx
    idx.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortalServer:
    """The portal app in a real uvicorn server on a free loopback port, in a thread."""

    def __init__(self, index: WebIndex, **kw) -> None:
        import uvicorn

        from pycvmfs.web.app import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(index, **kw), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:  # readiness, not a timing assumption
            if not self.thread.is_alive():
                raise RuntimeError("the portal's uvicorn server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join()


def get(portal: PortalServer | str, path: str, status: int = 200) -> httpx.Response:
    """GET ``path`` of a portal (or a base URL), asserting the status (the body in the
    message when it differs)."""
    base = portal if isinstance(portal, str) else portal.url
    r = httpx.get(base + path, timeout=60)
    assert r.status_code == status, (path, r.status_code, r.text[:800])
    return r


def iso(t: int) -> str:
    """Seconds since the epoch as the API writes dates: ``2026-12-08T06:56:38Z``."""
    return _dt.datetime.fromtimestamp(t, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="session")
def portal(index) -> Iterator[PortalServer]:
    server = PortalServer(index, refresh_interval=None)
    yield server
    server.stop()


# -- the repository browser, replicas and containers -------------------------------------------

BFQRN = "browse.example.org"
BIG = random.Random(15).randbytes(700_000)  # chunked in 64..256 KiB pieces
IMAGE_NAME = "registry.example.org/portal/hello:1.0"
CLI = [sys.executable, "-m", "pycvmfs.cli.main"]


@dataclass
class Browsed:
    """A repository with stacks, plain transactions and a container image (revisions 1-5),
    served over HTTP, and its stratum 1 made by ``pycvmfs snapshot`` at revision 4."""

    pub: Publisher
    base: Path
    s0: LoopbackServer
    s1: LoopbackServer
    down_url: str
    image: Written
    roots: dict[int, str] = field(default_factory=dict)
    published: dict[int, int] = field(default_factory=dict)
    snapshot_window: tuple[float, float] = (0.0, 0.0)

    @property
    def key(self) -> str:
        return str(self.pub.config.key_path("pub"))

    @property
    def s0_url(self) -> str:
        return f"{self.s0.url}/{BFQRN}"

    @property
    def s1_url(self) -> str:
        return f"{self.s1.url}/{BFQRN}"

    def source(self, stale_after: float = 3600.0) -> RepoSource:
        return RepoSource(self.s0_url, (self.key,), BFQRN,
                          replicas=(self.s1_url, self.down_url), stale_after=stale_after)

    def record(self) -> int:
        head = self.pub.head()
        self.roots[head.revision] = str(head.root_catalog)
        self.published[head.revision] = head.publish_timestamp
        return head.revision


def _image_layout(where: Path) -> Written:
    """An OCI layout with one two-layer image tagged 1.0."""
    lay = Layout(where)
    return lay.add(ImageSpec(layers=[
        Layer(base_members()),
        Layer([{"name": "usr/share", "type": "dir"},
               {"name": "usr/share/hello.txt", "data": b"hello from layer two\n"}],
              compression="zstd")], cmd=["/usr/bin/hello"]), "1.0")


def _snapshot(done: Browsed) -> None:
    before = time.time()
    res = subprocess.run([*CLI, "snapshot", done.s0_url, str(done.s1.directory / BFQRN),
                          "-k", done.key, "--state-dir", str(done.base / "s1-state")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    done.snapshot_window = (before, time.time())


def publish_browsed(base: Path) -> Browsed:
    """1 mkfs; 2 release LCG_900 (tag); 3 /data with a chunked file and a nested catalog (tag
    data-v1); 4 a container image (tag images); the stratum 1 snapshot; 5 /data changed, /docs
    added (tag data-v2)."""
    settings = ServerSettings()
    settings.chunking = ChunkingParams(65536, 131072, 262144)
    settings.override(include_xattrs=True)
    pub = new_repository(base / "repo", BFQRN, settings)
    (base / "s1").mkdir()
    s0, s1 = LoopbackServer(base / "repo" / "srv"), LoopbackServer(base / "s1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}/cvmfs/{BFQRN}"
    done = Browsed(pub, base, s0, s1, down, _image_layout(base / "img"))
    done.record()
    stack = StackSettings(work_dir=base / "work", cache=str(base / "bincache"), parallel=2,
                          jobs=2)
    publish_release(pub, tiny_stack(base / "src", repository=BFQRN), stack, tag="LCG_900")
    done.record()
    with pub.transaction(tag="data-v1", message="the data set") as txn:
        txn.add_file("/data/.cvmfscatalog", b"")
        txn.add_file("/data/big.bin", BIG)
        txn.add_file("/data/notes.txt", b"first notes\n")
        txn.add_file("/data/old.txt", b"to be removed\n")
        txn.symlink("/data/latest", "big.bin")
    done.record()
    ingest_images(pub, [f"oci:{base / 'img'}:1.0"],
                  ContainerSettings(cache_dir=str(base / "blobs")), names=[IMAGE_NAME],
                  tag="images")
    done.record()
    _snapshot(done)
    with pub.transaction(tag="data-v2") as txn:
        txn.add_file("/data/notes.txt", b"second notes, longer\n")
        txn.remove("/data/old.txt")
        txn.add_file("/docs/README", b"read me\n")
    assert done.record() == 5
    return done


@pytest.fixture(scope="session")
def browsed(tmp_path_factory) -> Iterator[Browsed]:
    done = publish_browsed(tmp_path_factory.mktemp("browsed"))
    yield done
    done.s0.stop()
    done.s1.stop()


@pytest.fixture(scope="session")
def browse_index(browsed, tmp_path_factory) -> Iterator[WebIndex]:
    idx = WebIndex(tmp_path_factory.mktemp("bindex") / "web.sqlite", [browsed.source()])
    [outcome] = idx.refresh()
    assert outcome["error"] is None and outcome["revision"] == 5, outcome
    yield idx
    idx.close()


@pytest.fixture(scope="session")
def browse_portal(browse_index) -> Iterator[PortalServer]:
    server = PortalServer(browse_index, refresh_interval=None)
    yield server
    server.stop()


def wait_answering(proc, url: str, path: str):
    """The first answer of ``url + path`` from the ``pycvmfs web`` process ``proc`` (uvicorn
    binds right after it prints that it serves: poll for it); fails if it exits or never
    answers."""
    for _ in range(600):
        try:
            return httpx.get(f"{url}{path}")
        except httpx.ConnectError:
            if proc.poll() is not None:
                pytest.fail(f"pycvmfs web exited with {proc.returncode}")
            time.sleep(0.05)
    pytest.fail(f"pycvmfs web does not answer on {url}")
