"""Content-defined chunking: cut a byte stream where its content says so, not at fixed offsets.

A cut candidate is a position whose rolling hash, the wrapping sum of a random table's entries for the
last `WINDOW` bytes, falls below a threshold. The hash depends only on those bytes, so an insertion or
deletion moves the cuts near it and leaves every later cut where the same content is: an incremental
snapshot after a small change re-uses almost every chunk.

The hash is computed for a whole block at once with numpy (table lookup, cumulative sum, difference at
distance `WINDOW`, comparison), which releases the GIL and runs at hundreds of MB/s; a short Python loop
then picks, among the few candidates, the first that honours the minimum size, or cuts at the maximum.
Blocks are processed in pieces that fit the CPU cache, which is worth a factor of two.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

KiB = 1024
MiB = 1024 * KiB

# Bytes the rolling hash sees; large enough that cuts depend on content, small enough to resync fast.
WINDOW = 64
# Pieces of this size keep the temporary arrays in the CPU cache.
_PIECE = 256 * KiB
# A fixed seed: every node must cut the same bytes the same way, or nothing would deduplicate.
_TABLE: npt.NDArray[np.uint32] = np.random.default_rng(0x48757463).integers(
    0, 2**32, 256, dtype=np.uint32, endpoint=False
)


@dataclass(frozen=True)
class ChunkingParams:
    """Chunk size bounds. A chunk is `avg_size` bytes on average and never outside [min, max]
    (except the last chunk of a stream, which may be shorter)."""

    min_size: int = 256 * KiB
    avg_size: int = 1 * MiB
    max_size: int = 4 * MiB

    def __post_init__(self) -> None:
        if not 4 * KiB <= self.min_size < self.avg_size < self.max_size:
            raise ValueError(
                f"chunk sizes must satisfy 4 KiB <= min < avg < max (got min={self.min_size}, "
                f"avg={self.avg_size}, max={self.max_size})"
            )

    @property
    def threshold(self) -> np.uint32:
        """Hash values below this are cut candidates: one position in (avg - min) on average, so that
        with the minimum skipped first a chunk is `avg_size` long on average."""
        return np.uint32(max(1, (2**32) // (self.avg_size - self.min_size)))


DEFAULT_PARAMS = ChunkingParams()


class CutFinder:
    """Finds chunk boundaries in a stream fed block by block. Holds no data, only the hash state."""

    def __init__(self, params: ChunkingParams = DEFAULT_PARAMS) -> None:
        self.params = params
        # The last WINDOW bytes seen: the hash of a block's first positions needs them.
        self._tail = bytes(WINDOW)
        self._offset = 0
        self._last_cut = 0
        self._threshold = params.threshold
        self._lookup = np.empty(_PIECE + WINDOW, dtype=np.uint32)
        self._sums = np.zeros(_PIECE + WINDOW + 1, dtype=np.uint32)
        self._hashes = np.empty(_PIECE, dtype=np.uint32)
        self._below = np.empty(_PIECE, dtype=np.bool_)

    @property
    def offset(self) -> int:
        """Bytes fed so far."""
        return self._offset

    @property
    def last_cut(self) -> int:
        """Stream offset of the last boundary found (0 at the start)."""
        return self._last_cut

    def feed(self, block: bytes | bytearray | memoryview) -> list[int]:
        """Stream offsets of the boundaries that lie in `block` (each is the end of a chunk)."""
        view = memoryview(block).cast("B")
        cuts: list[int] = []
        for start in range(0, len(view), _PIECE):
            piece = view[start : start + _PIECE]
            candidates = self._candidates(piece)
            self._cut(candidates, self._offset + len(piece), cuts)
            self._offset += len(piece)
            tail = bytes(piece[-WINDOW:]) if len(piece) >= WINDOW else (self._tail + bytes(piece))[-WINDOW:]
            self._tail = tail
        return cuts

    def _candidates(self, piece: memoryview) -> npt.NDArray[np.int64]:
        n = len(piece)
        window = np.frombuffer(self._tail + bytes(piece), dtype=np.uint8)
        lookup, sums, hashes, below = self._lookup[: n + WINDOW], self._sums, self._hashes[:n], self._below[:n]
        np.take(_TABLE, window, out=lookup, mode="clip")
        # sums[k] = sum of the first k looked-up values, wrapping modulo 2**32.
        np.cumsum(lookup, out=sums[1 : n + WINDOW + 1])
        # hashes[i] = sum over the WINDOW bytes ending at piece[i].
        np.subtract(sums[WINDOW + 1 : n + WINDOW + 1], sums[1 : n + 1], out=hashes)
        np.less(hashes, self._threshold, out=below)
        # A candidate at index i cuts after piece[i]: the chunk ends at offset + i + 1.
        return np.flatnonzero(below) + (self._offset + 1)

    def _cut(self, ends: npt.NDArray[np.int64], available: int, cuts: list[int]) -> None:
        min_size, max_size = self.params.min_size, self.params.max_size
        while True:
            lowest, highest = self._last_cut + min_size, self._last_cut + max_size
            index = int(np.searchsorted(ends, lowest))
            if index < len(ends) and ends[index] <= highest:
                cut = int(ends[index])
            elif highest <= available:
                cut = highest
            else:
                # No boundary decidable yet: a later block may hold the candidate. Candidates of this
                # block below `lowest` can never be used, so nothing needs to be kept.
                return
            cuts.append(cut)
            self._last_cut = cut


class Chunker:
    """Cuts a stream into chunks: `feed` blocks, take the chunks each returns, then `finish`.

    Holds at most one incomplete chunk plus the block being cut.
    """

    def __init__(self, params: ChunkingParams = DEFAULT_PARAMS) -> None:
        self._finder = CutFinder(params)
        self._pending = bytearray()

    def feed(self, block: bytes | bytearray | memoryview) -> list[bytes]:
        if not block:
            return []
        start = self._finder.offset - len(self._pending)
        cuts = self._finder.feed(block)
        if not cuts:
            self._pending += block
            return []
        data = memoryview(bytes(self._pending) + bytes(block))
        chunks = []
        position = 0
        for cut in cuts:
            end = cut - start
            chunks.append(bytes(data[position:end]))
            position = end
        self._pending = bytearray(data[position:])
        return chunks

    def finish(self) -> list[bytes]:
        """The last, possibly short, chunk (none for an empty stream)."""
        rest, self._pending = bytes(self._pending), bytearray()
        return [rest] if rest else []


def chunk_bytes(data: bytes, params: ChunkingParams = DEFAULT_PARAMS) -> Iterator[bytes]:
    """All chunks of `data` (convenience for tests and small inputs)."""
    chunker = Chunker(params)
    yield from chunker.feed(data)
    yield from chunker.finish()
