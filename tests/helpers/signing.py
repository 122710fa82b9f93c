"""Helpers for the key, whitelist and recovery tests: repository states that no client accepts."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pycvmfs.format.certificate import create_certificate
from pycvmfs.format.manifest import sign_manifest
from pycvmfs.format.whitelist import create_whitelist
from pycvmfs.publish.repository import Publisher
from pycvmfs.publish.signing import MANIFEST, WHITELIST, switch_manifest


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file's bytes (and every directory, as an empty value) below ``roots``."""
    out: dict[str, bytes] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames:
                out[os.path.join(dirpath, name) + "/"] = b""
            for name in filenames:
                p = Path(dirpath) / name
                out[str(p)] = p.read_bytes()
    return out


def repository_files(pub: Publisher) -> dict[str, bytes]:
    """The storage and the configuration directory of a publisher, file by file."""
    return snapshot(pub.config.storage, pub.config.config_dir)


def pycvmfs(*args: str | os.PathLike, stdin: str | None = None,
            honour_modes: bool = False) -> subprocess.CompletedProcess:
    """The installed command line, as a user runs it; ``honour_modes``: as root without the
    capabilities that bypass file modes (util-linux's setpriv, Debian essential)."""
    argv = [str(Path(sys.executable).with_name("pycvmfs")), *map(str, args)]
    if honour_modes and os.geteuid() == 0:
        argv = [shutil.which("setpriv") or "/usr/bin/setpriv",
                "--bounding-set", "-dac_override,-dac_read_search", "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, input=stdin, timeout=120,
                          check=False)


def replace_key_file(path: Path, data: bytes, mode: int = 0o400) -> None:
    os.chmod(path, 0o600)
    path.write_bytes(data)
    os.chmod(path, mode)


def sign_head_with(pub: Publisher, other: Publisher) -> None:
    """The bricked state: the head re-signed with another repository's key (its certificate
    object still ours), as a publish with a mismatched key file used to leave it."""
    head = pub.head()
    later = dataclasses.replace(head, publish_timestamp=(head.publish_timestamp or 0) + 1)
    pub.store.put_bytes(MANIFEST, sign_manifest(later, other.keys.repo_key))


def expire_certificate(pub: Publisher) -> None:
    """Give the repository a certificate that expired yesterday, with a whitelist naming it
    and the head signed with it: a consistent repository a client still reads."""
    past = datetime.now(UTC) - timedelta(days=3)
    cert = create_certificate(pub.fqrn, pub.keys.repo_key, days=2, now=past)
    replace_key_file(pub.config.key_path("crt"), cert.pem, 0o444)
    pub.keys.certificate = cert
    pub.store.put_bytes(WHITELIST, create_whitelist(pub.fqrn, cert, pub.keys.master))
    head = pub.head()
    switch_manifest(pub.store, pub.config, pub.keys, head, previous=head)
