"""Fixtures of the stack tests: a repository to publish into, a node's settings (work
directory, binary cache), and reading the published state back through the verified reader."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from pycvmfs.publish.config import ServerSettings
from pycvmfs.stacks.service import StackSettings

from helpers.publishing import new_repository

FQRN = "stacks.example.org"


@pytest.fixture
def stack_pub(tmp_path):
    return new_repository(tmp_path / "repo", FQRN, ServerSettings())


@pytest.fixture
def node(tmp_path):
    """A build node's settings: its own work directory, a directory binary cache."""
    def make(name: str = "node", cache: str | None = None, **kw) -> StackSettings:
        return StackSettings(work_dir=tmp_path / name, cache=cache or str(tmp_path / "cache"),
                             parallel=2, jobs=2, **kw)
    return make


@contextlib.contextmanager
def head_view(pub, tmp: Path):
    reader = pub.open_reader(tmp)
    view = reader.open_revision()
    try:
        yield view
    finally:
        view.close()
        reader.close()
