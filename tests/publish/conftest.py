"""Fixtures for publisher tests: a fresh repository in a temporary config/storage pair."""

from __future__ import annotations

import pytest

from pycvmfs.format.chunking import ChunkingParams
from pycvmfs.publish.config import ServerSettings
from pycvmfs.publish.repository import Publisher

from helpers.publishing import new_repository

FQRN = "test.example.org"
SMALL_CHUNKS = ChunkingParams(65536, 131072, 262144)  # the golden fixture's sizes


@pytest.fixture
def make_publisher(tmp_path):
    """Factory: ``make_publisher(**settings)`` creates a repository with those settings."""
    made = []

    def make(fqrn: str = FQRN, **overrides) -> Publisher:
        settings = ServerSettings()
        settings.chunking = SMALL_CHUNKS
        settings.override(**overrides)
        pub = new_repository(tmp_path / f"repo{len(made)}", fqrn, settings)
        made.append(pub)
        return pub

    return make


@pytest.fixture
def publisher(make_publisher) -> Publisher:
    return make_publisher()

