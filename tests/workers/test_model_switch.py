"""The real pipeline runner follows the Settings page's onnx_enabled flag live (ONNX Runtime ->
the same model in Python -> back), records each switch, keeps ticking through it; and, as the
history's writer, keeps the memory-mapped daily closes current day after day."""
from __future__ import annotations

import numpy as np
import pytest

from core import history, runtime_config, schema, shared_closes
from core.model import ModelError, SignalModel
from core.settings import get_settings
from tests.conftest import stop_process, wait_for
from tests.workers.test_pipeline_runner import start_runner, status

pytestmark = pytest.mark.timeout(120)

DB = 5          # tests/core/test_memory.py's: modules run one after the other


def _model_inference_switches(client) -> list[tuple]:
    rows = [{k.decode(): schema.loads(v) for k, v in f.items()} for _id, f in client.xrange(schema.KERNELS_HISTORY)]
    return [(r["before"], r["after"], r["reason"]) for r in rows if r["what"] == "model_inference"]


def test_runner_switches_model_inference_with_the_onnx_flag_without_stopping(own_db, redis_url, tmp_path):
    try:
        SignalModel(get_settings().model_path)
    except ModelError as exc:
        pytest.fail(f"the runner needs the signal model (make setup): {exc}")
    proc = start_runner(tmp_path, redis_url.rsplit("/", 1)[0] + f"/{DB}")
    try:
        wait_for(lambda: (status(own_db) or {}).get("model_backend") == "onnx", 40, what="runner on ONNX")
        runtime_config.apply(own_db, {"onnx_enabled": False}, "tester")
        off = wait_for(lambda: (s := status(own_db)) and s["model_backend"] == "python" and s, 10,
                       what="model_inference on the Python model")
        assert off["onnx_enabled"] is False and off["model_switch"]["reason"] == "onnx_enabled set off"
        wait_for(lambda: status(own_db)["ticks_total"] > off["ticks_total"] + 1000, 10, what="ticks on Python")
        assert status(own_db)["model_backend"] == "python"          # no failure, no fallback
        runtime_config.apply(own_db, {"onnx_enabled": True}, "tester")
        wait_for(lambda: status(own_db)["model_backend"] == "onnx", 10, what="back on ONNX")
        wait_for(lambda: len(_model_inference_switches(own_db)) == 2, 5, what="both switches recorded")
        assert _model_inference_switches(own_db) == [("onnx", "python", "onnx_enabled set off"),
                                                      ("python", "onnx", "onnx_enabled set on")]
        _closes_stay_current(tmp_path / "var")
    finally:
        stop_process(proc)


def _closes_stay_current(var) -> None:
    """Sim days of 1 s: the runner appends each closed day to the mapping the readers use."""
    conn = history.connect(f"sqlite:///{var / 'console.db'}")
    try:
        backfilled = 40                                            # start_runner's CONSOLE_BACKFILL_DAYS
        mapped = wait_for(lambda: (m := shared_closes.current_mapping(conn, var)) and
                          m.meta["last_day"] >= backfilled + 2 and m, 20, 0.2, what="live days mapped")
        assert mapped.meta["first_day"] == 0 and len(mapped.array) == mapped.meta["last_day"] + 1
        symbols = mapped.meta["symbols"]

        def read_between_two_days():
            day = history.last_day(conn)[0]
            got = shared_closes.read(conn, var, symbols, 30)
            expected = history.closes_matrix(conn, symbols)[-30:]
            return got is not None and history.last_day(conn)[0] == day and (got, expected)
        got, expected = wait_for(read_between_two_days, 10, 0.05, what="a read from a current mapping")
        assert got.shape == (30, len(symbols)) and np.array_equal(got, expected)
    finally:
        conn.close()
