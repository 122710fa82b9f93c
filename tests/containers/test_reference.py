"""Image references: DUCC's and docker's spellings, Docker Hub, tag globs, output_format."""

from __future__ import annotations

import pytest

from pycvmfs.containers.reference import ImageRef, parse_reference
from pycvmfs.errors import ContainerError

HEX = "ab" * 32


@pytest.mark.parametrize("text, expected", [
    ("docker://127.0.0.1:5000/team/app:1.0",
     ImageRef("docker", "127.0.0.1:5000", "team/app", "1.0", None)),
    ("https://registry.hub.docker.com/library/centos:centos7",
     ImageRef("https", "registry.hub.docker.com", "library/centos", "centos7", None)),
    ("http://localhost:5000/x", ImageRef("http", "localhost:5000", "x", "latest", None)),
    ("gitlab-registry.cern.ch/clange/jetmetanalysis:latest",
     ImageRef("https", "gitlab-registry.cern.ch", "clange/jetmetanalysis", "latest", None)),
    ("localhost/app:v2", ImageRef("https", "localhost", "app", "v2", None)),
    ("ubuntu:22.04", ImageRef("https", "docker.io", "library/ubuntu", "22.04", None)),
    ("ubuntu", ImageRef("https", "docker.io", "library/ubuntu", "latest", None)),
    ("atlas/analysisbase:21.2.1",
     ImageRef("https", "docker.io", "atlas/analysisbase", "21.2.1", None)),
    (f"https://registry.hub.docker.com/minio/minio@sha256:{HEX}",
     ImageRef("https", "registry.hub.docker.com", "minio/minio", None, f"sha256:{HEX}")),
    (f"ghcr.io/org/tool:1.4@sha256:{HEX}",
     ImageRef("https", "ghcr.io", "org/tool", "1.4", f"sha256:{HEX}")),
    ("docker://[::1]:5000/a/b__c-d.e:T_1", ImageRef("docker", "[::1]:5000", "a/b__c-d.e",
                                                   "T_1", None)),
    ("  quay.io/a/b:c  ", ImageRef("https", "quay.io", "a/b", "c", None)),
    ("docker://alpine:3", ImageRef("docker", "docker.io", "library/alpine", "3", None)),
    ("docker://org/app", ImageRef("docker", "docker.io", "org/app", "latest", None)),
    ("docker://localhost/app", ImageRef("docker", "localhost", "app", "latest", None)),
    ("https://myregistry/app:1", ImageRef("https", "myregistry", "app", "1", None)),
])
def test_parse(text: str, expected: ImageRef) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize("text, needle", [
    ("", "empty"),
    ("ftp://host/repo:1", "scheme 'ftp'"),
    (f"host.org/r@sha256:{HEX}@sha256:{HEX}", "more than one '@'"),
    ("host.org/r@sha256:abc", "not sha256"),
    ("host.org/r@md5:" + "a" * 32, "not sha256"),
    ("host.org/Repo:1", "must be lower case"),
    ("host.org//r:1", "empty repository path component"),
    ("host.org/r/:1", "empty repository path component"),
    ("https://host.org", "no repository"),
    ("https://host.org/", "empty repository path component"),
    ("host.org/r:", "tag ''"),
    ("host.org/r:.hidden", "tag '.hidden'"),
    ("host.org/r:" + "a" * 129, "is not"),
    ("host.org/r:1*", "a glob is not allowed here"),
    ("host.org:99999/r:1", "not a registry"),
    ("https://bad_host/r:1", "not a registry"),
    ("host.org/a:b/c", "invalid characters"),
    ("host.org/r:1:2", "tag '1:2'"),
    ("host.org/a..b", "invalid characters"),
    ("host.org/" + "a/" * 130 + "b", "longer than 255"),
])
def test_refused_naming_the_text(text: str, needle: str) -> None:
    with pytest.raises(ContainerError) as e:
        parse_reference(text)
    assert needle in str(e.value)
    if text.strip():
        assert repr(text) in str(e.value)


def test_not_a_string() -> None:
    with pytest.raises(ContainerError, match="not a string"):
        parse_reference(None)  # type: ignore[arg-type]


def test_public_name_keeps_the_registry_as_written() -> None:
    assert parse_reference("https://registry.hub.docker.com/library/centos:centos7") \
        .public_name() == "registry.hub.docker.com/library/centos:centos7"
    assert parse_reference("docker://127.0.0.1:5000/a/b:1").public_name() == \
        "127.0.0.1:5000/a/b:1"
    assert parse_reference("ubuntu:22.04").public_name() == "docker.io/library/ubuntu:22.04"
    assert parse_reference(f"host.org/r@sha256:{HEX}").public_name() == \
        f"host.org/r@sha256:{HEX}"
    # tag and digest: the tag names it (the digest pins what it points at)
    assert parse_reference(f"host.org/r:1@sha256:{HEX}").public_name() == "host.org/r:1"


def test_glob_has_no_public_name_until_expanded() -> None:
    ref = parse_reference("https://registry.hub.docker.com/atlas/analysisbase:21.2.1*",
                          allow_glob=True)
    assert ref.is_glob
    with pytest.raises(ContainerError, match="expanded"):
        ref.public_name()
    assert ref.with_tag("21.2.15").public_name() == \
        "registry.hub.docker.com/atlas/analysisbase:21.2.15"
    with pytest.raises(ContainerError, match="not a valid tag"):
        ref.with_tag("bad tag")


def test_glob_with_digest_refused() -> None:
    with pytest.raises(ContainerError, match="glob cannot be pinned"):
        parse_reference(f"host.org/r:1*@sha256:{HEX}", allow_glob=True)


@pytest.mark.parametrize("pattern, tag, expected", [
    ("21.2.1*", "21.2.1", True), ("21.2.1*", "21.2.15", True), ("21.2.1*", "21.2.2", False),
    ("21.2.1*", "x21.2.1", False), ("*", "anything", True), ("*-slim", "3.12-slim", True),
    ("*-slim", "3.12-slim-x", False), ("1.*.0", "1.22.0", True),
    ("1.2*", "1x2", False),  # '.' is a dot, not a regular expression
    ("v1", "v1", True), ("v1", "v10", False),
])
def test_matches(pattern: str, tag: str, expected: bool) -> None:
    assert parse_reference(f"host.org/r:{pattern}", allow_glob=True).matches(tag) is expected


def test_digest_only_matches_no_tag() -> None:
    assert not parse_reference(f"host.org/r@sha256:{HEX}").matches("latest")


def test_api_host_and_repository_for_docker_hub() -> None:
    for spelling in ("registry.hub.docker.com", "docker.io", "index.docker.io",
                     "registry-1.docker.io"):
        ref = parse_reference(f"https://{spelling}/centos:7")
        assert ref.api_host() == "registry-1.docker.io"
        assert ref.api_repository() == "library/centos"
        assert ref.public_name() == f"{spelling}/centos:7"  # written as spelled
    ref = parse_reference("ghcr.io/org/tool:1")
    assert (ref.api_host(), ref.api_repository()) == ("ghcr.io", "org/tool")
    assert parse_reference("docker.io/atlas/x:1").api_repository() == "atlas/x"


def test_expand_output_format_as_ducc() -> None:
    ref = parse_reference("https://registry.hub.docker.com/library/centos:centos7")
    assert ref.expand("https://gitlab-registry.cern.ch/unpacked/sync/$(image)") == \
        "https://gitlab-registry.cern.ch/unpacked/sync/library/centos:centos7"
    assert ref.expand("$(scheme)://$(registry)/$(repository)_thin:$(tag)") == \
        "https://registry.hub.docker.com/library/centos_thin:centos7"
    pinned = parse_reference(f"docker://h.org/r:t@sha256:{HEX}")
    assert pinned.expand("$(reference)|$(digest)|$(tag)|$(image)") == \
        f":t@sha256:{HEX}|sha256:{HEX}|t|r:t@sha256:{HEX}"
    only_digest = parse_reference(f"h.org/r@sha256:{HEX}")
    assert only_digest.expand("$(image)$(tag)") == f"r@sha256:{HEX}"
    assert ref.expand("no placeholders") == "no placeholders"
    with pytest.raises(ContainerError, match=r"unknown placeholder \$\(user\)"):
        ref.expand("x/$(user)/$(image)")


def test_url_round_trips() -> None:
    for text in ("docker://127.0.0.1:5000/a/b:1", f"https://h.org/r:t@sha256:{HEX}",
                 "http://localhost/x:latest"):
        ref = parse_reference(text)
        assert ref.url() == text == str(ref)
        assert parse_reference(ref.url()) == ref
