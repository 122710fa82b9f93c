"""Re-signing a repository: renew the whitelist, re-sign the manifest, rotate the certificate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pycvmfs.errors import ConfigError, CvmfsError, IntegrityError, PublishError
from pycvmfs.format.manifest import Manifest, parse_signed_manifest
from pycvmfs.format.signature import load_public_keys
from pycvmfs.format.whitelist import create_whitelist, resign_whitelist, verify_whitelist_signature
from pycvmfs.publish.signing import (
    MANIFEST,
    WHITELIST,
    fetch_manifest,
    read_head,
    read_whitelist,
    switch_manifest,
)

if TYPE_CHECKING:
    from pycvmfs.publish.repository import Publisher

__all__ = ["current_manifest", "renew_whitelist", "resign_published", "rotate_certificate"]


def renew_whitelist(pub: Publisher, *, days: int = 30) -> bytes:
    """Stock ``resign``: the old fingerprint line with new dates, signed by the master key
    (without an old whitelist: one for the current certificate)."""
    master = pub.keys.require_master(pub.config.keys_dir, pub.fqrn)
    with pub.lock():
        data = resign_whitelist(read_whitelist(pub.store), pub.keys.certificate, master,
                                days=days, fqrn=pub.fqrn, algorithm=pub.settings.hash_algorithm,
                                what=pub.store.describe(WHITELIST))
        pub.store.put_bytes(WHITELIST, data)
        return data


def current_manifest(pub: Publisher) -> Manifest:
    """The head manifest, also when it is signed by a key that is not the repository's (the
    state ``resign -p`` and a certificate rotation mend). Its name must be this repository's
    and its root catalog must be stored and intact."""
    data = fetch_manifest(pub.store)
    try:
        return read_head(pub.store, pub.keys, pub.fqrn, data)
    except IntegrityError:
        pass  # signed by another key: read it as it is, below
    what = pub.store.describe(MANIFEST)
    head = parse_signed_manifest(data, what=what).manifest
    if head.fqrn != pub.fqrn:
        raise ConfigError(f"{what}: manifest is for {head.fqrn!r}, not {pub.fqrn!r}")
    try:
        pub.catalog_info(head.root_catalog)
    except CvmfsError as e:
        raise PublishError(f"{what}: its root catalog cannot be used ({e}); not re-signing "
                           "it") from None
    return head


def resign_published(pub: Publisher) -> Manifest:
    """Stock ``resign -p``: sign the current manifest again with the repository key (same
    revision and catalogs; new timestamp, certificate object and reflog). Refused, before
    anything is written, unless the key pair, certificate and whitelist are in order."""
    with pub.signing_lock():
        head = pub.begin_change(current_manifest(pub))
        return switch_manifest(pub.store, pub.config, pub.keys, head, previous=head)


def _endorsed_lines(old: bytes | None, pub: Publisher) -> list[bytes]:
    """The fingerprint lines of the old whitelist, when the master key really signed it."""
    if old is None:
        return []
    try:
        listed = verify_whitelist_signature(old, load_public_keys(pub.config.key_path("pub")),
                                            what=pub.store.describe(WHITELIST)).fingerprints
    except CvmfsError:
        return []
    return [fp.fingerprint().encode("ascii") for fp in listed]


def rotate_certificate(pub: Publisher, *, whitelist_days: int = 30,
                       certificate_days: int = 365) -> Manifest:
    """A new repository key and certificate (as ``mkfs`` makes them), then, in this order:
    a whitelist naming the new certificate first and then those the old whitelist named
    (clients holding the old manifest still accept it, also after an interrupted rotation),
    the key files replaced, and the manifest re-signed with the new key (same revision).
    Needs the master key."""
    master = pub.keys.require_master(pub.config.keys_dir, pub.fqrn)
    with pub.lock():
        head = pub.begin_change(current_manifest(pub))
        new_keys = pub.keys.with_new_certificate(pub.fqrn, days=certificate_days)
        also = _endorsed_lines(read_whitelist(pub.store), pub)
        pub.store.put_bytes(WHITELIST, create_whitelist(
            pub.fqrn, new_keys.certificate, master, algorithm=pub.settings.hash_algorithm,
            days=whitelist_days, also=also))
        new_keys.replace_repository_key(pub.config.keys_dir, pub.fqrn)
        pub.keys = new_keys
        return switch_manifest(pub.store, pub.config, new_keys, head, previous=head)
