"""Wish lists: DUCC's v1 recipe exactly, v2 with platforms/outputs/credentials, covers()."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycvmfs.containers.model import DEFAULT_PLATFORM, Platform
from pycvmfs.containers.reference import parse_reference
from pycvmfs.containers.wishlist import (
    DEFAULT_GRACE_DAYS,
    DEFAULT_OUTPUTS,
    MAX_WISHLIST,
    load_wishlist,
    parse_wishlist,
)
from pycvmfs.errors import ContainerError

HEX = "cd" * 32
DUCC_V1 = f"""\
version: 1
user: cvmfsunpacker
cvmfs_repo: 'unpacked.cern.ch'
output_format: 'https://gitlab-registry.cern.ch/unpacked/sync/$(image)'
input:
  - 'https://registry.hub.docker.com/library/centos:centos7'
  - 'https://registry.hub.docker.com/atlas/analysisbase:21.2.1*'
  - 'https://gitlab-registry.cern.ch/clange/jetmetanalysis:latest'
  - 'https://registry.hub.docker.com/minio/minio@sha256:{HEX}'
"""

V2 = f"""\
version: 2
cvmfs_repo: unpacked.example.org
defaults: {{platforms: [linux/amd64, linux/arm64/v8], outputs: [flat, layers], grace_days: 3}}
input:
  - https://registry.hub.docker.com/library/python:3.12*
  - image: https://ghcr.io/org/tool:1.4@sha256:{HEX}
    platforms: [linux/arm64]
    outputs: [flat, thin]
    credentials: ghcr
"""


def test_v1_as_ducc(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(DUCC_V1)
    wl = load_wishlist(path)
    assert (wl.repository, wl.user, wl.source) == ("unpacked.cern.ch", "cvmfsunpacker",
                                                   str(path))
    assert wl.output_format == "https://gitlab-registry.cern.ch/unpacked/sync/$(image)"
    assert wl.grace_days == DEFAULT_GRACE_DAYS
    assert [i.ref.url() for i in wl.items] == [
        "https://registry.hub.docker.com/library/centos:centos7",
        "https://registry.hub.docker.com/atlas/analysisbase:21.2.1*",
        "https://gitlab-registry.cern.ch/clange/jetmetanalysis:latest",
        f"https://registry.hub.docker.com/minio/minio@sha256:{HEX}"]
    assert all(i.platforms == [DEFAULT_PLATFORM] and i.outputs == DEFAULT_OUTPUTS
               and i.credentials is None for i in wl.items)
    assert wl.items[1].ref.is_glob
    assert wl.items[0].ref.expand(wl.output_format) == \
        "https://gitlab-registry.cern.ch/unpacked/sync/library/centos:centos7"


def test_v1_minimal_and_ducc_extra_key() -> None:
    wl = parse_wishlist("version: 1\ncvmfs_repo: a.b.c\ninput: [h.org/x:1]\n"
                        "ignore_errors: [something]\n")
    assert (wl.user, wl.output_format, len(wl.items)) == ("", "", 1)


def test_v2() -> None:
    wl = parse_wishlist(V2, "v2.yaml")
    assert wl.repository == "unpacked.example.org"
    assert wl.grace_days == 3
    first, second = wl.items
    assert first.platforms == [Platform("linux", "amd64"), Platform("linux", "arm64", "v8")]
    assert first.outputs == frozenset({"flat", "layers"})
    assert first.ref.is_glob and first.credentials is None
    assert second.platforms == [Platform("linux", "arm64")]
    assert second.outputs == frozenset({"flat", "thin"})
    assert second.credentials == "ghcr"
    assert (second.ref.tag, second.ref.digest) == ("1.4", f"sha256:{HEX}")


@pytest.mark.parametrize("text, needles", [
    ("version: 3\ncvmfs_repo: a.b\ninput: [h.org/x]", ["version 3", "not supported"]),
    ("version: '1'\ncvmfs_repo: a.b\ninput: [h.org/x]", ["version '1'"]),
    ("cvmfs_repo: a.b\ninput: [h.org/x]", ["version None"]),
    ("version: 1\ninput: [h.org/x]", ["cvmfs_repo must name"]),
    ("version: 1\ncvmfs_repo: 'a/../b'\ninput: [h.org/x]", ["cvmfs_repo:", "a/../b"]),
    ("version: 1\ncvmfs_repo: a.b\n", ["input must be a non-empty list"]),
    ("version: 1\ncvmfs_repo: a.b\ninput: []", ["input must be a non-empty list"]),
    ("version: 1\ncvmfs_repo: a.b\ninputs: [h.org/x]", ["unknown key", "inputs"]),
    ("version: 1\ncvmfs_repo: a.b\ndefaults: {}\ninput: [h.org/x]", ["unknown key",
                                                                    "defaults"]),
    ("version: 1\ncvmfs_repo: a.b\nuser: [x]\ninput: [h.org/x]", ["user must be a string"]),
    ("version: 1\ncvmfs_repo: a.b\ninput: [h.org/x, h.org/Bad:1]",
     ["input 2", "'h.org/Bad:1'", "lower case"]),
    ("version: 1\ncvmfs_repo: a.b\ninput: [h.org/x, {image: h.org/y}]",
     ["input 2", "not an image reference"]),
    ("version: 2\ncvmfs_repo: a.b\ninput: [{image: h.org/y, platform: [linux/amd64]}]",
     ["input 1", "platform"]),
    ("version: 2\ncvmfs_repo: a.b\ninput: [{platforms: [linux/amd64]}]",
     ["input 1", "needs image:"]),
    ("version: 2\ncvmfs_repo: a.b\ninput: [{image: h.org/y, platforms: [amd64]}]",
     ["input 1", "h.org/y", "'amd64' is not a platform"]),
    ("version: 2\ncvmfs_repo: a.b\ninput: [{image: h.org/y, outputs: [flat, sif]}]",
     ["input 1", "unknown output(s) sif"]),
    ("version: 2\ncvmfs_repo: a.b\ninput: [{image: h.org/y, credentials: ''}]",
     ["input 1", "credentials must name"]),
    ("version: 2\ncvmfs_repo: a.b\ninput: [{image: 7}]", ["input 1", "image 7"]),
    ("version: 2\ncvmfs_repo: a.b\ndefaults: {grace_days: -1}\ninput: [h.org/x]",
     ["grace_days -1"]),
    ("version: 2\ncvmfs_repo: a.b\ndefaults: {platform: x}\ninput: [h.org/x]",
     ["defaults must be a mapping"]),
    ("version: 2\ncvmfs_repo: a.b\ndefaults: {platforms: []}\ninput: [h.org/x]",
     ["defaults: platforms must be a non-empty list"]),
    ("version: 1\ncvmfs_repo: a.b\ninput: [h.org/x\n", ["not valid YAML"]),
    ("- a\n- b\n", ["not a YAML mapping"]),
    ("version: 1\ncvmfs_repo: a.b\ninput: [!!python/object:os.system x]", ["not valid YAML"]),
])
def test_errors_name_the_file_and_the_place(text: str, needles: list[str]) -> None:
    with pytest.raises(ContainerError) as e:
        parse_wishlist(text, "/etc/wishes/w.yaml")
    message = str(e.value)
    assert message.startswith("wish list /etc/wishes/w.yaml: ")
    for needle in needles:
        assert needle in message


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ContainerError, match=r"wish list .*missing\.yaml: cannot read"):
        load_wishlist(tmp_path / "missing.yaml")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_WISHLIST + 1))
    with pytest.raises(ContainerError, match=r"big\.yaml: larger than"):
        load_wishlist(big)


def test_covers() -> None:
    wl = parse_wishlist(DUCC_V1 + "  - 'docker://127.0.0.1:5000/team/app:*-slim'\n"
                        "  - 'ubuntu:22.04'\n")
    # exact tags, in every Docker Hub spelling, with or without the library/ prefix
    assert wl.covers("registry.hub.docker.com/library/centos:centos7")
    assert wl.covers("docker.io/library/centos:centos7")
    assert wl.covers("index.docker.io/centos:centos7")
    assert wl.covers("registry.hub.docker.com/library/centos", "centos7")
    assert not wl.covers("registry.hub.docker.com/library/centos:centos8")
    assert not wl.covers("quay.io/library/centos:centos7")
    # globs
    assert wl.covers("registry.hub.docker.com/atlas/analysisbase:21.2.150")
    assert not wl.covers("registry.hub.docker.com/atlas/analysisbase:21.3")
    assert wl.covers("127.0.0.1:5000/team/app", "3.12-slim")
    assert wl.covers(parse_reference("docker://127.0.0.1:5000/team/app:x-slim"))
    assert not wl.covers("127.0.0.1:5000/team/app:3.12")
    assert not wl.covers("127.0.0.1:5001/team/app:3-slim")
    # registry host names compare case-insensitively
    assert wl.covers("GitLab-Registry.CERN.ch/clange/jetmetanalysis:latest")
    # a digest pin covers that digest only, not a tag push
    assert wl.covers(f"registry.hub.docker.com/minio/minio@sha256:{HEX}")
    assert not wl.covers("registry.hub.docker.com/minio/minio:latest")
    assert not wl.covers(f"registry.hub.docker.com/minio/minio@sha256:{'00' * 32}")
    # docker's short spelling in the wish list
    assert wl.covers("docker.io/library/ubuntu:22.04")
    assert not wl.covers("docker.io/library/ubuntu:24.04")


def test_expand_against_a_tag_list() -> None:
    wl = parse_wishlist(DUCC_V1)
    tags = ["21.2.1", "21.2.10", "21.3.0", "21.2.1-x", "bad tag", "21.2.1*", "21.2.10"]
    assert [r.tag for r in wl.items[1].expand(tags)] == ["21.2.1", "21.2.1-x", "21.2.10"]
    assert all(r.public_name().startswith("registry.hub.docker.com/atlas/analysisbase:")
               for r in wl.items[1].expand(tags))
    assert wl.items[0].expand(["whatever"]) == [wl.items[0].ref]  # no glob: itself
    assert wl.items[1].expand([]) == []
