"""The Latency page's compute-kernels section: the live benchmark table written by the real
worker's kernels.optimize run, shown in a real browser; and the section's rendering rules."""
from __future__ import annotations

import pytest

from app.components.kernels_table import kernels_section
from core import schema
from tests.conftest import wait_for


def _text(component) -> str:
    if isinstance(component, str):
        return component
    children = getattr(component, "children", None)
    if children is None:
        return ""
    if not isinstance(children, (list, tuple)):
        children = [children]
    return " ".join(_text(c) for c in children)


def test_kernels_section_marks_the_selected_path_and_rejected_ones():
    rows = [{"kernel": "squash", "backend": b, "ms": ms, "ok": ok, "selected": sel, "speedup": sp,
             "max_error": err, "scaled_from": sf, "shape": [1_000_000, 16], "error": e}
            for b, ms, ok, sel, sp, err, sf, e in [
                ("python", 10_000.0, True, False, 1.0, 0.0, 6250, None),
                ("numpy", 150.0, True, False, 66.7, 1e-15, None, None),
                ("numba", 10.0, True, True, 1000.0, 2.6e-8, None, None),
                ("onnx", 5.0, False, False, 2000.0, 0.5, None, "max abs error 0.5 > tolerance 1e-06")]]
    sel = {"kernels": {"squash": "numba"}, "numba_threads": 2, "max_workers": 2, "batch_size": 8192,
           "session": {"intra_op_threads": 1, "execution_mode": "sequential", "graph_optimization": "all"}}
    model = {"hit_rate": 0.5237, "ci_low": 0.5215, "ci_high": 0.5259, "n": 199_340,
             "tick": {"p50_us": 6.0, "p99_us": 12.0}}
    text = _text(kernels_section({"ts": 0, "rows": rows}, sel, model))
    assert "scaled from 6,250 rows" in text and "1,000×" in text and "selected" in text
    assert "rejected" in text and "52.37%" in text and "above chance" in text and "numba (10.0 ms)" in text
    assert "No kernel benchmark yet" in _text(kernels_section(None, None, None))


def test_kernels_section_shows_the_live_model_backend_and_its_last_switch():
    status = {"model_backend": "python", "onnx_enabled": False,
              "model_switch": {"ts": 0.0, "before": "onnx", "after": "python", "reason": "onnx_enabled set off"}}
    text = _text(kernels_section(None, None, None, status))
    assert "the same model in Python arithmetic" in text and "(onnx_enabled off)" in text
    assert "switched onnx → python" in text and "(onnx_enabled set off)" in text
    assert "has not reported yet" in _text(kernels_section(None, None, None, None))


@pytest.mark.timeout(180)
def test_latency_page_shows_the_live_kernel_table_from_the_worker(console, page, redis_url):
    client = schema.connect(redis_url)
    if not (client.get(schema.KERNELS_BENCH) and client.get(schema.MODEL_METRICS)):
        # the start-up run's results may have been flushed by an earlier test: ask for one now
        from celery_config import celery_app
        celery_app.send_task("kernels.optimize")
    wait_for(lambda: client.get(schema.KERNELS_BENCH) and client.get(schema.MODEL_METRICS), 150,
             interval=1.0, what="the worker's kernels.optimize results")
    page.goto(console + "/latency")
    page.wait_for_selector("#latency-kernels-table", timeout=30_000)
    table = page.inner_text("#latency-kernels-table")
    for label in ("pure Python", "numpy", "numba", "ONNX Runtime"):
        assert label in table
    assert "selected" in table and "×" in table
    assert "hit rate" in page.inner_text("#latency-kernels-model")
