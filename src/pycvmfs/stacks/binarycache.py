"""A binary cache of built packages keyed by their full hash, in a directory or an S3 bucket.

Layout (both backends), below the cache root or the bucket's key prefix::

    <hh>/<full hash>.tar.zst   the install tree: a deterministic pax tar (names sorted, owner
                               0/0 without names, modes and whole-second mtimes kept, hard
                               links and empty directories kept), zstd level 3, multithreaded
    <hh>/<full hash>.json      the build record, written LAST: its presence is the commit point

The record is the caller's dict plus ``artifact``: ``{"format": "tar+zstd", "sha256": <of the
compressed bytes>, "size": <compressed size>, "files": <regular files>, "bytes": <their
uncompressed size>}``. A put interrupted before the record leaves an artifact nobody sees (the
next put of that hash replaces it). A put of a hash already stored returns the stored record
only when the artifact verifies against it (size and sha256); otherwise the tree is stored
again, which repairs a broken entry.

Reading an artifact verifies its compressed bytes COMPLETELY against the record before anything
is decompressed (a directory cache hashes the file, an S3 cache the spool file it downloads to
first) and raises :class:`~pycvmfs.errors.StackError` naming the cache key when they differ.
Unpacking goes through :func:`pycvmfs.stacks.safetar.extract_tar`: no absolute names, ``..``,
members below a symbolic link, hard links to anything but an earlier regular file, relative
links resolving outside the tree, device nodes or FIFOs; setuid, setgid and sticky bits
dropped; links made last, so extraction never writes through one. Absolute link TARGETS are
kept (a link's text is data: relocated builds and recipes make ``/cvmfs/...`` links). It
happens in a temporary sibling renamed into place.

In a directory, files are written to a temporary name, fsynced and renamed; puts of one hash
are serialised with a lock file. In S3 (``s3://bucket[/prefix]``, endpoint from
``?endpoint=`` or ``AWS_ENDPOINT_URL``, credentials from ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``) nodes do not lock each other: two nodes putting one hash at the same
time may leave the record of one next to the artifact of the other, which reading detects
(the hash check) and the next put of that hash repairs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

import zstandard

from pycvmfs.errors import CvmfsError, ObjectNotFoundError, StackError
from pycvmfs.stacks.safetar import extract_tar

__all__ = ["ARTIFACT_FORMAT", "BinaryCache", "DirectoryBinaryCache", "S3BinaryCache",
           "open_binary_cache"]

ARTIFACT_FORMAT = "tar+zstd"
ZSTD_LEVEL = 3
_BLOCK = 1 << 20
_FULL = re.compile(r"[0-9a-f]{64}")
_RECORD = re.compile(r"([0-9a-f]{2})/([0-9a-f]{64})\.json")


def _check_hash(full_hash: str) -> str:
    if not _FULL.fullmatch(full_hash):
        raise StackError(f"{full_hash!r} is not a full package hash (64 hex digits)")
    return full_hash


def _artifact_rel(full_hash: str) -> str:
    return f"{full_hash[:2]}/{full_hash}.tar.zst"


def _record_rel(full_hash: str) -> str:
    return f"{full_hash[:2]}/{full_hash}.json"


class BinaryCache(ABC):
    """Built packages by full hash; the backends provide the storage primitives below."""

    # -- what a backend provides ---------------------------------------------------------------
    @abstractmethod
    def describe(self, rel: str = "") -> str:
        """``/path`` or ``s3://bucket/prefix`` (of ``rel`` inside the cache when given)."""

    @abstractmethod
    def _exists(self, rel: str) -> bool: ...

    @abstractmethod
    def _get(self, rel: str) -> bytes | None: ...

    @abstractmethod
    def _new_temp(self, rel: str) -> Path:
        """A new empty temporary file from which ``rel`` will be stored."""

    @abstractmethod
    def _store_file(self, rel: str, tmp: Path) -> None:
        """Store the (fsynced) temporary file as ``rel``, atomically; ``tmp`` is consumed."""

    @abstractmethod
    def _open(self, rel: str, limit: int) -> BinaryIO:
        """The stored bytes of ``rel`` (a StackError past ``limit`` bytes)."""

    @abstractmethod
    def _record_rels(self) -> Iterator[str]: ...

    def _locked(self, full_hash: str) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()

    def _store_bytes(self, rel: str, data: bytes) -> None:
        tmp = self._new_temp(rel)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self._store_file(rel, tmp)

    # -- the cache -----------------------------------------------------------------------------
    def has(self, full_hash: str) -> bool:
        """Whether a build of ``full_hash`` is stored (its record exists)."""
        return self._exists(_record_rel(_check_hash(full_hash)))

    def record(self, full_hash: str) -> dict[str, Any] | None:
        """The build record of ``full_hash``, None when there is none."""
        rel = _record_rel(_check_hash(full_hash))
        data = self._get(rel)
        if data is None:
            return None
        try:
            rec = json.loads(data)
        except ValueError as e:
            raise StackError(f"binary cache {self.describe(rel)}: not JSON ({e})") from None
        if not isinstance(rec, dict):
            raise StackError(f"binary cache {self.describe(rel)}: not a JSON object")
        return rec

    def put(self, full_hash: str, install_dir: str | os.PathLike[str],
            record: dict[str, Any]) -> dict[str, Any]:
        """Store ``install_dir`` and its record under ``full_hash``; the stored record (the
        existing one when the hash is already there and its artifact verifies; a record that
        is unreadable or whose artifact is missing or different is replaced)."""
        _check_hash(full_hash)
        install_dir = Path(install_dir)
        if not install_dir.is_dir():
            raise StackError(f"binary cache: {install_dir} is not a directory to store")
        with self._locked(full_hash):
            existing = self._intact_record(full_hash)
            if existing is not None:
                return existing
            rel = _artifact_rel(full_hash)
            tmp = self._new_temp(rel)
            try:
                with open(tmp, "wb") as out:
                    artifact = pack_tree(install_dir, out)
                    out.flush()
                    os.fsync(out.fileno())
                stored = {**record, "artifact": artifact}
                try:
                    text = json.dumps(stored, sort_keys=True, indent=1) + "\n"
                except (TypeError, ValueError) as e:
                    raise StackError(f"binary cache: the record of {full_hash} is not JSON "
                                     f"({e})") from None
                self._store_file(rel, tmp)
            finally:
                tmp.unlink(missing_ok=True)
            self._store_bytes(_record_rel(full_hash), text.encode("utf-8"))
            return stored

    def _intact_record(self, full_hash: str) -> dict[str, Any] | None:
        """The record of ``full_hash`` when it is readable and its artifact verifies."""
        try:
            with self._verified_artifact(full_hash):
                pass
        except StackError:
            return None
        return self.record(full_hash)

    def _verified_artifact(self, full_hash: str) -> BinaryIO:
        """The stored compressed artifact of ``full_hash``, its size and sha256 checked
        against the record before it is returned (positioned at its start)."""
        rec = self.record(full_hash)
        rel = _artifact_rel(full_hash)
        if rec is None:
            raise StackError(f"binary cache {self.describe(_record_rel(full_hash))}: "
                             f"no build of {full_hash}")
        art = rec.get("artifact")
        if (not isinstance(art, dict) or art.get("format") != ARTIFACT_FORMAT
                or not isinstance(art.get("sha256"), str) or not isinstance(art.get("size"), int)):
            raise StackError(f"binary cache {self.describe(_record_rel(full_hash))}: the record "
                             f"has no {ARTIFACT_FORMAT} artifact description")
        raw = self._open(rel, art["size"])
        try:
            size = os.fstat(raw.fileno()).st_size
            digest = "" if size != art["size"] else hashlib.file_digest(raw, "sha256").hexdigest()
            if (digest, size) != (art["sha256"], art["size"]):
                shown = digest or "not computed"
                raise StackError(f"binary cache {self.describe(rel)}: the artifact is not the "
                                 f"recorded one ({size} bytes with sha256 {shown}, recorded "
                                 f"{art['size']} bytes with sha256 {art['sha256']})")
            raw.seek(0)
        except OSError as e:
            raw.close()
            raise StackError(f"binary cache {self.describe(rel)}: {e}") from None
        except BaseException:
            raw.close()
            raise
        return raw

    def open_artifact(self, full_hash: str) -> BinaryIO:
        """The stored install tree of ``full_hash`` as a plain tar stream; its compressed
        bytes are verified against the record before it is returned (a StackError naming the
        key otherwise)."""
        raw = self._verified_artifact(full_hash)
        return io.BufferedReader(_Decompressed(raw, self.describe(_artifact_rel(full_hash))),
                                 _BLOCK)

    def unpack(self, full_hash: str, dest: str | os.PathLike[str]) -> None:
        """Extract the build of ``full_hash`` as ``dest`` (absent or an empty directory); it
        appears only once complete. The artifact is verified before anything is extracted."""
        dest = Path(dest)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise StackError(f"binary cache: cannot unpack {full_hash} into {dest}: not an "
                             "empty directory")
        where = f"binary cache {self.describe(_artifact_rel(full_hash))}"
        with self.open_artifact(full_hash) as stream:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.unpack-", dir=dest.parent))
            try:
                extract_tar(stream, tmp, what=where, absolute_links=True, keep_modes=True)
                if dest.exists():
                    dest.rmdir()
                os.rename(tmp, dest)
            finally:
                if tmp.exists():
                    _remove_tree(tmp)

    def list(self) -> Iterator[str]:
        """The full hashes that have a record."""
        for rel in self._record_rels():
            m = _RECORD.fullmatch(rel)
            if m and m[2].startswith(m[1]):
                yield m[2]


# -- packing and reading ----------------------------------------------------------------------

class _HashingWriter:
    """A write-only file that hashes and counts what goes through it."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def pack_tree(root: Path, out: BinaryIO) -> dict[str, Any]:
    """Write ``root`` as a deterministic pax tar compressed with zstd to ``out``; the
    ``artifact`` description of the record."""
    hw = _HashingWriter(out)
    files = total = 0
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1)
    with cctx.stream_writer(hw, closefd=False) as zw, \
            tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        pending = [(root, ".")]
        while pending:
            path, arcname = pending.pop()
            ti = tar.gettarinfo(str(path), arcname)
            if ti is None or not (ti.isreg() or ti.isdir() or ti.issym() or ti.islnk()):
                raise StackError(f"binary cache: {path} is not a file, directory or link "
                                 "(special files are not stored)")
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            ti.mtime = int(ti.mtime)
            if ti.isreg():
                files += 1
                total += ti.size
                with open(path, "rb") as f:
                    tar.addfile(ti, f)
            else:
                tar.addfile(ti)
            if ti.isdir():
                names = sorted(os.listdir(path), reverse=True)   # popped in sorted order
                prefix = "" if arcname == "." else arcname + "/"
                pending.extend((path / n, prefix + n) for n in names)
    return {"format": ARTIFACT_FORMAT, "sha256": hw.digest.hexdigest(), "size": hw.size,
            "files": files, "bytes": total}


class _Decompressed(io.RawIOBase):
    """The decompressed tar of a verified artifact; a zstd error is a StackError naming the
    cache key."""

    def __init__(self, raw: BinaryIO, where: str) -> None:
        self._raw = raw
        self._where = where
        self._z = zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=_BLOCK, read_across_frames=True, closefd=False)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._z.read(len(buffer))
        except zstandard.ZstdError as e:
            raise StackError(f"binary cache {self._where}: the artifact does not decompress "
                             f"({e})") from None
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._z.close()
            self._raw.close()
        super().close()


def _remove_tree(path: Path) -> None:
    """Remove a partly extracted tree, also one with read-only directories in it (what
    cannot be removed is left: the caller is already reporting an error)."""
    def writable_and_retry(func: Any, name: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            parent = os.path.dirname(name)
            if not os.path.islink(parent):
                os.chmod(parent, 0o700)
            func(name)

    shutil.rmtree(path, onerror=writable_and_retry)


# -- backends ---------------------------------------------------------------------------------

class DirectoryBinaryCache(BinaryCache):
    """A binary cache in a local (or shared) directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()

    def describe(self, rel: str = "") -> str:
        return str(self.root / rel) if rel else str(self.root)

    def _exists(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def _get(self, rel: str) -> bytes | None:
        try:
            return (self.root / rel).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StackError(f"binary cache {self.describe(rel)}: {e.strerror}") from None

    def _new_temp(self, rel: str) -> Path:
        where = (self.root / rel).parent
        try:
            where.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".tmp-", dir=where)
        except OSError as e:
            raise StackError(f"binary cache {where}: {e.strerror}") from None
        os.close(fd)
        return Path(name)

    def _store_file(self, rel: str, tmp: Path) -> None:
        final = self.root / rel
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
        fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _open(self, rel: str, limit: int) -> BinaryIO:
        try:
            return open(self.root / rel, "rb")
        except OSError as e:
            raise StackError(f"binary cache {self.describe(rel)}: {e.strerror}") from None

    def _record_rels(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for sub in sorted(self.root.iterdir()):
            if len(sub.name) == 2 and sub.is_dir():
                for f in sorted(sub.glob("*.json")):
                    yield f"{sub.name}/{f.name}"

    @contextlib.contextmanager
    def _locked(self, full_hash: str) -> Iterator[None]:
        lock = self.root / full_hash[:2] / f".{full_hash}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            yield


class S3BinaryCache(BinaryCache):
    """A binary cache in an S3 bucket below a key prefix (through
    :class:`~pycvmfs.storage.s3.S3Storage`); downloads are spooled to ``spool`` (default: the
    system's temporary directory) before they are read."""

    def __init__(self, bucket: str, *, prefix: str = "", endpoint_url: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None,
                 spool: str | os.PathLike[str] | None = None) -> None:
        from pycvmfs.storage.s3 import S3Storage

        try:
            self.storage = S3Storage(bucket, endpoint_url=endpoint_url,
                                     prefix=prefix.strip("/"), access_key=access_key,
                                     secret_key=secret_key)
        except CvmfsError as e:
            raise StackError(f"binary cache s3://{bucket}/{prefix.strip('/')}: {e}") from None
        self.spool = Path(spool) if spool is not None else None

    def describe(self, rel: str = "") -> str:
        return self.storage.describe(rel)

    def _call(self, rel: str, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except (CvmfsError, OSError) as e:
            if isinstance(e, StackError):
                raise
            raise StackError(f"binary cache {self.describe(rel)}: {e}") from None

    def _exists(self, rel: str) -> bool:
        return bool(self._call(rel, self.storage.exists, rel))

    def _get(self, rel: str) -> bytes | None:
        try:
            return self.storage.fetch(rel, b"".join, what=self.describe(rel))
        except ObjectNotFoundError:
            return None
        except (CvmfsError, OSError) as e:
            raise StackError(f"binary cache {self.describe(rel)}: {e}") from None

    def _new_temp(self, rel: str) -> Path:
        fd, name = tempfile.mkstemp(prefix="pycvmfs-bincache-", dir=self.spool)
        os.close(fd)
        return Path(name)

    def _store_file(self, rel: str, tmp: Path) -> None:
        try:
            self._call(rel, self.storage.upload_path, rel, tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def _open(self, rel: str, limit: int) -> BinaryIO:
        spooled = tempfile.TemporaryFile(dir=self.spool)  # noqa: SIM115 (the caller closes it)

        def consume(blocks: Iterator[bytes]) -> None:
            n = 0
            for block in blocks:
                n += len(block)
                if n > limit:
                    raise StackError(f"binary cache {self.describe(rel)}: larger than the "
                                     f"recorded {limit} bytes")
                spooled.write(block)

        try:
            self._call(rel, self.storage.fetch, rel, consume, what=self.describe(rel))
        except BaseException:
            spooled.close()
            raise
        spooled.seek(0)
        return spooled  # type: ignore[return-value]

    def _record_rels(self) -> Iterator[str]:
        it = self._call("", self.storage.list, "")
        while True:
            try:
                rel = self._call("", next, it)
            except StopIteration:
                return
            if rel.endswith(".json"):
                yield rel


def open_binary_cache(spec: str | os.PathLike[str]) -> BinaryCache:
    """``DIR``, ``file:///DIR`` or ``s3://bucket[/prefix][?endpoint=http://host:port]``
    (the endpoint defaults to ``AWS_ENDPOINT_URL``; credentials come from the environment)."""
    text = os.fspath(spec)
    parts = urlsplit(text)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise StackError(f"binary cache {text!r}: no bucket (s3://bucket[/prefix])")
        query = parse_qs(parts.query)
        endpoint = (query.get("endpoint") or [os.environ.get("AWS_ENDPOINT_URL") or None])[0]
        return S3BinaryCache(parts.netloc, prefix=unquote(parts.path).strip("/"),
                             endpoint_url=endpoint)
    if parts.scheme == "file":
        return DirectoryBinaryCache(unquote(parts.path))
    if parts.scheme and len(parts.scheme) > 1:
        raise StackError(f"binary cache {text!r}: unsupported scheme {parts.scheme!r} "
                         "(a directory, file:// or s3://)")
    return DirectoryBinaryCache(text)
