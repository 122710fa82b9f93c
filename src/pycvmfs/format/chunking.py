"""Content-defined chunking of file data with the stock xor32 rolling-hash detector (spec §6)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from pycvmfs.errors import ConfigError


class _LazyNumpy:
    """numpy, imported on first use: it costs ~150 ms, which every ``pycvmfs`` command would
    otherwise pay at startup (the configuration imports this module for ChunkingParams)."""

    def __getattr__(self, name: str) -> object:
        import numpy

        globals()["np"] = numpy
        return getattr(numpy, name)


np: Any = _LazyNumpy()

__all__ = [
    "DEFAULT_CHUNKING",
    "WINDOW",
    "Chunker",
    "ChunkingParams",
    "cut_points",
    "iter_chunks",
    "xor32_values",
]

WINDOW = 32  # the rolling value depends on the last 32 bytes only
_HISTORY = WINDOW - 1  # bytes before a candidate position that its value needs
_MAGIC = 0x7FFFFFFF
_ALL_ONES = 0xFFFFFFFF
_SHIFTS = (1, 2, 4, 8, 16)  # doubling passes: windows 2, 4, 8, 16, 32
_SCAN_BLOCK = 1 << 20  # candidate positions examined per numpy pass
_FEED_BATCH = 1 << 18  # the streaming chunker scans once this many new candidates are buffered
_MIB = 1 << 20


@dataclass(frozen=True)
class ChunkingParams:
    """Minimum, average and maximum chunk size in bytes (``CVMFS_{MIN,AVG,MAX}_CHUNK_SIZE``)."""

    min_size: int
    avg_size: int
    max_size: int

    def __post_init__(self) -> None:
        sizes = (self.min_size, self.avg_size, self.max_size)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes):
            raise ConfigError(f"chunk sizes must be integers, got min/avg/max = {sizes!r}")
        if self.min_size < WINDOW:
            raise ConfigError(f"minimum chunk size {self.min_size} is below {WINDOW} bytes")
        if not self.min_size < self.avg_size < self.max_size:
            raise ConfigError(
                f"chunk sizes must satisfy min < avg < max, got "
                f"{self.min_size}/{self.avg_size}/{self.max_size}"
            )

    @property
    def threshold(self) -> int:
        """``t = UINT32_MAX // avg``: a position triggers a cut when ``|int32(x) - magic| < t``."""
        return _ALL_ONES // self.avg_size


DEFAULT_CHUNKING = ChunkingParams(4 * _MIB, 8 * _MIB, 16 * _MIB)


def _xor32_pass(a: np.ndarray, b: np.ndarray, length: int) -> tuple[np.ndarray, int]:
    """Rolling values from ``a[:length]`` (uint32 bytes); the result's index 0 is input index 31.

    Uses ``x(i) = XOR_k data[i-k] << k`` built by doubling the window five times, ping-ponging
    between the two scratch arrays. Returns the array holding the result and its length.
    """
    for s in _SHIFTS:
        length -= s
        np.left_shift(a[:length], s, out=b[:length])
        np.bitwise_xor(b[:length], a[s : s + length], out=b[:length])
        a, b = b, a
    return a, length


def xor32_values(data: bytes | bytearray | memoryview) -> np.ndarray:
    """The xor32 value after each byte of ``data``, starting from a zero state (uint32 array)."""
    src = np.frombuffer(data, dtype=np.uint8)
    n = len(src)
    a = np.zeros(n + _HISTORY, dtype=np.uint32)
    a[_HISTORY:] = src
    b = np.empty_like(a)
    out, length = _xor32_pass(a, b, n + _HISTORY)
    return out[:length].copy()


class _Scanner:
    """Finds the first trigger position in a range, using fixed scratch buffers."""

    def __init__(self, params: ChunkingParams, block: int = _SCAN_BLOCK,
                 limit: int | None = None) -> None:
        if block < 1:
            raise ConfigError(f"chunker scan block must be positive, got {block}")
        # one call never examines more than max - min positions (nor more than ``limit``)
        block = min(block, params.max_size - params.min_size)
        if limit is not None:
            block = max(1, min(block, limit))
        t = params.threshold
        self._block = block
        # unsigned form of the rule: lo <= x <= lo + width (empty when t == 0), or x == 2^32-1
        self._lo = np.uint32((_MAGIC - (t - 1)) & _ALL_ONES)
        self._width = np.uint32(2 * t - 2) if t > 0 else None
        self._a = np.empty(block + _HISTORY, dtype=np.uint32)
        self._b = np.empty(block + _HISTORY, dtype=np.uint32)
        self._mask = np.empty(block, dtype=np.bool_)

    def first_trigger(self, data: np.ndarray, lo: int, hi: int) -> int:
        """The first position ``i`` in ``[lo, hi)`` whose value triggers a cut, or -1.

        ``data`` is a uint8 array; ``lo`` must be at least 31 (the window lies inside data).
        """
        pos = lo
        while pos < hi:
            n = min(self._block, hi - pos)
            np.copyto(self._a[: n + _HISTORY], data[pos - _HISTORY : pos + n])
            res, _ = _xor32_pass(self._a, self._b, n + _HISTORY)
            scratch = self._a if res is self._b else self._b
            hit = self._first_hit(res[:n], scratch[:n], n)
            if hit < n:
                return pos + hit
            pos += n
        return -1

    def _first_hit(self, x: np.ndarray, scratch: np.ndarray, n: int) -> int:
        hit = n
        if self._width is not None:
            np.subtract(x, self._lo, out=scratch)
            mask = self._mask[:n]
            np.less_equal(scratch, self._width, out=mask)
            k = int(np.argmax(mask))
            if mask[k]:
                hit = k
        # x == 0xFFFFFFFF also triggers (abs(INT32_MIN) stays negative with -fwrapv, §12.2)
        if hit and int(x[:hit].max()) == _ALL_ONES:
            hit = int(np.argmax(x[:hit] == _ALL_ONES))
        return hit


def _next_cut(scanner: _Scanner, data: np.ndarray, start: int, n: int,
              params: ChunkingParams) -> int:
    """The cut after the chunk starting at ``start`` of ``data[:n]`` (complete data), or -1."""
    if start + params.min_size >= n:
        return -1
    cut = scanner.first_trigger(data, start + params.min_size, min(start + params.max_size, n))
    if cut < 0 and start + params.max_size < n:
        cut = start + params.max_size
    return cut


def cut_points(data: bytes | bytearray | memoryview,
               params: ChunkingParams = DEFAULT_CHUNKING, *,
               scan_block: int = _SCAN_BLOCK) -> list[int]:
    """Offsets where a new chunk starts (0 and the end excluded).

    An empty list means the data is stored as one object: files of at most ``min_size``
    bytes are never chunked, and neither is a file in which no cut occurs. ``scan_block``
    is how many positions one numpy pass examines (scratch memory is 9 bytes per position).
    """
    arr = np.frombuffer(data, dtype=np.uint8)
    n = len(arr)
    scanner = _Scanner(params, scan_block, limit=n - params.min_size)
    cuts: list[int] = []
    start = 0
    while (cut := _next_cut(scanner, arr, start, n, params)) >= 0:
        cuts.append(cut)
        start = cut
    return cuts


class Chunker:
    """Streaming chunker: feed blocks, get chunks as their end becomes known.

    Memory stays at about ``max_size`` bytes of buffered input plus a few MiB of scratch.
    The chunks together are exactly the input and agree with :func:`cut_points` on it. At
    least one chunk is produced (an empty input gives one empty chunk); a single chunk means
    the file is stored as one unchunked object.
    """

    def __init__(self, params: ChunkingParams = DEFAULT_CHUNKING, *,
                 scan_block: int = _SCAN_BLOCK) -> None:
        self.params = params
        self._scanner = _Scanner(params, scan_block)
        self._batch = min(_FEED_BATCH, scan_block)
        # one byte beyond max_size tells whether a forced cut at max_size is needed
        self._buf = np.empty(params.max_size + 1, dtype=np.uint8)
        self._len = 0  # buffered bytes; the current chunk starts at buffer index 0
        self._scanned = params.min_size  # candidates below this index had no trigger
        self._chunks = 0
        self._finished = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned in a chunk."""
        return self._len

    def feed(self, block: bytes | bytearray | memoryview) -> Iterator[bytes]:
        """Add ``block``; returns the chunks it completes (computed before this returns)."""
        if self._finished:
            raise ValueError("Chunker.feed() called after finish()")
        src = np.frombuffer(block, dtype=np.uint8)
        out: list[bytes] = []
        pos = 0
        while pos < len(src):
            k = min(len(self._buf) - self._len, len(src) - pos)
            self._buf[self._len : self._len + k] = src[pos : pos + k]
            self._len += k
            pos += k
            self._cut(out, final=False)
        self._chunks += len(out)
        return iter(out)

    def finish(self) -> Iterator[bytes]:
        """End of input: returns the remaining chunks, the last one possibly short."""
        if self._finished:
            return iter(())
        self._finished = True
        out: list[bytes] = []
        self._cut(out, final=True)
        if self._len or not (out or self._chunks):
            out.append(self._buf[: self._len].tobytes())
            self._len = 0
        self._chunks += len(out)
        return iter(out)

    def _cut(self, out: list[bytes], *, final: bool) -> None:
        p = self.params
        while self._len > p.min_size:
            full = self._len > p.max_size
            hi = min(self._len, p.max_size)
            if not (final or full) and hi - self._scanned < self._batch:
                return  # wait for more input before the next numpy pass
            cut = -1
            if hi > self._scanned:
                cut = self._scanner.first_trigger(self._buf, self._scanned, hi)
                self._scanned = hi
            if cut < 0:
                if not full:
                    return  # more input needed, or (final) the rest is the last chunk
                cut = p.max_size
            out.append(self._buf[:cut].tobytes())
            rest = self._len - cut
            self._buf[:rest] = self._buf[cut : self._len]
            self._len = rest
            self._scanned = p.min_size


def iter_chunks(fileobj: BinaryIO, params: ChunkingParams = DEFAULT_CHUNKING,
                block_size: int = _MIB) -> Iterator[tuple[int, bytes]]:
    """Read ``fileobj`` in blocks and yield ``(offset, chunk)``; at least one chunk."""
    chunker = Chunker(params)
    offset = 0
    while block := fileobj.read(block_size):
        for chunk in chunker.feed(block):
            yield offset, chunk
            offset += len(chunk)
    for chunk in chunker.finish():
        yield offset, chunk
        offset += len(chunk)
