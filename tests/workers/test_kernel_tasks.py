"""kernels.optimize: called directly against a database of its own (lock, freshness skip,
bad parameters, what it writes), and run by a real Celery worker on db 0."""
from __future__ import annotations

import time

import pytest

from core import kernels, schema
from core.optimizer import read_selection
from tests.conftest import wait_for
from workers import kernel_tasks


@pytest.fixture
def own_db(redis_url, monkeypatch):
    url = redis_url.rsplit("/", 1)[0] + "/8"
    client = schema.connect(url)
    client.flushdb()
    monkeypatch.setattr(kernel_tasks, "_client", lambda: schema.connect(url, socket_timeout=10.0))
    yield client
    client.flushdb()
    client.close()


@pytest.mark.timeout(120)
def test_optimize_writes_selection_table_history_and_model_metrics(own_db):
    res = kernel_tasks.optimize(quick=True)
    assert res["status"] == "done" and res["rejected"] == 0
    sel = read_selection(own_db)
    assert set(sel["kernels"]) == set(kernels.KERNELS)
    assert sel["kernels"]["squash"] in ("numpy", "numba", "onnx") and sel["batch_size"] >= 1
    assert sel["session"]["intra_op_threads"] >= 1
    rows = schema.loads(own_db.get(schema.KERNELS_BENCH))["rows"]
    squash = {r["backend"]: r for r in rows if r["kernel"] == "squash"}
    assert set(squash) == {"python", "numpy", "numba", "onnx"} and squash["python"]["scaled_from"]
    assert sum(r["selected"] for r in squash.values()) == 1 and all(r["ok"] for r in squash.values())
    metrics = schema.loads(own_db.get(schema.MODEL_METRICS))
    assert metrics["ci_low"] > 0.5 and metrics["tick"]["p99_us"] > 0
    assert own_db.xlen(schema.KERNELS_HISTORY) >= len(kernels.KERNELS)
    assert own_db.get(schema.KERNELS_LOCK) is None
    # a fresh selection: the start-up trigger skips
    assert kernel_tasks.optimize(quick=True, if_older_than_s=3600)["status"] == "skipped"


def test_optimize_skips_while_another_run_holds_the_lock(own_db):
    own_db.set(schema.KERNELS_LOCK, "other", ex=30)
    assert kernel_tasks.optimize(quick=True)["status"] == "skipped"
    assert own_db.get(schema.KERNELS_SELECTION) is None


def test_optimize_rejects_bad_parameters_without_running(own_db):
    assert kernel_tasks.optimize(quick="yes")["status"] == "failed"
    assert kernel_tasks.optimize(if_older_than_s="soon")["status"] == "failed"
    assert own_db.get(schema.KERNELS_SELECTION) is None


@pytest.mark.timeout(150)
def test_real_worker_publishes_a_selection_the_pipeline_can_read(redis_url, celery_worker_process):
    from celery_config import celery_app
    client = schema.connect(redis_url)
    started = time.time()
    # the worker's start-up run may already be going: this one then skips on the lock
    celery_app.send_task("kernels.optimize", kwargs={"quick": True, "if_older_than_s": 0.001})
    wait_for(lambda: (read_selection(client).get("ts") or 0) >= started - 60, 120,
             interval=0.5, what="a kernel selection from the worker")
    sel = read_selection(client)
    assert kernels.KernelSet(sel["kernels"]).selection == sel["kernels"]
    wait_for(lambda: client.get(schema.MODEL_METRICS), 30, what="model metrics")
