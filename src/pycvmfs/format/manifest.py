"""The repository manifest (``.cvmfspublished``): key/value body, parsing, export, signing."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric import rsa

from pycvmfs.errors import FormatError
from pycvmfs.format.certificate import Certificate
from pycvmfs.format.hashes import MD5_EMPTY_HEX, Algorithm, ContentHash
from pycvmfs.format.signature import (
    Letter,
    check_letter_hash,
    make_letter,
    sign_pkcs1_sha1,
    split_letter,
    verify_pkcs1_sha1,
)

__all__ = [
    "Manifest",
    "SignedManifest",
    "parse_signed_manifest",
    "sign_manifest",
    "verify_manifest",
]

MANIFEST_NAME = ".cvmfspublished"
_DECIMAL = re.compile(r"[0-9]+")
_UINT64_MAX = (1 << 64) - 1
_KNOWN = frozenset("CBRDSGALNXHTMY")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _uint(value: str, key: str, what: str) -> int:
    if len(value) > 20 or not _DECIMAL.fullmatch(value) or int(value) > _UINT64_MAX:
        raise FormatError(f"{what}: key {key} must be a decimal number, not {value[:40]!r}")
    return int(value)


def _hash(value: str, key: str, what: str) -> ContentHash:
    return ContentHash.parse(value, what=f"{what}: key {key}")


def _optional_hash(value: str | None, key: str, what: str) -> ContentHash | None:
    return ContentHash.parse_optional(value, what=f"{what}: key {key}")


def parse_keyval(data: bytes) -> dict[str, str]:
    """Stock ``ParseKeyvalMem``: one ``<key byte><value>`` per line, up to a ``--`` line.

    Empty lines are skipped; later keys overwrite earlier ones except ``Z``, whose values are
    joined with ``|``. Keys are single characters (the first byte), values are UTF-8 text with
    undecodable bytes kept as surrogate escapes, so that export reproduces them.
    """
    content: dict[str, str] = {}
    for line in bytes(data).split(b"\n"):
        if line == b"--":
            break
        if not line:
            continue
        key = chr(line[0])
        value = _text(line[1:])
        if key == "Z" and key in content:
            content[key] += "|" + value
        else:
            content[key] = value
    return content


@dataclass
class Manifest:
    """Every field of ``.cvmfspublished``; optional hashes are ``None`` when absent or null."""

    root_catalog: ContentHash  # C
    root_catalog_size: int = 0  # B: size of the uncompressed root catalog
    root_path_md5: str = MD5_EMPTY_HEX  # R
    ttl: int = 240  # D
    revision: int = 0  # S
    garbage_collectable: bool = False  # G
    alt_catalog_paths: bool = False  # A
    micro_catalog: ContentHash | None = None  # L (reserved)
    fqrn: str | None = None  # N
    certificate: ContentHash | None = None  # X
    history: ContentHash | None = None  # H
    publish_timestamp: int = 0  # T
    meta_info: ContentHash | None = None  # M
    reflog: ContentHash | None = None  # Y
    unknown: dict[str, str] = field(default_factory=dict)  # other keys (Z joined with "|")

    @classmethod
    def parse(cls, data: bytes, *, what: str = MANIFEST_NAME) -> Manifest:
        """Parse a manifest body (or a whole signed manifest: parsing stops at ``--``)."""
        kv = parse_keyval(data)
        for key in "CRDS":
            if key not in kv:
                raise FormatError(f"{what}: required key {key} is missing")
        root_path = kv["R"]
        if root_path != MD5_EMPTY_HEX:
            raise FormatError(f"{what}: key R must be MD5('') = {MD5_EMPTY_HEX}, "
                              f"not {root_path[:40]!r}")
        return cls(
            root_catalog=_hash(kv["C"], "C", what),
            root_catalog_size=_uint(kv["B"], "B", what) if "B" in kv else 0,
            root_path_md5=root_path,
            ttl=_uint(kv["D"], "D", what),
            revision=_uint(kv["S"], "S", what),
            garbage_collectable=kv.get("G") == "yes",
            alt_catalog_paths=kv.get("A") == "yes",
            micro_catalog=_optional_hash(kv.get("L"), "L", what),
            fqrn=kv.get("N") or None,
            certificate=_optional_hash(kv.get("X"), "X", what),
            history=_optional_hash(kv.get("H"), "H", what),
            publish_timestamp=_uint(kv["T"], "T", what) if "T" in kv else 0,
            meta_info=_optional_hash(kv.get("M"), "M", what),
            reflog=_optional_hash(kv.get("Y"), "Y", what),
            unknown={k: v for k, v in kv.items() if k not in _KNOWN},
        )

    def export(self, *, include_unknown: bool = False) -> bytes:
        """The body as stock ``ExportString`` writes it: ``C B R D S G A`` then ``L N X H T M Y``.

        Stock drops keys it does not know; ``include_unknown`` appends them after ``Y``.
        """
        lines = [
            f"C{self.root_catalog}",
            f"B{self.root_catalog_size}",
            f"R{self.root_path_md5}",
            f"D{self.ttl}",
            f"S{self.revision}",
            "G" + ("yes" if self.garbage_collectable else "no"),
            "A" + ("yes" if self.alt_catalog_paths else "no"),
        ]
        if self.micro_catalog is not None and not self.micro_catalog.is_null:
            lines.append(f"L{self.micro_catalog}")
        if self.fqrn:
            lines.append(f"N{self.fqrn}")
        for key, h in (("X", self.certificate), ("H", self.history)):
            if h is not None and not h.is_null:
                lines.append(f"{key}{h}")
        if self.publish_timestamp > 0:
            lines.append(f"T{self.publish_timestamp}")
        for key, h in (("M", self.meta_info), ("Y", self.reflog)):
            if h is not None and not h.is_null:
                lines.append(f"{key}{h}")
        if include_unknown:
            for key, value in self.unknown.items():
                values = value.split("|") if key == "Z" else [value]
                lines.extend(key + v for v in values)
        for line in lines:
            if "\n" in line or line == "--":
                raise FormatError(f"{MANIFEST_NAME}: cannot write line {line[:40]!r} "
                                  "(newline or '--')")
        return b"".join(line[0].encode("latin-1") + line[1:].encode("utf-8", "surrogateescape")
                        + b"\n" for line in lines)

    @property
    def algorithm(self) -> Algorithm:
        """The repository's hash algorithm: that of the root catalog hash ``C``."""
        return self.root_catalog.algorithm


class SignedManifest(NamedTuple):
    """A parsed ``.cvmfspublished`` together with its letter (body, hash line, signature)."""

    manifest: Manifest
    letter: Letter


def parse_signed_manifest(data: bytes, *, what: str = MANIFEST_NAME) -> SignedManifest:
    """Split and parse a signed manifest without checking its hash or signature."""
    letter = split_letter(data, what=what)
    return SignedManifest(Manifest.parse(letter.body, what=what), letter)


def verify_manifest(data: bytes, certificate: Certificate, *,
                    what: str = MANIFEST_NAME) -> Manifest:
    """Check the body hash and the PKCS#1/SHA-1 signature with the certificate's key, then parse.

    Raises :class:`HashMismatchError` or :class:`SignatureError` for tampered files and
    :class:`FormatError` for malformed ones. The repository name and the whitelist are the
    caller's business (see §2.5).
    """
    letter = split_letter(data, what=what)
    check_letter_hash(letter, what=what)
    verify_pkcs1_sha1(certificate.public_key, letter.hash_bytes, letter.signature, what=what)
    return Manifest.parse(letter.body, what=what)


def sign_manifest(manifest: Manifest, private_key: rsa.RSAPrivateKey) -> bytes:
    """The complete ``.cvmfspublished``; the hash line uses the algorithm of ``C``."""
    return make_letter(manifest.export(), manifest.root_catalog.algorithm,
                       lambda text: sign_pkcs1_sha1(private_key, text))
