"""Content hashes: algorithms, textual and fingerprint forms, object suffixes and storage paths."""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass
from typing import Protocol

from pycvmfs.errors import FormatError

__all__ = [
    "Algorithm",
    "ContentHash",
    "Hasher",
    "ObjectKind",
    "hash_bytes",
    "md5_pair",
    "new_hasher",
    "object_path",
]

DIGEST_SIZE = 20  # every content hash is 20 bytes (SHA-1, RIPEMD-160, SHAKE-128/160)


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def digest(self) -> bytes: ...


class Algorithm(enum.Enum):
    """Content-hash algorithms; values are the catalog flag codes (flags bits 8-10)."""

    SHA1 = 0
    RMD160 = 1
    SHAKE128 = 2

    @property
    def suffix(self) -> str:
        """The algorithm id appended to the hex digest in textual form."""
        return _TEXT_SUFFIX[self]

    @property
    def config_name(self) -> str:
        """The name used by ``CVMFS_HASH_ALGORITHM``."""
        return _CONFIG_NAME[self]

    @property
    def flag_code(self) -> int:
        return self.value

    @classmethod
    def from_config_name(cls, name: str) -> Algorithm:
        for algo, n in _CONFIG_NAME.items():
            if n == name.strip().lower():
                return algo
        raise FormatError(f"unknown hash algorithm {name!r} (expected sha1, rmd160 or shake128)")

    @classmethod
    def from_flag_code(cls, code: int) -> Algorithm:
        try:
            return cls(code)
        except ValueError:
            raise FormatError(f"unknown hash algorithm code {code} in catalog flags") from None

    def new(self) -> Hasher:
        return new_hasher(self)


_TEXT_SUFFIX = {Algorithm.SHA1: "", Algorithm.RMD160: "-rmd160", Algorithm.SHAKE128: "-shake128"}
_CONFIG_NAME = {Algorithm.SHA1: "sha1", Algorithm.RMD160: "rmd160", Algorithm.SHAKE128: "shake128"}
# textual length -> algorithm (the stock parser chooses by length only)
_BY_TEXT_LENGTH = {40: Algorithm.SHA1, 47: Algorithm.RMD160, 49: Algorithm.SHAKE128}
_HEX = frozenset("0123456789abcdef")


class ObjectKind(enum.StrEnum):
    """Object kinds and the suffix letter their storage names carry."""

    FILE = ""
    PARTIAL = "P"  # one chunk of a chunked file
    CATALOG = "C"
    HISTORY = "H"
    CERTIFICATE = "X"
    METAINFO = "M"

    @property
    def suffix(self) -> str:
        return self.value

    @property
    def label(self) -> str:
        return _KIND_LABEL[self]


_KIND_LABEL = {
    ObjectKind.FILE: "data object",
    ObjectKind.PARTIAL: "chunk",
    ObjectKind.CATALOG: "catalog",
    ObjectKind.HISTORY: "history database",
    ObjectKind.CERTIFICATE: "certificate",
    ObjectKind.METAINFO: "meta-info object",
}


class _Shake128_160:
    """SHAKE-128 squeezed to 160 bits, with the usual hashlib interface."""

    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h = hashlib.shake_128()

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.digest(DIGEST_SIZE)

    def hexdigest(self) -> str:
        return self._h.hexdigest(DIGEST_SIZE)


def _ripemd160_factory():
    try:
        hashlib.new("ripemd160")
    except (ValueError, TypeError):  # OpenSSL 3 without the legacy provider
        from Crypto.Hash import RIPEMD160  # pycryptodome, a C implementation

        return RIPEMD160.new
    return lambda: hashlib.new("ripemd160")


_RIPEMD160 = _ripemd160_factory()


def new_hasher(algorithm: Algorithm) -> Hasher:
    """A fresh incremental hasher for ``algorithm`` (runs in C and releases the GIL)."""
    if algorithm is Algorithm.SHA1:
        return hashlib.sha1()
    if algorithm is Algorithm.SHAKE128:
        return _Shake128_160()
    return _RIPEMD160()


@dataclass(frozen=True, slots=True)
class ContentHash:
    """A content hash: algorithm plus 20-byte digest. ``str()`` gives the textual form."""

    algorithm: Algorithm
    digest: bytes

    def __post_init__(self) -> None:
        if len(self.digest) != DIGEST_SIZE:
            raise FormatError(f"content hash digest must be {DIGEST_SIZE} bytes, "
                              f"not {len(self.digest)}")

    # -- textual forms -------------------------------------------------------------------
    @property
    def hex(self) -> str:
        return self.digest.hex()

    def __str__(self) -> str:
        return self.digest.hex() + self.algorithm.suffix

    def __repr__(self) -> str:
        return f"ContentHash({str(self)!r})"

    @property
    def is_null(self) -> bool:
        return not any(self.digest)

    def null_text(self) -> str:
        """How the stock tools write a null hash: exactly 40 zeros, whatever the algorithm."""
        return "0" * 40

    @classmethod
    def null(cls, algorithm: Algorithm = Algorithm.SHA1) -> ContentHash:
        return cls(algorithm, bytes(DIGEST_SIZE))

    @classmethod
    def parse(cls, text: str | bytes, *, what: str = "hash") -> ContentHash:
        """Parse the textual form; the algorithm follows from the length, as in stock."""
        if isinstance(text, bytes | bytearray):
            try:
                text = bytes(text).decode("ascii")
            except UnicodeDecodeError:
                raise FormatError(f"{what}: not a textual content hash") from None
        algo = _BY_TEXT_LENGTH.get(len(text))
        if algo is None or not text.endswith(algo.suffix) or not _HEX.issuperset(text[:40]):
            raise FormatError(f"{what}: {text[:80]!r} is not a textual content hash")
        return cls(algo, bytes.fromhex(text[:40]))

    @classmethod
    def parse_optional(cls, text: str | bytes | None, *, what: str = "hash") -> ContentHash | None:
        """Like :meth:`parse` but absent, empty and all-zero values give ``None``."""
        if text is None:
            return None
        if isinstance(text, bytes | bytearray):
            text = bytes(text).decode("ascii", "replace")
        if text == "" or (text[:40] == "0" * 40 and text[40:] in ("", "-rmd160", "-shake128")):
            return None
        return cls.parse(text, what=what)

    def fingerprint(self) -> str:
        """Whitelist form: ``AB:CD:...:EF`` then the upper-cased algorithm id."""
        pairs = ":".join(f"{b:02X}" for b in self.digest)
        return pairs + self.algorithm.suffix.upper()

    @classmethod
    def parse_fingerprint(cls, text: str, *, what: str = "fingerprint") -> ContentHash:
        """Parse a whitelist fingerprint (colons removed, lower-cased, then by length)."""
        return cls.parse(text.replace(":", "").lower(), what=what)

    # -- storage names -------------------------------------------------------------------
    def object_name(self, kind: ObjectKind = ObjectKind.FILE) -> str:
        """``<textual hash><suffix>``, the object's name without directory."""
        return str(self) + kind.suffix

    def object_path(self, kind: ObjectKind = ObjectKind.FILE) -> str:
        """``data/XX/<rest>`` relative to the repository base URL."""
        return object_path(self, kind)

    def describe(self, kind: ObjectKind = ObjectKind.FILE) -> str:
        return f"{kind.label} {self.object_name(kind)}"


def object_path(h: ContentHash, kind: ObjectKind = ObjectKind.FILE) -> str:
    text = str(h)
    return f"data/{text[:2]}/{text[2:]}{kind.suffix}"


def parse_object_name(name: str) -> tuple[ContentHash, ObjectKind]:
    """Split a storage object name (``<text><suffix>`` without ``data/XX/``) into hash and kind."""
    for kind in (ObjectKind.PARTIAL, ObjectKind.CATALOG, ObjectKind.HISTORY,
                 ObjectKind.CERTIFICATE, ObjectKind.METAINFO):
        if name.endswith(kind.suffix) and len(name) - 1 in _BY_TEXT_LENGTH:
            try:
                return ContentHash.parse(name[:-1]), kind
            except FormatError:
                break
    return ContentHash.parse(name, what=f"object name {name!r}"), ObjectKind.FILE


def hash_bytes(data: bytes | bytearray | memoryview,
               algorithm: Algorithm = Algorithm.SHA1) -> ContentHash:
    h = new_hasher(algorithm)
    h.update(data)
    return ContentHash(algorithm, h.digest())


def md5_pair(path: bytes) -> tuple[int, int]:
    """The two signed little-endian 64-bit halves of MD5(path), as catalogs key entries."""
    return struct.unpack("<qq", hashlib.md5(path).digest())


MD5_EMPTY_HEX = "d41d8cd98f00b204e9800998ecf8427e"
