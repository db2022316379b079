"""JIT flags, tolerances and the parallelism setting of every kernel, in one place.

NUMBA_CACHE_DIR defaults to var/numba (the Makefile and the tests set it too) so compiled
kernels are cached between runs and never land in the source tree. `fastmath` stays off: it
would let LLVM reorder the column sums, and the kernels promise results within TOLERANCE of
the pure-Python reference, not bit-for-bit, but reproducible ones.
"""
from __future__ import annotations

import os

from core.settings import ROOT

os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / "var" / "numba"))

JIT = {"nogil": True, "cache": True, "fastmath": False}
JIT_PARALLEL = {**JIT, "parallel": True}
# below this many elements `squash` runs its serial kernels: a parallel region's thread
# wake-up (~20 us) buys nothing on inputs this small. Whether 1 thread or max_workers wins
# on the real shape is measured (core.optimizer.choose_numba_threads); on the loaded 2-core
# VM serial and parallel tied up to 800,000 elements.
PARALLEL_MIN_ELEMENTS = 200_000

# "same results": max absolute error against the pure-Python reference
TOLERANCE = 1e-6
EPS = 1e-12          # normalization: (x - mean) / (std + EPS); a constant column maps to 0
# rolling kernels: a window whose variance is below this fraction of its mean square is
# constant up to rounding; its std is 0 and its z-score 0 (running sums cannot tell more)
DEGENERATE_VAR = 1e-12
# squash: a column whose std is below this fraction of |mean| is constant up to rounding
# (x - mean and std are then both rounding noise); every backend maps it to 0
SQUASH_DEGENERATE_REL = 1e-8
CLIP_Z = 5.0         # z-scores are clipped to +-CLIP_Z before tanh (tanh(5) = 0.99991)

BACKENDS = ("python", "numpy", "numba", "onnx")


def set_threads(max_workers: int) -> int:
    """Cap numba's worker threads at max_workers (and at what numba started with); return it."""
    import numba
    n = max(1, min(int(max_workers), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n
