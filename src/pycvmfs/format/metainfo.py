"""Meta-info (``M`` objects): the stock JSON skeleton uploaded by ``mkfs``, and parsing."""

from __future__ import annotations

import json

from pycvmfs.errors import FormatError

__all__ = ["EMPTY_METAINFO", "STOCK_SKELETON", "make_skeleton", "parse_metainfo"]


def _skeleton() -> bytes:
    # The placeholder document of `cvmfs_server mkfs`, laid out as its here-document is (the
    # irregular alignment, the blank line before "custom" and the final newline included).
    lines = [
        "{",
        '  "administrator" : "Your Name",',
        '  "email"         : "you@organisation.org",',
        '  "organisation"  : "Your Organisation",',
        '  "description"   : "Repository content",',
        '  "url"           : "Project website",',
        '  "recommended-stratum0":  "stratum 0 url",',
        '  "recommended-stratum1s" : [ "stratum1 url", "stratum1 url" ],',
        "",
        '  "custom" : {',
        '    "_comment" : "Put arbitrary structured data here"',
        "  }",
        "}",
    ]
    return ("\n".join(lines) + "\n").encode("ascii")


#: The meta-info object stock ``cvmfs_server mkfs`` uploads (385 bytes, before compression).
#: It holds nothing repository-specific, so it is the same for every repository.
STOCK_SKELETON: bytes = _skeleton()

#: What ``cvmfs_publish mkfs`` stores instead.
EMPTY_METAINFO: bytes = b"{}"


def make_skeleton(fqrn: str | None = None) -> bytes:
    """The meta-info skeleton for a new repository; ``fqrn`` is accepted for symmetry but does
    not appear in it (the stock skeleton is a constant)."""
    return STOCK_SKELETON


def parse_metainfo(data: bytes | bytearray | memoryview, *, what: str = "meta-info") -> dict:
    """Decode a (decompressed) meta-info object; it must be a JSON object in UTF-8."""
    try:
        value = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FormatError(f"{what}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise FormatError(f"{what}: the JSON document is a {type(value).__name__}, "
                          "not an object")
    return value
