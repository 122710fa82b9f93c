"""The portal's index, built from a repository filled by the real stack pipelines, read
through the verified reader from its storage directory and over real HTTP."""

from __future__ import annotations

import pytest

from pycvmfs.web.index import BadSpec, RepoSource, UnknownName, WebIndex
from web.conftest import FQRN, PLAT

from helpers.loopback import LoopbackServer


def _table(index, name, day=None):
    return {p["name"]: p for p in index.release_packages(name, PLAT, day)["packages"]}


def test_releases_and_slots_are_listed(index):
    data = index.releases()
    assert [r["name"] for r in data["releases"]] == ["LCG_901", "LCG_900"]
    assert data["releases"][1]["platforms"] == [{"platform": PLAT, "packages": 5}]
    assert data["slots"] == [{"name": "dev4", "fqrn": FQRN, "days": ["Mon", "Tue"]}]
    rel = index.release("LCG_900")["platforms"]
    assert rel == [{"platform": PLAT, "fqrn": FQRN, "version": "900", "compiler": rel[0][
        "compiler"], "externals": 4, "generators": 1}]


def test_release_table_has_the_published_hashes_prefixes_and_dependencies(index, published):
    table = _table(index, "LCG_900")
    assert {n: p["hash"] for n, p in table.items()} == published.hashes["LCG_900"]
    eta = table["eta"]
    assert eta["version"] == "2.1" and eta["category"] == "externals"
    assert eta["depends"] == [{"name": "zeta", "hash": published.hashes["LCG_900"]["zeta"]}]
    assert eta["prefix"] == f"/cvmfs/{FQRN}/lcg/releases/LCG_900/eta/2.1/{PLAT}"
    assert len(eta["full_hash"]) > len(eta["hash"])
    assert table["toygen"]["is_generator"] and table["toygen"]["category"] == "generators"
    assert table["zeta"]["metadata"] == {"license": "MIT", "description": "a tiny library"}


def test_nightly_days_latest_and_the_partial_night(index, published):
    tue = _table(index, "dev4", "Tue")
    assert "eta" not in tue  # its build failed: the partial night has no eta
    assert tue["zeta"]["hash"] == published.hashes["dev4/Tue"]["zeta"]
    assert tue["zeta"]["prefix"] == f"/cvmfs/{FQRN}/lcg/nightlies/dev4/Tue/zeta/1.0/{PLAT}"
    latest = index.release_packages("dev4", PLAT, "latest")
    assert latest["day"] == "Mon"  # the partial Tuesday did not move latest
    grid = index.nightly("dev4")
    assert [(c["day"], c["state"], c["run_status"]) for c in grid["columns"]] == [
        ("Mon", "done", "success"), ("Tue", "unstable", "failed")]
    assert grid["latest"] == {PLAT: "Mon"}
    cells = {(r["name"], c["day"]): c for r in grid["packages"] for c in r["cells"]}
    assert cells[("eta", "Tue")]["status"] == "failed"
    assert "deliberate failure" in cells[("eta", "Tue")]["error"]
    assert cells[("eta", "Tue")]["log"].endswith("build.log")
    assert cells[("eta", "Mon")]["status"] == "reused"
    assert cells[("zeta", "Tue")]["status"] == "built" and cells[("zeta", "Tue")]["duration"] > 0
    # the GenSer-style validation of the rebuilt generator failed (its reference changed)
    assert cells[("toygen", "Tue")]["test_status"] == "failed"


def test_package_lists_every_version_build_and_use(index, published):
    theta = index.package("theta")
    assert [v["version"] for v in theta["versions"]] == ["0.6", "0.5"]
    old = theta["versions"][1]["builds"]
    assert [b["hash"] for b in old] == [published.hashes["LCG_900"]["theta"]]
    uses = {(u["stack"], u["day"]) for u in old[0]["used_in"]}
    assert uses == {("LCG_900", None), ("dev4", "Mon"), ("dev4", "Tue")}
    zeta = index.package("zeta")
    assert len(zeta["versions"]) == 1 and len(zeta["versions"][0]["builds"]) == 3


def test_search_by_name_and_version(index):
    names = {(h["name"], h["version"]) for h in index.search("ta")}
    assert {("eta", "2.1"), ("theta", "0.5"), ("theta", "0.6"), ("zeta", "1.0")} <= names
    assert all("ta" in n for n, _v in names)
    assert [(h["name"], h["stacks"]) for h in index.search("0.6")] == [("theta", ["LCG_901"])]
    assert index.search("%") == [] and index.search("  ") == []


def test_diff_of_two_releases(index, published):
    d = index.diff(f"LCG_900/{PLAT}", f"LCG_901/{PLAT}")
    h0, h1 = published.hashes["LCG_900"], published.hashes["LCG_901"]
    assert d["added"] == [{"name": "kappa", "version": "1.2", "hash": h1["kappa"]}]
    assert d["removed"] == [{"name": "iota", "version": "7", "hash": h0["iota"]}]
    assert d["version_changed"] == [{"name": "theta", "from": {"version": "0.5",
                                                               "hash": h0["theta"]},
                                     "to": {"version": "0.6", "hash": h1["theta"]}}]
    assert [r["name"] for r in d["rebuilt"]] == ["eta", "toygen", "zeta"]
    assert d["unchanged"] == 0


def test_diff_of_nightly_days_and_latest(index):
    d = index.diff(f"dev4/latest/{PLAT}", f"dev4/Tue/{PLAT}")
    assert d["a"] == f"dev4/latest/{PLAT}"
    assert [e["name"] for e in d["removed"]] == ["eta"]
    assert [r["name"] for r in d["rebuilt"]] == ["toygen", "zeta"]
    assert d["unchanged"] == 2  # theta, iota
    assert index.diff(f"LCG_900/{PLAT}", f"dev4/Mon/{PLAT}")["unchanged"] == 5


@pytest.mark.parametrize("spec", ["LCG_900", "a/b/c/d", f"dev4/Someday/{PLAT}", "/"])
def test_a_malformed_diff_operand_is_refused_by_name(index, spec):
    with pytest.raises(BadSpec, match="diff operand"):
        index.diff(spec, f"LCG_900/{PLAT}")


def test_unknown_names_are_named(index):
    with pytest.raises(UnknownName, match="LCG_1"):
        index.release("LCG_1")
    with pytest.raises(UnknownName, match="no summary for platform 'nope'"):
        index.release_packages("LCG_900", "nope")
    with pytest.raises(UnknownName, match="'root'"):
        index.package("root")
    with pytest.raises(UnknownName, match="slot 'dev3'"):
        index.nightly("dev3")
    with pytest.raises(UnknownName, match=r"other\.example\.org"):
        index.repository("other.example.org")


def test_indexing_over_http_gives_the_same_index(published, index, tmp_path):
    server = LoopbackServer(published.pub.config.storage.parent)
    try:
        src = published.source()
        remote = WebIndex(tmp_path / "http.sqlite",
                          [RepoSource(f"{server.url}/{FQRN}", src.keys)])
        try:
            [outcome] = remote.refresh()
            assert outcome["error"] is None and outcome["fqrn"] == FQRN
            assert remote.releases() == index.releases()
            assert remote.nightly("dev4") == index.nightly("dev4")
            assert remote.release_packages("LCG_901", PLAT) == \
                index.release_packages("LCG_901", PLAT)
            assert remote.repositories()[0]["revision"] == index.repositories()[0]["revision"]
        finally:
            remote.close()
    finally:
        server.stop()


def test_an_unchanged_revision_is_not_read_again(index):
    before = index.repositories()[0]
    [outcome] = index.refresh()
    assert outcome == {"fqrn": FQRN, "revision": before["revision"], "changed": False,
                       "error": None}
    assert index.repositories()[0]["indexed_at"] == before["indexed_at"]


def test_a_repository_that_cannot_be_read_is_marked_and_shows_nothing(tmp_path, published):
    idx = WebIndex(tmp_path / "x.sqlite",
                   [RepoSource(str(tmp_path / "missing" / FQRN), published.source().keys)])
    try:
        [outcome] = idx.refresh()
        assert outcome["error"]
        [repo] = idx.repositories()
        assert repo["fqrn"] == FQRN and repo["revision"] is None and repo["error"]
        assert idx.releases() == {"releases": [], "slots": []}
    finally:
        idx.close()
