"""The portal served by a real uvicorn server: every page and its JSON twin, errors, OpenAPI,
a refresh picking up a new revision, a tampered object refused, and the ``web`` command."""

from __future__ import annotations

import subprocess
import sys
import zlib

import httpx
import pytest

from pycvmfs.publish.config import ServerSettings
from pycvmfs.stacks.service import publish_nightly, publish_release
from pycvmfs.web.index import RepoSource, WebIndex
from web.conftest import FQRN, PLAT, PortalServer, free_port, get, second_release, wait_answering

from helpers.loopback import LoopbackServer
from helpers.publishing import new_repository
from helpers.stacks import tiny_stack


def test_pages_show_the_indexed_data(portal, published):
    h0 = published.hashes["LCG_900"]
    home = get(portal, "/").text
    assert '<html lang="en">' in home and '<label for="q">' in home
    assert 'href="/releases/LCG_900"' in home and 'href="/nightlies/dev4"' in home
    assert f'href="/releases/LCG_901/{PLAT}"' in home
    assert PLAT in get(portal, "/releases/LCG_900").text
    table = get(portal, f"/releases/LCG_900/{PLAT}").text
    assert '<th scope="col">Package</th>' in table
    for name, short in h0.items():
        assert f'<a href="/packages/{name}">{name}</a>' in table and f">{short}</code>" in table
    assert f"/cvmfs/{FQRN}/lcg/releases/LCG_900/eta/2.1/{PLAT}" in table
    pkg = get(portal, "/packages/theta").text
    assert "theta 0.6" in pkg and "theta 0.5" in pkg and h0["theta"] in pkg
    assert f'href="/nightlies/dev4/Mon/{PLAT}"' in pkg
    day = get(portal, f"/nightlies/dev4/Tue/{PLAT}").text
    assert published.hashes["dev4/Tue"]["zeta"] in day and "/packages/eta" not in day
    repo = get(portal, f"/repositories/{FQRN}").text
    assert "verified" in repo and str(published.pub.head().revision) in repo
    assert "Repository errors" not in home


def test_nightly_grid_shows_status_as_colour_and_text(portal):
    grid = get(portal, "/nightlies/dev4").text
    assert '<td class="st-failed"><span class="status">failed</span>' in grid
    assert '<td class="st-reused"><span class="status">reused</span>' in grid
    assert '<span class="st st-unstable">unstable</span>' in grid
    assert '<span class="st st-done">done</span>' in grid
    assert "test failed" in grid and "deliberate failure" in grid
    assert f'href="/nightlies/dev4/Mon/{PLAT}">{PLAT}: Mon</a>' in grid  # latest


def test_search_and_diff_pages(portal, published):
    hits = get(portal, "/search?q=zet").text
    assert 'href="/packages/zeta"' in hits and "/packages/eta" not in hits
    assert "Type a package name" in get(portal, "/search").text
    a, b = f"LCG_900/{PLAT}", f"LCG_901/{PLAT}"
    d = get(portal, f"/diff?a={a}&b={b}").text
    assert "1 added, 1 removed, 1 version changed, 3 rebuilt" in d
    assert 'class="diff-added"' in d and "kappa" in d and 'class="diff-removed"' in d
    assert published.hashes["LCG_901"]["zeta"] in d
    assert "<form" in get(portal, "/diff").text


def test_json_api_values(portal, published, index):
    assert get(portal, "/api/releases").json() == index.releases()
    assert get(portal, "/api/releases/LCG_900").json() == index.release("LCG_900")
    rows = get(portal, f"/api/releases/LCG_901/{PLAT}").json()["packages"]
    assert {r["name"]: r["hash"] for r in rows} == published.hashes["LCG_901"]
    assert get(portal, "/api/packages/zeta").json() == index.package("zeta")
    assert get(portal, "/api/search?q=kap").json() == {
        "q": "kap", "hits": [{"name": "kappa", "version": "1.2", "stacks": ["LCG_901"]}]}
    diff = get(portal, f"/api/diff?a=LCG_900/{PLAT}&b=LCG_901/{PLAT}").json()
    assert diff == index.diff(f"LCG_900/{PLAT}", f"LCG_901/{PLAT}")
    assert diff["version_changed"][0]["from"]["version"] == "0.5"
    grid = get(portal, "/api/nightlies/dev4").json()
    assert grid == index.nightly("dev4")
    assert get(portal, f"/api/nightlies/dev4/latest/{PLAT}").json()["day"] == "Mon"
    [repo] = get(portal, "/api/repositories").json()
    assert repo["fqrn"] == FQRN and repo["error"] is None
    assert get(portal, f"/api/repositories/{FQRN}").json() == repo


@pytest.mark.parametrize(("path", "status", "words"), [
    ("/releases/LCG_1", 404, "release &#39;LCG_1&#39;"),
    (f"/releases/LCG_900/{PLAT}-dbg", 404, f"{PLAT}-dbg"),
    ("/packages/root", 404, "package &#39;root&#39;"),
    ("/nightlies/dev3", 404, "slot &#39;dev3&#39;"),
    ("/repositories/x.example.org", 404, "x.example.org"),
    ("/diff?a=LCG_900&b=LCG_901", 400, "diff operand &#39;LCG_900&#39;"),
    ("/api/releases/LCG_1", 404, "release 'LCG_1'"),
    (f"/api/releases/LCG_1/{PLAT}", 404, "release LCG_1"),
    ("/api/packages/root", 404, "package 'root'"),
    ("/api/nightlies/dev3", 404, "slot 'dev3'"),
    ("/api/diff?a=LCG_900&b=LCG_901", 400, "diff operand 'LCG_900'"),
    (f"/api/diff?a=dev4/Someday/{PLAT}&b=LCG_901/{PLAT}", 400, "'Someday'"),
    (f"/api/diff?a=LCG_7/{PLAT}&b=LCG_901/{PLAT}", 404, "release LCG_7"),
    ("/api/repositories/x.example.org", 404, "x.example.org"),
])
def test_errors_name_what_is_unknown(portal, path, status, words):
    r = get(portal, path, status)
    assert words in r.text
    if path.startswith("/api/"):
        assert words in r.json()["detail"]


def test_openapi_describes_every_api_path(portal):
    doc = get(portal, "/openapi.json").json()
    assert set(doc["paths"]) == {
        "/api/repositories", "/api/repositories/{fqrn}", "/api/releases",
        "/api/releases/{release}", "/api/releases/{release}/{platform}",
        "/api/nightlies/{slot}", "/api/nightlies/{slot}/{day}/{platform}",
        "/api/packages/{name}", "/api/search", "/api/diff",
        "/api/repositories/{fqrn}/revisions", "/api/repositories/{fqrn}/tree",
        "/api/repositories/{fqrn}/tree/{path}", "/api/repositories/{fqrn}/diff",
        "/api/replicas", "/api/containers", "/api/logs/{fqrn}/{path}"}
    schemas = doc["components"]["schemas"]
    assert {"PackageTable", "Diff", "Nightly", "Package", "Repository"} <= set(schemas)
    assert "from" in schemas["DiffChange"]["properties"]
    ok = doc["paths"]["/api/releases/{release}/{platform}"]["get"]["responses"]
    assert ok["200"]["content"]["application/json"]["schema"]["$ref"].endswith("PackageTable")
    assert "404" in ok


def _forge(pub, tmp_path, candidates: list[str], change) -> str:
    """Replace the stored object of the first non-empty file of ``candidates`` by a
    well-formed object of the bytes ``change(old bytes)`` returns; that file's path."""
    reader = pub.open_reader(tmp_path / "tamper-rc")
    try:
        with reader.open_revision() as view:
            rel, entry = next((r, e) for r in candidates if (e := view.lstat(r).entry).size)
    finally:
        reader.close()
    obj = pub.config.storage / entry.hash.object_path()
    data = zlib.decompress(obj.read_bytes())
    forged = change(data)
    assert forged != data
    obj.write_bytes(zlib.compress(forged))
    return rel


def _fresh_portal(tmp_path, published, work: str):
    """A repository of its own with LCG_900, its index and a portal on it (no refresh
    thread): (publisher, stack settings, index, portal)."""
    pub = new_repository(tmp_path / "repo", FQRN, ServerSettings())
    settings = published.settings(work)
    publish_release(pub, tiny_stack(tmp_path / "900", repository=FQRN), settings)
    src = RepoSource(str(pub.config.storage), (str(pub.config.key_path("pub")),), FQRN)
    index = WebIndex(tmp_path / "web.sqlite", [src])
    index.refresh()
    return pub, settings, index, PortalServer(index, refresh_interval=None)


def test_refresh_picks_up_a_new_revision_and_a_tampered_one_is_refused(tmp_path, published):
    pub, settings, index, portal = _fresh_portal(tmp_path, published, "n2")
    try:
        assert [r["name"] for r in get(portal, "/api/releases").json()["releases"]] == \
            ["LCG_900"]
        publish_release(pub, second_release(tmp_path / "901"), settings)
        [outcome] = index.refresh()
        assert outcome["changed"] and outcome["revision"] == pub.head().revision
        assert "LCG_901" in get(portal, "/").text
        good = pub.head().revision
        publish_nightly(pub, tiny_stack(tmp_path / "mon", slot="dev4", repository=FQRN),
                        settings, day="Mon")
        _forge(pub, tmp_path, [f"lcg/nightlies/dev4/Mon/LCG_externals_{PLAT}.json"],
               lambda data: data.replace(b'"version": "1.0"', b'"version": "6.6"'))
        [outcome] = index.refresh()
        assert outcome["error"] and not outcome["changed"]
        repo = get(portal, "/api/repositories").json()[0]
        assert repo["revision"] == good and repo["error"]
        page = get(portal, "/").text
        assert "Repository errors" in page and "the last refresh was refused" in page
        assert f"Showing revision {good}, the last one that" in page
        assert 'href="/nightlies/dev4"' not in page  # nothing of the bad revision
        get(portal, "/api/nightlies/dev4", 404)
        assert "6.6" not in get(portal, "/api/packages/zeta").text
        assert "LCG_901" in page  # what verified before stays
        assert "refused" in get(portal, f"/repositories/{FQRN}").text
        # a build log whose stored object was swapped is refused, never shown
        table = get(portal, f"/api/releases/LCG_901/{PLAT}").json()
        logs = [p["prefix"].removeprefix(f"/cvmfs/{FQRN}/") + "/logs/build.log"
                for p in table["packages"]]
        rel = _forge(pub, tmp_path, logs,  # a log not read through the portal before
                     lambda data: data + b"forged line\n")
        r = get(portal, f"/logs/{FQRN}/{rel}", 502)
        assert "refused" in r.text and "build.log" in r.text
        assert "refused" in get(portal, f"/api/logs/{FQRN}/{rel}", 502).json()["detail"]
    finally:
        portal.stop()
        index.close()


def test_nightly_build_logs_and_trends(portal, published):
    grid = get(portal, "/api/nightlies/dev4").json()
    cells = {(row["name"], c["day"]): c for row in grid["packages"] for c in row["cells"]}
    built = cells[("zeta", "Mon")]  # zeta's build script prints (eta's says nothing)
    assert built["status"] in ("built", "reused") and built["log_url"].endswith(
        "/logs/build.log")
    assert cells[("eta", "Mon")]["log_url"].endswith("/logs/build.log")
    failed = cells[("eta", "Tue")]
    assert failed["status"] == "failed" and failed["log_url"] is None  # nothing published
    # the log page shows the very bytes the repository holds at that path
    rel = built["log_url"].removeprefix(f"/logs/{FQRN}/")
    reader = published.pub.open_reader(published.root / "log-oracle")
    try:
        with reader.open_revision() as view:
            expected = view.read_bytes(rel)
    finally:
        reader.close()
    assert expected, "the builder published an empty build log"
    log = get(portal, f"/api/logs/{FQRN}/{rel}").json()
    assert log["text"].encode() == expected and log["size"] == len(expected)
    assert log["truncated"] is False and log["offset"] == 0
    page = get(portal, built["log_url"]).text
    assert '<pre class="logtext"' in page and f"/repositories/{FQRN}/tree/" in page
    assert f'href="{built["log_url"]}"' in get(portal, "/nightlies/dev4").text
    # only logs are served, and a missing one is a clear 404
    r = get(portal, f"/api/logs/{FQRN}/{rel.rsplit('/', 2)[0]}/share/x.txt", 400)
    assert "only build logs are served" in r.json()["detail"]
    r = get(portal, f"/api/logs/{FQRN}/lcg/nowhere/logs/build.log", 404)
    assert "/lcg/nowhere/logs/build.log" in r.json()["detail"]
    # trends: one run per night and platform, in start order, with the outcomes
    runs = [t for t in grid["trends"] if t["platform"] == PLAT]
    assert [t["day"] for t in runs] == ["Mon", "Tue"]
    assert runs[1]["counts"]["failed"] == 1 and runs[0]["counts"]["failed"] == 0
    assert all(t["wall_seconds"] >= t["build_seconds"] / 2 >= 0 for t in runs)
    nightly = get(portal, "/nightlies/dev4").text
    assert '<h2 id="trends">Trends</h2>' in nightly
    assert f'<a href="/nightlies/dev4/Tue/{PLAT}">Tue</a>' in nightly


def test_the_web_command_serves_a_repository_over_http(tmp_path, published):
    server = LoopbackServer(published.pub.config.storage.parent)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from pycvmfs.cli.web_cmd import web; web()",
         "--repo", f"{server.url}/{FQRN}", "--key", published.source().keys[0],
         "--index", str(tmp_path / "w.sqlite"), "--listen", f"127.0.0.1:{port}",
         "--cache-size", "0"],
        stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # the command says when it serves: readiness, not a delay
            if line.startswith("serving "):
                break
        else:
            pytest.fail(f"pycvmfs web exited with {proc.wait()} before serving")
        url = f"http://127.0.0.1:{port}"
        r = wait_answering(proc, url, "/api/releases")
        assert [x["name"] for x in r.json()["releases"]] == ["LCG_901", "LCG_900"]
        assert httpx.get(f"{url}/nightlies/dev4").status_code == 200
        again = httpx.get(f"{url}/api/releases")  # --cache-size 0: every answer is made anew
        assert again.status_code == 200 and "x-cache" not in again.headers
    finally:
        proc.terminate()
        proc.wait()
        server.stop()


def test_answers_are_kept_until_the_index_changes(tmp_path, published):
    pub, settings, index, portal = _fresh_portal(tmp_path, published, "n3")
    try:
        first = get(portal, "/api/releases")
        again = get(portal, "/api/releases")
        assert "x-cache" not in first.headers and again.headers["x-cache"] == "hit"
        assert again.json() == first.json()
        assert get(portal, "/releases/LCG_900").headers.get("x-cache") is None
        assert get(portal, "/releases/LCG_900").headers["x-cache"] == "hit"
        get(portal, "/api/releases/LCG_999", 404)
        assert get(portal, "/api/releases/LCG_999", 404).headers.get("x-cache") is None
        publish_release(pub, second_release(tmp_path / "901"), settings)
        index.refresh()  # a new index state: nothing answered before is reused
        fresh = get(portal, "/api/releases")
        assert fresh.headers.get("x-cache") is None
        assert sorted(r["name"] for r in fresh.json()["releases"]) == ["LCG_900", "LCG_901"]
    finally:
        portal.stop()
