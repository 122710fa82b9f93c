"""WebhookServer: a real docker-registry notifies it of real skopeo pushes; batches and refusals."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from containers.ocifixture import ImageSpec, Layer, Layout, base_members
from containers.registry_server import Registry
from pycvmfs.containers.webhook import (
    EVENTS_MEDIA_TYPE,
    WebhookServer,
    pushed_names,
    read_token,
)
from pycvmfs.containers.wishlist import load_wishlist
from pycvmfs.errors import ConfigError, ContainerError

from helpers.daemons import free_port

TOKEN = "s3cret-token"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class Batches:
    """on_batch that records each call (and can be told to fail the next ``fail`` calls)."""

    def __init__(self, fail: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail
        self.active = 0
        self.overlapped = False
        self.cond = threading.Condition()

    def __call__(self, names: list[str]) -> None:
        with self.cond:
            self.active += 1
            self.overlapped |= self.active > 1
        time.sleep(0.05)
        with self.cond:
            self.active -= 1
            self.calls.append(list(names))
            self.cond.notify_all()
            if self.fail:
                self.fail -= 1
                raise RuntimeError("publish failed (test)")

    def wait(self, count: int, timeout: float = 30.0) -> list[list[str]]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.calls) >= count, timeout):
                pytest.fail(f"on_batch was called {len(self.calls)} times, expected {count}: "
                            f"{self.calls}")
            return list(self.calls)


def _envelope(*events: dict) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def _push(repo: str, tag: str | None, *, host: str = "reg.example:5000",
          media_type: str = MANIFEST, action: str = "push") -> dict:
    target = {"mediaType": media_type, "digest": "sha256:" + "a" * 64, "repository": repo,
              "url": f"http://{host}/v2/{repo}/manifests/sha256:{'a' * 64}"}
    if tag is not None:
        target["tag"] = tag
    return {"id": "x", "action": action, "target": target, "request": {"host": host}}


def _post(hook: WebhookServer, body: bytes, *, token: str | None = TOKEN,
          ctype: str = EVENTS_MEDIA_TYPE, path: str = "/hook") -> tuple[int, str]:
    host, port = hook.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    headers = {"Content-Type": ctype}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    conn.request("POST", path, body=body, headers=headers)
    resp = conn.getresponse()
    out = resp.status, resp.read().decode()
    conn.close()
    return out


@pytest.fixture
def registry(tmp_path):
    """A real docker-registry on loopback whose notifications go to a webhook on ``hook_port``."""
    hook_port = free_port()
    reg = Registry(tmp_path / "registry",
                   notifications=(f"http://127.0.0.1:{hook_port}/hook", TOKEN))
    try:
        yield reg, hook_port
    finally:
        reg.stop()


def test_a_real_registry_push_arrives_in_one_batch(registry, tmp_path):
    reg, hook_port = registry
    port = reg.port
    layout = Layout(tmp_path / "layout")
    layout.add(ImageSpec([Layer(base_members())]), "1.0")
    layout.add(ImageSpec([Layer([*base_members(), {"name": "x", "data": b"x"}])]), "2.0")
    batches = Batches()
    wanted = f"127.0.0.1:{port}/team/app:1.0"
    recipe = tmp_path / "wishlist.yaml"  # a DUCC v1 wish list: tags 1.* are wanted
    recipe.write_text(f"version: 1\nuser: u\ncvmfs_repo: unpacked.example.org\n"
                      f"output_format: x\ninput:\n  - 'http://127.0.0.1:{port}/team/app:1.*'\n")
    covers = load_wishlist(recipe).covers
    with WebhookServer(("127.0.0.1", hook_port), covers=covers,
                       on_batch=batches, batch_seconds=1.0, token=TOKEN, path="/hook") as hook:
        reg.push(tmp_path / "layout", "1.0", "team/app")
        reg.push(tmp_path / "layout", "2.0", "team/app")  # not covered
        assert batches.wait(1) == [[wanted]]
        deadline = time.monotonic() + 20
        while f"127.0.0.1:{port}/team/app:2.0" not in hook.ignored:
            assert time.monotonic() < deadline, f"2.0 never notified: {hook.ignored}"
            time.sleep(0.1)
        time.sleep(1.5)  # a window later: no second batch (2.0 is not covered)
    assert batches.calls == [[wanted]]
    assert not batches.overlapped


def test_batches_collapse_duplicates_and_a_failed_batch_is_retried(tmp_path):
    batches = Batches(fail=1)
    names = ["reg.example:5000/a/b:1", "reg.example:5000/a/c:2"]
    with WebhookServer(("127.0.0.1", 0), covers=lambda n: True, on_batch=batches,
                       batch_seconds=0.3, path="/hook") as hook:
        body = _envelope(_push("a/b", "1"), _push("a/b", "1"), _push("a/c", "2"))
        assert _post(hook, body, token=None)[0] == 200
        assert _post(hook, _envelope(_push("a/b", "1")), token=None)[0] == 200
        calls = batches.wait(2)
        assert calls[0] == names  # the first (failing) batch, each name once
        assert calls[1] == names  # retried a window later, nothing lost
        assert hook.failures == 1 and hook.batches == 1
        assert hook.pending() == []
    assert not batches.overlapped


def test_stop_drains_what_is_queued(tmp_path):
    batches = Batches()
    hook = WebhookServer(("127.0.0.1", 0), covers=lambda n: True, on_batch=batches,
                         batch_seconds=60, path="/hook").start()
    assert _post(hook, _envelope(_push("a/b", "1")), token=None)[0] == 200
    assert batches.calls == []
    assert hook.stop() == []
    assert batches.calls == [["reg.example:5000/a/b:1"]]
    failing = Batches(fail=1)
    hook = WebhookServer(("127.0.0.1", 0), covers=lambda n: True, on_batch=failing,
                         batch_seconds=60, path="/hook").start()
    _post(hook, _envelope(_push("a/b", "2")), token=None)
    assert hook.stop() == ["reg.example:5000/a/b:2"]  # handed back, not dropped


def test_refusals_queue_nothing(tmp_path):
    batches = Batches()
    with WebhookServer(("127.0.0.1", 0), covers=lambda n: True, on_batch=batches,
                       batch_seconds=0.2, token=TOKEN, path="/hook", max_body=4096) as hook:
        good = _envelope(_push("a/b", "1"))
        assert _post(hook, good, token="wrong")[0] == 401
        assert _post(hook, good, token=None)[0] == 401
        status, text = _post(hook, b"{not json")
        assert status == 400 and "not valid JSON" in text
        assert _post(hook, b'{"events": {}}')[0] == 400
        assert _post(hook, _envelope(_push("a/b", "1"), "junk"))[0] == 400
        status, text = _post(hook, _envelope(_push("a/b", "../../x")))
        assert status == 400 and "is not a tag" in text
        assert _post(hook, _envelope(_push("Up/Per", "1")))[0] == 400
        assert _post(hook, _envelope(_push("a/b", "1", host="evil/host")))[0] == 400
        assert _post(hook, b"x" * 5000)[0] == 413
        assert _post(hook, good, ctype="text/plain")[0] == 415
        assert _post(hook, good, path="/other")[0] == 404
        time.sleep(0.5)
        assert hook.pending() == [] and batches.calls == []
        assert _post(hook, good)[0] == 200
        assert batches.wait(1) == [["reg.example:5000/a/b:1"]]


def test_pushed_names_keeps_only_tagged_manifest_pushes():
    body = _envelope(
        _push("a/b", "1"),
        _push("a/b", None),  # a push by digest
        _push("a/b", "2", media_type="application/octet-stream"),  # a blob
        _push("a/b", "3", action="pull"),
        _push("a/idx", "4", media_type="application/vnd.oci.image.index.v1+json"),
        {"action": "push", "target": {"mediaType": MANIFEST, "repository": "a/u", "tag": "5",
                                      "url": "http://127.0.0.1:5000/v2/a/u/manifests/x"},
         "request": {}},  # the host from the target URL
        {"action": "delete", "target": {"repository": "a/b", "digest": "sha256:x"}})
    assert pushed_names(body) == ["reg.example:5000/a/b:1", "reg.example:5000/a/idx:4",
                                  "127.0.0.1:5000/a/u:5"]
    with pytest.raises(ContainerError, match="not an envelope"):
        pushed_names(b"[]")


def test_read_token(tmp_path, monkeypatch):
    monkeypatch.delenv("PYCVMFS_WEBHOOK_TOKEN", raising=False)
    assert read_token() is None
    monkeypatch.setenv("PYCVMFS_WEBHOOK_TOKEN", " from-env \n")
    assert read_token() == "from-env"
    f = tmp_path / "token"
    f.write_text("from-file\nignored\n")
    assert read_token(f) == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_token(tmp_path / "empty")
    with pytest.raises(ConfigError, match="missing"):
        read_token(tmp_path / "missing")
