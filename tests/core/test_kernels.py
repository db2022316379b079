"""Every kernel and backend against the pure-Python reference (core.kernels.reference), on
fixed and seeded-random inputs, edge cases included, within kernels.TOLERANCE."""
from __future__ import annotations

import math

import numpy as np
import pytest

import core.kernels as K
from core.kernels import reference

FAST = ("numpy", "numba")
SQUASH_BACKENDS = ("numpy", "numba", "onnx")


def close(a, b) -> bool:
    return K.max_abs_error(a, b) <= K.TOLERANCE


# ---- squash: normalize, clip, tanh ------------------------------------------------------------
def test_squash_reference_on_a_fixed_input_matches_hand_computation():
    x = [[1.0, 10.0], [3.0, 10.0]]       # column 0: mean 2, std 1 -> z = -1, +1; column 1 constant
    out = reference.squash(x)
    assert out[0][0] == pytest.approx(math.tanh(-1.0), abs=1e-9)
    assert out[1][0] == pytest.approx(math.tanh(1.0), abs=1e-9)
    assert out[0][1] == 0.0 and out[1][1] == 0.0


@pytest.mark.parametrize("backend", SQUASH_BACKENDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_squash_backend_matches_reference_on_seeded_random_input(backend, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((257, 7)) * rng.uniform(1e-3, 50, 7) + rng.uniform(-100, 100, 7)
    x[::17, 3] *= 40                       # outliers beyond the clip
    assert close(K.squash(x, backend=backend), K.squash(x, backend="python"))


@pytest.mark.parametrize("backend", SQUASH_BACKENDS)
def test_squash_large_enough_to_run_parallel_matches_reference(backend):
    x = np.random.default_rng(5).standard_normal((20_000, 16)) * 3 + 1   # >= PARALLEL_MIN_ELEMENTS
    ref = K.implementation("squash", "numpy")(x.copy())   # numpy equals the oracle to 1e-15 (tested above)
    assert close(K.squash(x, backend=backend), ref)
    assert close(K.squash(x[:300], backend=backend), K.squash(x[:300], backend="python"))


@pytest.mark.parametrize("backend", SQUASH_BACKENDS)
def test_squash_constant_column_gives_zeros_not_nan(backend):
    x = np.random.default_rng(1).standard_normal((50, 3))
    x[:, 1] = 1e6
    out = K.squash(x, backend=backend)
    assert np.all(np.isfinite(out)) and np.all(out[:, 1] == 0.0)


@pytest.mark.parametrize("backend", SQUASH_BACKENDS)
def test_squash_nan_and_inf_are_missing_values_mapped_to_zero(backend):
    x = np.random.default_rng(2).standard_normal((40, 3))
    x[3, 0], x[5, 1], x[6, 1] = np.nan, np.inf, -np.inf
    x[:, 2] = np.nan                                            # an all-missing column
    out = K.squash(x, backend=backend)
    assert out[3, 0] == 0 and out[5, 1] == 0 and out[6, 1] == 0 and np.all(out[:, 2] == 0)
    assert close(out, K.squash(x, backend="python"))


@pytest.mark.parametrize("backend", ("python",) + SQUASH_BACKENDS)
def test_squash_single_row_is_all_zero(backend):
    assert np.array_equal(K.squash(np.array([[1.0, -2.0, 3.0]]), backend=backend), np.zeros((1, 3)))


@pytest.mark.parametrize("backend", SQUASH_BACKENDS)
def test_squash_converts_float32_int_and_non_contiguous_input(backend):
    base = np.random.default_rng(3).standard_normal((60, 8))
    view = base[::2, ::3]                                       # non-contiguous
    assert not view.flags.c_contiguous
    assert close(K.squash(view, backend=backend), K.squash(np.ascontiguousarray(view), backend="python"))
    assert close(K.squash(base.astype(np.float32), backend=backend),
                 K.squash(base.astype(np.float32).astype(float), backend="python"))
    ints = np.arange(30).reshape(10, 3)
    assert close(K.squash(ints, backend=backend), K.squash(ints.astype(float), backend="python"))


@pytest.mark.parametrize("bad, error", [
    (np.empty((0, 4)), "empty"), (np.zeros((2, 2, 2)), "2-D"), ([["a", "b"]], "numeric"),
    (np.array([1 + 2j, 3j]), "complex"),
])
def test_squash_bad_input_is_a_clear_error(bad, error):
    with pytest.raises((ValueError, TypeError), match=error):
        K.squash(bad, backend="numba")


def test_numba_fast_tanh_error_is_within_tolerance_over_the_clipped_range():
    z = np.linspace(-K.CLIP_Z, K.CLIP_Z, 200_001).reshape(-1, 1)
    x = np.vstack([z, -z])                    # mean 0, so z-scores are z / std
    out = K.squash(x, backend="numba")
    assert close(out, K.implementation("squash", "numpy")(x.copy()))


# ---- rolling kernels ------------------------------------------------------------------------------
def walk(seed: int, shape) -> np.ndarray:
    return 100 * np.exp(np.cumsum(np.random.default_rng(seed).standard_normal(shape) * 0.01, axis=0))


ROLLING = [("rolling_mean", (5,)), ("rolling_std", (5,)), ("rolling_zscore", (5,)),
           ("rolling_mean", (32,)), ("rolling_zscore", (32,)), ("ewma", (0.2,)), ("ewma", (1.0,))]


def test_rolling_reference_on_a_fixed_input():
    x = [1.0, 2.0, 3.0, 4.0]
    assert reference.rolling_mean(x, 2)[1:] == [1.5, 2.5, 3.5] and math.isnan(reference.rolling_mean(x, 2)[0])
    assert reference.rolling_std(x, 2)[1:] == [0.5, 0.5, 0.5]
    assert reference.rolling_zscore(x, 2)[3] == pytest.approx(1.0)
    assert reference.ewma(x, 0.5) == [1.0, 1.5, 2.25, 3.125]
    assert reference.log_returns([1.0, math.e]) == [1.0]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("kernel, args", ROLLING)
@pytest.mark.parametrize("shape", [(300,), (400, 3)])
def test_rolling_backend_matches_reference_on_seeded_random_input(backend, kernel, args, shape):
    x = np.diff(np.log(walk(7, (shape[0] + 1,) + shape[1:])), axis=0)
    assert close(K.run(kernel, x, *args, backend=backend), K.run(kernel, x, *args, backend="python"))


@pytest.mark.parametrize("backend", FAST)
def test_log_returns_match_reference(backend):
    p = walk(8, (200, 4))
    assert close(K.log_returns(p, backend=backend), K.log_returns(p, backend="python"))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("kernel", ["rolling_std", "rolling_zscore"])
def test_rolling_constant_stretch_gives_zero_spread_not_noise(backend, kernel):
    x = np.r_[np.random.default_rng(4).standard_normal(50) * 0.01, np.full(40, 0.1)]
    out = K.run(kernel, x, 8, backend=backend)
    assert np.all(out[60:] == 0.0) and close(out, K.run(kernel, x, 8, backend="python"))


@pytest.mark.parametrize("backend", ("python",) + FAST)
def test_rolling_window_longer_than_input_is_all_nan_and_single_value_works(backend):
    assert np.all(np.isnan(K.rolling_mean(np.arange(3.0), 5, backend=backend)))
    assert K.ewma(np.array([2.5]), 0.3, backend=backend).tolist() == [2.5]
    assert K.rolling_std(np.array([2.5]), 1, backend=backend).tolist() == [0.0]


@pytest.mark.parametrize("call, error", [
    (lambda: K.rolling_mean(np.array([1.0, np.nan, 2.0]), 2), "non-finite value.*index \\(1,\\)"),
    (lambda: K.rolling_mean(np.arange(5.0), 0), "window must be a positive integer"),
    (lambda: K.rolling_zscore(np.arange(5.0), 2.5), "window must be a positive integer"),
    (lambda: K.ewma(np.arange(5.0), 1.5), "alpha must be in"),
    (lambda: K.ewma(np.array([]), 0.5), "empty"),
    (lambda: K.log_returns(np.array([1.0, -1.0])), "positive"),
    (lambda: K.log_returns(np.array([1.0])), "at least 2"),
    (lambda: K.run("nope", np.arange(3.0)), "unknown kernel"),
    (lambda: K.squash(np.ones((3, 3)), backend="gpu"), "unknown backend"),
])
def test_rolling_bad_input_is_a_clear_error(call, error):
    with pytest.raises(ValueError, match=error):
        call()


def test_rolling_kernels_have_no_onnx_path():
    with pytest.raises(K.BackendUnavailable, match="N/A"):
        K.rolling_mean(np.arange(5.0), 2, backend="onnx")
    assert "onnx" not in K.available("ewma") and "onnx" in K.available("squash")


def test_batch_features_equal_the_pipelines_per_tick_features_after_warm_up():
    from core.model import WINDOW as MODEL_WINDOW
    from core.pipeline import WINDOW, FeatureState
    assert MODEL_WINDOW == WINDOW
    mids = walk(9, (200,)).tolist()
    state, per_tick = FeatureState(), []
    for m in mids:
        per_tick.append(state.update(m, 0.0))
    r = K.log_returns(np.array(mids), backend="numba")
    mean, z = K.rolling_mean(r, WINDOW, backend="numba"), K.rolling_zscore(r, WINDOW, backend="numba")
    for i in range(WINDOW - 1, len(r)):
        ret, m, zz, _ = per_tick[i + 1]
        assert ret == pytest.approx(r[i], abs=1e-12) and m == pytest.approx(mean[i], abs=1e-12)
        assert zz == pytest.approx(z[i], abs=1e-6)


# ---- property-based: any finite matrix, every backend, the reference ----------------------------
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays(np.float64, st.tuples(st.integers(1, 40), st.integers(1, 5)),
              elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)))
def test_squash_matches_reference_on_any_finite_matrix(x):
    ref = K.squash(x, backend="python")
    for backend in SQUASH_BACKENDS:
        assert K.max_abs_error(K.squash(x, backend=backend), ref) <= K.TOLERANCE, backend
