"""thin.json descriptors: the format of docs §2.1, bottom layer first, cvmfs:// URLs only."""

from __future__ import annotations

import hashlib
import json

import pytest

from pycvmfs.containers.manifest import MAX_DOCUMENT
from pycvmfs.containers.thin import (
    ThinLayer,
    layer_url,
    parse_thin,
    thin_descriptor,
    thin_path,
)
from pycvmfs.errors import ContainerError

DIGESTS = ["sha256:" + hashlib.sha256(str(n).encode()).hexdigest() for n in range(3)]
ORIGIN = "https://registry.hub.docker.com/library/ubuntu:22.04"


def _layers(fqrn: str = "unpacked.example.org") -> list[tuple[str, str]]:
    return [(d, layer_url(fqrn, d)) for d in DIGESTS]


def test_layer_url_and_path() -> None:
    h = DIGESTS[0][7:]
    assert layer_url("unpacked.example.org", DIGESTS[0]) == \
        f"cvmfs://unpacked.example.org/.layers/{h[:2]}/{h}/layerfs"
    assert thin_path("h.org/r:1") == ".thin/h.org/r:1/thin.json"


def test_round_trip_keeps_order_bottom_first() -> None:
    data = thin_descriptor(ORIGIN, _layers(), comment="made by a test")
    doc = json.loads(data)
    assert list(doc) == ["version", "origin", "layers", "comment"]
    assert doc["version"] == "1.0" and doc["origin"] == ORIGIN
    assert [entry["digest"] for entry in doc["layers"]] == [d[7:] for d in DIGESTS]
    assert all(set(entry) == {"digest", "url"} for entry in doc["layers"])
    thin = parse_thin(data)
    assert [t.digest for t in thin.layers] == [d[7:] for d in DIGESTS]
    assert thin.layers[0] == ThinLayer(DIGESTS[0][7:], layer_url("unpacked.example.org",
                                                                  DIGESTS[0]))
    assert (thin.version, thin.origin, thin.comment) == ("1.0", ORIGIN, "made by a test")
    assert thin.layers[2].repository == "unpacked.example.org"
    assert thin.layers[2].path.endswith(DIGESTS[2][7:] + "/layerfs")
    # same input, same bytes; reversed input, reversed layers
    assert thin_descriptor(ORIGIN, _layers(), comment="made by a test") == data
    rev = parse_thin(thin_descriptor(ORIGIN, _layers()[::-1]))
    assert [t.digest for t in rev.layers] == [d[7:] for d in DIGESTS[::-1]]


def test_hex_digests_and_empty_origin_accepted() -> None:
    data = thin_descriptor("", [(DIGESTS[0][7:], layer_url("r.org", DIGESTS[0]))])
    assert "origin" not in json.loads(data)
    assert parse_thin(data).origin == ""


def test_reads_the_graphdriver_form() -> None:
    # as docker2cvmfs / DUCC wrote it: compact, with min_version, old-style layer paths
    h = DIGESTS[1][7:]
    doc = {"version": "1.0", "min_version": "1.0", "origin": "ubuntu@https://hub",
           "layers": [{"digest": h, "url": f"cvmfs://images.cern.ch/layers/{h}"}]}
    thin = parse_thin(json.dumps(doc).encode())
    assert thin.min_version == "1.0"
    assert (thin.layers[0].repository, thin.layers[0].path) == ("images.cern.ch",
                                                                f"layers/{h}")


@pytest.mark.parametrize("url", [
    "https://unpacked.example.org/.layers/x", "file:///cvmfs/x/.layers/y", "/cvmfs/r/.layers",
    "cvmfs://", "cvmfs://repo.org", "cvmfs://repo.org/", "cvmfs://repo.org/../etc/passwd",
    "cvmfs://repo.org/.layers//x", "cvmfs://repo.org/a/./b", "cvmfs://-bad/x", 7, None,
])
def test_other_urls_refused(url: object) -> None:
    h = DIGESTS[0][7:]
    with pytest.raises(ContainerError, match="not cvmfs://"):
        parse_thin(json.dumps({"version": "1.0",
                               "layers": [{"digest": h, "url": url}]}).encode(), "x/thin.json")
    if isinstance(url, str):
        with pytest.raises(ContainerError, match="not cvmfs://"):
            thin_descriptor(ORIGIN, [(DIGESTS[0], url)])


@pytest.mark.parametrize("doc, needle", [
    ({"version": "2.0", "layers": []}, "version '2.0'"),
    ({"layers": []}, "version None"),
    ({"version": 1.0, "layers": []}, "version 1.0"),
    ({"version": "1.0"}, "layers must be a non-empty list"),
    ({"version": "1.0", "layers": "x"}, "layers must be a non-empty list"),
    ({"version": "1.0", "layers": ["x"]}, "layer 0 is not an object"),
    ({"version": "1.0", "origin": 5, "layers": []}, "origin must be a string"),
    ({"version": "1.0", "layers": [{"digest": "abc", "url": "cvmfs://r.org/x"}]},
     "'abc' is not a sha256 digest"),
    ({"version": "1.0", "layers": [{"url": "cvmfs://r.org/x"}]}, "None is not a sha256"),
    ({"version": "1.0", "layers": [{"digest": "AB" * 32, "url": "cvmfs://r.org/x"}]},
     "is not a sha256"),
])
def test_malformed_refused(doc: dict, needle: str) -> None:
    with pytest.raises(ContainerError) as e:
        parse_thin(json.dumps(doc).encode(), "img/thin.json")
    assert str(e.value).startswith("img/thin.json: ")
    assert needle in str(e.value)


def test_not_json_and_huge_refused() -> None:
    with pytest.raises(ContainerError, match=r"thin\.json: not valid JSON"):
        parse_thin(b"{nope")
    with pytest.raises(ContainerError, match=r"thin\.json: not a JSON object"):
        parse_thin(b"[]")
    with pytest.raises(ContainerError, match="larger than"):
        parse_thin(b" " * (MAX_DOCUMENT + 1))
    with pytest.raises(ContainerError, match="not a sha256 digest"):
        thin_descriptor(ORIGIN, [("sha256:beef", layer_url("r.org", DIGESTS[0]))])
