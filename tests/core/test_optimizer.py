"""Measured selection, batching and parallelism: batch size respects the latency budget,
batched results equal unbatched ones, the selection picks a correct backend when one is made
to fail or to return wrong results, and every change is logged with before/after figures."""
from __future__ import annotations

import time

import numpy as np
import pytest

import core.kernels as K
from core import schema
from core.optimizer import (PerformanceOptimizer, ThroughputOptimizer, apply_optimization_strategies,
                            benchmark_kernel, calculate_optimal_batch_size, create_batches,
                            make_input, optimize_throughput, read_selection, select_fastest)
from core.settings import load_settings

SMALL = dict(squash_shape=(20_000, 8), rolling_shape=(3_000, 4), repeats=1)


DB = 7


@pytest.fixture
def db(own_db):
    return own_db


def sleepy_predict(per_row_s: float, fixed_s: float = 0.0):
    def predict(batch):
        time.sleep(fixed_s + per_row_s * len(batch))
        return batch.sum(axis=1)
    return predict


class ModelClock:
    """A clock that only the modelled predict moves: latency = fixed + per_row x rows, exactly."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def predict(self, per_row_s: float, fixed_s: float):
        def predict(batch):
            self.t += fixed_s + per_row_s * len(batch)
            return batch.sum(axis=1)
        return predict


def test_batch_size_is_the_fastest_within_the_latency_budget():
    # latency 0.2 ms + 2 us a row: 512 rows 1.22 ms fits 3 ms, 2048 rows 4.3 ms does not
    clock = ModelClock()
    res = calculate_optimal_batch_size(clock.predict(2e-6, 2e-4), 4, latency_budget_ms=3.0,
                                       candidates=(1, 32, 512, 2048), min_time_s=0.02, clock=clock)
    by_size = {r["batch_size"]: r for r in res["rows"]}
    assert res["batch_size"] == 512
    assert by_size[512]["p99_ms"] <= 3.0 < by_size[2048]["p99_ms"]
    assert by_size[512]["rows_per_s"] > by_size[32]["rows_per_s"]


def test_batch_size_falls_back_to_the_smallest_when_nothing_fits():
    res = calculate_optimal_batch_size(sleepy_predict(0, 2e-3), 4, latency_budget_ms=0.5,
                                       candidates=(4, 64), min_time_s=0.01)
    assert res["batch_size"] == 4 and not any(r["within_budget"] for r in res["rows"])


@pytest.mark.parametrize("budget", [0, -1, float("nan"), "1"])
def test_batch_size_rejects_a_bad_budget(budget):
    with pytest.raises(ValueError, match="latency_budget_ms"):
        calculate_optimal_batch_size(sleepy_predict(0), 4, latency_budget_ms=budget)


def test_create_batches_covers_every_row_in_order_and_rejects_bad_sizes():
    x = np.arange(23 * 2).reshape(23, 2)
    batches = create_batches(x, 5)
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3] and np.array_equal(np.vstack(batches), x)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            create_batches(x, bad)
    with pytest.raises(ValueError, match="empty"):
        create_batches(x[:0], 4)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from scripts.train_model import train
    path = tmp_path_factory.mktemp("model") / "signal.onnx"
    train(path, seed=3, symbols=5, rounds=2000)
    return path


@pytest.mark.parametrize("workers", [1, 2])
def test_batched_predictions_equal_unbatched_ones(workers, model_path):
    from core.model import SignalModel
    model = SignalModel(model_path)
    x = np.random.default_rng(0).standard_normal((10_001, 4)).astype(np.float32) * 1e-3
    whole = model.predict(x)
    batched, stats = optimize_throughput(model.predict, x, batch_size=777, max_workers=workers)
    assert np.array_equal(batched, whole) and stats["batches"] == 13
    opt = ThroughputOptimizer(model.predict, 4, max_workers=workers)
    out, _ = opt.optimize_throughput(x)
    assert np.array_equal(out, whole) and opt.batch_size in (1, 8, 32, 128, 512, 2048, 8192, 32768)


def test_select_fastest_ignores_wrong_and_failed_rows_and_uses_python_last():
    rows = [{"backend": "numba", "ok": False, "ms": 1.0}, {"backend": "onnx", "ok": True, "ms": None},
            {"backend": "numpy", "ok": True, "ms": 5.0}, {"backend": "python", "ok": True, "ms": 2.0}]
    assert select_fastest(rows)["backend"] == "numpy"
    assert select_fastest(rows[:2] + rows[3:])["backend"] == "python"
    assert select_fastest(rows[:2]) is None


def test_benchmark_flags_a_wrong_backend_and_a_failing_one():
    good = K.implementation("squash", "numpy")

    def wrong(x, out=None):
        return good(x, out=out) * 1.01            # fast and 1% off: must not be selected

    def failing(x, out=None):
        raise MemoryError("simulated failure")
    rows = {r["backend"]: r for r in benchmark_kernel(
        "squash", {"numpy": good, "wrong": wrong, "failing": failing}, make_input("squash", (5000, 4)))}
    assert rows["numpy"]["ok"] and rows["numpy"]["max_error"] <= K.TOLERANCE
    assert not rows["wrong"]["ok"] and "tolerance" in rows["wrong"]["error"]
    assert not rows["failing"]["ok"] and "MemoryError" in rows["failing"]["error"]


def test_selection_skips_the_fastest_backend_when_it_returns_wrong_results(db):
    numpy_squash = K.implementation("squash", "numpy")

    def fast_but_wrong(x, out=None):
        return np.zeros_like(x)                   # instant and wrong
    override = {"squash": {"numpy": numpy_squash, "numba": fast_but_wrong}}
    doc = apply_optimization_strategies(load_settings({}), db, backends_override=override, **SMALL)
    assert doc["kernels"]["squash"] == "numpy"
    assert read_selection(db)["kernels"]["squash"] == "numpy"
    table = schema.loads(db.get(schema.KERNELS_BENCH))["rows"]
    wrong = next(r for r in table if r["kernel"] == "squash" and r["backend"] == "numba")
    assert wrong["ok"] is False and wrong["selected"] is False


def test_selection_respects_disabled_backends_and_logs_before_after(db):
    settings = load_settings({"CONSOLE_NUMBA_ENABLED": "0", "CONSOLE_ONNX_ENABLED": "0"})
    first = apply_optimization_strategies(settings, db, **SMALL)
    assert set(first["kernels"].values()) == {"numpy"} and "numba" not in first["enabled"]
    history = db.xrange(schema.KERNELS_HISTORY)
    assert len(history) >= len(K.KERNELS)               # first selection: every kernel changed
    entry = {k.decode(): schema.loads(v) for k, v in history[0][1].items()}
    assert entry["before"] == "" and entry["after"] == "numpy" and entry["after_ms"] > 0
    n = len(history)
    apply_optimization_strategies(settings, db, **SMALL)
    changes = [e for e in db.xrange(schema.KERNELS_HISTORY)[n:] if b"kernel:" in e[1][b"what"]]
    assert changes == []                                 # nothing changed, nothing logged
    PerformanceOptimizer(load_settings({}), db).apply_optimization_strategies(**SMALL)
    after = read_selection(db)["kernels"]
    new = [{k.decode(): schema.loads(v) for k, v in e[1].items()} for e in db.xrange(schema.KERNELS_HISTORY)[n:]]
    new = [e for e in new if e["what"].startswith("kernel:")]
    assert len(new) == sum(v != "numpy" for v in after.values())   # one entry per change
    assert all(e["before"] == "numpy" and e["after"] == after[e["what"][7:]] for e in new)
