"""Wish lists: DUCC's v1 recipe read exactly, and v2 with platforms, outputs and credentials."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import yaml

from pycvmfs.containers.model import DEFAULT_PLATFORM, Platform
from pycvmfs.containers.reference import TAG_PATTERN, ImageRef, parse_reference
from pycvmfs.errors import ConfigError, ContainerError
from pycvmfs.publish.config import check_fqrn

__all__ = ["DEFAULT_GRACE_DAYS", "DEFAULT_OUTPUTS", "OUTPUTS", "WishItem", "WishList",
           "load_wishlist", "parse_wishlist"]

OUTPUTS = frozenset({"flat", "layers", "podman", "thin"})
DEFAULT_OUTPUTS = frozenset({"flat", "layers", "podman"})
DEFAULT_GRACE_DAYS = 7
MAX_WISHLIST = 4 << 20  # bytes; a wish list is a hand-written file

_V1_KEYS = {"version", "user", "cvmfs_repo", "output_format", "input",
            "ignore_errors"}  # the last: newer DUCC, read and ignored
_V2_KEYS = {"version", "user", "cvmfs_repo", "output_format", "input", "defaults"}
_DEFAULTS_KEYS = {"platforms", "outputs", "grace_days"}
_ITEM_KEYS = {"image", "platforms", "outputs", "credentials"}


@dataclass
class WishItem:
    """One input: a reference (its tag may be a glob), the platforms and outputs wanted."""

    ref: ImageRef
    platforms: list[Platform]
    outputs: frozenset[str]
    credentials: str | None = None  # the name of a credentials entry, never a secret

    def expand(self, tags: Iterable[str]) -> list[ImageRef]:
        """The concrete references of this input: itself when its tag is no glob, else one
        per tag of ``tags`` (a registry's tag list) that matches, sorted; names that are no
        valid tag are left out."""
        if not self.ref.is_glob:
            return [self.ref]
        return [self.ref.with_tag(t) for t in sorted(set(tags))
                if isinstance(t, str) and TAG_PATTERN.fullmatch(t) and self.ref.matches(t)]


@dataclass
class WishList:
    repository: str
    user: str = ""
    output_format: str = ""
    items: list[WishItem] = field(default_factory=list)
    grace_days: float = DEFAULT_GRACE_DAYS
    source: str = ""  # the file, for messages

    def covers(self, name: ImageRef | str, tag: str | None = None) -> bool:
        """Whether a pushed image ``registry/repository[:tag]`` (a reference or its text;
        ``tag`` overrides the reference's) is wanted by some input, tag globs included.
        Registries compare case-insensitively, Docker Hub's names as one registry."""
        ref = name if isinstance(name, ImageRef) else parse_reference(name)
        if tag is not None:
            ref = ref.with_tag(tag)
        return any(_same_repository(item.ref, ref) and (
            item.ref.matches(ref.tag) if ref.tag is not None and item.ref.tag is not None
            else ref.digest is not None and item.ref.digest == ref.digest)
            for item in self.items)


def _same_repository(a: ImageRef, b: ImageRef) -> bool:
    if a.is_docker_hub() and b.is_docker_hub():
        return a.api_repository() == b.api_repository()
    return a.registry.lower() == b.registry.lower() and a.repository == b.repository


def load_wishlist(path: str | os.PathLike) -> WishList:
    """Read the wish list file at ``path`` (v1 or v2, detected by ``version``)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_WISHLIST + 1)
    except OSError as e:
        raise ContainerError(f"wish list {os.fspath(path)}: cannot read: {e.strerror}") from None
    if len(data) > MAX_WISHLIST:
        raise ContainerError(f"wish list {os.fspath(path)}: larger than {MAX_WISHLIST} bytes")
    return parse_wishlist(data, os.fspath(path))


def parse_wishlist(data: bytes | str, source: str = "wish list") -> WishList:
    """Parse wish-list YAML; every error (a ContainerError) names ``source`` and the key or
    input at fault."""

    def bad(why: str) -> ContainerError:
        return ContainerError(f"wish list {source}: {why}")

    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as e:
        raise bad(f"not valid YAML ({e})".replace("\n", " ")) from None
    if not isinstance(doc, dict):
        raise bad("not a YAML mapping of version, cvmfs_repo, input, ...")
    version = doc.get("version")
    if version not in (1, 2) or isinstance(version, bool):
        raise bad(f"version {version!r} is not supported (1, as DUCC, or 2)")
    unknown = set(doc) - (_V1_KEYS if version == 1 else _V2_KEYS)
    if unknown:
        raise bad(f"unknown key(s) for version {version}: {', '.join(sorted(map(str, unknown)))}")
    repo = doc.get("cvmfs_repo")
    if not isinstance(repo, str):
        raise bad("cvmfs_repo must name the repository (a string)")
    try:
        check_fqrn(repo)
    except ConfigError as e:
        raise bad(f"cvmfs_repo: {e}") from None
    strings = {k: doc.get(k) or "" for k in ("user", "output_format")}
    for key, value in strings.items():
        if not isinstance(value, str):
            raise bad(f"{key} must be a string")
    wl = WishList(repo, strings["user"], strings["output_format"], source=source)
    platforms, outputs = [DEFAULT_PLATFORM], DEFAULT_OUTPUTS
    if version == 2 and doc.get("defaults") is not None:
        defaults = doc["defaults"]
        if not isinstance(defaults, dict) or set(defaults) - _DEFAULTS_KEYS:
            raise bad("defaults must be a mapping of " + ", ".join(sorted(_DEFAULTS_KEYS)))
        platforms = _platforms(defaults.get("platforms", platforms), bad, "defaults")
        outputs = _outputs(defaults.get("outputs", outputs), bad, "defaults")
        grace = defaults.get("grace_days", DEFAULT_GRACE_DAYS)
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or grace < 0:
            raise bad(f"defaults: grace_days {grace!r} is not a number of days >= 0")
        wl.grace_days = grace
    inputs = doc.get("input")
    if not isinstance(inputs, list) or not inputs:
        raise bad("input must be a non-empty list of images")
    for n, entry in enumerate(inputs, 1):
        wl.items.append(_item(entry, version, platforms, outputs,
                              lambda why, n=n: bad(f"input {n}: {why}")))
    return wl


def _item(entry: object, version: int, platforms: list[Platform], outputs: frozenset[str],
          bad) -> WishItem:
    if isinstance(entry, str):
        return WishItem(_ref(entry, bad), list(platforms), outputs)
    if version == 1 or not isinstance(entry, dict):
        raise bad(f"{entry!r} is not an image reference (a string"
                  + (")" if version == 1 else " or a mapping with image:)"))
    if set(entry) - _ITEM_KEYS or "image" not in entry:
        raise bad("a mapping needs image: and may have " + ", ".join(sorted(_ITEM_KEYS - {"image"}))
                  + f"; got {', '.join(sorted(map(str, entry)))}")
    if not isinstance(entry["image"], str):
        raise bad(f"image {entry['image']!r} is not a string")
    what = entry["image"]
    creds = entry.get("credentials")
    if creds is not None and (not isinstance(creds, str) or not creds):
        raise bad(f"{what}: credentials must name a credentials entry")
    return WishItem(_ref(what, bad),
                    _platforms(entry.get("platforms", platforms), bad, what),
                    _outputs(entry.get("outputs", outputs), bad, what), creds)


def _ref(text: str, bad) -> ImageRef:
    try:
        return parse_reference(text, allow_glob=True)
    except ContainerError as e:
        raise bad(str(e)) from None


def _platforms(value: object, bad, what: str) -> list[Platform]:
    if not isinstance(value, list) or not value:
        raise bad(f"{what}: platforms must be a non-empty list like [linux/amd64]")
    out = []
    for p in value:
        if isinstance(p, Platform):
            out.append(p)
            continue
        try:
            out.append(Platform.parse(p if isinstance(p, str) else repr(p)))
        except ContainerError as e:
            raise bad(f"{what}: {e}") from None
    return sorted(set(out), key=out.index)


def _outputs(value: object, bad, what: str) -> frozenset[str]:
    if isinstance(value, frozenset):
        return value
    if not isinstance(value, list) or not value or not all(isinstance(o, str) for o in value):
        raise bad(f"{what}: outputs must be a non-empty list of {', '.join(sorted(OUTPUTS))}")
    unknown = set(value) - OUTPUTS
    if unknown:
        raise bad(f"{what}: unknown output(s) {', '.join(sorted(unknown))} "
                  f"(known: {', '.join(sorted(OUTPUTS))})")
    return frozenset(value)
