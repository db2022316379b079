"""Area `dashboard`: how long the pages' callbacks take when Redis holds a full hour of data.

A private redis-server is filled with 60 minutes of telemetry for the spec's seven stages
(raw flushes at 1,000 samples/s, rolled up by the real rollup) and an hour of 1-second system
metric samples; then each live callback of the Overview and Latency pages is called as Dash
would call it, per window, and the median of repeated calls is reported in milliseconds.
The goal from the issue: every callback well under 100 ms.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.telemetry import _free_port
from core import redis_server, schema
from core.settings import DEFAULT_STAGE_THRESHOLDS_MS, get_settings
from core.telemetry.histogram import Histogram
from core.telemetry.rollup import rollup

HOUR_S = 3600
SAMPLES_PER_S = 1000


def _fill_telemetry(client, end: int, seed: int = 5) -> None:
    rng = np.random.default_rng(seed)
    pipe = client.pipeline(transaction=False)
    for second in range(end - HOUR_S + 1, end + 1):
        fields = {"proc": "bench", "role": "bench", "sec": str(second)}
        for i, stage in enumerate(DEFAULT_STAGE_THRESHOLDS_MS):
            values = rng.lognormal(np.log(20_000 * (i + 1)), 0.6, SAMPLES_PER_S).astype(np.int64)
            fields[f"h:{stage}"] = Histogram.from_values(values).encode()
        pipe.xadd(schema.TELE_RAW, fields, id=f"{(second + 1) * 1000}-0")
        if len(pipe) >= 200:
            pipe.execute()
    pipe.execute()
    rollup(client, now=end + 4)


def _fill_metrics(client, end: int) -> None:
    pipe = client.pipeline(transaction=False)
    for second in range(end - HOUR_S + 1, end + 1):
        sample = {"t": float(second), "cpu_pct": 30.0, "cpu_per_core": [30.0, 30.0], "mem_pct": 40.0,
                  "mem_used_bytes": 8 << 30, "mem_total_bytes": 24 << 30, "mem_available_bytes": 16 << 30,
                  "swap_pct": 0.0, "disk_pct": 50.0, "disk_read_bps": 1e5, "disk_write_bps": 2e5,
                  "net_sent_bps": 1e4, "net_recv_bps": 1e4, "console_rss_bytes": 600 << 20,
                  "console_cpu_pct": 12.0,
                  "procs": [{"role": r, "pid": 1000 + i, "cpu_pct": 2.0, "rss_bytes": 90 << 20}
                            for i, r in enumerate(["web", "web", "worker", "worker", "beat", "pipeline"])]}
        schema.add_to_series(pipe, schema.METRICS_SEC, second, schema.dumps(sample),
                             schema.SECOND_SERIES_RETENTION_S + HOUR_S)
    pipe.execute()


def _median_ms(fn, *args, repeat: int) -> float:
    fn(*args)                                             # warm caches and imports
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def run(quick: bool) -> dict[str, float]:
    port = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    server = redis_server.start(port, tmp, appendonly=False)
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    get_settings.cache_clear()
    try:
        client = schema.connect(os.environ["REDIS_URL"])
        end = int(time.time()) - 4
        started = time.perf_counter()
        _fill_telemetry(client, end)
        _fill_metrics(client, end)
        print(f"   filled one hour of data in {time.perf_counter() - started:.1f}s")
        return _time_callbacks(repeat=5 if quick else 20)
    finally:
        server.terminate()
        server.wait(timeout=10)


def _time_callbacks(repeat: int) -> dict[str, float]:
    from app.main import create_app
    create_app()                                           # registers the pages
    from app.pages import latency, overview
    out = {"dashboard.overview_kpis_ms": _median_ms(overview.update_kpis, 1, repeat=repeat)}
    for label, window_s in (("5min", "5 min"), ("15min", "15 min"), ("60min", "60 min")):
        out[f"dashboard.overview_charts_{label}_ms"] = _median_ms(
            overview.update_system_charts, 1, window_s, repeat=repeat)
        out[f"dashboard.latency_series_{label}_ms"] = _median_ms(
            latency.update_series, 1, window_s, "total_pipeline", repeat=repeat)
        out[f"dashboard.latency_details_{label}_ms"] = _median_ms(
            latency.update_details, 1, window_s, "total_pipeline", repeat=repeat)
    worst = max(out.values())
    print(f"   slowest callback: {worst:.1f} ms (goal: well under 100 ms)")
    return out
