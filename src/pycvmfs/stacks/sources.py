"""Package sources: download and verify tarballs, mirror git repositories, unpack them safely
and apply the package's patches.

Layout of a :class:`SourceCache` root:

- ``sha256/<hh>/<sha256>/<file name>``: a tarball, stored only once its bytes hashed to the
  sha256 the description gives (downloads go to a temporary file in that directory, hashed while
  they stream, then renamed into place);
- ``git/<sha1 of the URL>/``: a bare ``git clone --mirror`` of a repository, fetched again when
  the wanted commit is not in it yet.

Tarball URLs may be ``http(s)://`` (retried on connection errors and 5xx answers), ``file://``
or plain local paths; alternative URLs are tried in order and every failure is reported when
none works. Unpacking goes through :func:`pycvmfs.stacks.safetar.extract_tar` with its strict
rules: absolute member names, ``..``, members below a symbolic link, hard links to anything but
an earlier regular file, links with absolute targets or resolving outside the destination,
device nodes and FIFOs are refused, naming the package and the member; links are made last.
A ``git archive`` is streamed through the same extraction (the process is killed when the
extraction refuses a member).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

import urllib3
import zstandard

from pycvmfs.errors import StackError
from pycvmfs.stacks.model import PackageSpec, Patch
from pycvmfs.stacks.safetar import extract_tar

__all__ = ["DEFAULT_MAX_BYTES", "SourceCache", "safe_extract", "sha256_file"]

#: Largest source download accepted unless told otherwise (a mirror cannot fill the disk).
DEFAULT_MAX_BYTES = 8 << 30
_BLOCK = 1 << 20

_MAGIC = ((b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"),
          (b"\x28\xb5\x2f\xfd", "zst"))


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, read in blocks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class _Failed(Exception):
    """One URL that did not give the wanted bytes (collected, reported together)."""


class SourceCache:
    """Downloaded tarballs and git mirrors below ``root`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES,
                 retries: int = 3, timeout: float = 60.0) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.retries = retries
        self.timeout = timeout
        self._http: urllib3.PoolManager | None = None

    # -- fetching ----------------------------------------------------------------------------

    def fetch(self, spec: PackageSpec) -> Path | None:
        """The verified local tarball, or the git mirror holding the commit, of ``spec``'s
        source; None when the package has no source."""
        src = spec.source
        if src is None:
            return None
        if src.git is not None:
            return self._fetch_git(spec)
        if not src.sha256:
            raise StackError(f"{spec.name}: the source has no sha256 to verify it against")
        if not src.urls:
            raise StackError(f"{spec.name}: the source has neither URLs nor a git repository")
        sha = src.sha256.lower()
        where = self.root / "sha256" / sha[:2] / sha
        cached = _cached_file(where)
        if cached is not None:
            return cached
        where.mkdir(parents=True, exist_ok=True)
        failures: list[str] = []
        for url in src.urls:
            name = _basename(url) or f"{spec.name}-{spec.version}.tar"
            try:
                self._download(url, where / name, sha)
            except _Failed as e:
                failures.append(f"{url}: {e}")
                continue
            return where / name
        raise StackError(f"{spec.name}: the source could not be fetched from any URL: "
                         + "; ".join(failures))

    def _download(self, url: str, final: Path, sha: str) -> None:
        """Stream ``url`` into a temporary file next to ``final``, hashing it; rename into
        place when the sha256 matches, delete it otherwise."""
        fd, tmp = tempfile.mkstemp(prefix=".part-", dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                digest = hashlib.sha256()
                size = 0
                for block in self._blocks(url):
                    size += len(block)
                    if size > self.max_bytes:
                        raise _Failed(f"larger than the limit of {self.max_bytes} bytes")
                    digest.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            actual = digest.hexdigest()
            if actual != sha:
                raise _Failed(f"checksum mismatch: expected sha256 {sha}, got {actual} "
                              "(download deleted)")
            os.replace(tmp, final)
        except OSError as e:
            raise StackError(f"writing {final} failed: {e}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _blocks(self, url: str) -> Iterator[bytes]:
        scheme = urlsplit(url).scheme.lower()
        if scheme in ("http", "https"):
            yield from self._http_blocks(url)
            return
        if scheme == "file":
            path = unquote(urlsplit(url).path)
        elif scheme == "":
            path = url
        else:
            raise _Failed(f"unsupported URL scheme {scheme!r} (http, https, file or a path)")
        try:
            with open(path, "rb") as f:
                while block := f.read(_BLOCK):
                    yield block
        except OSError as e:
            raise _Failed(e.strerror or str(e)) from None

    def _http_blocks(self, url: str) -> Iterator[bytes]:
        if self._http is None:
            retry = urllib3.Retry(total=self.retries, connect=self.retries, read=self.retries,
                                  status=self.retries, backoff_factor=0.2,
                                  status_forcelist=(500, 502, 503, 504), redirect=5,
                                  raise_on_status=False)
            self._http = urllib3.PoolManager(retries=retry, timeout=urllib3.Timeout(
                connect=self.timeout, read=self.timeout))
        try:
            resp = self._http.request("GET", url, preload_content=False)
        except urllib3.exceptions.HTTPError as e:
            raise _Failed(f"request failed: {e}") from None
        try:
            if resp.status != 200:
                raise _Failed(f"HTTP {resp.status}")
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > self.max_bytes:
                raise _Failed(f"{length} bytes, over the limit of {self.max_bytes}")
            try:
                yield from resp.stream(_BLOCK)
            except (urllib3.exceptions.HTTPError, OSError) as e:
                raise _Failed(f"transfer broken: {e}") from None
        finally:
            resp.release_conn()

    def _fetch_git(self, spec: PackageSpec) -> Path:
        src = spec.source
        assert src is not None and src.git is not None
        if not src.commit:
            raise StackError(f"{spec.name}: the git source {src.git} has no commit")
        mirror = self.root / "git" / hashlib.sha1(src.git.encode("utf-8")).hexdigest()
        if not mirror.exists():
            mirror.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".clone-", dir=mirror.parent))
            try:
                _git(spec, "clone", "--mirror", "--quiet", src.git, str(tmp / "m"))
                os.replace(tmp / "m", mirror)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        elif not _has_commit(mirror, src.commit):
            _git(spec, "fetch", "--quiet", "--prune", "origin", git_dir=mirror)
        if not _has_commit(mirror, src.commit):
            raise StackError(f"{spec.name}: commit {src.commit} is not in {src.git}")
        return mirror

    # -- unpacking ---------------------------------------------------------------------------

    def unpack(self, spec: PackageSpec, dest: str | os.PathLike[str]) -> Path:
        """Unpack ``spec``'s source into ``dest`` (created; must be empty), apply its patches
        and return the source top directory: the tarball's single top-level directory, else
        ``dest``. On failure ``dest`` is left empty."""
        dest = Path(dest)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise StackError(f"{spec.name}: cannot unpack into {dest}: not an empty directory")
        dest.mkdir(parents=True, exist_ok=True)
        try:
            top = self._unpack(spec, dest)
            for patch in spec.patches:
                apply_patch(spec, patch, top)
        except BaseException:
            _empty(dest)
            raise
        return top

    def _unpack(self, spec: PackageSpec, dest: Path) -> Path:
        got = self.fetch(spec)
        if got is None:
            return dest
        assert spec.source is not None
        if spec.source.git is not None:
            _export_git(spec, got, spec.source.commit or "", dest)
            return dest
        with open(got, "rb") as f:
            head = f.read(512)
            f.seek(0)
            kind = next((k for magic, k in _MAGIC if head.startswith(magic)), "")
            if kind == "zst":
                with zstandard.ZstdDecompressor().stream_reader(f) as z:
                    safe_extract(z, dest, what=f"{spec.name}: {got.name}")
            elif kind or head[257:262] == b"ustar":
                safe_extract(f, dest, what=f"{spec.name}: {got.name}")
            else:
                raise StackError(f"{spec.name}: {got} is not a tar archive (plain, gz, bz2, xz "
                                 "or zst)")
        entries = list(dest.iterdir())
        if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
            return entries[0]
        return dest


def safe_extract(stream: BinaryIO, dest: Path, *, what: str) -> None:
    """Extract a source tar stream (compressed with gz/bz2/xz, or plain) below ``dest`` with
    the strict rules of :func:`~pycvmfs.stacks.safetar.extract_tar` (no absolute link targets,
    the ``data`` filter's modes); a refused or unreadable member is a StackError naming
    ``what`` and it."""
    extract_tar(stream, dest, what=what)


def apply_patch(spec: PackageSpec, patch: Patch, top: Path) -> None:
    """Apply one patch (its bytes checked against the sha256 the description recorded) with
    ``patch -p<strip> --batch --forward`` in ``top``."""
    if shutil.which("patch") is None:
        raise StackError(f"{spec.name}: the 'patch' program is not installed "
                         "(Debian package patch)")
    try:
        actual = sha256_file(patch.path)
    except OSError as e:
        raise StackError(f"{spec.name}: patch {patch.path}: {e.strerror}") from None
    if actual != patch.sha256:
        raise StackError(f"{spec.name}: patch {patch.path} changed since the description was "
                         f"read (sha256 {actual}, expected {patch.sha256})")
    done = subprocess.run(["patch", f"-p{patch.strip}", "--batch", "--forward",
                           "--no-backup-if-mismatch", "-i", patch.path], cwd=top,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()
        raise StackError(f"{spec.name}: patch {patch.path} does not apply (exit "
                         f"{done.returncode}):\n{output}")


# -- helpers ----------------------------------------------------------------------------------

def _basename(url: str) -> str:
    parts = urlsplit(url)
    path = unquote(parts.path) if parts.scheme else url
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return "" if name in ("", ".", "..") or name.startswith(".part-") else name


def _cached_file(where: Path) -> Path | None:
    if not where.is_dir():
        return None
    for entry in sorted(where.iterdir()):
        if not entry.name.startswith(".part-") and entry.is_file():
            return entry
    return None


def _empty(dest: Path) -> None:
    for entry in dest.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _git_env() -> dict[str, str]:
    return {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}


def _git(spec: PackageSpec, verb: str, *args: str, git_dir: Path | None = None) -> None:
    if shutil.which("git") is None:
        raise StackError(f"{spec.name}: git is not installed (Debian package git)")
    where = ["--git-dir", str(git_dir)] if git_dir is not None else []
    done = subprocess.run(["git", *where, verb, *args], capture_output=True, text=True,
                          check=False, env=_git_env())
    if done.returncode != 0:
        url = spec.source.git if spec.source else ""
        raise StackError(f"{spec.name}: git {verb} of {url} failed: {done.stderr.strip()}")


def _has_commit(mirror: Path, commit: str) -> bool:
    return subprocess.run(["git", "--git-dir", str(mirror), "cat-file", "-e",
                           f"{commit}^{{commit}}"], capture_output=True, check=False,
                          env=_git_env()).returncode == 0


def _export_git(spec: PackageSpec, mirror: Path, commit: str, dest: Path) -> None:
    """``git archive <commit>`` streamed through the safe extraction into ``dest``. Its
    errors go to a temporary file (a full stderr pipe cannot block it); when the extraction
    fails, git is killed before it is waited for (it may still be writing the archive)."""
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(["git", "--git-dir", str(mirror), "archive", "--format=tar",
                                 commit], stdout=subprocess.PIPE, stderr=errors,
                                env=_git_env())
        assert proc.stdout is not None
        with proc.stdout:
            try:
                safe_extract(proc.stdout, dest, what=f"{spec.name}: git {commit}")
                while proc.stdout.read(_BLOCK):   # the archive's end padding
                    pass
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        rc = proc.wait()
        errors.seek(0)
        err = errors.read().decode(errors="replace").strip()
    if rc != 0:
        raise StackError(f"{spec.name}: git archive {commit} of {mirror} failed: {err}")
