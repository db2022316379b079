"""KernelSet: the selected backend runs; a failing one falls back to the next and reports
the failure (the pipeline never stops); bad input is still the caller's error."""
from __future__ import annotations

import numpy as np
import pytest

import core.kernels as K


def test_kernelset_runs_the_selected_backend_and_reports_changes():
    ks = K.KernelSet({"squash": "numba"})
    assert ks.order("squash")[0] == "numba" and ks.order("squash")[-1] == "python"
    changed = ks.update({"squash": "onnx", "ewma": "onnx", "nope": "numpy"})
    assert changed == {"squash": ("numba", "onnx")}      # ewma has no onnx path; unknown ignored
    x = np.random.default_rng(0).standard_normal((100, 4))
    assert K.max_abs_error(ks("squash", x), K.squash(x, backend="python")) <= K.TOLERANCE


def test_failing_backend_falls_back_to_the_next_and_calls_on_failure(monkeypatch):
    seen = []
    ks = K.KernelSet({"squash": "numba"}, on_failure=lambda *a: seen.append(a))
    real = K.implementation

    def broken(kernel, backend):
        if backend == "numba":
            def boom(*_a, **_k):
                raise RuntimeError("numba exploded")
            return boom
        return real(kernel, backend)
    monkeypatch.setattr(K, "implementation", broken)
    x = np.random.default_rng(1).standard_normal((50, 3))
    out = ks("squash", x)
    assert K.max_abs_error(out, K.squash(x, backend="python")) <= K.TOLERANCE
    assert seen and seen[0][0] == "squash" and seen[0][1] == "numba" and "exploded" in repr(seen[0][2])
    assert ks.failures[-1][2] == "numba"


def test_disabled_backends_are_skipped_in_the_fallback_order():
    ks = K.KernelSet({"squash": "numpy"}, enabled=("python", "numpy"))
    assert ks.order("squash") == ["numpy", "python"]


def test_bad_input_raises_before_any_backend_runs():
    ks = K.KernelSet()
    with pytest.raises(ValueError, match="empty"):
        ks("squash", np.empty((0, 3)))
    with pytest.raises(ValueError, match="out must be"):
        ks("squash", np.ones((4, 2)), out=np.empty((2, 2)))


def test_out_buffer_receives_the_result():
    x = np.random.default_rng(2).standard_normal((30, 2))
    out = np.empty_like(x)
    for backend in ("numpy", "numba", "onnx"):
        out[:] = np.nan
        res = K.KernelSet({"squash": backend})("squash", x, out=out)
        assert res is out and K.max_abs_error(out, K.squash(x, backend="python")) <= K.TOLERANCE
