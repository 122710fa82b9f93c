"""``open_source``: an image source from how a user spells it (``oci:``, ``docker-archive:``,
a registry reference)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pycvmfs.containers.model import ImageSource
from pycvmfs.errors import ContainerError

if TYPE_CHECKING:
    from pycvmfs.containers.blobcache import BlobCache
    from pycvmfs.containers.credentials import Credentials

__all__ = ["UNSUPPORTED_TRANSPORTS", "open_source"]

#: skopeo transports we do not read; named so that ``dir:/x`` is not taken for a Docker Hub
#: repository called ``dir`` with tag ``/x``
UNSUPPORTED_TRANSPORTS = ("dir", "docker-daemon", "containers-storage", "oci-archive", "sif",
                          "tarball", "ostree", "atomic")


def open_source(text: str, *, cache: BlobCache,
                credentials: Credentials | None = None, insecure: bool = False) -> ImageSource:
    """The source ``text`` names: ``oci:DIR[:TAG]`` (an OCI image layout),
    ``docker-archive:FILE[:NAME]`` (``NAME`` a RepoTag or ``@N``), anything else a registry
    reference (``docker://HOST[:PORT]/REPO[:TAG|@DIGEST]``, ``https://…``, ``http://…`` or a
    bare ``[HOST/]REPO[:TAG]``). ``cache``, ``credentials`` and ``insecure`` matter to
    registries only (local sources read their files in place)."""
    if text.startswith("oci:"):
        from pycvmfs.containers.source_layout import OciLayoutSource
        return OciLayoutSource.from_text(text[len("oci:"):])
    if text.startswith("docker-archive:"):
        from pycvmfs.containers.source_archive import DockerArchiveSource
        return DockerArchiveSource.from_text(text[len("docker-archive:"):])
    transport, sep, _rest = text.partition(":")
    if sep and transport in UNSUPPORTED_TRANSPORTS:
        raise ContainerError(f"{text!r}: the {transport}: transport is not supported (use "
                             "oci:, docker-archive: or a registry reference)")
    from pycvmfs.containers.reference import parse_reference
    from pycvmfs.containers.source_registry import RegistrySource
    return RegistrySource(parse_reference(text), cache=cache, credentials=credentials,
                          insecure=insecure)
