"""A Squid proxy in front of a stratum 1 made by pycvmfs: the second client is served from it."""

from __future__ import annotations

import hashlib

import pytest

from pycvmfs.client.cache import ObjectCache
from pycvmfs.client.repository import Repository
from pycvmfs.format.signature import load_public_keys
from pycvmfs.replica.snapshot import snapshot
from pycvmfs.server.http import RepositoryServer
from pycvmfs.storage.http import HttpSource
from pycvmfs.storage.local import LocalStorage

from helpers.replica import GOLDEN_FQRN
from helpers.squid import Squid


@pytest.fixture
def squid():
    s = Squid()
    yield s
    s.remove()


def _read_all(src: HttpSource, keys, cache, expected: dict) -> int:
    n = 0
    with Repository(src, public_keys=load_public_keys([keys]), fqrn=GOLDEN_FQRN,
                    cache=ObjectCache(cache)) as repo, repo.open_revision() as view:
        entries = expected["trees"]["rev2"]["entries"]
        for _d, _dirs, files in view.walk("/"):
            for s in files:
                exp = entries[s.path.lstrip("/")]
                if exp["type"] == "file":
                    assert hashlib.sha1(view.read_bytes(s.path)).hexdigest() == exp["sha1"]
                    n += 1
    return n


def test_second_client_of_the_replica_is_a_squid_cache_hit(golden_replica, golden_keys,
                                                           golden_expected, squid, tmp_path):
    dest, _report = golden_replica
    with RepositoryServer({GOLDEN_FQRN: dest}) as stratum1:
        base = stratum1.repository_url(GOLDEN_FQRN)
        fast = {"timeout": 2.0, "retries": 1, "backoff": (0.01, 0.05)}
        first = _read_all(HttpSource([base], proxies=squid.url, **fast), golden_keys,
                          tmp_path / "c1", golden_expected)
        assert first > 100
        seen = len(squid.log_lines())
        assert _read_all(HttpSource([base], proxies=squid.url, **fast), golden_keys,
                         tmp_path / "c2", golden_expected) == first
    second = [(code, url) for code, url in squid.log_lines()[seen:]
              if url.startswith(f"{base}/data/")]
    assert len(second) >= first // 2  # the second client fetched the objects again...
    assert all(code in ("TCP_HIT", "TCP_MEM_HIT") for code, _ in second), second  # ...from Squid


def test_a_snapshot_through_squid_fetches_its_objects_via_the_proxy(golden_server, golden_keys,
                                                                    golden_repo, squid,
                                                                    tmp_path):
    base = f"{golden_server.url}/{GOLDEN_FQRN}"
    src = HttpSource([base], proxies=squid.url, timeout=5.0)
    dest = tmp_path / "replica"
    report = snapshot(src, LocalStorage(dest, fsync=False), GOLDEN_FQRN, [golden_keys],
                      state_dir=tmp_path / "state")
    assert report.objects_fetched > 100
    via_squid = {url for _code, url in squid.log_lines() if url.startswith(f"{base}/data/")}
    stored = {f"{base}/{p.relative_to(dest)}" for p in dest.glob("data/*/*") if p.is_file()}
    assert stored and stored <= via_squid  # every stored object came through the proxy
    for p in dest.glob("data/*/*"):
        assert p.read_bytes() == (golden_repo / p.relative_to(dest)).read_bytes()
