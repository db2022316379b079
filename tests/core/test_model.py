"""The ONNX signal model: export, load-time validation with clear errors, ONNX Runtime
predictions against the model's numpy reference, the tick predictor, and the out-of-sample
hit rate on data never used in training."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from core.market import FactorModel
from core.model import (INPUT_NAME, ModelError, SessionConfig, SignalModel,
                        feature_dataset, hit_rate, tune_session_options, wilson_interval)
from scripts.train_model import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "signal.onnx"
    report = train(path, seed=7, symbols=20, rounds=8000)
    return path, report


def test_training_is_deterministic_for_a_seed(trained, tmp_path):
    path, report = trained
    again = train(tmp_path / "again.onnx", seed=7, symbols=20, rounds=8000)
    assert again["w_lin"] == report["w_lin"] and again["w_log"] == report["w_log"]
    assert (tmp_path / "again.onnx").read_bytes() == path.read_bytes()


def test_model_finds_the_simulators_imbalance_signal_out_of_sample(trained):
    path, report = trained
    oos = report["oos"]
    assert oos["n"] > 100_000 and oos["stream"] != 11          # never the training stream
    assert oos["ci_low"] > 0.5, oos                            # better than a coin, with 95% confidence
    assert report["w_lin"][3] > 0                              # loads positively on imbalance


def test_onnx_predictions_equal_the_models_numpy_reference(trained):
    model = SignalModel(trained[0])
    X, _ = feature_dataset(FactorModel.from_seed(20, 3), 3, 200, stream=12)
    got, ref = model.run(X), model.reference_predict(X)
    assert np.allclose(got["expected_return"], ref["expected_return"], rtol=1e-4, atol=1e-9)
    assert np.allclose(got["prob_up"], ref["prob_up"], atol=1e-5)


def test_tick_predictors_equal_batch_predictions(trained):
    model = SignalModel(trained[0])
    X, _ = feature_dataset(FactorModel.from_seed(20, 4), 4, 100, stream=12)
    onnx_tick, py_tick = model.tick_predictor(), model.python_tick_predictor()
    batch = model.predict(X[:50])
    for row, expected in zip(X[:50], batch):
        f = tuple(row.tolist())
        assert onnx_tick(f) == pytest.approx(float(expected), rel=1e-5, abs=1e-10)
        assert py_tick(f) == pytest.approx(float(expected), rel=1e-4, abs=1e-9)


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="model file not found.*nothere.onnx"):
        SignalModel(tmp_path / "nothere.onnx")


def test_corrupt_model_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07garbage-not-a-protobuf" * 10)
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        SignalModel(bad)


def _linear_model(path, name=INPUT_NAME, elem=TensorProto.FLOAT, width=4, out="expected_return"):
    w = helper.make_tensor("W", elem, [width, 1], [0.5] * width)
    graph = helper.make_graph([helper.make_node("MatMul", [name, "W"], [out])], "g",
                              [helper.make_tensor_value_info(name, elem, [None, width])],
                              [helper.make_tensor_value_info(out, elem, [None, 1])], [w])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize("kwargs, error", [
    ({"width": 5}, r"shape \[batch, 4\], found \['\?', 5\]"),
    ({"elem": TensorProto.DOUBLE}, "must be float32, found DOUBLE"),
    ({"name": "x"}, "one input named 'features', found \\['x'\\]"),
    ({"out": "y"}, "no output named 'expected_return'"),
])
def test_model_with_wrong_input_is_a_clear_error(tmp_path, kwargs, error):
    with pytest.raises(ModelError, match=error):
        SignalModel(_linear_model(tmp_path / "m.onnx", **kwargs))


def test_any_conforming_model_loads_but_has_no_numpy_reference(tmp_path):
    model = SignalModel(_linear_model(tmp_path / "m.onnx"))
    assert model.predict(np.ones((3, 4))).tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(ModelError, match="no numpy reference"):
        model.reference_predict(np.ones((1, 4)))


@pytest.mark.parametrize("bad, error", [(np.ones((2, 3)), "shape"), (np.empty((0, 4)), "empty"),
                                        (np.array([["a"] * 4]), "numeric")])
def test_bad_feature_batches_are_clear_errors(trained, bad, error):
    with pytest.raises((ValueError, TypeError), match=error):
        SignalModel(trained[0]).predict(bad)


def test_session_options_are_measured_and_ranked(trained):
    rows = tune_session_options(trained[0], max_workers=2, calls=200)
    assert len(rows) >= 3 and all(r["p50_us"] > 0 for r in rows)
    keys = [r["p99_us"] + r["p50_us"] for r in rows]
    assert keys == sorted(keys)
    with pytest.raises(ValueError, match="graph_optimization"):
        SessionConfig(1, "turbo").options()


def test_hit_rate_and_wilson_interval():
    assert hit_rate(np.array([1.0, -1, 1, 0]), np.array([2.0, -3, -1, 5]))["hit_rate"] == pytest.approx(2 / 3)
    lo, hi = wilson_interval(520, 1000)
    assert lo < 0.52 < hi and hi - lo == pytest.approx(2 * 1.96 * np.sqrt(0.52 * 0.48 / 1000), rel=0.02)


def test_return_scale_maps_live_returns_to_the_training_time_step(trained):
    model = SignalModel(trained[0])
    assert model.dt_days == pytest.approx(1 / 60_000)
    k = model.return_scale(1 / 1000)
    assert k == pytest.approx(np.sqrt(1000 / 60_000))
    f = (2e-3, 1e-4, 0.7, 0.3)
    scaled = model.tick_predictor(k)(f)
    direct = model.predict(np.array([[f[0] * k, f[1] * k, f[2], f[3]]]))[0] / k
    assert scaled == pytest.approx(float(direct), rel=1e-5)
    assert model.python_tick_predictor(k)(f) == pytest.approx(scaled, rel=1e-4)
    with pytest.raises(ValueError, match="live_dt_days"):
        model.return_scale(0)


# ---- the runner's side: fallback, alerts, following the selection ---------------------------
def _pipeline(weights=(0.0, 0.0, 0.0, 0.0, 1e-3)):
    import datetime as dt

    from core.broker import PaperBroker
    from core.events import EventBus
    from core.pipeline import Pipeline
    model = FactorModel.from_seed(3, 1)
    broker = PaperBroker(model.symbols, 1e6)
    return Pipeline(model, broker, EventBus(), weights, first_date=dt.date(2026, 1, 5),
                    record=lambda *_: None)


def test_failing_model_backend_falls_back_and_queues_an_alert_without_stopping(trained, redis_url):
    from core.events import Tick
    from core.model import ModelRuntime
    from core.settings import load_settings
    client = schema_db(redis_url)
    rt = ModelRuntime(load_settings({"CONSOLE_MODEL_PATH": str(trained[0])}))
    pipe = _pipeline()
    rt.attach(pipe, 1 / 60_000)
    assert pipe.model_backend == "onnx"
    calls = []

    def broken(_f):
        calls.append(1)
        raise RuntimeError("onnxruntime exploded")
    pipe.set_predictor(broken, "onnx", fallback=rt.signal.python_tick_predictor(), fallback_name="python")
    for i in range(200):                                    # enough ticks for features to exist
        pipe.on_tick(Tick(i, i % 3, 100 + 0.01 * (i % 7), 99.99, 100.01, 10.0, 0.5, 1000.0, 0, 0.0))
    assert pipe.ticks_total == 200 and len(calls) == 1 and pipe.model_backend == "python"
    rt.io(client, pipe)
    from core.alerts import recent_alerts
    msgs = [a["message"] for a in recent_alerts(client, 10)]
    assert any("backend onnx failed" in m and "exploded" in m and "python" in m for m in msgs)
    assert not pipe.backend_failures


def test_missing_model_keeps_the_linear_fit_and_alerts_once(tmp_path, redis_url):
    from core.alerts import recent_alerts
    from core.model import ModelRuntime
    from core.settings import load_settings
    client = schema_db(redis_url)
    rt = ModelRuntime(load_settings({"CONSOLE_MODEL_PATH": str(tmp_path / "gone.onnx")}))
    pipe = _pipeline()
    rt.attach(pipe)
    assert pipe.model_backend == "linear" and "model file not found" in rt.error
    rt.io(client, pipe)
    rt.io(client, pipe)
    assert sum("signal model not loaded" in a["message"] for a in recent_alerts(client, 10)) == 1


def test_runtime_follows_the_stored_selection(trained, redis_url):
    from core import schema
    from core.model import ModelRuntime
    from core.settings import load_settings
    client = schema_db(redis_url)
    rt = ModelRuntime(load_settings({"CONSOLE_MODEL_PATH": str(trained[0])}))
    pipe = _pipeline()
    rt.attach(pipe, 1 / 60_000)
    client.set(schema.KERNELS_SELECTION, schema.dumps({
        "ts": 1.0, "kernels": {"squash": "onnx", "ewma": "numba"}, "numba_threads": 1,
        "session": {"intra_op_threads": 1, "graph_optimization": "basic", "execution_mode": "sequential"}}))
    rt.io(client, pipe, now=100.0)
    assert rt.kernels.selection["squash"] == "onnx" and rt.kernels.selection["ewma"] == "numba"
    assert rt.signal.config.graph_optimization == "basic" and pipe.model_backend == "onnx"
    assert rt.status(pipe)["model_backend"] == "onnx"


def schema_db(redis_url):
    from core import schema
    client = schema.connect(redis_url.rsplit("/", 1)[0] + "/9")
    client.flushdb()
    return client


def test_onnx_flag_swaps_the_live_predictor_to_the_same_model_in_python_and_back(trained, redis_url):
    """Off: model_inference runs the model's weights as Python arithmetic, equal to ONNX
    Runtime within float32 tolerance on ticks the model never saw; each switch is recorded in
    the kernels history with its reason, and shows in the runner's status."""
    from core import schema
    from core.events import Tick
    from core.model import ModelRuntime
    from core.settings import load_settings
    client = schema_db(redis_url)
    rt = ModelRuntime(load_settings({"CONSOLE_MODEL_PATH": str(trained[0])}))
    pipe = _pipeline()
    rt.attach(pipe, 1 / 1000)
    onnx_predict = pipe._predict
    assert pipe.model_backend == "onnx" and rt.set_onnx_enabled(pipe, True) is False
    assert rt.set_onnx_enabled(pipe, False) is True and pipe.model_backend == "python"
    X, _ = feature_dataset(FactorModel.from_seed(20, 5), 5, 300, stream=12)
    rows = [tuple(r) for r in X[::7].tolist()]
    assert len(rows) > 500
    got, want = np.array([pipe._predict(f) for f in rows]), np.array([onnx_predict(f) for f in rows])
    assert np.allclose(got, want, rtol=1e-4, atol=1e-9) and np.abs(want).max() > 1e-6
    for i in range(100):                                   # the pipeline keeps scoring ticks on it
        pipe.on_tick(Tick(i, i % 3, 100 + 0.01 * (i % 7), 99.99, 100.01, 10.0, 0.5, 1000.0, 0, 0.0))
    assert pipe.ticks_total == 100 and pipe.model_backend == "python" and not pipe.backend_failures
    rt.io(client, pipe, now=10.0)
    rt.set_onnx_enabled(pipe, True)
    rt.io(client, pipe, now=11.0)
    assert pipe.model_backend == "onnx" and pipe._predict(rows[0]) == pytest.approx(want[0], rel=1e-5)
    history = [{k.decode(): schema.loads(v) for k, v in f.items()} for _id, f in client.xrange(schema.KERNELS_HISTORY)]
    assert [(h["what"], h["before"], h["after"], h["reason"]) for h in history] == [
        ("model_inference", "onnx", "python", "onnx_enabled set off"),
        ("model_inference", "python", "onnx", "onnx_enabled set on")]
    status = rt.status(pipe)
    assert status["onnx_enabled"] is True and status["model_switch"]["ts"] == 11.0
    rt.io(client, pipe, now=12.0)
    assert client.xlen(schema.KERNELS_HISTORY) == 2          # no switch, no entry


def test_onnx_disabled_at_start_installs_the_python_model(trained):
    from core.model import ModelRuntime
    from core.settings import load_settings
    rt = ModelRuntime(load_settings({"CONSOLE_MODEL_PATH": str(trained[0]), "CONSOLE_ONNX_ENABLED": "0"}))
    pipe = _pipeline()
    rt.attach(pipe, 1 / 60_000)
    assert pipe.model_backend == "python" and rt.status(pipe)["onnx_enabled"] is False
