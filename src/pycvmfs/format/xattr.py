"""The extended-attribute BLOB of catalog rows (``catalog.xattr``): decoding and encoding."""

from __future__ import annotations

from collections.abc import Mapping

from pycvmfs.errors import FormatError

__all__ = ["MAX_ATTRIBUTES", "MAX_KEY_LENGTH", "MAX_VALUE_LENGTH", "VERSION",
           "decode_xattrs", "encode_xattrs"]

#: The only blob version there is (first byte).
VERSION = 1
#: Limits of what we write: every length field is one byte (see :func:`encode_xattrs`).
MAX_KEY_LENGTH = 255
MAX_VALUE_LENGTH = 255
MAX_ATTRIBUTES = 255


def decode_xattrs(blob: bytes | bytearray | memoryview, *, what: str) -> dict[bytes, bytes]:
    """Decode an xattr blob into ``{key: value}`` (keys in ascending byte order).

    Layout: version byte ``1``, attribute count ``n``, then ``n`` entries of key length (1 byte),
    value length (1 byte), key bytes, value bytes. ``01 00`` decodes to an empty dict (stock
    writes NULL instead, but its reader accepts it). Raises :class:`FormatError` naming ``what``
    for a wrong version, a truncated entry, bytes after the last entry, an entry with zero-length
    key and value, an empty key, a key containing NUL, and keys that are repeated or not in
    ascending order (stock always writes them sorted; it tolerates the last two, we do not, so
    a decoded blob always re-encodes to the same bytes).
    """
    data = bytes(blob)
    size = len(data)
    if size < 2:
        raise FormatError(f"{what}: xattr blob of {size} bytes is shorter than its 2-byte header")
    if data[0] != VERSION:
        raise FormatError(f"{what}: xattr blob has version {data[0]}, expected {VERSION}")
    count = data[1]
    out: dict[bytes, bytes] = {}
    previous: bytes | None = None
    pos = 2
    for index in range(count):
        if size - pos < 2:
            raise FormatError(f"{what}: xattr blob truncated in the header of entry {index}")
        klen, vlen = data[pos], data[pos + 1]
        if klen + vlen == 0:
            raise FormatError(f"{what}: xattr entry {index} has an empty key and value")
        if klen == 0:
            raise FormatError(f"{what}: xattr entry {index} has an empty key")
        start = pos + 2
        end = start + klen + vlen
        if end > size:
            raise FormatError(f"{what}: xattr blob truncated in entry {index} "
                              f"(needs {end} bytes, has {size})")
        key = data[start:start + klen]
        if b"\0" in key:
            raise FormatError(f"{what}: xattr key {key!r} contains a NUL byte")
        if previous is not None and key <= previous:
            raise FormatError(f"{what}: xattr key {key!r} is repeated or out of order "
                              f"(after {previous!r})")
        out[key] = data[start + klen:end]
        previous = key
        pos = end
    if pos != size:
        raise FormatError(f"{what}: {size - pos} bytes after the last xattr entry")
    return out


def encode_xattrs(attrs: Mapping[bytes, bytes], *, what: str) -> bytes | None:
    """Encode attributes as the catalog blob; ``None`` (a NULL column) when there are none.

    Entries are written in ascending byte order of the keys. Limits: keys of 1 to 255 bytes
    without NUL, values of at most 255 bytes, at most 255 attributes. Anything longer raises
    :class:`FormatError` naming the key and ``what``. (Stock accepts 256 bytes and 256
    attributes but its one-byte length fields wrap: a 256-byte value is published empty, a
    256-byte key or a 256th attribute makes the blob unreadable or empty. We refuse instead.)
    """
    if not attrs:
        return None
    if len(attrs) > MAX_ATTRIBUTES:
        raise FormatError(f"{what}: {len(attrs)} extended attributes, "
                          f"at most {MAX_ATTRIBUTES} can be stored")
    for key, value in attrs.items():
        if not isinstance(key, bytes | bytearray) or not isinstance(value, bytes | bytearray):
            raise TypeError(f"{what}: xattr key {key!r} and its value must be bytes")
    parts: list[bytes] = [bytes((VERSION, len(attrs)))]
    for key in sorted(attrs):
        value = attrs[key]
        if not key:
            raise FormatError(f"{what}: empty xattr key")
        if b"\0" in key:
            raise FormatError(f"{what}: xattr key {bytes(key)!r} contains a NUL byte")
        if len(key) > MAX_KEY_LENGTH:
            raise FormatError(f"{what}: xattr key {bytes(key)!r} is {len(key)} bytes long, "
                              f"at most {MAX_KEY_LENGTH} can be stored")
        if len(value) > MAX_VALUE_LENGTH:
            raise FormatError(f"{what}: value of xattr {bytes(key)!r} is {len(value)} bytes "
                              f"long, at most {MAX_VALUE_LENGTH} can be stored")
        parts.append(bytes((len(key), len(value))))
        parts.append(bytes(key))
        parts.append(bytes(value))
    return b"".join(parts)
