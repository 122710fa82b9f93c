"""Image references as wish lists and the command line spell them (DUCC's and docker's forms)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from pycvmfs.containers.model import check_digest
from pycvmfs.errors import ContainerError

__all__ = ["DOCKER_HUB", "DOCKER_HUB_API", "DOCKER_HUB_HOSTS", "TAG_PATTERN", "ImageRef",
           "parse_reference"]

DOCKER_HUB = "docker.io"  # the registry a reference without a host means (docker's rule)
DOCKER_HUB_API = "registry-1.docker.io"  # where Docker Hub's Distribution API answers
DOCKER_HUB_HOSTS = frozenset({DOCKER_HUB, "registry.hub.docker.com", "index.docker.io",
                              DOCKER_HUB_API})
SCHEMES = ("https", "http", "docker")

_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])"
                   r"(?::(\d{1,5}))?")
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
TAG_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # a concrete tag
_TAG_GLOB = re.compile(r"[A-Za-z0-9_*][A-Za-z0-9_.*-]{0,127}")
_PLACEHOLDER = re.compile(r"\$\(([a-z]*)\)")


@dataclass(frozen=True)
class ImageRef:
    """``scheme://registry/repository[:tag][@digest]``; ``registry`` is spelled as written
    (``host[:port]``), ``tag`` may hold ``*`` globs when the reference came from a wish list."""

    scheme: str
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def is_glob(self) -> bool:
        return self.tag is not None and "*" in self.tag

    def matches(self, tag: str) -> bool:
        """Whether ``tag`` is this reference's tag, or matches its glob (``*`` is any run of
        characters, the whole tag must match; other characters match only themselves)."""
        if self.tag is None:
            return False
        if not self.is_glob:
            return tag == self.tag
        pattern = ".*".join(re.escape(part) for part in self.tag.split("*"))
        return re.fullmatch(pattern, tag) is not None

    def with_tag(self, tag: str) -> ImageRef:
        """This reference for one concrete tag (a glob expanded against a tag list)."""
        if not TAG_PATTERN.fullmatch(tag):
            raise ContainerError(f"{self.url()}: {tag!r} is not a valid tag")
        return replace(self, tag=tag)

    def _require_concrete(self) -> None:
        if self.is_glob:
            raise ContainerError(f"{self.url()}: the tag glob must be expanded to tags first")

    def public_name(self) -> str:
        """The path the image is published at: ``registry/repository:tag``, or
        ``registry/repository@sha256:<hex>`` for a reference with only a digest."""
        self._require_concrete()
        if self.tag is not None:
            return f"{self.registry}/{self.repository}:{self.tag}"
        return f"{self.registry}/{self.repository}@{self.digest}"

    def api_host(self) -> str:
        """The host[:port] to send Distribution API requests to (Docker Hub's names all go to
        ``registry-1.docker.io``; the published name keeps the registry as written)."""
        return DOCKER_HUB_API if self.is_docker_hub() else self.registry

    def api_repository(self) -> str:
        """The repository name in API paths: Docker Hub's official images live under
        ``library/`` even when a wish list writes ``registry.hub.docker.com/centos``."""
        if self.is_docker_hub() and "/" not in self.repository:
            return "library/" + self.repository
        return self.repository

    def is_docker_hub(self) -> bool:
        return self.registry.lower() in DOCKER_HUB_HOSTS

    def reference(self) -> str:
        """``:tag``, ``@digest`` or ``:tag@digest`` (DUCC's ``$(reference)``)."""
        return (f":{self.tag}" if self.tag is not None else "") + (
            f"@{self.digest}" if self.digest is not None else "")

    def url(self) -> str:
        """The full spelling ``scheme://registry/repository[:tag][@digest]``."""
        return f"{self.scheme}://{self.registry}/{self.repository}{self.reference()}"

    def __str__(self) -> str:
        return self.url()

    def expand(self, template: str) -> str:
        """DUCC's ``output_format`` placeholders filled in: ``$(scheme)``, ``$(registry)``,
        ``$(repository)``, ``$(tag)``, ``$(digest)``, ``$(reference)``, ``$(image)`` (=
        repository + reference). An unknown placeholder is an error naming it."""
        values = {"scheme": self.scheme, "registry": self.registry,
                  "repository": self.repository, "tag": self.tag or "",
                  "digest": self.digest or "", "reference": self.reference(),
                  "image": self.repository + self.reference()}

        def fill(m: re.Match) -> str:
            if m.group(1) not in values:
                raise ContainerError(f"output format {template!r}: unknown placeholder "
                                     f"{m.group(0)} (known: "
                                     + ", ".join(f"$({k})" for k in values) + ")")
            return values[m.group(1)]

        return _PLACEHOLDER.sub(fill, template)


def _is_host(component: str) -> bool:
    """Docker's rule: a first path component naming a registry has a ``.`` or ``:`` or is
    ``localhost``; anything else is a Docker Hub repository."""
    return "." in component or ":" in component or component == "localhost"


def parse_reference(text: str, *, allow_glob: bool = False) -> ImageRef:
    """Parse ``docker://HOST[:PORT]/REPO[:TAG|@DIGEST]``, ``https://HOST/REPO:TAG`` (DUCC),
    ``http://...``, ``HOST/REPO:TAG`` (https) or docker's ``REPO[:TAG]`` (Docker Hub,
    ``docker.io/library/REPO`` for a one-component repository; also after ``docker://``, as
    skopeo reads ``docker://alpine``). A first component is a host when it has a ``.`` or
    ``:`` or is ``localhost``, and always after ``https://``/``http://``. Without tag or
    digest the tag is ``latest``. ``allow_glob`` admits ``*`` in the tag (wish lists)."""
    if not isinstance(text, str):
        raise ContainerError(f"image reference {text!r} is not a string")

    def bad(why: str) -> ContainerError:
        return ContainerError(f"image reference {text!r}: {why}")

    rest = text.strip()
    if not rest:
        raise bad("empty")
    scheme = "https"
    explicit_scheme = "://" in rest
    if explicit_scheme:
        scheme, rest = rest.split("://", 1)
        if scheme not in SCHEMES:
            raise bad(f"scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
    if rest.count("@") > 1:
        raise bad("more than one '@'")
    name, _, digest_text = rest.partition("@")
    digest = None
    if "@" in rest:
        try:
            digest = check_digest(digest_text, "digest")
        except ContainerError:
            raise bad(f"{digest_text!r} after '@' is not sha256:<64 lower-case hex>") from None
    parts = name.split("/")
    # an http(s) URL always starts with the host; docker:// follows docker's rule
    url_host = explicit_scheme and scheme != "docker"
    if url_host or (len(parts) > 1 and _is_host(parts[0])):
        registry, parts = parts[0], parts[1:]
        m = _HOST.fullmatch(registry)
        if not m or (m.group(1) and not 0 < int(m.group(1)) < 65536):
            raise bad(f"{registry!r} is not a registry host[:port]")
        if not parts:
            raise bad("no repository after the registry")
    else:
        registry = DOCKER_HUB
        if len(parts) == 1:
            parts = ["library", *parts]
    tag = None
    if ":" in parts[-1]:
        parts[-1], tag = parts[-1].split(":", 1)
        if not (_TAG_GLOB if allow_glob else TAG_PATTERN).fullmatch(tag):
            raise bad(f"tag {tag!r} is not [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
                      + (" (with * globs)" if allow_glob else "")
                      + ("; a glob is not allowed here" if "*" in tag and not allow_glob
                         else ""))
        if "*" in tag and digest:
            raise bad("a tag glob cannot be pinned to a digest")
    for part in parts:
        if not part:
            raise bad("empty repository path component")
        if not _COMPONENT.fullmatch(part):
            why = "must be lower case" if part.lower() != part else "has invalid characters"
            raise bad(f"repository component {part!r} {why}")
    repository = "/".join(parts)
    if len(repository) > 255:
        raise bad("repository name longer than 255 characters")
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(scheme, registry, repository, tag, digest)
