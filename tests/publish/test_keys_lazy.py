"""The master key file is read when it is first needed (signing a whitelist), not by every
publish: a publish works without it, and a damaged one is reported where it is used."""

from __future__ import annotations

import pytest

from pycvmfs.errors import ConfigError
from pycvmfs.publish.repository import Publisher


def test_a_publish_never_reads_the_master_key(publisher):
    path = publisher.config.key_path("masterkey")
    kept = path.read_bytes()
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    try:
        pub = Publisher.open(publisher.fqrn, config_dir=publisher.config.config_dir)
        with pub.transaction() as txn:
            txn.add_file("/f", b"published without the master key\n")
        assert pub.head().revision == txn.summary.revision
        with pytest.raises(ConfigError, match="cannot parse the private key"):
            pub.keys.master  # noqa: B018 (the property reads the file)
    finally:
        path.write_bytes(kept)
    pub = Publisher.open(publisher.fqrn, config_dir=publisher.config.config_dir)
    assert pub.keys.master is not None
    assert pub.keys.master.public_key().public_numbers() == \
        publisher.keys.master.public_key().public_numbers()


def test_a_master_key_kept_offline_is_none(publisher):
    path = publisher.config.key_path("masterkey")
    kept = path.read_bytes()
    path.unlink()
    try:
        pub = Publisher.open(publisher.fqrn, config_dir=publisher.config.config_dir)
        assert pub.keys.master is None
        with pytest.raises(ConfigError, match="is not here"):
            pub.keys.require_master(pub.config.keys_dir, pub.fqrn)
    finally:
        path.write_bytes(kept)
