"""The real-package test stack: its sources (helpers/debsources.py), its description files and
its recipes, built the builder's way by tools/stack-recipe-check.sh (bubblewrap at the final
path, host headers hidden, RUNPATH and ldd checked)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from pycvmfs.errors import StackError
from pycvmfs.stacks.description import load_stack

from helpers import debsources
from helpers.debsources import (
    DEBIAN_SOURCES,
    LOCAL_PACKAGES,
    REALSTACK,
    DebSource,
    fetch_source,
    local_tarballs,
    localise_stack,
    make_local_tarball,
)
from helpers.loopback import HandlerServer

ROOT = Path(__file__).resolve().parents[3]
HARNESS = ROOT / "tools" / "stack-recipe-check.sh"

# program -> Debian package, for everything the harness and the recipes run
BUILD_TOOLS = {"bwrap": "bubblewrap", "cmake": "cmake", "make": "make", "gcc": "gcc",
               "g++": "g++", "autoconf": "autoconf", "automake": "automake",
               "libtoolize": "libtool", "pkg-config": "pkg-config", "readelf": "binutils",
               "patch": "patch", "xz": "xz-utils", "bzip2": "bzip2"}


def _require_build_tools() -> None:
    missing = [f"{prog} (Debian package {pkg})" for prog, pkg in BUILD_TOOLS.items()
               if shutil.which(prog) is None]
    if missing:
        pytest.fail("the real-stack builds need: " + ", ".join(missing))


def _base_packages() -> dict:
    return yaml.safe_load((REALSTACK / "base.yaml").read_text())["packages"]


# ---- the description files ---------------------------------------------------------------------

def test_stack_and_dbg_load_with_every_package_and_real_dependency_edges() -> None:
    opt = load_stack(REALSTACK / "stack.yaml")
    dbg = load_stack(REALSTACK / "dbg.yaml")
    assert (opt.name, str(opt.platform)) == ("LCG_900", "x86_64-debian12-gcc12-opt")
    assert (dbg.name, str(dbg.platform)) == ("LCG_900", "x86_64-debian12-gcc12-dbg")
    assert opt.warnings == [] and dbg.warnings == []
    assert set(opt.packages) == set(dbg.packages) == {
        "zlib", "xz", "libpng", "libxml2", "expat", "lz4", "libyaml", "pngxml", "toygen"}
    deps = {name: set(p.depends) for name, p in opt.packages.items()}
    assert deps["libpng"] == {"zlib"}
    assert deps["libxml2"] == {"zlib", "xz"}
    assert deps["pngxml"] == {"libpng", "libxml2", "zlib"}
    assert deps["toygen"] == {"libyaml"}
    toygen = opt.packages["toygen"]
    assert toygen.dest == "MCGenerators/toygen" and toygen.is_generator and toygen.test
    zlib = opt.packages["zlib"]
    assert [p.name for p in zlib.patches] == ["zlib-dfsg-no-win32-rc.patch"]
    # both build systems are really there
    builds = {name: p.build for name, p in opt.packages.items()}
    assert "./configure" in builds["libxml2"] and "cmake -S" in builds["zlib"]


def test_upstream_sources_in_the_description_are_the_pinned_debian_tarballs() -> None:
    packages = _base_packages()
    for name, src in DEBIAN_SOURCES.items():
        source = packages[name]["source"]
        assert source["sha256"] == src.sha256, name
        assert source["url"] == list(src.urls), name
        assert src.urls[0].startswith("https://deb.debian.org/debian/pool/main/"), name
    own = {name for name, p in packages.items()
           if p["source"]["url"][0].startswith("file:///realstack-src/")}
    assert own == set(LOCAL_PACKAGES)


def test_pinned_sha256_of_our_own_packages_is_current(tmp_path: Path) -> None:
    packages = _base_packages()
    for name, (path, sha) in local_tarballs(tmp_path).items():
        pinned = packages[name]["source"]["sha256"]
        assert pinned == sha, (f"tests/stacks/realstack/src/{LOCAL_PACKAGES[name][0]}/ changed: "
                               f"write `sha256: {sha}` for {name} in base.yaml")
        assert path.name == packages[name]["source"]["url"][0].rsplit("/", 1)[1]


def test_localised_stack_reads_local_files_first_and_loads(tmp_path: Path) -> None:
    cached = tmp_path / "cache" / "zlib.tar.bz2"
    cached.parent.mkdir()
    cached.write_bytes(b"stand-in")
    own = local_tarballs(tmp_path / "own")
    files = {DEBIAN_SOURCES["zlib"].sha256: cached} | {sha: p for p, sha in own.values()}
    stack_yaml = localise_stack(tmp_path / "desc", files)
    stack = load_stack(stack_yaml)
    zlib = stack.packages["zlib"].source
    assert zlib.urls == (cached.resolve().as_uri(), *DEBIAN_SOURCES["zlib"].urls)
    assert stack.packages["xz"].source.urls == DEBIAN_SOURCES["xz"].urls
    assert stack.packages["pngxml"].source.urls == (own["pngxml"][0].resolve().as_uri(),)
    assert load_stack(tmp_path / "desc" / "dbg.yaml").platform.buildtype == "dbg"
    # the copies point at the original patches
    assert stack.packages["zlib"].patches[0].path == str(
        REALSTACK / "patches" / "zlib-dfsg-no-win32-rc.patch")


def test_localise_stack_refuses_a_placeholder_without_its_tarball(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"package pngxml: no local tarball given for "
                                         r"file:///realstack-src/pngxml-1.0.tar.gz"):
        localise_stack(tmp_path / "desc", {})


# ---- deterministic tarballs of our own sources ---------------------------------------------------

def test_local_tarball_is_deterministic_and_normalised(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "b.c").write_text("int b;\n")
    (src / "a.sh").write_text("#!/bin/sh\n")
    (src / "a.sh").chmod(0o775)
    (src / "sub" / "z.txt").write_text("z\n")
    path, sha = make_local_tarball(src, tmp_path / "one" / "pkg-2.0.tar.gz")
    (src / "b.c").touch()                       # a new mtime changes nothing
    (src / "sub" / "z.txt").chmod(0o600)        # nor a mode other than the executable bit
    _, again = make_local_tarball(src, tmp_path / "two" / "pkg-2.0.tar.gz")
    assert again == sha == hashlib.sha256(path.read_bytes()).hexdigest()
    raw = gzip.decompress(path.read_bytes())
    assert path.read_bytes()[4:8] == b"\0\0\0\0"   # no gzip time stamp
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["pkg-2.0", "pkg-2.0/a.sh", "pkg-2.0/b.c",
                                         "pkg-2.0/sub", "pkg-2.0/sub/z.txt"]
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {(0, 0, "", "", 0)}
    assert {m.name: m.mode for m in members} == {
        "pkg-2.0": 0o755, "pkg-2.0/a.sh": 0o755, "pkg-2.0/b.c": 0o644, "pkg-2.0/sub": 0o755,
        "pkg-2.0/sub/z.txt": 0o644}
    (src / "b.c").write_text("int b = 1;\n")
    assert make_local_tarball(src, tmp_path / "three" / "pkg-2.0.tar.gz")[1] != sha


def test_local_tarball_refuses_symlinks_and_bad_names(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "link").symlink_to("/etc/passwd")
    with pytest.raises(StackError, match="link: only regular files and directories"):
        make_local_tarball(src, tmp_path / "p-1.tar.gz")
    with pytest.raises(StackError, match=r"p-1\.zip: the tarball name must end in \.tar\.gz"):
        make_local_tarball(src, tmp_path / "p-1.zip")


# ---- downloads --------------------------------------------------------------------------------

def test_fetch_falls_back_to_the_next_url_and_caches(tmp_path: Path, http_server) -> None:
    served = tmp_path / "www"
    (served / "pool").mkdir(parents=True)
    payload = b"an upstream tarball" * 1000
    (served / "pool" / "pkg.orig.tar.gz").write_bytes(payload)
    server = http_server(served)
    src = DebSource("pkg", "pkg.orig.tar.gz", hashlib.sha256(payload).hexdigest(),
                    (f"{server.url}/missing/pkg.orig.tar.gz", f"{server.url}/pool/pkg.orig.tar.gz"))
    cache = tmp_path / "cache"
    path = fetch_source(src, cache, pause=0.01)
    assert path == cache / "pkg.orig.tar.gz" and path.read_bytes() == payload
    assert [p.name for p in cache.iterdir()] == ["pkg.orig.tar.gz"]   # no leftover part file
    server.stop()
    assert fetch_source(src, cache, pause=0.01) == path          # from the cache, offline
    path.write_bytes(b"damaged")
    with pytest.raises(StackError, match=r"cannot download pkg\.orig\.tar\.gz for package pkg"):
        fetch_source(src, cache, pause=0.01)                      # a damaged copy is not used


def test_fetch_refuses_wrong_bytes_naming_url_and_checksums(tmp_path: Path, http_server) -> None:
    served = tmp_path / "www"
    served.mkdir()
    (served / "pkg.tar.gz").write_bytes(b"not what was pinned")
    server = http_server(served)
    want = hashlib.sha256(b"the real bytes").hexdigest()
    got = hashlib.sha256(b"not what was pinned").hexdigest()
    src = DebSource("pkg", "pkg.tar.gz", want, (f"{server.url}/pkg.tar.gz",))
    with pytest.raises(StackError) as err:
        fetch_source(src, tmp_path / "cache", pause=0.01)
    assert f"{server.url}/pkg.tar.gz (attempt 3): {server.url}/pkg.tar.gz: sha256 {got}, " \
           f"expected {want}" in str(err.value)
    assert list((tmp_path / "cache").iterdir()) == []


def test_fetch_retries_server_errors_three_times_per_url(tmp_path: Path) -> None:
    hits: list[str] = []

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args) -> None:
            pass

    server = HandlerServer(Unavailable)
    try:
        src = DebSource("pkg", "pkg.tar.gz", "0" * 64,
                        (f"{server.url}/a/pkg.tar.gz", f"{server.url}/b/pkg.tar.gz"))
        with pytest.raises(StackError) as err:
            fetch_source(src, tmp_path, pause=0.01)
    finally:
        server.stop()
    assert hits == ["/a/pkg.tar.gz"] * 3 + ["/b/pkg.tar.gz"] * 3
    assert str(err.value).count("HTTP 503") == 6


def test_every_debian_source_downloads_and_verifies() -> None:
    """The real thing, from deb.debian.org into the shared test cache (kept between runs)."""
    paths = debsources.fetch_sources()
    assert set(paths) == set(DEBIAN_SOURCES)
    for name, path in paths.items():
        assert debsources.file_sha256(path) == DEBIAN_SOURCES[name].sha256


# ---- the recipes, built the builder's way ------------------------------------------------------

def _harness(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    _require_build_tools()
    return subprocess.run(["bash", str(HARNESS), "-w", str(tmp_path / "work"), *args],
                          capture_output=True, text=True, check=False, timeout=1800)


def test_harness_builds_toygen_and_its_genser_validation_passes(tmp_path: Path) -> None:
    proc = _harness(tmp_path, "toygen")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = (tmp_path / "work" / "report.txt").read_text()
    rows = {line.split()[0]: line.split() for line in report.splitlines()[1:3]}
    assert rows["libyaml"][4:] == ["none", "ok"] and rows["toygen"][4:] == ["passed", "ok"]
    test_log = (tmp_path / "work" / "logs" / "toygen.test.log").read_text()
    assert "toygen validation PASSED" in test_log
    assert "ok: toygen --version -> toygen 1.0 (libyaml 0.2.5)" in report
    installed = tmp_path / "work" / "installs" / "toygen"
    assert (installed / "share" / "toygen" / "reference.dat").read_bytes() == (
        REALSTACK / "src" / "toygen" / "validation" / "reference.dat").read_bytes()


def test_harness_catches_a_host_library_and_a_host_header(tmp_path: Path) -> None:
    desc = tmp_path / "neg.yaml"
    desc.write_text("""\
release: LCG_1
platform: x86_64-debian12-gcc12-opt
packages:
  zlib:
    version: "0"
    build: mkdir -p "$PREFIX/include" && echo '#define FAKE 1' > "$PREFIX/include/zlib.h"
  hostlib:
    version: "1"
    build: |
      mkdir -p "$PREFIX/bin"
      printf 'char zlibVersion(void);\\nint main(void){return zlibVersion();}\\n' > m.c
      gcc m.c -o "$PREFIX/bin/hostlib" -lz
  hostheader:
    version: "1"
    depends: [zlib]
    build: |
      printf '#include "/usr/include/zlib.h"\\nint main(void){return 0;}\\n' > m.c
      gcc m.c -o m
""")
    proc = _harness(tmp_path, "-k", "-f", str(desc))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert ("hostlib: bin/hostlib: libz.so.1 resolves to the host's "
            "/lib/x86_64-linux-gnu/libz.so.1, not the stack") in proc.stdout
    assert "a host header the stack provides (hidden by stack-recipe-check.sh)" in proc.stdout
    assert "FAILED: hostheader hostlib(checks)" in proc.stdout


@pytest.mark.slow
def test_every_recipe_builds_passes_its_test_and_links_inside_the_stack(tmp_path: Path) -> None:
    """The whole stack, cold, opt, JOBS=2 (about a minute on 2 cores)."""
    proc = _harness(tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr
    report = (tmp_path / "work" / "report.txt").read_text()
    rows = {line.split()[0]: line.split() for line in report.splitlines()[1:10]}
    assert set(rows) == {"zlib", "xz", "libpng", "libxml2", "expat", "lz4", "libyaml",
                         "pngxml", "toygen"}
    assert {name: row[5] for name, row in rows.items()} == dict.fromkeys(rows, "ok")
    assert rows["libyaml"][4] == "none"
    assert all(row[4] == "passed" for name, row in rows.items() if name != "libyaml")
    assert "pngxml --version -> pngxml 1.0 (libpng 1.6.39, zlib 1.2.13, libxml2 20914)" in report
    assert "FAILED" not in report and "skipped" not in report
