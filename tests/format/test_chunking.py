"""Tests of the xor32 content-defined chunker against the stock vectors and the §6.3 rules."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycvmfs.errors import ConfigError
from pycvmfs.format.chunking import (
    DEFAULT_CHUNKING,
    Chunker,
    ChunkingParams,
    cut_points,
    iter_chunks,
    xor32_values,
)

# -- stock test vectors (test/unittests/t_chunk_detectors.cc) ---------------------------------

# T_ChunkDetectors.Xor32: (input byte, xor32 value after it), starting from a zero state
XOR32_VECTOR = [
    (5, 5), (255, 245), (0, 490), (32, 1012), (27, 2035), (11, 4077), (87, 8077),
    (128, 16282), (127, 32587), (224, 65142), (63, 130259), (11, 260525), (1, 521051),
    (103, 1042129), (73, 2084331), (22, 4168640), (235, 8337259), (17, 16674503),
    (3, 33349005), (90, 66698048), (210, 133396050), (163, 266791943), (12, 533583874),
    (79, 1067167819), (53, 2134335651), (2, 4268671300), (100, 4242375404),
    (193, 4189783321), (64, 4084599410), (242, 3874231318), (14, 3453495330),
    (111, 2612023339), (83, 929079301), (253, 1858158839), (207, 3716317473),
    (172, 3137667822), (62, 1980368354), (190, 3960736634), (114, 3626505862),
    (39, 2958044459), (6, 1621121616), (175, 3242243087), (93, 2189518915),
    (238, 84070504), (184, 168140904), (84, 336281732), (29, 672563477), (200, 1345127138),
]

# T_ChunkDetectors.Xor32ChunkDetectorSlow: 100 MiB from the stock PRNG, seed 42
STOCK_PARAMS = ChunkingParams(512000, 1024000, 2048000)
STOCK_DATA_SIZE = 104857600
STOCK_CUT_MARKS = [
    742752, 2790752, 3521796, 4188893, 4940543, 5884591, 7131564,
    8520617, 9159233, 9999783, 11202120, 11778185, 13781177, 15331152,
    16497018, 17410317, 19391774, 20086877, 20763223, 21346744, 22075173,
    22705444, 23557037, 24461261, 25118505, 25663669, 26333579, 27763062,
    28369273, 29586929, 30171732, 30794768, 31811364, 32408599, 33689064,
    34678262, 36410687, 37096663, 37682005, 38269900, 39931592, 41347607,
    42701845, 44350286, 44925654, 45893350, 47770173, 48332690, 49303250,
    49861260, 50727512, 51578678, 52176356, 52949949, 54228704, 54843051,
    55796214, 56694940, 58092222, 59294196, 60381155, 61509784, 62850141,
    63505051, 64168046, 64925423, 66252082, 67232078, 68005369, 68615410,
    69454686, 70276575, 71308716, 73356716, 73946267, 74775664, 75509293,
    77487075, 78606807, 79732133, 80467148, 81185709, 82588680, 83547234,
    84220971, 85992169, 86979928, 87845294, 88392648, 89241756, 89980293,
    91129752, 91891024, 92493793, 93792263, 94393106, 95782791, 96813116,
    97723756, 98618891, 99707336, 101755336, 103405168, 104269441,
]

_LCG_A = 6364136223846793005
_LCG_C = 1442695040888963407


def _lcg_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(A_j, C_j) for j = 1..n with state_j = A_j * state_0 + C_j mod 2^64, by doubling."""
    a = np.array([_LCG_A], dtype=np.uint64)
    c = np.array([_LCG_C], dtype=np.uint64)
    while len(a) < n:
        a, c = np.concatenate([a, a * a[-1]]), np.concatenate([c, a * c[-1] + c])
    return a[:n], c[:n]


def stock_prng_bytes(size: int, seed: int = 42, block: int = 1 << 20) -> np.ndarray:
    """Bytes of the stock ``Prng::Next(256)``: advance, then uint64(double(state)*256/2^64)."""
    a, c = _lcg_tables(block)
    out = np.empty(size, dtype=np.uint8)
    state = np.uint64(seed)
    for pos in range(0, size, block):
        n = min(block, size - pos)
        states = a[:n] * state + c[:n]
        scaled = states.astype(np.float64) * (256.0 / 2.0**64)  # exact: a power of two
        out[pos : pos + n] = scaled.astype(np.uint64).astype(np.uint8)  # % 256
        state = states[n - 1]
    return out


@pytest.fixture(scope="module")
def stock_data() -> np.ndarray:
    return stock_prng_bytes(STOCK_DATA_SIZE)


def test_stock_prng_matches_scalar_definition():
    state, expected = 42, []
    for _ in range(2000):
        state = (state * _LCG_A + _LCG_C) % 2**64
        expected.append(int(float(state) * 256 / 2**64) % 256)
    assert stock_prng_bytes(2000, block=256).tolist() == expected


def test_xor32_values_follow_stock_sequence():
    inputs = bytes(b for b, _ in XOR32_VECTOR)
    assert xor32_values(inputs).tolist() == [x for _, x in XOR32_VECTOR]


def test_stock_cut_marks_reproduced(stock_data):
    cuts = cut_points(stock_data, STOCK_PARAMS)
    assert len(cuts) == 104
    assert cuts[:3] == [742752, 2790752, 3521796]
    assert cuts[-1] == 104269441
    assert cuts == STOCK_CUT_MARKS


@pytest.mark.parametrize("block_size", [102400, 10485760])  # two of the stock buffer sizes
def test_stock_cut_marks_reproduced_when_streaming(stock_data, block_size):
    chunker = Chunker(STOCK_PARAMS)
    view = memoryview(stock_data)
    sizes = []
    for pos in range(0, len(view), block_size):
        sizes.extend(len(c) for c in chunker.feed(view[pos : pos + block_size]))
        assert chunker.buffered <= STOCK_PARAMS.max_size + 1
    sizes.extend(len(c) for c in chunker.finish())
    assert np.cumsum(sizes)[:-1].tolist() == STOCK_CUT_MARKS
    assert sum(sizes) == STOCK_DATA_SIZE
    assert all(STOCK_PARAMS.min_size <= s <= STOCK_PARAMS.max_size for s in sizes[:-1])


# -- reference implementation of §6.3, byte by byte, for small inputs ---------------------------


def _stock_trigger(x: int, t: int) -> bool:
    """``abs(int32(x) - 0x7FFFFFFF) < t`` with 32-bit wrap-around (-fwrapv)."""
    s = (x - 0x7FFFFFFF) & 0xFFFFFFFF
    s = s - (1 << 32) if s >= 1 << 31 else s
    a = abs(s) if s != -(1 << 31) else s  # abs(INT32_MIN) stays INT32_MIN
    return a < t


def reference_cut_points(data: bytes, p: ChunkingParams) -> list[int]:
    cuts, start, n = [], 0, len(data)
    while start + p.min_size < n:
        cut = None
        x = 0
        for i in range(start + p.min_size - 31, min(start + p.max_size, n)):
            x = ((x << 1) ^ data[i]) & 0xFFFFFFFF  # primed over the 31 bytes before the range
            if i >= start + p.min_size and _stock_trigger(x, p.threshold):
                cut = i
                break
        if cut is None:
            if start + p.max_size >= n:
                break
            cut = start + p.max_size
        cuts.append(cut)
        start = cut
    return cuts


SMALL = ChunkingParams(64, 128, 256)


def _window_for(value: int) -> bytes:
    """32 bytes after which the xor32 value is ``value`` (byte i-k carries bit k)."""
    return bytes((value >> k) & 1 for k in range(31, -1, -1))


def _data_with_value_at_min(value: int, p: ChunkingParams = SMALL) -> bytes:
    """Zeros, with the window ending at position ``min`` giving ``value``, then zeros."""
    return bytes(p.min_size - 31) + _window_for(value) + bytes(100)


def test_window_construction_gives_requested_value():
    for v in (0, 1, 0x7FFFFFFF, 0xDEADBEEF, 0xFFFFFFFF):
        assert int(xor32_values(_window_for(v))[-1]) == v


@pytest.mark.parametrize("offset", [-1, 0, 1, None])
def test_trigger_band_edges_follow_signed_rule(offset):
    t = SMALL.threshold
    lo, hi = 0x7FFFFFFF - (t - 1), 0x7FFFFFFF + (t - 1)
    values = [0x7FFFFFFF] if offset is None else [lo + offset, hi + offset]
    for v in values:
        data = _data_with_value_at_min(v)
        expected = lo <= v <= hi
        assert _stock_trigger(v, t) == expected
        assert (cut_points(data, SMALL)[:1] == [SMALL.min_size]) == expected, hex(v)


def test_all_ones_value_triggers_a_cut():
    data = _data_with_value_at_min(0xFFFFFFFF)
    assert cut_points(data, SMALL)[:1] == [SMALL.min_size]
    # 0xFFFFFFFE and 0x80000000 - t (just outside the band) do not
    for v in (0xFFFFFFFE, 0x7FFFFFFF - SMALL.threshold):
        assert cut_points(_data_with_value_at_min(v), SMALL)[:1] != [SMALL.min_size]


def test_run_of_ones_cuts_at_every_min():
    # 32 bytes of 0x01 give x = 0xFFFFFFFF, so every chunk ends at exactly min
    data = b"\x01" * (5 * SMALL.min_size + 7)
    assert cut_points(data, SMALL) == [SMALL.min_size * k for k in range(1, 6)]
    assert reference_cut_points(data, SMALL) == cut_points(data, SMALL)


# -- edge cases ------------------------------------------------------------------------------


def test_empty_input_has_no_cut_and_one_empty_chunk():
    assert cut_points(b"", SMALL) == []
    assert list(iter_chunks(io.BytesIO(b""), SMALL)) == [(0, b"")]
    c = Chunker(SMALL)
    assert list(c.feed(b"")) == []
    assert list(c.finish()) == [b""]


def test_file_of_exactly_min_size_is_never_cut():
    data = b"\x01" * SMALL.min_size  # would trigger everywhere, but size <= min
    assert cut_points(data, SMALL) == []
    assert [c for _, c in iter_chunks(io.BytesIO(data), SMALL)] == [data]


def test_file_of_min_plus_one_without_trigger_is_one_object():
    data = bytes(SMALL.min_size + 1)
    assert cut_points(data, SMALL) == []
    assert [c for _, c in iter_chunks(io.BytesIO(data), SMALL)] == [data]


def test_file_of_min_plus_one_with_trigger_gives_one_byte_last_chunk():
    data = b"\x01" * (SMALL.min_size + 1)
    assert cut_points(data, SMALL) == [SMALL.min_size]
    assert [len(c) for _, c in iter_chunks(io.BytesIO(data), SMALL)] == [SMALL.min_size, 1]


def test_zero_runs_are_cut_at_exactly_max():
    data = bytes(3 * SMALL.max_size + 5)
    assert cut_points(data, SMALL) == [SMALL.max_size, 2 * SMALL.max_size, 3 * SMALL.max_size]


def test_cut_at_end_of_file_creates_no_empty_chunk():
    assert cut_points(bytes(2 * SMALL.max_size), SMALL) == [SMALL.max_size]
    assert cut_points(bytes(SMALL.max_size), SMALL) == []
    chunks = [c for _, c in iter_chunks(io.BytesIO(bytes(2 * SMALL.max_size)), SMALL)]
    assert [len(c) for c in chunks] == [SMALL.max_size, SMALL.max_size]


def test_last_chunk_may_be_smaller_than_min():
    data = bytes(SMALL.max_size + 10)
    assert cut_points(data, SMALL) == [SMALL.max_size]
    assert [len(c) for _, c in iter_chunks(io.BytesIO(data), SMALL)] == [SMALL.max_size, 10]


def test_default_zero_file_is_cut_every_16_mib():
    data = bytes(40 * 2**20)
    assert cut_points(data) == [16 * 2**20, 32 * 2**20]


def test_chunk_sizes_stay_within_bounds_except_last():
    data = np.random.default_rng(7).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    data += bytes(3000) + data[:5000]  # a forced cut inside, too
    cuts = cut_points(data, SMALL)
    sizes = np.diff([0, *cuts, len(data)])
    assert len(cuts) > 500
    assert all(SMALL.min_size <= s <= SMALL.max_size for s in sizes[:-1])
    assert 0 < sizes[-1] <= SMALL.max_size
    assert SMALL.max_size in sizes  # the zero run was cut at max


def test_vectorised_cuts_equal_byte_by_byte_reference():
    data = np.random.default_rng(3).integers(0, 256, 30_000, dtype=np.uint8).tobytes()
    data = data[:9000] + bytes(700) + b"\x01" * 200 + data[9000:]
    assert cut_points(data, SMALL) == reference_cut_points(data, SMALL)
    assert cut_points(data, SMALL, scan_block=7) == reference_cut_points(data, SMALL)


def test_default_params_and_threshold():
    assert ChunkingParams(4194304, 8388608, 16777216) == DEFAULT_CHUNKING
    assert DEFAULT_CHUNKING.threshold == 511
    assert ChunkingParams(65536, 131072, 262144).threshold == 0xFFFFFFFF // 131072


@pytest.mark.parametrize(
    "sizes", [(31, 64, 128), (64, 64, 128), (64, 128, 128), (100, 90, 200), (64.0, 128, 256)]
)
def test_invalid_params_are_rejected(sizes):
    with pytest.raises(ConfigError):
        ChunkingParams(*sizes)


def test_iter_chunks_offsets_tile_the_file():
    data = np.random.default_rng(11).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    pieces = list(iter_chunks(io.BytesIO(data), SMALL, block_size=999))
    assert [o for o, _ in pieces] == [0, *cut_points(data, SMALL)]
    assert b"".join(c for _, c in pieces) == data


def test_feed_after_finish_is_refused():
    c = Chunker(SMALL)
    list(c.finish())
    with pytest.raises(ValueError):
        c.feed(b"x")


# -- streaming == whole-data, for any block size -----------------------------------------------

_segment = st.one_of(
    st.binary(min_size=1, max_size=600),
    st.integers(1, 700).map(bytes),  # zero run: forced cuts
    st.integers(1, 300).map(lambda n: b"\x01" * n),  # x == 0xFFFFFFFF run
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    segments=st.lists(_segment, max_size=12),
    block_sizes=st.lists(st.integers(1, 900), min_size=1, max_size=20),
    scan_block=st.sampled_from([1, 5, 64, 1 << 20]),
    params=st.sampled_from([SMALL, ChunkingParams(32, 40, 48), ChunkingParams(100, 150, 500)]),
)
def test_streaming_chunker_equals_cut_points(segments, block_sizes, scan_block, params):
    data = b"".join(segments)
    chunker = Chunker(params, scan_block=scan_block)
    chunks: list[bytes] = []
    pos, i = 0, 0
    while pos < len(data):
        step = block_sizes[i % len(block_sizes)]
        chunks.extend(chunker.feed(data[pos : pos + step]))
        assert chunker.buffered <= params.max_size + 1
        pos += step
        i += 1
    chunks.extend(chunker.finish())
    expected = cut_points(data, params)
    assert expected == reference_cut_points(data, params)
    assert b"".join(chunks) == data
    assert np.cumsum([len(c) for c in chunks])[:-1].tolist() == expected
