"""The replica pages on a real stratum 0 served over HTTP and stratum 1s made by the real
``pycvmfs snapshot`` command: one a revision behind, one down, one caught up; the alarms in
words and colour, the Prometheus text parsed back, and ``pycvmfs web --replica``."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time

import pytest

from pycvmfs.cli.web_cmd import assign_replicas
from pycvmfs.errors import ConfigError
from pycvmfs.web.index import RepoSource, WebIndex
from web.conftest import BFQRN, CLI, Browsed, PortalServer, free_port, get, iso, wait_answering
from web.test_replica_status import parse_exposition

from helpers.loopback import LoopbackServer

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"






def test_a_lagging_and_a_down_stratum_1(browse_portal, browsed: Browsed):
    api = get(browse_portal, "/api/replicas").json()
    lagging, down = api["replicas"]
    assert api["alarms"] == 1
    before, after = browsed.snapshot_window
    assert math.floor(before) <= lagging["last_snapshot_timestamp"] <= after
    assert lagging["checked_at"] >= browsed.published[5]
    assert 0 <= lagging["lag_seconds"] <= lagging["checked_at"] - browsed.published[5] + 1
    assert lagging == {
        "replica": browsed.s1_url, "fqrn": BFQRN, "verified": True, "revision": 4,
        "root_hash": browsed.roots[4], "published": iso(browsed.published[4]),
        "published_timestamp": browsed.published[4],
        "last_snapshot": iso(lagging["last_snapshot_timestamp"]),
        "last_snapshot_timestamp": lagging["last_snapshot_timestamp"], "snapshotting": False,
        "stratum0_revision": 5, "lag_revisions": 1, "lag_seconds": lagging["lag_seconds"],
        "behind_since": iso(browsed.published[5]), "stale": False, "error": None,
        "stale_after": 3600.0, "checked_at": lagging["checked_at"], "alarm": None}
    assert (down["replica"], down["verified"], down["revision"], down["stale"],
            down["stratum0_revision"]) == (browsed.down_url, False, None, True, 5)
    assert down["alarm"].startswith(f"unreachable or refused: .cvmfspublished of "
                                    f"{browsed.down_url}")
    assert "Connection refused" in down["alarm"]

    page = get(browse_portal, "/replicas").text
    assert 'role="alert"' in page and "ALARM: 1 stratum 1 needs attention" in page
    assert '<td class="rs-lagging"><span class="status">lagging</span>' in page
    assert "within 1.0 h" in page and "1 revision, " in page
    assert '<td class="rs-alarm"><span class="status">ALARM</span>' in page
    assert page.count('class="rs-alarm"') == 1
    assert f"<code>{browsed.down_url}</code>" in page and "Connection refused" in page
    assert '<strong class="bad">1 alarm</strong>' in get(browse_portal, "/").text


def test_stale_and_caught_up_stratum_1s(browsed: Browsed, tmp_path):
    """A stratum 1 lagging longer than allowed (0 s) raises the alarm; one snapshotted just
    now does not."""
    store = tmp_path / "s1b"
    res = subprocess.run([*CLI, "snapshot", browsed.s0_url, str(store / BFQRN), "-k",
                          browsed.key, "--state-dir", str(tmp_path / "state")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    fresh = LoopbackServer(store)
    src = RepoSource(browsed.s0_url, (browsed.key,), BFQRN,
                     replicas=(browsed.s1_url, f"{fresh.url}/{BFQRN}"), stale_after=0)
    index = WebIndex(tmp_path / "web.sqlite", [src])
    portal = None
    try:
        while time.time() <= browsed.published[5]:  # a lag of more than 0 s to measure
            time.sleep(0.05)
        assert index.refresh()[0]["error"] is None
        portal = PortalServer(index, refresh_interval=None)
        api = get(portal, "/api/replicas").json()
        stale, caught_up = api["replicas"]
        assert api["alarms"] == 1
        assert (stale["revision"], stale["lag_revisions"], stale["stale"]) == (4, 1, True)
        assert stale["alarm"].startswith("stale: 1 revision behind for ")
        assert stale["alarm"].endswith("(allowed: 0 s)")
        assert (caught_up["revision"], caught_up["lag_revisions"], caught_up["lag_seconds"],
                caught_up["stale"], caught_up["alarm"]) == (5, 0, 0, False, None)
        page = get(portal, "/replicas").text
        assert '<td class="rs-alarm"><span class="status">ALARM</span>' in page
        assert "stale: 1 revision behind for" in page
        assert '<td class="rs-ok"><span class="status">up to date</span>' in page
        samples = parse_exposition(get(portal, "/metrics").text)
        assert samples[("cvmfs_replica_stale", frozenset(
            {"fqrn": BFQRN, "replica": browsed.s1_url}.items()))] == 1
        assert samples[("cvmfs_replica_lag_revisions", frozenset(
            {"fqrn": BFQRN, "replica": f"{fresh.url}/{BFQRN}"}.items()))] == 0
    finally:
        if portal is not None:
            portal.stop()
        index.close()
        fresh.stop()


def test_metrics(browse_portal, browsed: Browsed, browse_index):
    r = get(browse_portal, "/metrics")
    assert r.headers["content-type"] == METRICS_TYPE
    samples = parse_exposition(r.text)

    def at(name: str, replica: str | None = None) -> float | None:
        labels = {"fqrn": BFQRN} if replica is None else {"fqrn": BFQRN, "replica": replica}
        return samples.get((name, frozenset(labels.items())))

    s1, down = browsed.s1_url, browsed.down_url
    lagging = browse_index.replicas()["replicas"][0]
    assert [at("cvmfs_replica_up", u) for u in (s1, down)] == [1, 0]
    assert [at("cvmfs_replica_revision", u) for u in (s1, down)] == [4, None]
    assert [at("cvmfs_replica_lag_revisions", u) for u in (s1, down)] == [1, None]
    assert at("cvmfs_replica_lag_seconds", s1) == lagging["lag_seconds"]
    assert at("cvmfs_replica_last_snapshot_timestamp_seconds", s1) == lagging[
        "last_snapshot_timestamp"]
    assert [at("cvmfs_replica_stale", u) for u in (s1, down)] == [0, 1]
    head = browse_index.revisions(BFQRN)["revisions"][0]
    assert (at("cvmfs_repository_revision"), at("cvmfs_repository_files"),
            at("cvmfs_repository_bytes")) == (5, head["files"], head["bytes"])
    assert at("cvmfs_repository_published_timestamp_seconds") == browsed.published[5]
    assert len(samples) == 2 * 6 - 4 + 4


def test_replicas_are_matched_to_their_repository():
    one = RepoSource("http://s0.example.org/cvmfs/one.example.org", ("k",))
    two = RepoSource("/srv/cvmfs/two.example.org", ("k",))
    urls = ("http://a/cvmfs/two.example.org", "http://b/cvmfs/one.example.org",
            "http://c/cvmfs/two.example.org")
    assert assign_replicas([one, two], urls) == {0: (urls[1],), 1: (urls[0], urls[2])}
    assert assign_replicas([one], ("http://x/anything",)) == {0: ("http://x/anything",)}
    with pytest.raises(ConfigError, match=re.escape("--replica http://d/cvmfs/three.example.org")):
        assign_replicas([one, two], ("http://d/cvmfs/three.example.org",))


def test_the_web_command_with_replicas(browsed: Browsed, tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from pycvmfs.cli.web_cmd import web; web()",
         "--repo", browsed.s0_url, "--key", browsed.key, "--replica", browsed.s1_url,
         "--replica", browsed.down_url, "--stale-after", "0", "--index",
         str(tmp_path / "w.sqlite"), "--listen", f"127.0.0.1:{port}"],
        stderr=subprocess.PIPE, text=True)
    said = []
    try:
        for line in proc.stderr:  # the command says when it serves: readiness, not a delay
            said.append(line)
            if line.startswith("serving "):
                break
        else:
            pytest.fail(f"pycvmfs web exited with {proc.wait()} before serving: {said}")
        alarms = [line for line in said if line.startswith("ALARM ")]
        assert alarms[0].startswith(f"ALARM {browsed.s1_url}: stale: 1 revision behind")
        assert alarms[1].startswith(f"ALARM {browsed.down_url}: unreachable or refused")
        assert len(alarms) == 2
        url = f"http://127.0.0.1:{port}"
        r = wait_answering(proc, url, "/api/replicas")
        rows = r.json()["replicas"]
        assert [(x["replica"], x["stale_after"], x["stale"]) for x in rows] == [
            (browsed.s1_url, 0.0, True), (browsed.down_url, 0.0, True)]
        assert get(url, "/metrics").headers["content-type"] == METRICS_TYPE
    finally:
        proc.terminate()
        proc.wait()


def test_stratum_1s_of_an_unreadable_stratum_0_are_alarms(browsed: Browsed, tmp_path):
    gone = f"http://127.0.0.1:{free_port()}/cvmfs/{BFQRN}"
    index = WebIndex(tmp_path / "web.sqlite", [RepoSource(gone, (browsed.key,), BFQRN,
                                                          replicas=(browsed.s1_url,))])
    portal = None
    try:
        assert index.refresh()[0]["error"]
        portal = PortalServer(index, refresh_interval=None)
        [row] = get(portal, "/api/replicas").json()["replicas"]
        assert (row["replica"], row["verified"], row["stratum0_revision"], row["stale"]) == (
            browsed.s1_url, False, None, True)
        assert row["alarm"].startswith(f"unreachable or refused: {browsed.s1_url}: not "
                                       f"checked, the stratum 0 {BFQRN} could not be read")
        assert '<td class="rs-alarm"><span class="status">ALARM</span>' in get(
            portal, "/replicas").text
        samples = parse_exposition(get(portal, "/metrics").text)
        labels = frozenset({"fqrn": BFQRN, "replica": browsed.s1_url}.items())
        assert (samples[("cvmfs_replica_up", labels)],
                samples[("cvmfs_replica_stale", labels)]) == (0, 1)
    finally:
        if portal is not None:
            portal.stop()
        index.close()
