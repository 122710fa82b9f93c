"""A root file system directory (e.g. made by ``mmdebstrap``, the CernVM base) as an image
source: scanned inside the transaction, published as a single-layer image with a flat tree."""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Sequence
from typing import BinaryIO

from pycvmfs.containers.layer import LayerChanges
from pycvmfs.containers.manifest import parse_config
from pycvmfs.containers.model import Descriptor, Image, Platform, sha256_digest
from pycvmfs.containers.rootfs import DEFAULT_PATH, scan_rootfs, synthesize_image
from pycvmfs.errors import ContainerError

__all__ = ["RootfsSource"]


class RootfsSource:
    """``DIR`` published as the image ``name``. Nothing is known before :meth:`prepare` scans
    the directory (its contents go straight to the transaction's ingester); the image config is
    then made from the scan, with ``created`` the newest mtime in the tree, so the same tree
    gives the same config digest (one flat) however often it is imported."""

    def __init__(self, directory: str | os.PathLike, name: str, *,
                 platform: Platform | None = None, runtime: dict | None = None) -> None:
        self.directory = os.fspath(directory)
        if not os.path.isdir(self.directory):
            raise ContainerError(f"{self.directory}: not a directory")
        self.name = name
        self.platform = platform
        self.runtime = runtime if runtime is not None else {"Env": [DEFAULT_PATH]}
        self.description = f"rootfs:{self.directory}"
        self._changes: LayerChanges | None = None

    def images(self, platforms: Sequence[Platform]) -> list[Image]:
        raise ContainerError(f"{self.description}: a directory is scanned in the transaction "
                             "(use prepare)")

    def prepare(self, sink, *, keep_xattrs: bool) -> Image:
        """Scan the directory into ``sink`` and make the image it becomes."""
        ch = scan_rootfs(self.directory, sink, keep_xattrs=keep_xattrs)
        newest = max([e.mtime for e in ch.entries] + [ch.root.mtime if ch.root else 0])
        created = _dt.datetime.fromtimestamp(newest, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        config, manifest = synthesize_image(ch, self.name, created, platform=self.platform,
                                            runtime=self.runtime)
        self._changes = ch
        doc, diff_ids, plat = parse_config(config, self.description)
        m = json.loads(manifest)
        return Image(source=self.description, name=self.name,
                     manifest_digest=sha256_digest(manifest),
                     manifest_media_type=m["mediaType"], manifest_bytes=manifest,
                     config=Descriptor.from_json(m["config"], self.description),
                     config_bytes=config,
                     layers=[Descriptor.from_json(m["layers"][0], self.description)],
                     diff_ids=diff_ids, platform=plat, config_json=doc)

    def layer_changes(self, desc: Descriptor) -> LayerChanges:
        if self._changes is None or desc.digest != self._changes.compressed_digest:
            raise ContainerError(f"{self.description}: layer {desc.digest} was not scanned")
        return self._changes

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        raise ContainerError(f"{self.description}: a scanned directory has no layer blob")
