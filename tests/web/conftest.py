"""Fixtures of the portal tests: one repository filled by the real stack pipelines (two
releases, a nightly slot with a complete and a partial night), indexed from its storage
directory, and the portal served by a real uvicorn server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pycvmfs.publish.config import ServerSettings
from pycvmfs.publish.repository import Publisher
from pycvmfs.stacks.platform import host_platform
from pycvmfs.stacks.service import StackSettings, publish_nightly, publish_release
from pycvmfs.web.index import RepoSource, WebIndex

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


@pytest.fixture(scope="session")
def portal(index) -> Iterator[PortalServer]:
    server = PortalServer(index, refresh_interval=None)
    yield server
    server.stop()
