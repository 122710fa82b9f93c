"""The registry source against a real docker-registry on loopback (images pushed by skopeo),
its htpasswd and token auth, and a fault-injecting proxy for retries, resumes and bad blobs."""

from __future__ import annotations

import base64
import email.utils
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from containers.fault_proxy import Fault, FaultProxy
from containers.ocifixture import ImageSpec, Layer, Layout, Written, base_members
from containers.registry_server import Registry
from containers.token_server import SERVICE, TokenServer
from pycvmfs.containers.blobcache import BlobCache
from pycvmfs.containers.credentials import Credentials, Login
from pycvmfs.containers.model import DEFAULT_PLATFORM, Platform
from pycvmfs.containers.reference import parse_reference
from pycvmfs.containers.source_registry import RegistrySource
from pycvmfs.errors import ContainerError, RegistryError

from helpers.daemons import free_port

USER, PASSWORD = "alice", "correct-horse-battery"
TAGS = ["latest", "v1.0", "v1.1", "v1.10", "v2.0"]


class Pushed:
    """The images the module's registries hold, as the fixture wrote them."""

    def __init__(self, root: Path) -> None:
        self.layout = root / "layout"
        lay = Layout(self.layout)
        big = os.urandom(300_000)  # plain layer: drops and resumes happen mid-body
        self.single = lay.add(ImageSpec([
            Layer(base_members()),
            Layer([{"name": "opt", "type": "dir"}, {"name": "opt/big", "data": big}], "none"),
            Layer([{"name": "opt/z", "data": b"zstd layer\n"}], "zstd"),
        ], entrypoint=["/usr/bin/hello"]), "1.0")
        self.index, self.multi = lay.add_multi([
            ImageSpec([Layer(base_members())]),
            ImageSpec([Layer([*base_members(), {"name": "arm", "data": b"arm64\n"}])],
                      architecture="arm64", variant="v8"),
        ], "multi")

    def blob(self, digest: str) -> bytes:
        return (self.layout / "blobs" / "sha256" / digest[7:]).read_bytes()

    def push_all(self, registry: Registry) -> None:
        registry.push(self.layout, "1.0", "lib/app")
        registry.push(self.layout, "multi", "lib/multi", "1.0")
        for tag in TAGS:
            registry.push(self.layout, "1.0", "lib/tags", tag)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    return Pushed(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, pushed: Pushed) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("registry"))
    try:
        pushed.push_all(reg)
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory,
                   pushed: Pushed) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("basic"), htpasswd={USER: PASSWORD})
    try:
        reg.push(pushed.layout, "1.0", "lib/app")
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    p = FaultProxy(registry.url, page_size=2)
    yield p
    p.stop()


@pytest.fixture
def cache(tmp_path: Path) -> BlobCache:
    return BlobCache(tmp_path / "cache")


def source(host: str, image: str, cache: BlobCache, **kw: object) -> RegistrySource:
    kw.setdefault("backoff", (0.01, 0.05))
    return RegistrySource(parse_reference(f"docker://{host}/{image}", allow_glob=True),
                          cache=cache, insecure=True, **kw)


def cache_files(cache: BlobCache, digest: str) -> list[str]:
    return sorted(p.name for p in cache.dir.iterdir() if p.name.startswith(digest[7:]))


def check_image(src: RegistrySource, pushed: Pushed, written: Written, cache: BlobCache,
                platform: Platform = DEFAULT_PLATFORM) -> None:
    [img] = src.images([platform])
    assert img.manifest_digest == written.manifest_digest
    assert img.config_bytes == written.config
    assert [d.digest for d in img.layers] == written.layer_digests
    assert img.diff_ids == written.diff_ids
    for desc in img.layers:
        with src.open_blob(desc) as f:
            assert f.read() == pushed.blob(desc.digest)
        assert cache.path_for(desc.digest) is not None


# -- pulling ------------------------------------------------------------------------------

def test_single_platform_image(registry: Registry, pushed: Pushed, cache: BlobCache) -> None:
    with source(registry.host, "lib/app:1.0", cache) as src:
        check_image(src, pushed, pushed.single, cache)
        [img] = src.images([DEFAULT_PLATFORM])
        assert img.name == f"{registry.host}/lib/app:1.0"
        assert img.source == f"docker://{registry.host}/lib/app:1.0"
        assert img.runtime_config()["Entrypoint"] == ["/usr/bin/hello"]


def test_digest_reference(registry: Registry, pushed: Pushed, cache: BlobCache) -> None:
    digest = pushed.single.manifest_digest
    with source(registry.host, f"lib/app@{digest}", cache) as src:
        [img] = src.images([DEFAULT_PLATFORM])
        assert img.name == f"{registry.host}/lib/app@{digest}"
        assert img.manifest_digest == digest
    other = "sha256:" + "0" * 64
    with source(registry.host, f"lib/app@{other}", cache) as src, pytest.raises(
            ContainerError, match=f"lib/app@{other}: no such image/tag"):
        src.images([DEFAULT_PLATFORM])


def test_missing_tag_and_repository(registry: Registry, cache: BlobCache) -> None:
    with source(registry.host, "lib/app:nope", cache) as src, pytest.raises(
            ContainerError, match=r"lib/app:nope: no such image/tag"):
        src.images([DEFAULT_PLATFORM])
    with source(registry.host, "lib/none:1", cache) as src, pytest.raises(
            ContainerError, match="lib/none: tag list: no such repository"):
        src.list_tags()


def test_multi_platform_index(registry: Registry, pushed: Pushed, cache: BlobCache) -> None:
    with source(registry.host, "lib/multi:1.0", cache) as src:
        check_image(src, pushed, pushed.multi[1], cache, Platform.parse("linux/arm64"))
        [arm] = src.images([Platform.parse("linux/arm64")])
        assert arm.platform == Platform("linux", "arm64", "v8")
        amd, arm2 = src.images([DEFAULT_PLATFORM, Platform.parse("linux/arm64/v8")])
        assert (amd.manifest_digest, arm2.manifest_digest) == (
            pushed.multi[0].manifest_digest, pushed.multi[1].manifest_digest)
        with pytest.raises(ContainerError, match=r"no image for platform linux/s390x "
                           r"\(the index has: linux/amd64, linux/arm64/v8\)"):
            src.images([Platform.parse("linux/s390x")])


def test_insecure_only_to_loopback(cache: BlobCache) -> None:
    with pytest.raises(ContainerError, match="allowed only to a registry on loopback"):
        source("registry.example.org", "lib/app:1.0", cache)
    for host in ("localhost:5000", "127.0.0.2:5000", "[::1]:5000"):
        source(host, "lib/app:1.0", cache).close()


# -- auth ---------------------------------------------------------------------------------

def test_basic_auth(basic_registry: Registry, pushed: Pushed, cache: BlobCache) -> None:
    right = Credentials({basic_registry.host: Login(USER, PASSWORD)})
    with source(basic_registry.host, "lib/app:1.0", cache, credentials=right) as src:
        check_image(src, pushed, pushed.single, cache)
    ducc = Credentials.from_env({"DUCC_AUTH_REGISTRIES": "LOCAL", "DUCC_LOCAL_USER": USER,
                                 "DUCC_LOCAL_IDENT": basic_registry.host,
                                 "DUCC_LOCAL_PASS": PASSWORD})
    with source(basic_registry.host, "lib/app:1.0", cache, credentials=ducc) as src:
        assert src.list_tags() == ["1.0"]
    wrong = Credentials({basic_registry.host: Login(USER, "guessed-wrong")})
    with source(basic_registry.host, "lib/app:1.0", cache, credentials=wrong) as src, \
            pytest.raises(RegistryError, match=r"access denied .* refused the credentials"
                          ) as e:
        src.images([DEFAULT_PLATFORM])
    assert "guessed-wrong" not in str(e.value)
    with source(basic_registry.host, "lib/app:1.0", cache) as src, pytest.raises(
            RegistryError, match=r"access denied .* no credentials are configured"):
        src.list_tags()


@pytest.mark.parametrize("field", ["token", "access_token"])
def test_bearer_token_flow(tmp_path: Path, pushed: Pushed, cache: BlobCache,
                           field: str) -> None:
    tokens = TokenServer(tmp_path, {USER: PASSWORD}, field=field)
    reg = Registry(tmp_path / "registry", token=tokens)
    try:
        reg.push(pushed.layout, "1.0", "lib/app")
        tokens.requests.clear()
        creds = Credentials({reg.host: Login(USER, PASSWORD)})
        with source(reg.host, "lib/app:1.*", cache, credentials=creds) as src:
            [ref] = src.expand()
            assert ref.tag == "1.0"
            check_image(src.sibling(ref), pushed, pushed.single, cache)
        # one token for the scope, reused for the tag list, manifest, config and layers
        assert tokens.requests == [("repository:lib/app:pull", USER)]
        wrong = Credentials({reg.host: Login(USER, "not-it")})
        with source(reg.host, "lib/app:1.0", cache, credentials=wrong) as src, \
                pytest.raises(RegistryError, match="token service: access denied") as e:
            src.images([DEFAULT_PLATFORM])
        assert "not-it" not in str(e.value)
    finally:
        reg.stop()
        tokens.stop()


def test_bearer_token_refreshed_once(tmp_path: Path, pushed: Pushed, cache: BlobCache) -> None:
    """A token the registry stops taking is replaced once (the proxy answers one request
    with the registry's challenge); when the new token is refused too, access is denied."""
    tokens = TokenServer(tmp_path, {USER: PASSWORD})
    reg = Registry(tmp_path / "registry", token=tokens)
    p = FaultProxy(reg.url)
    try:
        reg.push(pushed.layout, "1.0", "lib/app")
        tokens.requests.clear()
        challenge = {"WWW-Authenticate": f'Bearer realm="{tokens.realm}",service="{SERVICE}",'
                                         'scope="repository:lib/app:pull"'}
        creds = Credentials({p.host: Login(USER, PASSWORD)})
        with source(p.host, "lib/app:1.0", cache, credentials=creds) as src:
            src.images([DEFAULT_PLATFORM])
            assert len(tokens.requests) == 1
            p.add(Fault("/tags/list", "status", status=401, headers=challenge))
            assert src.list_tags() == ["1.0"]
            assert len(tokens.requests) == 2
            tokens.expired = True  # the registry itself refuses the next token
            p.add(Fault("/tags/list", "status", status=401, headers=challenge))
            with pytest.raises(RegistryError, match=r"access denied by http://.*/tags/list: "
                               "the registry refused the credentials"):
                src.list_tags()
            assert len(tokens.requests) == 3
        assert [s.status for s in p.requests("/tags/list")] == [401, 200, 401, 401]
    finally:
        p.stop()
        reg.stop()
        tokens.stop()


def test_redirect_to_storage_drops_authorization(basic_registry: Registry, pushed: Pushed,
                                                 cache: BlobCache) -> None:
    p = FaultProxy(basic_registry.url, storage_auth=basic_header(USER, PASSWORD))
    try:
        layer = pushed.single.layer_digests[1]
        p.add(Fault(layer, "redirect"))
        creds = Credentials({p.host: Login(USER, PASSWORD)})
        with source(p.host, "lib/app:1.0", cache, credentials=creds) as src:
            check_image(src, pushed, pushed.single, cache)
        [to_registry] = [s for s in p.requests(layer) if not s.path.startswith("/storage/")
                         and s.status == 307]
        [to_storage] = p.requests("/storage/")
        assert to_registry.authorization == basic_header(USER, PASSWORD)
        assert to_storage.authorization is None
    finally:
        p.stop()


# -- tags -----------------------------------------------------------------------------------

def test_tag_list_pages(proxy: FaultProxy, cache: BlobCache) -> None:
    with source(proxy.host, "lib/tags:v1.0", cache, page_size=2) as src:
        assert sorted(src.list_tags()) == sorted(TAGS)
    pages = proxy.requests("/tags/list")
    assert len(pages) == 3
    assert "last=" not in pages[0].path and "last=v1.0" in pages[1].path


def test_glob_expansion(proxy: FaultProxy, cache: BlobCache) -> None:
    with source(proxy.host, "lib/tags:v1.*", cache) as src:
        refs = src.expand()
        assert [r.tag for r in refs] == ["v1.0", "v1.1", "v1.10"]
        assert all(r.registry == proxy.host and r.repository == "lib/tags" for r in refs)
        with pytest.raises(ContainerError, match="expand it first"):
            src.images([DEFAULT_PLATFORM])
    with source(proxy.host, "lib/tags:v9*", cache) as src:
        assert src.expand() == []
        with pytest.raises(ContainerError, match="cannot share the connection to 127"):
            src.sibling(parse_reference("docker://other.example.org/lib/tags:v1"))
    with source(proxy.host, "lib/tags:v2.0", cache) as src:
        assert [r.tag for r in src.expand()] == ["v2.0"]


# -- faults -------------------------------------------------------------------------------

@pytest.mark.parametrize("retry_after", ["seconds", "http-date"])
def test_429_retry_after_honoured(proxy: FaultProxy, pushed: Pushed, cache: BlobCache,
                                  retry_after: str) -> None:
    value = ("2" if retry_after == "seconds" else
             email.utils.formatdate(time.time() + 3, usegmt=True))
    proxy.add(Fault("/manifests/1.0", "status", status=429, retry_after=value))
    start = time.monotonic()
    with source(proxy.host, "lib/app:1.0", cache) as src:
        [img] = src.images([DEFAULT_PLATFORM])
    assert time.monotonic() - start >= 1.5  # the backoff alone would be 0.01 s
    assert img.manifest_digest == pushed.single.manifest_digest
    assert [s.status for s in proxy.requests("/manifests/1.0")] == [429, 200]


def test_500_then_success(proxy: FaultProxy, pushed: Pushed, cache: BlobCache) -> None:
    layer = pushed.single.layer_digests[0]
    proxy.add(Fault(layer, "status", times=2, status=500))
    with source(proxy.host, "lib/app:1.0", cache) as src:
        check_image(src, pushed, pushed.single, cache)
    assert [s.status for s in proxy.requests(layer)] == [500, 500, 200]


def test_retries_run_out(proxy: FaultProxy, pushed: Pushed, cache: BlobCache) -> None:
    layer = pushed.single.layer_digests[0]
    proxy.add(Fault(layer, "status", times=100, status=503))
    with source(proxy.host, "lib/app:1.0", cache, retries=3) as src:
        [img] = src.images([DEFAULT_PLATFORM])
        with pytest.raises(RegistryError, match=rf"blob {layer}: http://{proxy.host}/v2/lib/"
                           rf"app/blobs/{layer}: HTTP 503 \(gave up after 3 retries\)"):
            src.open_blob(img.layers[0])
    assert len(proxy.requests(layer)) == 4
    assert cache_files(cache, layer) == []


@pytest.mark.parametrize("kind,message", [("truncate", "serves 126 bytes"),
                                          ("corrupt", "digest mismatch")])
def test_bad_blob_refused_and_not_cached(proxy: FaultProxy, pushed: Pushed, cache: BlobCache,
                                         kind: str, message: str) -> None:
    layer = pushed.single.layer_digests[0]
    assert len(pushed.blob(layer)) == 253
    proxy.add(Fault(layer, kind, times=100))
    with source(proxy.host, "lib/app:1.0", cache) as src:
        [img] = src.images([DEFAULT_PLATFORM])
        with pytest.raises(ContainerError, match=f"blob {layer}: .*{message}"):
            src.open_blob(img.layers[0])
    assert cache_files(cache, layer) == []
    assert len(proxy.requests(layer)) == 1


def test_bad_manifest_refused(proxy: FaultProxy, pushed: Pushed, cache: BlobCache) -> None:
    proxy.add(Fault("/manifests/1.0", "corrupt"))
    with source(proxy.host, "lib/app:1.0", cache) as src, pytest.raises(
            ContainerError, match=r"against its Docker-Content-Digest.*digest mismatch"):
        src.images([DEFAULT_PLATFORM])
    config = pushed.single.config_digest
    proxy.add(Fault(config, "corrupt"))
    with source(proxy.host, "lib/app:1.0", cache) as src, pytest.raises(
            ContainerError, match=f"config {config}: digest mismatch"):
        src.images([DEFAULT_PLATFORM])
    assert cache_files(cache, config) == []


def test_hostile_documents_refused(proxy: FaultProxy, cache: BlobCache) -> None:
    huge = b'{"schemaVersion": 2, "pad": "' + b"x" * (9 << 20) + b'"}'
    proxy.add(Fault("/manifests/1.0", "status", status=200, body=huge))
    with source(proxy.host, "lib/app:1.0", cache) as src, pytest.raises(
            ContainerError, match=r"lib/app:1.0 manifest: \d+ bytes, more than the 8388608"):
        src.images([DEFAULT_PLATFORM])
    proxy.add(Fault("/tags/list", "status", status=200, body=b'{"tags": ["a"]}', headers={
        "Link": '<http://other.example.org/v2/lib/tags/tags/list?last=a>; rel="next"'}))
    with source(proxy.host, "lib/tags:1", cache) as src, pytest.raises(
            RegistryError, match=r"next page http://other.example.org/.* is on another host"):
        src.list_tags()


def test_registry_down(cache: BlobCache) -> None:
    host = f"127.0.0.1:{free_port()}"
    with source(host, "lib/app:1.0", cache, retries=2) as src, pytest.raises(
            RegistryError, match=rf"http://{host}/v2/lib/app/manifests/1.0: connection failed"
                                 r".*\(gave up after 2 retries\)"):
        src.images([DEFAULT_PLATFORM])


def test_cached_manifest_not_downloaded_again(proxy: FaultProxy, pushed: Pushed,
                                              tmp_path: Path) -> None:
    """A tag is asked with HEAD; the manifest it names is downloaded only when the cache
    lacks it; a pinned digest in the cache costs no request at all."""
    cache = BlobCache(tmp_path / "cache")
    proxy.add(Fault("/manifests/1.0", "status", status=405, method="HEAD"))  # no HEAD: GET
    for _ in range(3):
        with source(proxy.host, "lib/app:1.0", cache) as src:
            [img] = src.images([DEFAULT_PLATFORM])
            assert img.manifest_digest == pushed.single.manifest_digest
    assert [s.status for s in proxy.requests("/manifests/1.0", "HEAD")] == [405, 200, 200]
    assert len(proxy.requests("/manifests/1.0")) == 1
    assert len(proxy.requests(pushed.single.config_digest)) == 1
    before = len(proxy.log)
    with source(proxy.host, f"lib/app@{pushed.single.manifest_digest}", cache) as src:
        [img] = src.images([DEFAULT_PLATFORM])
        assert img.config_bytes == pushed.single.config
    assert len(proxy.log) == before


def test_retry_downloads_nothing_twice(proxy: FaultProxy, pushed: Pushed,
                                       cache: BlobCache) -> None:
    w = pushed.single
    proxy.add(Fault(w.layer_digests[2], "corrupt"))
    with source(proxy.host, "lib/app:1.0", cache) as src:
        [img] = src.images([DEFAULT_PLATFORM])
        src.open_blob(img.layers[0]).close()
        src.open_blob(img.layers[1]).close()
        with pytest.raises(ContainerError, match="digest mismatch"):
            src.open_blob(img.layers[2])
    with source(proxy.host, "lib/app:1.0", cache) as src:  # the run again, same cache
        check_image(src, pushed, w, cache)
    counts = {d: len(proxy.requests(d)) for d in [w.config_digest, *w.layer_digests]}
    assert counts == {w.config_digest: 1, w.layer_digests[0]: 1, w.layer_digests[1]: 1,
                      w.layer_digests[2]: 2}


def test_resume_after_dropped_connection(proxy: FaultProxy, pushed: Pushed,
                                         cache: BlobCache) -> None:
    big = pushed.single.layer_digests[1]
    proxy.add(Fault(big, "drop", keep=100_000))
    with source(proxy.host, "lib/app:1.0", cache) as src:
        check_image(src, pushed, pushed.single, cache)
    first, second = proxy.requests(big)
    assert (first.range, second.range) == (None, "bytes=100000-")
    assert second.status == 206
    assert cache_files(cache, big) == [big[7:]]


def test_partial_kept_when_retries_run_out(proxy: FaultProxy, pushed: Pushed,
                                           cache: BlobCache) -> None:
    """A download broken off, then a registry failing every retry: the part stays in the
    cache and the next run asks only for the rest."""
    big = pushed.single.layer_digests[1]
    proxy.add(Fault(big, "drop", keep=100_000))
    failing = proxy.add(Fault(big, "status", times=100, status=502))
    with source(proxy.host, "lib/app:1.0", cache, retries=2) as src:
        [img] = src.images([DEFAULT_PLATFORM])
        with pytest.raises(RegistryError, match="HTTP 502"):
            src.open_blob(img.layers[1])
        assert cache_files(cache, big) == [big[7:] + ".part"]
        failing.times = 0
        with src.open_blob(img.layers[1]) as f:
            assert f.read() == pushed.blob(big)
    assert [s.range for s in proxy.requests(big) if s.status != 502] == [
        None, "bytes=100000-"]


# -- credentials ----------------------------------------------------------------------------

def basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
