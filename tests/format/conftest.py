"""Fixtures for the format tests: RSA keys generated once per session (generation is slow)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from pycvmfs.format.signature import generate_rsa_key


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    """A fresh RSA-2048 key (the repository key in signing tests)."""
    return generate_rsa_key()


@pytest.fixture(scope="session")
def master_key() -> rsa.RSAPrivateKey:
    """A second fresh RSA-2048 key (the master key that signs whitelists)."""
    return generate_rsa_key()


@pytest.fixture(scope="session")
def other_key() -> rsa.RSAPrivateKey:
    """A third key that must never verify what the other two signed."""
    return generate_rsa_key()
