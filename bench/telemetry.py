"""Area `telemetry`: hot-path cost against the hdrhistogram package, percentile accuracy of
merged histograms against numpy, and Redis commands/s caused by telemetry at 1k and 100k
samples/s (a private redis-server, a real recorder + flusher)."""
from __future__ import annotations

import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from time import perf_counter_ns

import numpy as np

from core import redis_server, schema
from core.settings import DEFAULT_STAGE_THRESHOLDS_MS
from core.telemetry import measure_latency
from core.telemetry.flusher import Flusher
from core.telemetry.histogram import Histogram
from core.telemetry.recorder import Recorder

BATCHES = 20
BATCH_N = 20_000
PCTS = (50.0, 95.0, 99.0, 99.9)


def _median_batch_ns(one_batch) -> float:
    one_batch()                                              # warm up
    return statistics.median(one_batch() for _ in range(BATCHES))


def record_ns() -> float:
    """Per-sample cost of `with measure_latency(stage): pass`, both clock reads included."""
    def batch():
        started = perf_counter_ns()
        for _ in range(BATCH_N):
            with measure_latency("data_processing"):
                pass
        return (perf_counter_ns() - started) / BATCH_N
    return _median_batch_ns(batch)


def record_ns_hdrhistogram() -> float:
    """The same through the hdrhistogram package: two clock reads + record_value."""
    from hdrh.histogram import HdrHistogram
    hist = HdrHistogram(1, 3600 * 10**9, 2)

    def batch():
        started = perf_counter_ns()
        for _ in range(BATCH_N):
            t0 = perf_counter_ns()
            hist.record_value(perf_counter_ns() - t0)
        return (perf_counter_ns() - started) / BATCH_N
    return _median_batch_ns(batch)


def percentile_max_rel_err(seed: int = 11) -> float:
    """8 histograms, 1,000,000 lognormal samples in all, merged; worst relative error of
    p50/p95/p99/p99.9 against numpy.percentile(method="inverted_cdf") on the raw samples."""
    rng = np.random.default_rng(seed)
    parts = [rng.lognormal(mean=11.0 + 0.2 * i, sigma=1.0, size=125_000).astype(np.int64)
             for i in range(8)]
    merged = Histogram.merged(Histogram.decode(Histogram.from_values(p).encode()) for p in parts)
    exact = np.percentile(np.concatenate(parts), PCTS, method="inverted_cdf")
    got = np.array(merged.percentiles(PCTS))
    return float(np.max(np.abs(got - exact) / exact))


def _record_at(rec: Recorder, rate: float, stop: threading.Event, done: list) -> None:
    chunk = max(1, int(rate / 100))                          # 100 paced chunks per second
    next_at = time.perf_counter()
    while not stop.is_set():
        for i in range(chunk):
            rec.record("data_processing", 20_000 + (i & 1023))
        done[0] += chunk
        next_at += chunk / rate
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def redis_cmds_per_s(url: str, rate: float, seconds: int) -> tuple[float, float]:
    """(Redis commands/s, achieved samples/s) while a thread records at `rate` samples/s."""
    client = schema.connect(url, health_check_interval=0)   # its PINGs are not telemetry's
    rec = Recorder(DEFAULT_STAGE_THRESHOLDS_MS)
    flusher = Flusher("bench", url, interval_s=1.0, recorder=rec)
    flusher.flush_once()                                     # registry shipped before measuring
    flusher.start()
    stop, done = threading.Event(), [0]
    thread = threading.Thread(target=_record_at, args=(rec, rate, stop, done), daemon=True)
    thread.start()
    time.sleep(1.5 - time.time() % 1.0)                      # half a second past a flush
    before, samples_before = client.info("stats")["total_commands_processed"], done[0]
    time.sleep(seconds)
    after, samples_after = client.info("stats")["total_commands_processed"], done[0]
    stop.set()
    thread.join()
    flusher.stop()
    client.close()
    # the first INFO is counted in `after`: it is ours, not telemetry's
    return (after - before - 1) / seconds, (samples_after - samples_before) / seconds


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(quick: bool) -> dict[str, float]:
    figures = {"telemetry.record_ns": record_ns(),
               "telemetry.record_ns_hdrhistogram": record_ns_hdrhistogram(),
               "telemetry.percentile_max_rel_err": percentile_max_rel_err()}
    seconds = 5 if quick else 15
    port = _free_port()
    server = redis_server.start(port, Path(tempfile.mkdtemp(prefix="bench-tele-")), appendonly=False)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        achieved = {}
        for label, rate in (("1k", 1_000.0), ("100k", 100_000.0)):
            cmds, achieved[label] = redis_cmds_per_s(url, rate, seconds)
            figures[f"telemetry.redis_cmds_per_s_at_{label}"] = cmds
    finally:
        server.terminate()
        server.wait(10)
    _print_table(figures, achieved, seconds)
    return figures


def _print_table(f: dict, achieved: dict, seconds: int) -> None:
    ours, hdr = f["telemetry.record_ns"], f["telemetry.record_ns_hdrhistogram"]
    lo, hi = f["telemetry.redis_cmds_per_s_at_1k"], f["telemetry.redis_cmds_per_s_at_100k"]
    print(f"   record one sample   ours {ours:8.0f} ns   hdrhistogram {hdr:8.0f} ns   "
          f"ratio {ours / hdr:.2f}   (goal <= 1000 ns and < hdrhistogram)")
    print(f"   percentile error    max rel err {f['telemetry.percentile_max_rel_err']:.5f}   "
          "(p50/p95/p99/p99.9, 8 merged histograms, 1e6 lognormal samples; goal <= 0.01)")
    print(f"   redis commands/s    at 1k {lo:6.2f}   at 100k {hi:6.2f}   ratio "
          f"{hi / lo if lo else float('nan'):.2f}   (achieved {achieved['1k']:,.0f} and "
          f"{achieved['100k']:,.0f} samples/s over {seconds} s; goal: about equal)")
