"""Images from a registry (Distribution API v2): manifests, configs and blobs verified, cached."""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Sequence
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

import urllib3

from pycvmfs.containers.blobcache import BlobCache, Partial
from pycvmfs.containers.credentials import Credentials
from pycvmfs.containers.manifest import MAX_DOCUMENT, check_blob, resolve_images
from pycvmfs.containers.mediatypes import ACCEPT_MANIFESTS
from pycvmfs.containers.model import (
    Descriptor,
    Image,
    Platform,
    check_digest,
    parse_json,
    sha256_digest,
)
from pycvmfs.containers.reference import TAG_PATTERN, ImageRef
from pycvmfs.containers.registry_http import RegistryHttp, finish, shown_url
from pycvmfs.errors import ContainerError, RegistryError

__all__ = ["RegistrySource"]

_LINK_NEXT = re.compile(r'<([^>]*)>\s*;\s*(?:[^,]*;\s*)?rel="?next"?')
_MAX_PAGES = 10_000


class _Dropped(Exception):
    """The blob's body ended before the bytes its response announced."""


class _BodyReader:
    """``read(n)`` over a response body that must deliver ``expected`` bytes; an early end
    raises :class:`_Dropped` (the cache keeps the part for resuming)."""

    def __init__(self, resp: urllib3.BaseHTTPResponse, expected: int) -> None:
        self.resp = resp
        self.left = expected

    def read(self, n: int) -> bytes:
        if self.left <= 0:
            return b""
        data = self.resp.read(min(n, self.left), decode_content=False)
        if not data:
            raise _Dropped(f"the connection ended {self.left} bytes short")
        self.left -= len(data)
        return data


class RegistrySource:
    """The image ``ref`` names on its registry, an :class:`~pycvmfs.containers.model.ImageSource`.

    Manifests are fetched with an ``Accept`` list of the OCI and Docker schema 2 types and
    checked against ``Docker-Content-Digest`` and the pinned digest; configs, manifests by
    digest and layers go through ``cache`` (verified on the way in; a blob already there is
    not downloaded again; a dropped download resumes with ``Range``).
    """

    def __init__(self, ref: ImageRef, *, cache: BlobCache, credentials: Credentials | None = None,
                 insecure: bool = False, retries: int = 6, timeout: float = 30.0,
                 backoff: tuple[float, float] = (0.5, 30.0), page_size: int = 1000,
                 http: RegistryHttp | None = None) -> None:
        self.ref = ref
        self.cache = cache
        self.description = ref.url()
        self.repository = ref.api_repository()
        if http is not None and http.host != ref.api_host():
            raise ContainerError(f"{self.description}: cannot share the connection to "
                                 f"{http.host}")
        self.http = http or RegistryHttp(ref.api_host(), credentials=credentials,
                                         insecure=insecure, retries=retries, timeout=timeout,
                                         backoff=backoff)
        self.page_size = page_size
        self._scope = f"repository:{self.repository}:pull"
        self._api = f"{self.http.base}/v2/{self.repository}"
        self._manifest_digests: set[str] = set()

    def __repr__(self) -> str:
        return f"RegistrySource({self.description!r})"

    def sibling(self, ref: ImageRef) -> RegistrySource:
        """A source for another reference on the same registry (a tag :meth:`expand` gave)
        sharing this one's cache, connection pool, credentials and tokens."""
        return RegistrySource(ref, cache=self.cache, page_size=self.page_size, http=self.http)

    def __enter__(self) -> RegistrySource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- manifests and configs ------------------------------------------------------------

    def images(self, platforms: Sequence[Platform]) -> list[Image]:
        """The image for each wanted platform (an index is followed; a platform it lacks is
        an error listing those it has), manifests and configs verified by digest."""
        ref = self.ref
        if ref.is_glob:
            raise ContainerError(f"{self.description}: a tag glob names no single image; "
                                 "expand it first")
        what = f"{self.description} manifest"
        body, digest, hint = self._top_manifest(what)
        self._note_children(body)
        return resolve_images(source=self.description, name=ref.public_name(), top=body,
                              top_digest=digest, top_hint=hint, fetch=self._fetch_document,
                              wanted=platforms, what=what)

    def _top_manifest(self, what: str) -> tuple[bytes, str, str | None]:
        """The manifest (or index) the reference names, its digest and Content-Type. A tag is
        first asked with HEAD: when the cache holds the digest it names (or a pinned digest),
        the manifest is not downloaded again (a HEAD is no pull for Docker Hub's limits)."""
        ref = self.ref
        url = f"{self._api}/manifests/{ref.digest or ref.tag}"
        accept = {"Accept": ACCEPT_MANIFESTS}
        digest, hint = ref.digest, None
        if digest is None:
            resp = self.http.get(url, scope=self._scope, what=what, headers=accept,
                                 method="HEAD")
            finish(resp)
            if resp.status == 404:
                raise self._no_such_image(url)
            served = resp.headers.get("Docker-Content-Digest", "").strip()
            if resp.status == 200 and re.fullmatch(r"sha256:[0-9a-f]{64}", served):
                digest, hint = served, resp.headers.get("Content-Type")
        if digest is not None and self.cache.path_for(digest) is not None:
            return self._cached_document(digest, what), digest, hint
        status, headers, body = self.http.get_document(url, scope=self._scope, what=what,
                                                       limit=MAX_DOCUMENT, headers=accept)
        if status == 404:
            raise self._no_such_image(url)
        if status != 200:
            raise _unexpected(what, url, status, body)
        served = headers.get("Docker-Content-Digest", "").strip()
        if served.startswith("sha256:"):
            check_blob(body, check_digest(served, f"{what}: Docker-Content-Digest"),
                       f"{what} (against its Docker-Content-Digest)")
        digest = ref.digest or (served if served.startswith("sha256:") else sha256_digest(body))
        check_blob(body, digest, what)
        self.cache.put_stream(digest, len(body), io.BytesIO(body).read, what)
        return body, digest, headers.get("Content-Type")

    def _no_such_image(self, url: str) -> ContainerError:
        return ContainerError(f"{self.description}: no such image/tag (the registry answered "
                              f"404 for {shown_url(url)})")

    def _cached_document(self, digest: str, what: str) -> bytes:
        with self.cache.open(digest) as f:
            body = f.read(MAX_DOCUMENT + 1)
        if len(body) > MAX_DOCUMENT:
            raise ContainerError(f"{what}: more than the {MAX_DOCUMENT} bytes allowed")
        return body

    def _note_children(self, body: bytes) -> None:
        """Remember the manifests an index lists: they are fetched from ``/manifests/``,
        every other document by digest (a config) from ``/blobs/``."""
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return
        entries = doc.get("manifests") if isinstance(doc, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
                self._manifest_digests.add(entry["digest"])

    def _fetch_document(self, digest: str, what: str) -> tuple[bytes, str | None]:
        """A manifest or config by digest, from the cache or the registry (then cached)."""
        hint = None
        if self.cache.path_for(digest) is not None:
            body = self._cached_document(digest, what)
        else:
            manifest = digest in self._manifest_digests
            url = f"{self._api}/{'manifests' if manifest else 'blobs'}/{digest}"
            status, headers, body = self.http.get_document(
                url, scope=self._scope, what=what, limit=MAX_DOCUMENT,
                headers={"Accept": ACCEPT_MANIFESTS} if manifest else None)
            if status == 404:
                raise ContainerError(f"{what}: not in the registry (404 for {shown_url(url)})")
            if status != 200:
                raise _unexpected(what, url, status, body)
            hint = headers.get("Content-Type") if manifest else None
            self.cache.put_stream(digest, len(body), io.BytesIO(body).read, what)
        self._note_children(body)
        return body, hint

    # -- blobs ----------------------------------------------------------------------------

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        """The blob as stored, from the cache (downloaded and verified first if needed)."""
        if self.cache.path_for(desc.digest) is None:
            self._download(desc)
        return self.cache.open(desc.digest, desc.size)

    def _download(self, desc: Descriptor) -> None:
        """Stream the blob into the cache, resuming with ``Range`` after a dropped
        connection; retries (429, 5xx, broken connections) share one budget."""
        url = f"{self._api}/blobs/{desc.digest}"
        what = f"{self.description} blob {desc.digest}"
        budget = self.http.retry_budget()
        while True:
            claim = self.cache.partial(desc.digest)
            if claim is not None and not 0 < claim.offset < desc.size:
                claim = _discard(claim)
            headers = {"Range": f"bytes={claim.offset}-"} if claim else None
            try:
                resp = self.http.get(url, scope=self._scope, what=what, headers=headers,
                                     budget=budget)
            except BaseException:
                if claim is not None:
                    self._give_back(desc, claim, what)
                raise
            try:
                claim, expected = _check_blob_response(resp, desc, claim, what, url)
                self.cache.put_stream(desc.digest, desc.size, _BodyReader(resp, expected).read,
                                      what, resume=claim)
                return
            except (urllib3.exceptions.HTTPError, _Dropped) as e:
                budget.failed(url, what, f"download broken off ({e})")
            except ContainerError:
                if claim is not None:
                    _discard(claim)
                raise
            finally:
                finish(resp)

    def _give_back(self, desc: Descriptor, claim: Partial, what: str) -> None:
        """Return a claimed partial download to the cache for a later run: ``put_stream``
        keeps what a stream that fails had (here, nothing more than the claim)."""

        def refuse(_n: int) -> bytes:
            raise _Dropped("not resumed now")

        with contextlib.suppress(_Dropped, ContainerError):
            self.cache.put_stream(desc.digest, desc.size, refuse, what, resume=claim)

    # -- tags -----------------------------------------------------------------------------

    def list_tags(self) -> list[str]:
        """Every tag of the repository, following ``Link: <...>; rel="next"`` pages of
        ``page_size``; a repository the registry does not know is an error."""
        url: str | None = f"{self._api}/tags/list?n={self.page_size}"
        what = f"{self.ref.registry}/{self.ref.repository}: tag list"
        tags: list[str] = []
        seen: set[str] = set()
        while url is not None:
            if url in seen or len(seen) >= _MAX_PAGES:
                raise RegistryError(f"{what}: the pages of {shown_url(url)} do not end")
            seen.add(url)
            status, headers, body = self.http.get_document(url, scope=self._scope, what=what,
                                                           limit=MAX_DOCUMENT)
            if status == 404:
                raise ContainerError(f"{what}: no such repository (404 for "
                                     f"{shown_url(url)})")
            if status != 200:
                raise _unexpected(what, url, status, body)
            page = parse_json(body, what).get("tags") or []
            if not isinstance(page, list) or not all(isinstance(t, str) for t in page):
                raise ContainerError(f"{what}: 'tags' is not a list of strings")
            tags.extend(page)
            url = self._next_page(headers.get("Link"), url, what)
        return tags

    def _next_page(self, link: str | None, url: str, what: str) -> str | None:
        m = _LINK_NEXT.search(link or "")
        if m is None:
            return None
        target = urljoin(url, m.group(1))
        if urlsplit(target).netloc != urlsplit(url).netloc:
            raise RegistryError(f"{what}: the next page {shown_url(target)} is on another "
                                "host; refused")
        return target

    def expand(self) -> list[ImageRef]:
        """The concrete references of this source's reference: itself, or for a tag glob
        every listed tag that matches it (sorted; empty when none does)."""
        if not self.ref.is_glob:
            return [self.ref]
        return [self.ref.with_tag(t) for t in sorted(set(self.list_tags()))
                if self.ref.matches(t) and TAG_PATTERN.fullmatch(t)]


def _discard(claim: Partial) -> None:
    claim.path.unlink(missing_ok=True)


def _check_blob_response(resp: urllib3.BaseHTTPResponse, desc: Descriptor,
                         claim: Partial | None, what: str, url: str
                         ) -> tuple[Partial | None, int]:
    """The claim still usable and the number of bytes the body must bring: a 200 restarts
    (the claim goes), a 206 must continue exactly where the claim ends."""
    if resp.status == 404:
        foreign = " (a foreign layer: its urls are not fetched)" if desc.urls else ""
        raise ContainerError(f"{what}: not in the registry (404 for {shown_url(url)})"
                             + foreign)
    if resp.status == 206 and claim is not None:
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if m is None or int(m.group(1)) != claim.offset or int(m.group(2)) != desc.size - 1:
            raise ContainerError(f"{what}: {shown_url(url)} answered the range from "
                                 f"{claim.offset} with {resp.headers.get('Content-Range')!r}")
        start = claim.offset
    elif resp.status == 200:
        if claim is not None:
            claim = _discard(claim)
        start = 0
    else:
        raise _unexpected(what, url, resp.status, b"")
    expected = desc.size - start
    length = resp.headers.get("Content-Length")
    if length is not None and (not length.isdigit() or int(length) != expected):
        raise ContainerError(f"{what}: {shown_url(url)} serves {length} bytes from offset "
                             f"{start}, the descriptor says {desc.size} in all")
    return claim, expected


def _unexpected(what: str, url: str, status: int, body: bytes) -> RegistryError:
    """A RegistryError for an answer we cannot use, with the registry's error code if any."""
    code = ""
    try:
        errors = json.loads(body).get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            code = f" ({str(errors[0].get('code'))[:40]}: {str(errors[0].get('message'))[:120]})"
    except (ValueError, UnicodeDecodeError, AttributeError):
        pass
    return RegistryError(f"{what}: {shown_url(url)} answered HTTP {status}{code}")
