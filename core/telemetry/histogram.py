"""Log-linear (HDR-style) latency histogram over integer nanoseconds.

Layout: values below 2**8 get one bucket each (exact); above that, every power of two is split
into 128 equal sub-buckets. A bucket is therefore never wider than 1/128 of its lower bound,
and reporting its midpoint is off by at most 1/256 (0.39 %) of the true value: comfortably
under the 1 % goal. Index of value v (>= 256): shift = v.bit_length() - 8, index =
(shift << 7) + (v >> shift); the same arithmetic runs on the hot path (recorder.py) in pure
Python and here vectorised in numpy.

Histograms merge by adding counts, so per-process, per-second histograms combine exactly into
per-minute and per-window ones. count, sum (for the mean) and max are kept exactly.

Binary encoding (version 1), little-endian:
    header  "THG1"(4) | n_nonzero u32 | count u64 | sum u64 | max u64      (32 bytes)
    body    indices u16[n_nonzero] (strictly increasing) | counts u64[n_nonzero]
`decode` checks every field and raises HistogramDecodeError (a ValueError) for any blob that
is not exactly this, so a corrupt entry never crashes a caller deeper down.
"""
from __future__ import annotations

import struct

import numpy as np

SUB_BITS = 7
SUB_COUNT = 1 << SUB_BITS              # sub-buckets per power of two
EXACT_LIMIT = 2 * SUB_COUNT            # values below this have their own bucket
MAX_VALUE = (1 << 63) - 1              # values above are clamped (292 years in ns)
N_BUCKETS = ((63 - SUB_BITS - 1) << SUB_BITS) + EXACT_LIMIT   # index of MAX_VALUE + 1

MAGIC = b"THG1"
_HEADER = struct.Struct("<4sIQQQ")


class HistogramDecodeError(ValueError):
    """A histogram blob that is not a valid version-1 encoding."""


def bucket_index(value: int) -> int:
    """Bucket of one non-negative integer value (clamped to MAX_VALUE)."""
    if value < EXACT_LIMIT:
        return value
    if value > MAX_VALUE:
        value = MAX_VALUE
    shift = value.bit_length() - SUB_BITS - 1
    return (shift << SUB_BITS) + (value >> shift)


def bucket_indices(values: np.ndarray) -> np.ndarray:
    """Vectorised bucket_index for an array of non-negative int64 values."""
    v = np.asarray(values, dtype=np.int64)
    bit_length = np.zeros(v.shape, dtype=np.int64)
    big = v >= EXACT_LIMIT
    # frexp gives the exponent exactly for integers below 2**53; correct the rare rounding
    # up of larger ones (a value just under a power of two rounds to that power).
    _, exp = np.frexp(v[big].astype(np.float64))
    exp = exp.astype(np.int64)
    exp -= (v[big] >> np.clip(exp - 1, 0, 62)) == 0
    bit_length[big] = exp
    shift = np.maximum(bit_length - SUB_BITS - 1, 0)
    return np.where(big, (shift << SUB_BITS) + (v >> shift), v)


def _bucket_bounds() -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(N_BUCKETS, dtype=np.int64)
    shift = np.maximum((idx >> SUB_BITS) - 1, 0)
    lower = np.where(idx < EXACT_LIMIT, idx, (idx - (shift << SUB_BITS)) << shift)
    width = np.where(idx < EXACT_LIMIT, 1, np.int64(1) << shift)
    return lower.astype(np.float64), width.astype(np.float64)


_LOWER, _WIDTH = _bucket_bounds()
# exact buckets report their value; wider ones their midpoint
MIDPOINT = np.where(_WIDTH == 1, _LOWER, _LOWER + (_WIDTH - 1) / 2.0)


def rank_for_percentile(n: int, percentile: float) -> int:
    """0-based order statistic numpy.percentile(method="inverted_cdf") picks from n samples."""
    virtual = n * (np.float64(percentile) / 100.0) - 1.0
    below = np.floor(virtual)
    rank = int(below) if virtual == below else int(below) + 1
    return min(max(rank, 0), n - 1)


class Histogram:
    """Dense bucket counts plus exact count, sum and max (all integer nanoseconds)."""

    __slots__ = ("counts", "total", "max")

    def __init__(self, counts: np.ndarray | None = None, total: int = 0, max_value: int = 0):
        self.counts = np.zeros(N_BUCKETS, dtype=np.int64) if counts is None else counts
        self.total = int(total)
        self.max = int(max_value)

    # ---- building -----------------------------------------------------------------
    @classmethod
    def from_values(cls, values) -> "Histogram":
        v = np.asarray(values)
        if v.size and (not np.issubdtype(v.dtype, np.integer) or v.min() < 0):
            raise ValueError("histogram values must be non-negative integers (nanoseconds)")
        v = np.minimum(v.astype(np.int64), MAX_VALUE)
        counts = np.bincount(bucket_indices(v), minlength=N_BUCKETS).astype(np.int64)
        return cls(counts, int(v.sum(dtype=np.int64)) if v.size else 0, int(v.max()) if v.size else 0)

    def record(self, value: int) -> None:
        value = int(value)
        if value < 0:
            raise ValueError(f"negative duration {value}")
        value = min(value, MAX_VALUE)
        self.counts[bucket_index(value)] += 1
        self.total += value
        self.max = max(self.max, value)

    def merge(self, other: "Histogram") -> "Histogram":
        """Add other's counts into self (in place); returns self."""
        self.counts += other.counts
        self.total += other.total
        self.max = max(self.max, other.max)
        return self

    @classmethod
    def merged(cls, histograms) -> "Histogram":
        out = cls()
        for h in histograms:
            out.merge(h)
        return out

    def copy(self) -> "Histogram":
        return Histogram(self.counts.copy(), self.total, self.max)

    # ---- statistics ----------------------------------------------------------------
    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def mean(self) -> float | None:
        n = self.count
        return self.total / n if n else None

    def percentiles(self, percentiles) -> list[float | None]:
        """Values (ns) at the given percentiles (0-100), numpy "inverted_cdf" semantics."""
        for p in percentiles:
            if not 0.0 <= float(p) <= 100.0:
                raise ValueError(f"percentile {p!r} outside [0, 100]")
        cum = np.cumsum(self.counts)
        n = int(cum[-1])
        if n == 0:
            return [None for _ in percentiles]
        out = []
        for p in percentiles:
            idx = int(np.searchsorted(cum, rank_for_percentile(n, p) + 1, side="left"))
            out.append(float(min(MIDPOINT[idx], self.max)))
        return out

    def percentile(self, p: float) -> float | None:
        return self.percentiles([p])[0]

    def counts_at_or_below(self, bounds_ns) -> np.ndarray:
        """Cumulative sample counts at each bound (ns, ascending), for Prometheus `le`
        buckets; a bucket counts below a bound when its reported value (midpoint) is."""
        cum = np.cumsum(self.counts)
        idx = np.searchsorted(MIDPOINT, np.asarray(bounds_ns, dtype=np.float64), side="right") - 1
        return np.where(idx >= 0, cum[np.clip(idx, 0, None)], 0)

    def cdf_points(self) -> tuple[np.ndarray, np.ndarray]:
        """(value ns, cumulative fraction) at every non-empty bucket, ascending."""
        nz = np.flatnonzero(self.counts)
        if nz.size == 0:
            return np.empty(0), np.empty(0)
        cum = np.cumsum(self.counts[nz])
        values = np.minimum(MIDPOINT[nz], self.max)
        return values, cum / cum[-1]

    def __eq__(self, other) -> bool:
        return (isinstance(other, Histogram) and self.total == other.total
                and self.max == other.max and np.array_equal(self.counts, other.counts))

    def __repr__(self) -> str:
        return f"Histogram(count={self.count}, mean={self.mean()}, max={self.max})"

    # ---- encoding ------------------------------------------------------------------
    def encode(self) -> bytes:
        nz = np.flatnonzero(self.counts)
        total = min(self.total, MAX_VALUE)
        header = _HEADER.pack(MAGIC, nz.size, int(self.counts[nz].sum()), total, self.max)
        return header + nz.astype("<u2").tobytes() + self.counts[nz].astype("<u8").tobytes()

    @classmethod
    def decode(cls, blob: bytes) -> "Histogram":
        idx, cnt, total, max_value = _decode_sparse(blob)
        counts = np.zeros(N_BUCKETS, dtype=np.int64)
        counts[idx] = cnt
        return cls(counts, total, max_value)

    def merge_blob(self, blob: bytes) -> "Histogram":
        """Add an encoded histogram into self without building a dense copy; returns self."""
        idx, cnt, total, max_value = _decode_sparse(blob)
        self.counts[idx] += cnt
        self.total += total
        self.max = max(self.max, max_value)
        return self


def _decode_sparse(blob) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(indices, counts, sum, max) of a blob, every field checked."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise HistogramDecodeError(f"histogram blob must be bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < _HEADER.size:
        raise HistogramDecodeError(f"histogram blob too short ({len(blob)} bytes)")
    magic, n, count, total, max_value = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise HistogramDecodeError(f"not a histogram blob (magic {magic!r}, want {MAGIC!r})")
    if len(blob) != _HEADER.size + 10 * n:
        raise HistogramDecodeError(f"histogram blob length {len(blob)} does not match {n} buckets")
    idx = np.frombuffer(blob, "<u2", n, _HEADER.size).astype(np.int64)
    cnt = np.frombuffer(blob, "<u8", n, _HEADER.size + 2 * n)
    if n and (idx[-1] >= N_BUCKETS or np.any(np.diff(idx) <= 0)):
        raise HistogramDecodeError("histogram blob has bucket indices out of order or range")
    if np.any(cnt == 0) or np.any(cnt > MAX_VALUE) or int(cnt.sum(dtype=np.uint64)) != count:
        raise HistogramDecodeError("histogram blob counts are inconsistent with its header")
    if max_value > MAX_VALUE or total > MAX_VALUE or (n and bucket_index(max_value) != idx[-1]):
        raise HistogramDecodeError("histogram blob max/sum are inconsistent with its buckets")
    return idx, cnt.astype(np.int64), total, max_value
