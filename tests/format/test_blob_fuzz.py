"""Property tests of the xattr blob codec: arbitrary input fails cleanly, valid maps round-trip."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pycvmfs.errors import FormatError
from pycvmfs.format.xattr import decode_xattrs, encode_xattrs

keys = st.binary(min_size=1, max_size=255).filter(lambda k: b"\0" not in k)
values = st.binary(max_size=255)
attribute_maps = st.dictionaries(keys, values, max_size=40)


def well_formed_entries() -> st.SearchStrategy[bytes]:
    """Blobs with the right version and plausible entry headers (so decoding gets far)."""

    def build(entries: list[tuple[bytes, bytes]], junk: bytes) -> bytes:
        body = b"".join(bytes((len(k), len(v))) + k + v for k, v in entries)
        return bytes((1, len(entries))) + body + junk

    return st.builds(build, st.lists(st.tuples(st.binary(max_size=6), st.binary(max_size=6)),
                                     max_size=6),
                     st.binary(max_size=2))


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=64), well_formed_entries()))
@example(b"\x01\x00")
@example(b"\x01\x01\x01\x00a")
def test_decode_raises_only_format_error_or_round_trips(blob: bytes) -> None:
    try:
        attrs = decode_xattrs(blob, what="fuzz")
    except FormatError as e:
        assert str(e).startswith("fuzz: ")
        return
    if attrs:
        assert encode_xattrs(attrs, what="fuzz") == blob
    else:
        assert blob == b"\x01\x00"


@settings(max_examples=300, deadline=None)
@given(attribute_maps)
def test_encode_decode_round_trip(attrs: dict[bytes, bytes]) -> None:
    blob = encode_xattrs(attrs, what="fuzz")
    if not attrs:
        assert blob is None
        return
    assert blob is not None
    decoded = decode_xattrs(blob, what="fuzz")
    assert decoded == attrs
    assert list(decoded) == sorted(attrs)
    assert blob[:2] == bytes((1, len(attrs)))


@settings(max_examples=200, deadline=None)
@given(attribute_maps.filter(bool), st.data())
def test_every_truncation_of_a_valid_blob_is_rejected(attrs: dict[bytes, bytes],
                                                      data: st.DataObject) -> None:
    blob = encode_xattrs(attrs, what="fuzz")
    assert blob is not None
    cut = data.draw(st.integers(min_value=0, max_value=len(blob) - 1))
    try:
        decoded = decode_xattrs(blob[:cut], what="fuzz")
    except FormatError:
        return
    # A prefix can only decode if it is itself a complete, shorter blob: impossible, since
    # the count byte fixes the number of entries.
    raise AssertionError(f"truncated blob {blob[:cut]!r} decoded to {decoded!r}")
