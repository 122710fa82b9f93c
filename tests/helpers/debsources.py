"""Sources of the real-package test stack (``tests/stacks/realstack/``).

Upstream C libraries come as Debian's ``.orig`` tarballs (the upstream release, sometimes with
non-free files removed) from deb.debian.org, pinned by sha256 (:data:`DEBIAN_SOURCES`).
:func:`fetch_sources` downloads each one once into a cache directory, verified; the tests then
put ``file://`` URLs of the cached files in front of the Debian URLs (:func:`localise_stack`), so
a build reads the cache first and only goes to the network when the cache is missing.

Our own packages (``pngxml``, ``toygen``) have their sources in ``realstack/src/<name>/``;
:func:`make_local_tarball` packs such a directory into a deterministic ``.tar.gz`` (sorted names,
mtime 0, owner 0/0, normalised modes, no gzip name or time stamp), so its sha256 is fixed and
``stack.yaml`` can pin it (``test_realstack.py`` checks the pinned values are current). The
bytes depend on zlib's deflate at level 9, stable across zlib 1.2/1.3 (a zlib-ng ``libz`` would
give other bytes: the check then says which sha256 to write).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import urllib3
import yaml

from pycvmfs.errors import StackError

REALSTACK = Path(__file__).resolve().parents[1] / "stacks" / "realstack"
_DEB = "https://deb.debian.org/debian/pool/main"
_SECURITY = "https://deb.debian.org/debian-security/pool/updates/main"


@dataclass(frozen=True)
class DebSource:
    """One Debian ``.orig`` tarball: the stack package it feeds, the file name, its sha256 and
    the URLs giving it (main pool first, then the security pool where it is also there, then
    snapshot.debian.org's by-SHA-1 archive for when bookworm's pool has dropped it)."""

    name: str
    filename: str
    sha256: str
    urls: tuple[str, ...]


def _deb(name: str, pool_dir: str, filename: str, sha256: str, sha1: str, *,
         security: bool) -> DebSource:
    quoted = filename.replace("+", "%2b")
    urls = [f"{_DEB}/{pool_dir}/{quoted}"]
    if security:
        urls.append(f"{_SECURITY}/{pool_dir}/{quoted}")
    urls.append(f"https://snapshot.debian.org/file/{sha1}")
    return DebSource(name, filename, sha256, tuple(urls))


#: The upstream packages of the real test stack, by stack package name.
DEBIAN_SOURCES: dict[str, DebSource] = {s.name: s for s in (
    _deb("zlib", "z/zlib", "zlib_1.2.13.dfsg.orig.tar.bz2",
         "71feb7947e3c00ef125f83b79a4e529bde31171e5babe48b391f06758d1ab0a1",
         "4fec854a7c5fe543e44c12afa365642c0e6b5ded", security=False),
    _deb("xz", "x/xz-utils", "xz-utils_5.4.1.orig.tar.xz",
         "5d9827aa1875b21c288f78864bb26d2650b436ea8d2cad364e4921eb6266a5a5",
         "8facb914772e5963d86f9cdd781c928009879b3b", security=True),
    _deb("libpng", "libp/libpng1.6", "libpng1.6_1.6.39.orig.tar.gz",
         "a00e9d2f2f664186e4202db9299397f851aea71b36a35e74910b8820e380d441",
         "d384c4526a84d213f697108258c490adc99b4cdb", security=True),
    _deb("libxml2", "libx/libxml2", "libxml2_2.9.14+dfsg.orig.tar.xz",
         "4fe913dec8b1ab89d13b489b419a8203176ea39e931eaa0d25b17eafb9c279e9",
         "b41615e638174b4e36845c68d4b305dd6a6b541f", security=True),
    _deb("expat", "e/expat", "expat_2.5.0.orig.tar.gz",
         "ab00ee05c7067fd10a35c5d2a4922ebba746ddd50ff83b79c828da17bbdf1757",
         "03d9882ede56aa48919fbf50fe17614630257a82", security=True),
    _deb("lz4", "l/lz4", "lz4_1.9.4.orig.tar.gz",
         "0b0e3aa07c8c063ddf40b082bdf7e37a1562bda40a0ff5272957f3e987e0e54b",
         "1d262fd78a0dbaa409e764979c6a643d0370f8d1", security=False),
    _deb("libyaml", "liby/libyaml", "libyaml_0.2.5.orig.tar.gz",
         "fa240dbf262be053f3898006d502d514936c818e422afdcf33921c63bed9bf2e",
         "db474288fde305468602e051d963c6936ef5a9ae", security=False),
)}

#: Our own packages: stack name -> (directory below realstack/src, tarball name).
LOCAL_PACKAGES: dict[str, tuple[str, str]] = {
    "pngxml": ("pngxml", "pngxml-1.0.tar.gz"),
    "toygen": ("toygen", "toygen-1.0.tar.gz"),
}

_ATTEMPTS = 3
_BLOCK = 1 << 20


def default_cache() -> Path:
    """``$PYCVMFS_TEST_SOURCES``, else ``~/.cache/pycvmfs-tests/sources``."""
    env = os.environ.get("PYCVMFS_TEST_SOURCES")
    return Path(env) if env else Path.home() / ".cache" / "pycvmfs-tests" / "sources"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def _download(http: urllib3.PoolManager, url: str, dest: Path, sha256: str) -> None:
    """One attempt: stream ``url`` into a temporary file next to ``dest``, check, rename."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    h = hashlib.sha256()
    try:
        resp = http.request("GET", url, preload_content=False, timeout=urllib3.Timeout(30, 120),
                            retries=False)
        try:
            if resp.status != 200:
                raise StackError(f"{url}: HTTP {resp.status}")
            with open(tmp, "wb") as out:
                for block in resp.stream(_BLOCK):
                    h.update(block)
                    out.write(block)
        finally:
            resp.release_conn()
        if h.hexdigest() != sha256:
            raise StackError(f"{url}: sha256 {h.hexdigest()}, expected {sha256}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch_source(src: DebSource, dest: Path | None = None, *, pause: float = 1.0) -> Path:
    """The verified local copy of ``src`` in ``dest`` (default :func:`default_cache`), downloaded
    when missing or damaged: each URL in order, each tried 3 times with growing pauses (``pause``
    then twice that) between attempts, except after a 404 (the next URL at once); a StackError
    naming every URL and its failure when none gives the bytes."""
    dest = Path(dest) if dest is not None else default_cache()
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / src.filename
    if path.is_file() and file_sha256(path) == src.sha256:
        return path
    failures: list[str] = []
    with urllib3.PoolManager() as http:
        for url in src.urls:
            for attempt in range(_ATTEMPTS):
                try:
                    _download(http, url, path, src.sha256)
                    return path
                except (StackError, urllib3.exceptions.HTTPError, OSError) as exc:
                    failures.append(f"{url} (attempt {attempt + 1}): {exc}")
                    if isinstance(exc, StackError) and "HTTP 404" in str(exc):
                        break    # not there: the next URL, no retries
                    if attempt + 1 < _ATTEMPTS:
                        time.sleep(pause * 2 ** attempt)
    raise StackError(f"cannot download {src.filename} for package {src.name} into {dest}:\n  "
                     + "\n  ".join(failures))


def fetch_sources(dest: Path | None = None) -> dict[str, Path]:
    """Every tarball of :data:`DEBIAN_SOURCES`, by package name (see :func:`fetch_source`)."""
    return {name: fetch_source(src, dest) for name, src in DEBIAN_SOURCES.items()}


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    if info.isdir() or info.mode & 0o111:
        info.mode = 0o755
    else:
        info.mode = 0o644
    return info


def make_local_tarball(src_dir: Path, dest: Path) -> tuple[Path, str]:
    """Pack ``src_dir`` into ``dest`` (``<name>-<version>.tar.gz``; the one top directory of the
    tarball is ``<name>-<version>``) deterministically; returns ``(dest, sha256)``.

    Regular files and directories only (sorted; a symlink or other special file is refused with
    its path named), owner 0/0 without names, mtime 0, modes 0755/0644 (executable or not),
    ustar format, gzip level 9 without file name or time stamp."""
    src_dir, dest = Path(src_dir), Path(dest)
    if not src_dir.is_dir():
        raise StackError(f"{src_dir}: no such source directory")
    top = dest.name.removesuffix(".tar.gz")
    if top == dest.name:
        raise StackError(f"{dest}: the tarball name must end in .tar.gz")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(_normalised(tar.gettarinfo(str(src_dir), arcname=top)))
        for path in sorted(src_dir.rglob("*"), key=lambda p: p.relative_to(src_dir).parts):
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                raise StackError(f"{path}: only regular files and directories can be packed")
            info = _normalised(tar.gettarinfo(str(path),
                                              arcname=f"{top}/{path.relative_to(src_dir)}"))
            if path.is_file():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    with open(tmp, "wb") as out, gzip.GzipFile(filename="", mode="wb", fileobj=out,
                                               compresslevel=9, mtime=0) as gz:
        gz.write(raw.getvalue())
    os.replace(tmp, dest)
    return dest, file_sha256(dest)


def local_tarballs(dest: Path) -> dict[str, tuple[Path, str]]:
    """The tarballs of :data:`LOCAL_PACKAGES`, made in ``dest``: name -> (path, sha256)."""
    return {name: make_local_tarball(REALSTACK / "src" / sub, Path(dest) / tarball)
            for name, (sub, tarball) in LOCAL_PACKAGES.items()}


def _absolute_patch(patch: str | dict, base: Path) -> str | dict:
    if isinstance(patch, dict):
        return {**patch, "path": str((base / patch["path"]).resolve())}
    return str((base / patch).resolve())


def localise_stack(dest: Path, files: Mapping[str, Path], *, src: Path = REALSTACK) -> Path:
    """Copy the description files of ``src`` (``*.yaml``) into ``dest`` with each package's
    source URLs rewritten: when ``files`` maps its sha256 to a local file, ``file://<file>``
    comes first; for our own packages (URLs under ``file:///realstack-src/``) it replaces them.
    Returns ``dest/stack.yaml``. Includes stay relative, so they resolve inside ``dest``;
    patches become absolute paths of the original files."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(src).glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for name, pkg in (doc.get("packages") or {}).items():
            source = (pkg or {}).get("source")
            if not source or "url" not in source:
                continue
            urls = source["url"] if isinstance(source["url"], list) else [source["url"]]
            local = files.get(str(source.get("sha256", "")).lower())
            placeholder = [u for u in urls if u.startswith("file:///realstack-src/")]
            if placeholder and local is None:
                raise StackError(f"{path}: package {name}: no local tarball given for "
                                 f"{placeholder[0]} (sha256 {source.get('sha256')})")
            kept = [u for u in urls if u not in placeholder]
            source["url"] = ([Path(local).resolve().as_uri()] if local else []) + kept
        for pkg in (doc.get("packages") or {}).values():
            if pkg and pkg.get("patches"):     # still the originals, wherever the copy is
                pkg["patches"] = [_absolute_patch(p, path.parent) for p in pkg["patches"]]
        (dest / path.name).write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return dest / "stack.yaml"
