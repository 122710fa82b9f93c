"""The repository browser on a real repository served over HTTP (a stacks release, plain
transactions with a chunked file and a nested catalog, a container image; named tags) and the
portal in a real uvicorn server: revisions and tags, the size plot, the file tree with object
details, revision diffs, errors, and a tampered catalog refused."""

from __future__ import annotations

import hashlib
import html
import re
import shutil
import sqlite3
import zlib

import pytest

from pycvmfs.client.repository import open_repository
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.publish.config import ServerSettings
from pycvmfs.web.index import RepoSource, WebIndex
from pycvmfs.web.repoinfo import revision_diff, revisions, size_history
from web.conftest import BFQRN, BIG, Browsed, PortalServer, get, iso

from helpers.loopback import LoopbackServer
from helpers.publishing import new_repository

API = f"/api/repositories/{BFQRN}"
PAGE = f"/repositories/{BFQRN}"






def stored(browsed: Browsed, h: str, kind: ObjectKind) -> bytes:
    return (browsed.pub.config.storage / ContentHash.parse(h).object_path(kind)).read_bytes()


def test_revisions_and_tags(browse_portal, browsed, tmp_path):
    api = get(browse_portal, f"{API}/revisions").json()
    with open_repository(browsed.s0_url, keys=[browsed.key], cache_dir=tmp_path / "c") as repo:
        assert api["revisions"] == revisions(repo)
        assert api["size_history"] == size_history(repo)
    rows = api["revisions"]
    assert (api["fqrn"], api["indexed_revision"]) == (BFQRN, 5)
    assert [(r["revision"], r["root_hash"], r["date"]) for r in rows] == [
        (n, browsed.roots[n], iso(browsed.published[n])) for n in (5, 4, 3, 2, 1)]
    assert [r["named_tags"] for r in rows] == [["data-v2"], ["images"], ["data-v1"],
                                               ["LCG_900"], []]
    assert [r["head"] for r in rows] == [True, False, False, False, False]
    by_rev = {r["revision"]: r for r in rows}
    assert (by_rev[3]["chunked_files"], by_rev[2]["chunked_files"]) == (1, 0)
    assert by_rev[3]["bytes"] - by_rev[2]["bytes"] == len(BIG) + len(b"first notes\n") + len(
        b"to be removed\n")
    assert by_rev[5]["files"] - by_rev[4]["files"] == 0  # old.txt went, README came

    page = get(browse_portal, PAGE).text
    assert "5 revisions, newest first" in page and "verified" in page
    for n in (5, 4, 3, 2, 1):
        assert f'<tr id="rev-{n}"' in page and iso(browsed.published[n]) in page
        assert f'href="{PAGE}/tree?revision={n}">files</a>' in page
    for n in (5, 4, 3, 2):
        assert f'href="{PAGE}/diff?a={n - 1}&amp;b={n}">changes</a>' in page
    for name in ("data-v2", "images", "data-v1", "LCG_900"):
        assert re.search(rf'<span class="tag tag-named" title="[^"]*">{name}</span>', page)
    assert '<span class="badge">current</span>' in page
    assert f'href="/api/repositories/{BFQRN}/revisions"' in page


def _svg(page: str) -> str:
    [svg] = re.findall(r'<svg [^>]*class="plot".*?</svg>', page, re.DOTALL)
    return svg


def test_size_plot_one_point_per_revision_with_its_data_table(browse_portal):
    points = get(browse_portal, f"{API}/revisions").json()["size_history"]
    assert [p["revision"] for p in points] == [1, 2, 3, 4, 5]
    page = get(browse_portal, PAGE).text
    svg = _svg(page)
    assert 'role="img"' in svg and 'aria-labelledby="size-plot-title size-plot-desc"' in svg
    assert "5 revisions from 1 to 5" in svg
    for key in ("bytes", "files"):
        circles = re.findall(rf'<circle class="point-{key}" cx="([\d.]+)" cy="([\d.]+)"[^>]*>'
                             r"<title>revision (\d+): ", svg)
        assert [int(r) for _x, _y, r in circles] == [1, 2, 3, 4, 5]
        # x grows with the revision; y is lower (higher on screen) for a larger figure
        xs = [float(x) for x, _y, _r in circles]
        assert xs == sorted(xs) and len(set(xs)) == 5
        ys = [float(y) for _x, y, _r in circles]
        values = [p[key] for p in points]
        for i in range(5):
            for j in range(5):
                if values[i] < values[j]:
                    assert ys[i] >= ys[j], (key, values, ys)
        assert ys[values.index(max(values))] < ys[values.index(min(values))]
    [table] = re.findall(r'<table class="size-data">.*?</table>', page, re.DOTALL)
    rows = re.findall(r'<tr><th scope="row">(\d+)</th><td>([^<]*)</td>\s*<td>(\d+)</td>'
                      r"<td>(\d+)</td></tr>", table)
    assert [(int(r), d, int(b), int(f)) for r, d, b, f in rows] == [
        (p["revision"], p["date"], p["bytes"], p["files"]) for p in points]


def test_revisions_are_answered_from_the_index_trees_from_the_repository(browsed, browse_index,
                                                                         tmp_path):
    server = LoopbackServer(browsed.base / "repo" / "srv")
    index = WebIndex(tmp_path / "web.sqlite",
                     [RepoSource(f"{server.url}/{BFQRN}", (browsed.key,), BFQRN)])
    portal = None
    try:
        [outcome] = index.refresh()
        assert outcome["error"] is None
        server.stop()  # the stratum 0 is gone: stored figures still answer, trees cannot
        portal = PortalServer(index, refresh_interval=None)
        assert get(portal, f"{API}/revisions").json() == browse_index.revisions(BFQRN)
        assert 'class="point-files"' in get(portal, PAGE).text
        refused = get(portal, f"{API}/tree/data", 502).json()["detail"]
        assert refused.startswith(f"{BFQRN}: /data in the indexed revision: refused")
        assert "could not be fetched" in refused
    finally:
        if portal is not None:
            portal.stop()
        index.close()
        server.stop()


def test_tree_details_of_a_chunked_file(browse_portal, browsed):
    d = get(browse_portal, f"{API}/tree/data/big.bin?revision=data-v1").json()
    assert (d["fqrn"], d["revision"], d["root_hash"], d["path"], d["name"], d["type"]) == (
        BFQRN, 3, browsed.roots[3], "/data/big.bin", "big.bin", "file")
    assert (d["size"], d["mode_octal"], d["compression"], d["chunked"], d["external"],
            d["links"], d["children"], d["target"]) == (len(BIG), "0644", "zlib", True, False,
                                                        1, None, None)
    assert len(d["chunks"]) >= 3
    offset = 0
    for c in d["chunks"]:  # they tile the file, each the stored object its hash names
        raw = stored(browsed, c["hash"], ObjectKind.PARTIAL)
        assert hashlib.sha1(raw).hexdigest() == c["hash"] and c["offset"] == offset
        assert zlib.decompress(raw) == BIG[offset:offset + c["size"]]
        offset += c["size"]
    assert offset == len(BIG)
    head = get(browse_portal, f"{API}/tree/data/big.bin").json()
    assert head == {**d, "revision": 5, "root_hash": browsed.roots[5]}

    page = get(browse_portal, f"{PAGE}/tree/data/big.bin?revision=data-v1").text
    assert f"<caption>{len(d['chunks'])} chunks</caption>" in page
    assert f"yes, {len(d['chunks'])} chunks" in page
    for i, c in enumerate(d["chunks"], 1):
        assert (f'<tr><th scope="row">{i}</th><td>{c["offset"]}</td><td>{c["size"]}</td>'
                f'<td><code class="hash">{c["hash"]}</code></td></tr>') in page
    assert f'<a href="{PAGE}/tree/data?revision=data-v1">data</a>' in page  # the path
    assert f'<a href="{PAGE}#rev-3">3</a>, root catalog <code>{browsed.roots[3]}</code>' in page


def test_tree_of_directories_files_and_links(browse_portal, browsed):
    data = get(browse_portal, f"{API}/tree/data").json()
    assert [(c["name"], c["type"]) for c in data["children"]] == [
        (".cvmfscatalog", "file"), ("big.bin", "file"), ("latest", "symlink"),
        ("notes.txt", "file")]
    assert data["truncated"] is False and data["hash"] is None
    nested = data["nested_catalog"]  # the catalog mounted at /data, stored under its hash
    assert hashlib.sha1(stored(browsed, nested, ObjectKind.CATALOG)).hexdigest() == nested
    old = get(browse_portal, f"{API}/tree/data?revision=3").json()
    assert "old.txt" in [c["name"] for c in old["children"]]
    capped = get(browse_portal, f"{API}/tree/data?limit=2").json()
    assert [c["name"] for c in capped["children"]] == [".cvmfscatalog", "big.bin"]
    assert capped["truncated"] is True

    root = get(browse_portal, f"{API}/tree").json()
    assert root["nested_catalog"] == browsed.roots[5] and root["path"] == "/"
    assert {"data", "docs", "lcg", ".flat", ".metadata"} <= {c["name"] for c in
                                                            root["children"]}
    assert get(browse_portal, f"{API}/tree/").json() == root
    notes = get(browse_portal, f"{API}/tree/data/notes.txt").json()
    raw = stored(browsed, notes["hash"], ObjectKind.FILE)
    assert zlib.decompress(raw) == b"second notes, longer\n" and notes["chunks"] == []
    assert hashlib.sha1(raw).hexdigest() == notes["hash"] and notes["chunked"] is False
    link = get(browse_portal, f"{API}/tree/data/latest").json()
    assert (link["type"], link["target"], link["size"]) == ("symlink", "big.bin", 7)

    page = get(browse_portal, f"{PAGE}/tree/data?revision=3").text
    for name in ("big.bin", "latest", "notes.txt", "old.txt"):
        assert f'<a href="{PAGE}/tree/data/{name}?revision=3">{name}</a>' in page
    assert f'<code class="hash">{old["nested_catalog"]}</code>' in page
    top = get(browse_portal, f"{PAGE}/tree").text
    assert f'<a href="{PAGE}/tree/data">data/</a>' in top and "Root catalog" in top
    assert "<dt>Target</dt><dd><code>big.bin</code>" in get(
        browse_portal, f"{PAGE}/tree/data/latest").text


def test_revision_diff(browse_portal, browsed, tmp_path):
    d = get(browse_portal, f"{API}/diff?a=data-v1&b=data-v2&path=/data").json()
    assert (d["a"], d["b"], d["path"], d["truncated"]) == (
        {"revision": 3, "root_hash": browsed.roots[3]},
        {"revision": 5, "root_hash": browsed.roots[5]}, "/data", False)
    assert (d["added"], d["removed"], d["changed"]) == (
        [], [{"path": "/data/old.txt", "type": "file"}],
        [{"path": "/data/notes.txt", "type": "file", "fields": ["content", "mtime"]}])

    whole = get(browse_portal, f"{API}/diff?a=3&b=5").json()
    with open_repository(browsed.s0_url, keys=[browsed.key], cache_dir=tmp_path / "c") as repo:
        assert whole == revision_diff(repo, 3, 5)
    added = [c["path"] for c in whole["added"]]
    assert {"/docs", "/docs/README", "/registry.example.org"} <= set(added)
    assert any(p.startswith("/.flat/") for p in added)  # the image's flat tree came in 4
    assert whole["removed"] == d["removed"] and not whole["truncated"]
    capped = get(browse_portal, f"{API}/diff?a=3&b=5&limit=2").json()
    assert capped["truncated"] is True and capped["limit"] == 2
    assert sum(len(capped[k]) for k in ("added", "removed", "changed")) == 2

    page = get(browse_portal, f"{PAGE}/diff?a=data-v1&b=data-v2&path=/data").text
    assert "0 added, 1 removed, 1 changed" in page and "Revision 3 → 5 below" in page
    assert f'<a href="{PAGE}/tree/data/old.txt?revision=3">/data/old.txt</a>' in page
    assert f'<a href="{PAGE}/tree/data/notes.txt?revision=5">/data/notes.txt</a>' in page
    assert "<td>content, mtime</td>" in page
    form = get(browse_portal, f"{PAGE}/diff").text
    assert '<datalist id="revs">' in form and '<option value="data-v1">' in form
    assert '<option value="3">' in form and "Revision 3 →" not in form


@pytest.mark.parametrize(("path", "status", "words"), [
    ("/api/repositories/x.example.org/tree", 404, "repository 'x.example.org'"),
    ("/api/repositories/x.example.org/revisions", 404, "repository 'x.example.org'"),
    (f"{API}/tree/data/old.txt", 404, "/data/old.txt"),
    (f"{API}/tree/data?revision=no-such-tag", 404, "no-such-tag"),
    (f"{API}/tree?revision=99", 404, "revision 99"),
    (f"{API}/diff?a=no-such-tag&b=5", 404, "no-such-tag"),
    (f"{API}/diff?a=3&b=5&limit=0", 422, '["query","limit"]'),
    (f"{API}/diff?b=5", 422, '["query","a"]'),
    (f"{PAGE}/tree/nope", 404, "/nope in the indexed revision"),
    ("/repositories/x.example.org/tree", 404, "x.example.org"),
    ("/repositories/x.example.org/diff?a=1", 404, "x.example.org"),
])
def test_browser_errors_name_what_is_missing(browse_portal, path, status, words):
    r = get(browse_portal, path, status)
    assert words in (r.text if path.startswith("/api/") else html.unescape(r.text))


def test_a_tampered_catalog_is_refused_and_the_page_says_so(browsed, tmp_path):
    storage = tmp_path / BFQRN
    shutil.copytree(browsed.pub.config.storage, storage)
    with open_repository(str(storage), keys=[browsed.key], cache_dir=tmp_path / "c") as repo, \
            repo.open_revision() as view:
        nested = str(view.nested_hash(b"/data"))
    victim = storage / ContentHash.parse(nested).object_path(ObjectKind.CATALOG)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    index = WebIndex(tmp_path / "web.sqlite", [RepoSource(str(storage), (browsed.key,), BFQRN)])
    portal = None
    try:
        [outcome] = index.refresh()  # the revisions and stacks do not read /data
        assert outcome["error"] is None
        portal = PortalServer(index, refresh_interval=None)
        assert get(portal, f"{API}/tree").json()["nested_catalog"] == browsed.roots[5]
        detail = get(portal, f"{API}/tree/data/notes.txt", 502).json()["detail"]
        assert detail.startswith(f"{BFQRN}: /data/notes.txt in the indexed revision: refused")
        assert nested in detail and "hash mismatch" in detail
        page = get(portal, f"{PAGE}/tree/data", 502).text
        assert "<h1>Refused</h1>" in page and nested in page
        assert "second notes" not in page
    finally:
        if portal is not None:
            portal.stop()
        index.close()


def test_home_page_links_every_section(browse_portal):
    home = get(browse_portal, "/").text
    for href in ("/", "/repositories", "/replicas", "/containers", "/diff", "/search",
                 "/docs", "/openapi.json", "/metrics", PAGE, f"{PAGE}/tree", f"{PAGE}/diff",
                 "/releases/LCG_900"):
        assert f'href="{href}"' in home, href
        get(browse_portal, href)
    listing = get(browse_portal, "/repositories").text
    assert f'<a href="{PAGE}">{BFQRN}</a>' in listing and "verified" in listing


def test_an_index_of_another_schema_is_rebuilt(browsed, tmp_path):
    db_path = tmp_path / "old.sqlite"
    with sqlite3.connect(db_path) as old:  # the first schema: no history hash, no version
        old.execute("CREATE TABLE repositories (fqrn TEXT PRIMARY KEY, location TEXT NOT NULL, "
                    "top TEXT NOT NULL, revision INTEGER, root_hash TEXT)")
        old.execute("INSERT INTO repositories VALUES (?, 'x', 'lcg', 1, 'ab')", (BFQRN,))
    old.close()
    index = WebIndex(db_path, [RepoSource(str(browsed.pub.config.storage), (browsed.key,),
                                          BFQRN)])
    try:
        assert index.repositories() == []
        [outcome] = index.refresh()
        assert outcome["changed"] and outcome["revision"] == 5
        assert index.revisions(BFQRN)["indexed_revision"] == 5
    finally:
        index.close()


def test_a_new_tag_on_an_old_revision_is_indexed(tmp_path):
    pub = new_repository(tmp_path / "repo", "tags.example.org", ServerSettings())
    first = pub.head().root_catalog
    with pub.transaction(tag="one") as txn:
        txn.add_file("/a.txt", b"a")
    index = WebIndex(tmp_path / "web.sqlite", [RepoSource(
        str(pub.config.storage), (str(pub.config.key_path("pub")),), "tags.example.org")])
    try:
        assert index.refresh()[0]["changed"]
        assert index.refresh()[0]["changed"] is False
        pub.tag("later", root_hash=first, message="tagged afterwards")
        [outcome] = index.refresh()  # same revision, another history
        assert outcome["changed"] and outcome["revision"] == 2
        rows = index.revisions("tags.example.org")["revisions"]
        assert [(r["revision"], r["named_tags"]) for r in rows] == [(2, ["one"]),
                                                                   (1, ["later"])]
    finally:
        index.close()
