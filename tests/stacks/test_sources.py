"""Source fetching and unpacking against a real HTTP server, real tarballs, real git and patch."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest
import zstandard

from pycvmfs.errors import StackError
from pycvmfs.stacks.model import PackageSpec, Patch, Source
from pycvmfs.stacks.sources import SourceCache, sha256_file
from stacks.test_safetar import chained_symlink_tar

from helpers.loopback import HandlerServer, LoopbackServer


def _require(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} not found: install the Debian package {package!r}")


def make_tarball(path: Path, files: dict[str, bytes], *, top: str | None = "pkg-1.0",
                 mode: str = "w:gz") -> str:
    """A tarball of ``files`` (below ``top/`` when given); its sha256."""
    if mode == "w:zst":
        buf = io.BytesIO()
        make_tarball_into(buf, files, top=top, mode="w")
        path.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    else:
        with open(path, "wb") as f:
            make_tarball_into(f, files, top=top, mode=mode)
    return sha256_file(path)


def make_tarball_into(f, files: dict[str, bytes], *, top: str | None, mode: str) -> None:
    with tarfile.open(fileobj=f, mode=mode) as tar:
        for name, data in files.items():
            ti = tarfile.TarInfo(f"{top}/{name}" if top else name)
            ti.size = len(data)
            ti.mode = 0o755 if name.endswith(".sh") else 0o644
            tar.addfile(ti, io.BytesIO(data))


def spec_for(urls: list[str], sha: str, **kw) -> PackageSpec:
    return PackageSpec(name="pkg", version="1.0", source=Source(urls=tuple(urls), sha256=sha),
                       **kw)


FILES = {"README": b"hello\n", "configure.sh": b"#!/bin/sh\necho configured\n",
         "src/main.c": b"int main(void) { return 0; }\n"}


@pytest.fixture
def served(tmp_path: Path):
    www = tmp_path / "www"
    www.mkdir()
    server = LoopbackServer(www)
    yield www, server
    server.stop()


def test_fetch_http_caches_by_checksum_and_unpacks(served, tmp_path):
    www, server = served
    sha = make_tarball(www / "pkg-1.0.tar.gz", FILES)
    cache = SourceCache(tmp_path / "cache")
    spec = spec_for([f"{server.url}/pkg-1.0.tar.gz"], sha)
    got = cache.fetch(spec)
    assert got == tmp_path / "cache" / "sha256" / sha[:2] / sha / "pkg-1.0.tar.gz"
    assert sha256_file(got) == sha
    assert [p.name for p in got.parent.iterdir()] == ["pkg-1.0.tar.gz"]   # no temp left
    # cached: served no more, still found
    (www / "pkg-1.0.tar.gz").unlink()
    assert cache.fetch(spec) == got
    top = cache.unpack(spec, tmp_path / "src")
    assert top == tmp_path / "src" / "pkg-1.0"
    assert (top / "src" / "main.c").read_bytes() == FILES["src/main.c"]
    assert os.access(top / "configure.sh", os.X_OK)


@pytest.mark.parametrize("mode,suffix", [("w", "tar"), ("w:bz2", "tar.bz2"),
                                         ("w:xz", "tar.xz"), ("w:zst", "tar.zst")])
def test_unpack_every_tar_compression(tmp_path, mode, suffix):
    path = tmp_path / f"pkg.{suffix}"
    sha = make_tarball(path, FILES, mode=mode)
    cache = SourceCache(tmp_path / "cache")
    top = cache.unpack(spec_for([str(path)], sha), tmp_path / "src")
    assert (top / "README").read_bytes() == b"hello\n"


def test_unpack_without_single_top_directory_returns_dest(tmp_path):
    path = tmp_path / "flat.tar.gz"
    sha = make_tarball(path, FILES, top=None)
    top = SourceCache(tmp_path / "c").unpack(spec_for([path.as_uri()], sha), tmp_path / "s")
    assert top == tmp_path / "s"
    assert (top / "README").exists()


def test_mirror_fallback_and_every_failure_reported(served, tmp_path):
    www, server = served
    sha = make_tarball(www / "pkg-1.0.tar.gz", FILES)
    urls = [f"{server.url}/missing.tar.gz", "ftp://example.org/pkg.tar.gz",
            str(tmp_path / "nowhere.tar.gz"), f"{server.url}/pkg-1.0.tar.gz"]
    got = SourceCache(tmp_path / "cache").fetch(spec_for(urls, sha))
    assert got.name == "pkg-1.0.tar.gz" and sha256_file(got) == sha
    with pytest.raises(StackError) as e:
        SourceCache(tmp_path / "cache2").fetch(spec_for(urls[:3], sha))
    msg = str(e.value)
    assert msg.startswith("pkg: ")
    for url in urls[:3]:
        assert url in msg
    assert "HTTP 404" in msg and "unsupported URL scheme" in msg


def test_checksum_mismatch_names_everything_and_deletes_the_download(served, tmp_path):
    www, server = served
    actual = make_tarball(www / "pkg-1.0.tar.gz", FILES)
    wrong = "0" * 64
    url = f"{server.url}/pkg-1.0.tar.gz"
    with pytest.raises(StackError) as e:
        SourceCache(tmp_path / "cache").fetch(spec_for([url], wrong))
    msg = str(e.value)
    assert "pkg" in msg and url in msg and wrong in msg and actual in msg
    assert list((tmp_path / "cache" / "sha256" / "00" / wrong).iterdir()) == []


def test_size_cap(served, tmp_path):
    www, server = served
    sha = make_tarball(www / "pkg-1.0.tar.gz", {"big": os.urandom(50_000)})
    with pytest.raises(StackError, match="over the limit of 1000"):
        SourceCache(tmp_path / "c", max_bytes=1000).fetch(
            spec_for([f"{server.url}/pkg-1.0.tar.gz"], sha))


def test_http_5xx_is_retried(tmp_path):
    path = tmp_path / "pkg.tar.gz"
    sha = make_tarball(path, FILES)
    data = path.read_bytes()
    answers = [503, 502]   # two failures, then the file

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if answers:
                self.send_response(answers.pop(0))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HandlerServer(Flaky)
    try:
        got = SourceCache(tmp_path / "c").fetch(spec_for([f"{server.url}/pkg.tar.gz"], sha))
    finally:
        server.stop()
    assert sha256_file(got) == sha and answers == []


def _hostile(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> str:
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("pkg/ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        member.size = len(data) if member.isreg() else 0
        tar.addfile(member, io.BytesIO(data) if member.isreg() else None)
    return sha256_file(path)


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = link
    return ti


@pytest.mark.parametrize("member", [
    _member("../escape.txt"),
    _member("/etc/evil.txt"),
    _member("pkg/../../escape.txt"),
    _member("pkg/link", tarfile.SYMTYPE, "../../outside"),
    _member("pkg/abslink", tarfile.SYMTYPE, "/etc/passwd"),
    _member("pkg/hard", tarfile.LNKTYPE, "../../outside"),
    _member("pkg/dev", tarfile.CHRTYPE),
    _member("pkg/fifo", tarfile.FIFOTYPE),
], ids=["dotdot", "absolute", "inner-dotdot", "symlink", "abs-symlink", "hardlink", "device",
        "fifo"])
def test_hostile_tarballs_refused_with_member_named(tmp_path, member):
    path = tmp_path / "evil.tar.gz"
    sha = _hostile(path, member, b"x")
    dest = tmp_path / "work" / "src"
    with pytest.raises(StackError) as e:
        SourceCache(tmp_path / "c").unpack(spec_for([str(path)], sha), dest)
    assert "pkg: evil.tar.gz" in str(e.value)
    assert repr(member.name) in str(e.value)
    assert list(dest.iterdir()) == []      # left empty
    assert not (tmp_path / "work" / "escape.txt").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_chained_symlink_tarball_writes_nothing_outside(tmp_path):
    dest, outside = tmp_path / "work" / "src", tmp_path / "outside"
    outside.mkdir()
    path = tmp_path / "evil.tar.gz"
    path.write_bytes(gzip.compress(chained_symlink_tar(dest, outside)))
    with pytest.raises(StackError, match=r"pkg: evil\.tar\.gz: refused member .* is a symbolic "
                                         "link in the archive"):
        SourceCache(tmp_path / "c").unpack(spec_for([str(path)], sha256_file(path)), dest)
    assert list(outside.iterdir()) == [] and list(dest.iterdir()) == []


def test_unpack_refuses_a_non_empty_destination_and_non_tar(tmp_path):
    path = tmp_path / "pkg.tar.gz"
    sha = make_tarball(path, FILES)
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "x").write_text("x")
    with pytest.raises(StackError, match=f"pkg: cannot unpack into {dest}"):
        SourceCache(tmp_path / "c").unpack(spec_for([str(path)], sha), dest)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball at all" * 40)
    with pytest.raises(StackError, match=r"junk\.tar\.gz is not a tar archive"):
        SourceCache(tmp_path / "c").unpack(spec_for([str(junk)], sha256_file(junk)),
                                           tmp_path / "e")


def test_no_source(tmp_path):
    spec = PackageSpec(name="meta", version="1")
    cache = SourceCache(tmp_path / "c")
    assert cache.fetch(spec) is None
    assert cache.unpack(spec, tmp_path / "d") == tmp_path / "d"


def _git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_git_source_mirror_commit_and_export(tmp_path):
    _require("git", "git")
    repo = tmp_path / "repo"
    repo.mkdir()
    _git("init", "-q", "-b", "main", cwd=repo)
    (repo / "a.txt").write_text("one\n")
    _git("add", "a.txt", cwd=repo)
    _git("commit", "-q", "-m", "one", cwd=repo)
    first = _git("rev-parse", "HEAD", cwd=repo)
    cache = SourceCache(tmp_path / "cache")
    spec = PackageSpec(name="gitpkg", version="1", source=Source(git=str(repo), commit=first))
    mirror = cache.fetch(spec)
    assert mirror == (tmp_path / "cache" / "git"
                      / hashlib.sha1(str(repo).encode()).hexdigest())
    # a new commit upstream: the mirror is fetched again
    (repo / "a.txt").write_text("two\n")
    (repo / "b.txt").write_text("b\n")
    _git("add", "a.txt", "b.txt", cwd=repo)
    _git("commit", "-q", "-m", "two", cwd=repo)
    second = _git("rev-parse", "HEAD", cwd=repo)
    spec2 = PackageSpec(name="gitpkg", version="2", source=Source(git=str(repo), commit=second))
    assert cache.fetch(spec2) == mirror
    top = cache.unpack(spec, tmp_path / "one")
    assert top == tmp_path / "one" and (top / "a.txt").read_text() == "one\n"
    assert not (top / "b.txt").exists() and not (top / ".git").exists()
    top2 = cache.unpack(spec2, tmp_path / "two")
    assert (top2 / "a.txt").read_text() == "two\n"
    missing = PackageSpec(name="gitpkg", version="3",
                          source=Source(git=str(repo), commit="1" * 40))
    with pytest.raises(StackError, match=f"gitpkg: commit {'1' * 40} is not in {repo}"):
        cache.fetch(missing)
    with pytest.raises(StackError, match="gitpkg: git clone of"):
        cache.fetch(PackageSpec(name="gitpkg", version="4",
                                source=Source(git=str(tmp_path / "nope"), commit=first)))


def test_git_export_refused_while_git_still_writes_does_not_hang(tmp_path):
    """A refused member early in a large ``git archive``: git is stopped, not waited for while
    it blocks on a full pipe."""
    _require("git", "git")
    repo = tmp_path / "repo"
    repo.mkdir()
    _git("init", "-q", "-b", "main", cwd=repo)
    (repo / "a_link").symlink_to("/etc/passwd")
    (repo / "b_big").write_bytes(os.urandom(8 << 20))    # far more than a pipe holds
    _git("add", "a_link", "b_big", cwd=repo)
    _git("commit", "-q", "-m", "big", cwd=repo)
    commit = _git("rev-parse", "HEAD", cwd=repo)
    spec = PackageSpec(name="gitpkg", version="1", source=Source(git=str(repo), commit=commit))
    dest = tmp_path / "dest"
    outcome: list[BaseException | None] = []

    def unpack() -> None:
        try:
            SourceCache(tmp_path / "cache").unpack(spec, dest)
            outcome.append(None)
        except BaseException as e:   # reported below
            outcome.append(e)

    worker = threading.Thread(target=unpack, daemon=True)
    worker.start()
    worker.join(600)    # a watchdog only: a deadlock never ends, the unpack takes a second
    assert not worker.is_alive(), "unpacking hung while git archive was still writing"
    assert isinstance(outcome[0], StackError), outcome
    assert f"gitpkg: git {commit}: refused member 'a_link'" in str(outcome[0])
    assert list(dest.iterdir()) == []


def _patch_file(path: Path, old: str, new: str, name: str = "README") -> Patch:
    path.write_text(f"--- a/{name}\n+++ b/{name}\n@@ -1 +1 @@\n-{old}\n+{new}\n")
    return Patch(path=str(path), sha256=sha256_file(path), strip=1)


def test_patches_applied_in_order_and_failure_reported(tmp_path):
    _require("patch", "patch")
    path = tmp_path / "pkg.tar.gz"
    sha = make_tarball(path, FILES)
    p1 = _patch_file(tmp_path / "one.patch", "hello", "hello patched")
    p2 = _patch_file(tmp_path / "two.patch", "hello patched", "hello twice")
    cache = SourceCache(tmp_path / "c")
    top = cache.unpack(spec_for([str(path)], sha, patches=(p1, p2)), tmp_path / "ok")
    assert (top / "README").read_text() == "hello twice\n"
    assert sorted(p.name for p in top.iterdir()) == ["README", "configure.sh", "src"]
    # the wrong order: the second patch does not apply
    dest = tmp_path / "bad"
    with pytest.raises(StackError) as e:
        cache.unpack(spec_for([str(path)], sha, patches=(p2, p1)), dest)
    msg = str(e.value)
    assert msg.startswith("pkg: patch ") and str(tmp_path / "two.patch") in msg
    assert "hunk" in msg.lower()
    assert list(dest.iterdir()) == []
    # a patch edited after the description was read
    (tmp_path / "one.patch").write_text("changed\n")
    with pytest.raises(StackError, match=r"one\.patch changed since"):
        cache.unpack(spec_for([str(path)], sha, patches=(p1,)), tmp_path / "edited")
