"""Histogram accuracy against numpy, encoding round trips, strict decoding, merging."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from core.telemetry.histogram import (MAX_VALUE, N_BUCKETS, Histogram, HistogramDecodeError,
                                      bucket_index, bucket_indices)

PCTS = [0, 1, 10, 25, 50, 75, 90, 95, 99, 99.9, 99.99, 100]


def _samples(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "lognormal":
        x = rng.lognormal(mean=11.0, sigma=1.2, size=n)           # ~60 us median
    elif kind == "exponential":
        x = rng.exponential(2_000_000.0, size=n)
    elif kind == "uniform_small":
        x = rng.integers(0, 300, size=n)                          # exact-bucket region
    elif kind == "bimodal":
        x = np.concatenate([rng.normal(50_000, 5_000, n // 2), rng.normal(5e7, 1e6, n - n // 2)])
    else:
        raise AssertionError(kind)
    return np.maximum(x, 0).astype(np.int64)


@pytest.mark.parametrize("kind", ["lognormal", "exponential", "uniform_small", "bimodal"])
@pytest.mark.parametrize("n", [1, 7, 1000, 200_000])
def test_percentiles_within_half_percent_of_numpy_inverted_cdf(kind, n):
    x = _samples(kind, n, seed=n + len(kind))
    hist = Histogram.from_values(x)
    expected = np.percentile(x, PCTS, method="inverted_cdf")
    got = np.array(hist.percentiles(PCTS))
    rel = np.abs(got - expected) / np.maximum(expected, 1)
    assert rel.max() <= 1 / 256 + 1e-12, list(zip(PCTS, got, expected))
    assert hist.count == n and hist.total == int(x.sum()) and hist.max == int(x.max())
    assert hist.mean() == pytest.approx(x.mean(), rel=1e-12)


def test_values_below_256_are_exact():
    x = np.arange(256, dtype=np.int64).repeat(3)
    hist = Histogram.from_values(x)
    assert hist.percentiles(PCTS) == list(np.percentile(x, PCTS, method="inverted_cdf").astype(float))


def test_percentile_rank_matches_numpy_at_float_edge_cases():
    # n * q lands next to an integer in floating point for these; numpy's rank must be mimicked
    for n in (100, 1000, 7, 29, 57):
        x = np.arange(n, dtype=np.int64) % 256       # exact buckets: any rank slip shows
        for p in (7, 29, 57, 95, 99.9, 14.000000000000002):
            assert Histogram.from_values(x).percentile(p) == float(
                np.percentile(x, p, method="inverted_cdf")), (n, p)


def test_vectorised_and_scalar_bucket_index_agree_over_the_whole_range():
    rng = np.random.default_rng(3)
    edges = [(1 << k) + d for k in range(8, 63) for d in (-1, 0, 1)] + [MAX_VALUE]
    values = np.concatenate([rng.integers(0, MAX_VALUE, 5000), np.array(edges, dtype=np.int64)])
    assert bucket_indices(values).tolist() == [bucket_index(int(v)) for v in values]
    assert bucket_index(MAX_VALUE) == N_BUCKETS - 1


def test_empty_histogram_reports_none():
    hist = Histogram()
    assert hist.count == 0 and hist.mean() is None and hist.percentiles([50, 99]) == [None, None]


def test_encode_decode_round_trip_preserves_everything():
    hist = Histogram.from_values(_samples("bimodal", 5000, 1))
    hist.record(2**60)                     # far-tail bucket
    back = Histogram.decode(hist.encode())
    assert back == hist
    assert Histogram.decode(Histogram().encode()) == Histogram()


def test_encoding_is_sparse():
    hist = Histogram.from_values(np.full(10_000, 123_456, dtype=np.int64))
    assert len(hist.encode()) == 32 + 10


def _corruptions(blob: bytes):
    header = struct.Struct("<4sIQQQ")
    magic, n, count, total, mx = header.unpack_from(blob)
    body = blob[header.size:]
    idx_bytes = body[:2 * n]
    yield "empty", b""
    yield "truncated", blob[:-3]
    yield "extra byte", blob + b"\x00"
    yield "bad magic", b"XXXX" + blob[4:]
    yield "wrong count", header.pack(magic, n, count + 1, total, mx) + body
    yield "wrong max", header.pack(magic, n, count, total, 5) + body
    yield "huge n", header.pack(magic, 10**9, count, total, mx) + body
    yield "unsorted", blob[:header.size] + idx_bytes[2:4] + idx_bytes[0:2] + idx_bytes[4:] + body[2 * n:]
    yield "index out of range", blob[:header.size] + idx_bytes[:-2] + b"\xff\xff" + body[2 * n:]
    yield "not bytes", "a string"


@pytest.mark.parametrize("case", range(10))
def test_corrupt_blob_raises_histogram_decode_error(case):
    blob = Histogram.from_values(np.array([10, 300, 5000, 10**6], dtype=np.int64)).encode()
    name, bad = list(_corruptions(blob))[case]
    with pytest.raises(HistogramDecodeError):
        Histogram.decode(bad)
    assert issubclass(HistogramDecodeError, ValueError), name


def test_merge_equals_histogram_of_concatenated_samples_and_is_associative():
    parts = [_samples(k, 3000, i) for i, k in enumerate(["lognormal", "exponential", "bimodal"])]
    a, b, c = (Histogram.from_values(p) for p in parts)
    left = a.copy().merge(b).merge(c)
    right = a.copy().merge(b.copy().merge(c))
    assert left == right == Histogram.from_values(np.concatenate(parts))
    via_blobs = Histogram().merge_blob(a.encode()).merge_blob(b.encode()).merge_blob(c.encode())
    assert via_blobs == left


def test_from_values_rejects_negative_and_float_input():
    with pytest.raises(ValueError):
        Histogram.from_values(np.array([1, -2]))
    with pytest.raises(ValueError):
        Histogram.from_values(np.array([1.5]))
    with pytest.raises(ValueError):
        Histogram().percentile(101)
