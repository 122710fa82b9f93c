"""Registry credentials: Docker config.json files, DUCC's and our environment variables, and
that no secret ever shows in a message or a repr."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from pycvmfs.containers.credentials import Credentials, Login, normalise_host
from pycvmfs.errors import ContainerError


def config_file(tmp_path: Path, auths: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": auths}))
    return path


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_docker_config_file(tmp_path: Path) -> None:
    creds = Credentials.from_file(config_file(tmp_path, {
        "https://index.docker.io/v1/": {"auth": b64("hubuser:hub:pass")},
        "registry.example.org:5000": {"username": "alice", "password": "pw1"},
        "http://127.0.0.1:8080": {"auth": b64("bob:pw2")},
        "helper.example.org": {},  # a credential helper entry: nothing to use
    }))
    for hub in ("docker.io", "registry-1.docker.io", "registry.hub.docker.com"):
        assert creds.lookup(hub) == Login("hubuser", "hub:pass")
    assert creds.lookup("registry.example.org:5000") == Login("alice", "pw1")
    assert creds.lookup("registry.example.org") is None  # another port is another registry
    assert creds.lookup("127.0.0.1:8080") == Login("bob", "pw2")
    assert creds.lookup("helper.example.org") is None
    assert creds.lookup("other.example.org") is None


@pytest.mark.parametrize("content,message", [
    ("not json {", "not valid JSON"),
    ('{"credsStore": "secretservice"}', 'no "auths" object'),
    ('{"auths": {"r.example.org": {"auth": "c2VjcmV0LXdpdGhvdXQtY29sb24="}}}',
     "'r.example.org': \"auth\" is not base64 of user:password"),
    ('{"auths": {"r.example.org": {"auth": "!!secret!!"}}}', "is not base64"),
    ('{"auths": {"r.example.org": "secret"}}', "must be an object"),
])
def test_bad_config_file_named_without_secrets(tmp_path: Path, content: str,
                                               message: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(ContainerError, match=message) as e:
        Credentials.from_file(path)
    assert str(path) in str(e.value)
    assert "secret" not in str(e.value) and "c2VjcmV0" not in str(e.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ContainerError, match=r"credentials file .*nope.json: cannot read it"):
        Credentials.from_file(tmp_path / "nope.json")


def test_ducc_environment() -> None:
    creds = Credentials.from_env({
        "DUCC_AUTH_REGISTRIES": "HUB, GITLAB",
        "DUCC_HUB_IDENT": "docker.io", "DUCC_HUB_USER": "u1", "DUCC_HUB_PASS": "p1",
        "DUCC_GITLAB_IDENT": "gitlab-registry.cern.ch", "DUCC_GITLAB_USER": "u2",
        "DUCC_GITLAB_PASS": "p2",
    })
    assert creds.lookup("registry-1.docker.io") == Login("u1", "p1")  # a host substring
    assert creds.lookup("gitlab-registry.cern.ch") == Login("u2", "p2")
    assert creds.lookup("ghcr.io") is None
    hub = Credentials.from_env({"DUCC_AUTH_REGISTRIES": "H", "DUCC_H_USER": "u",
                                "DUCC_H_IDENT": "registry.hub.docker.com", "DUCC_H_PASS": "p"})
    assert hub.lookup("registry-1.docker.io") == Login("u", "p")  # where the API answers
    with pytest.raises(ContainerError, match="DUCC_X_IDENT, DUCC_X_USER and DUCC_X_PASS"):
        Credentials.from_env({"DUCC_AUTH_REGISTRIES": "X", "DUCC_X_USER": "u"})


def test_pycvmfs_environment_and_precedence(tmp_path: Path) -> None:
    anywhere = Credentials.from_env({"PYCVMFS_REGISTRY_USER": "u",
                                     "PYCVMFS_REGISTRY_PASSWORD": "p"})
    assert anywhere.lookup("any.example.org") == Login("u", "p")
    one = Credentials.from_env({"PYCVMFS_REGISTRY_USER": "u", "PYCVMFS_REGISTRY_PASSWORD": "p",
                                "PYCVMFS_REGISTRY_HOST": "r.example.org"})
    assert one.lookup("r.example.org") == Login("u", "p")
    assert one.lookup("other.example.org") is None
    with pytest.raises(ContainerError, match="must be set together"):
        Credentials.from_env({"PYCVMFS_REGISTRY_USER": "u"})
    merged = Credentials.load(config_file(tmp_path, {"r.example.org": {"auth": b64("f:1")}}),
                              {"PYCVMFS_REGISTRY_USER": "e", "PYCVMFS_REGISTRY_PASSWORD": "2"})
    assert merged.lookup("r.example.org") == Login("f", "1")  # the file's exact host first
    assert merged.lookup("s.example.org") == Login("e", "2")
    assert not Credentials.load(None, {})


def test_secrets_not_shown() -> None:
    login = Login("alice", "hunter2")
    creds = Credentials({"r.example.org": login}, [("gitlab", login)], login)
    for text in (repr(login), str(login), repr(creds)):
        assert "hunter2" not in text
    assert "alice" in repr(login)


def test_normalise_host() -> None:
    assert normalise_host("https://Registry.Example.org:5000/v2/") == "registry.example.org:5000"
    assert normalise_host("index.docker.io") == "docker.io"
