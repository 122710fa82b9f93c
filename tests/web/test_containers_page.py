"""The container pages: an OCI image ingested by the containers code into a repository served
over HTTP, indexed from its ``.metadata/images.json`` read through the verified reader; an
index of another version is a warning, a tampered one is refused."""

from __future__ import annotations

import html
import json
import shutil
import zlib

from pycvmfs.containers import layout
from pycvmfs.containers.service import list_images
from pycvmfs.publish.config import ServerSettings
from pycvmfs.web.index import RepoSource, WebIndex
from web.conftest import BFQRN, IMAGE_NAME, Browsed, PortalServer, get, iso

from helpers.publishing import new_repository


def test_the_ingested_image(browse_portal, browsed: Browsed):
    [image] = get(browse_portal, "/api/containers").json()["images"]
    written = browsed.image
    blobs = browsed.base / "img" / "blobs" / "sha256"
    flat = layout.flat_path(written.config_digest)
    assert image == {
        "fqrn": BFQRN, "name": IMAGE_NAME,
        "alias": f"registry.example.org/portal/hello@{written.manifest_digest}",
        "manifest_digest": written.manifest_digest, "config_digest": written.config_digest,
        "platform": "linux/amd64", "layers": written.layer_digests,
        "size": sum((blobs / d.removeprefix("sha256:")).stat().st_size
                    for d in written.layer_digests),
        "flat_size": image["flat_size"], "flat": flat,
        "published": image["published"], "published_date": iso(image["published"]),
        "source": f"oci:{browsed.base / 'img'}:1.0", "outputs": ["flat", "layers", "podman"]}
    assert browsed.published[3] <= image["published"] <= browsed.published[4]
    [listed] = list_images(browsed.pub)  # what the containers code says it published
    assert {k: image[k] for k in listed if k != "layers"} == {
        k: v for k, v in listed.items() if k != "layers"}
    assert listed["layers"] == len(image["layers"]) == 2

    page = get(browse_portal, "/containers").text
    assert f"<th scope=\"row\">{IMAGE_NAME}<br>" in page
    assert f'<code class="hash">{written.manifest_digest}</code>' in page
    assert "<td>linux/amd64</td>" in page and "<summary>2 layers</summary>" in page
    for d in written.layer_digests:
        assert f"<li><code>{d}</code></li>" in page
    assert f"{image['size']} B stored" in page and iso(image["published"]) in page
    link = f"/repositories/{BFQRN}/tree/{flat}"
    assert f'<a href="{link}"><code>/cvmfs/{BFQRN}/{flat}</code></a>' in page
    tree = get(browse_portal, f"/api{link}").json()
    assert {"etc", "usr"} <= {c["name"] for c in tree["children"]}
    hello = get(browse_portal, f"/api{link}/usr/share/hello.txt").json()
    assert hello["size"] == len(b"hello from layer two\n")
    home = get(browse_portal, "/").text
    assert '<a href="/containers">Container images</a>: 1 published.' in home


def test_an_image_index_of_another_version_is_a_warning(tmp_path):
    fqrn = "images.example.org"
    pub = new_repository(tmp_path / "repo", fqrn, ServerSettings())
    with pub.transaction() as txn:
        txn.add_file("/.metadata/images.json", json.dumps({"version": 99}).encode())
    index = WebIndex(tmp_path / "web.sqlite", [RepoSource(
        str(pub.config.storage), (str(pub.config.key_path("pub")),), fqrn)])
    portal = None
    try:
        assert index.refresh()[0]["error"] is None
        portal = PortalServer(index, refresh_interval=None)
        assert get(portal, "/api/containers").json() == {"images": []}
        [warning] = get(portal, f"/api/repositories/{fqrn}").json()["warnings"]
        assert warning.startswith(f"/cvmfs/{fqrn}/.metadata/images.json: skipped")
        assert "version 99" in warning
        assert html.escape(warning) in get(portal, f"/repositories/{fqrn}").text
        assert "No container image is published" in get(portal, "/containers").text
    finally:
        if portal is not None:
            portal.stop()
        index.close()


def test_a_tampered_image_index_is_refused(browsed: Browsed, tmp_path):
    storage = tmp_path / BFQRN
    shutil.copytree(browsed.pub.config.storage, storage)
    reader = browsed.pub.open_reader(tmp_path / "rc")
    try:
        with reader.open_revision() as view:
            h = view.lstat(layout.images_index()).entry.hash
    finally:
        reader.close()
    obj = storage / h.object_path()
    doc = json.loads(zlib.decompress(obj.read_bytes()))
    doc["images"][IMAGE_NAME]["platform"] = "linux/forged"
    obj.write_bytes(zlib.compress(json.dumps(doc).encode()))
    index = WebIndex(tmp_path / "web.sqlite", [RepoSource(str(storage), (browsed.key,), BFQRN)])
    portal = None
    try:
        [outcome] = index.refresh()
        assert str(h) in outcome["error"] and "mismatch" in outcome["error"]
        portal = PortalServer(index, refresh_interval=None)
        assert get(portal, "/api/containers").json() == {"images": []}
        page = get(portal, "/containers").text
        assert "Repository errors" in page and "the last refresh was refused" in page
        assert "linux/forged" not in page
    finally:
        if portal is not None:
            portal.stop()
        index.close()
