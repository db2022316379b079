"""Read side of telemetry, for the dashboard and the benchmarks. All latencies are in
microseconds (floats); anything without data is None.

Every window ends at the last finalized second (TELE_ROLLUP_LAST, capped by `now`): seconds
still inside the rollup's grace are not complete yet and would read as a throughput dip.
Windows over whole minutes read the per-minute histograms, so a 60-minute window costs about
60 + 2*59 blob reads per stage, not 3600.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
from scipy import stats as sps

from core import runtime_config, schema
from core.settings import DEFAULT_STAGE_THRESHOLDS_MS
from core.telemetry.histogram import Histogram, HistogramDecodeError
from core.telemetry.rollup import BLOCK_S, PERCENTILES, unpack_member

log = logging.getLogger(__name__)

TOTAL_STAGE = "total_pipeline"
MAX_CDF_POINTS = 300


def _check_window(window_s) -> int:
    if isinstance(window_s, bool) or not isinstance(window_s, (int, float)) \
            or not math.isfinite(window_s) or window_s < 1:
        raise ValueError(f"window_s must be a number of seconds >= 1, got {window_s!r}")
    return int(window_s)


def window_end(client, now: float | None = None) -> int:
    """Last second whose data is final: the rollup's progress, never after `now`."""
    now_s = int(time.time() if now is None else now)
    last = client.get(schema.TELE_ROLLUP_LAST)
    return now_s if last is None else min(now_s, int(last))


def _queue_window_reads(pipe, stage: str, start_s: int, end_s: int) -> int:
    """Queue the zset reads covering [start_s, end_s]; returns how many were queued."""
    first_min = -(-start_s // 60) * 60              # first minute starting inside the window
    end_min = (end_s + 1) // 60 * 60                # minutes before this end inside it
    if first_min >= end_min:
        pipe.zrangebyscore(schema.tele_sec_hist(stage), start_s, end_s)
        return 1
    pipe.zrangebyscore(schema.tele_min_hist(stage), first_min, end_min - 60)
    pipe.zrangebyscore(schema.tele_sec_hist(stage), start_s, first_min - 1)
    pipe.zrangebyscore(schema.tele_sec_hist(stage), end_min, end_s)
    return 3


def _merge_members(results) -> Histogram:
    hist = Histogram()
    for members in results:
        for member in members:
            try:
                hist.merge_blob(unpack_member(member))
            except HistogramDecodeError as exc:
                log.warning("telemetry query: skipped a stored histogram that does not decode: %s", exc)
    return hist


def window_histogram(client, stage: str, start_s: int, end_s: int) -> Histogram:
    """All samples of `stage` in seconds [start_s, end_s] (inclusive), merged."""
    pipe = client.pipeline(transaction=False)
    _queue_window_reads(pipe, stage, int(start_s), int(end_s))
    return _merge_members(pipe.execute())


def _us(ns):
    return None if ns is None else ns / 1000.0


def _hist_stats(hist: Histogram, span_s: int, threshold_ms: float | None) -> dict:
    count = hist.count
    p50, p95, p99, p999 = hist.percentiles(PERCENTILES)
    threshold_us = None if threshold_ms is None else threshold_ms * 1000.0
    return {"count": count, "ops_s": count / span_s, "mean_us": _us(hist.mean()),
            "p50_us": _us(p50), "p95_us": _us(p95), "p99_us": _us(p99), "p999_us": _us(p999),
            "max_us": _us(hist.max) if count else None, "threshold_us": threshold_us,
            "over_threshold": bool(p99 is not None and threshold_us is not None
                                   and p99 / 1000.0 > threshold_us)}


def registered_stages(client) -> dict[str, float | None]:
    """stage -> threshold_ms: the spec's stages (so the table always lists them), overridden
    and extended by what the flushers shipped (TELE_STAGES), overridden in turn by the
    thresholds set on the Settings page (runtime_config: read live, every call)."""
    out: dict[str, float | None] = dict(DEFAULT_STAGE_THRESHOLDS_MS)
    for name, raw in client.hgetall(schema.TELE_STAGES).items():
        try:
            out[name.decode()] = float(schema.loads(raw)["threshold_ms"])
        except (ValueError, KeyError, TypeError):
            log.warning("telemetry query: stage %r has a malformed registry entry %r", name, raw)
            out[name.decode()] = None
    out.update(runtime_config.stage_overrides(client))
    return out


def get_latency_statistics(client, window_s: int = 60, now: float | None = None) -> dict[str, dict]:
    """Per registered stage, statistics of the merged histogram of the last window_s seconds.

    ops_s is the count over the part of the window since the stage's first sample in it, so a
    process that started 10 s ago does not read as a sixth of its rate in a 60 s window."""
    window_s = _check_window(window_s)
    stages = registered_stages(client)
    end = window_end(client, now)
    start = end - window_s + 1
    pipe = client.pipeline(transaction=False)
    queued = []
    for stage in stages:
        pipe.zrangebyscore(schema.tele_sec_summary(stage), start, end, start=0, num=1, withscores=True)
        queued.append((stage, _queue_window_reads(pipe, stage, start, end)))
    results = pipe.execute()
    out, pos = {}, 0
    for stage, n in queued:
        first = results[pos]
        span = end - int(first[0][1]) + 1 if first else window_s
        out[stage] = _hist_stats(_merge_members(results[pos + 1:pos + 1 + n]), span, stages[stage])
        pos += 1 + n
    return out


def stage_series(client, stage: str, window_s: int, now: float | None = None,
                 resolution_s: int = 1) -> list[dict]:
    """Summaries over the window, oldest first, one per second (resolution_s=1) or per
    10 seconds (resolution_s=10, what long chart windows read: a tenth of the points).
    Periods without samples are absent."""
    window_s = _check_window(window_s)
    if resolution_s not in (1, BLOCK_S):
        raise ValueError(f"resolution_s must be 1 or {BLOCK_S}, got {resolution_s!r}")
    end = window_end(client, now)
    key = schema.tele_sec_summary(stage) if resolution_s == 1 else schema.tele_10s_summary(stage)
    start = end - window_s + 1
    members = client.zrangebyscore(key, start - start % resolution_s, end)
    return [schema.loads(m) for m in members]


def latency_distribution(client, stage: str, window_s: int, now: float | None = None) -> dict:
    """Empirical CDF of the window's merged histogram, at most MAX_CDF_POINTS points."""
    window_s = _check_window(window_s)
    end = window_end(client, now)
    values, cdf = window_histogram(client, stage, end - window_s + 1, end).cdf_points()
    if values.size > MAX_CDF_POINTS:
        keep = np.unique(np.linspace(0, values.size - 1, MAX_CDF_POINTS).round().astype(int))
        values, cdf = values[keep], cdf[keep]
    return {"values_us": (values / 1000.0).tolist(), "cdf": cdf.tolist()}


def throughput_trend(client, stage: str, window_s: int, now: float | None = None,
                     resolution_s: int = 1) -> dict:
    """OLS slope of ops/s over the window (per second, or per 10 s), with a 95 % t
    confidence interval."""
    series = stage_series(client, stage, window_s, now, resolution_s)
    return trend_of([p["t"] for p in series], [p["ops_s"] for p in series])


def trend_of(t, ops) -> dict:
    """Trend of ops/s samples `ops` taken at seconds `t` (see throughput_trend)."""
    n = len(ops)
    out = {"ops_s": float(np.mean(ops)) if n else None, "slope_per_s": None, "ci_low": None,
           "ci_high": None, "direction": "flat", "n": n}
    if n < 3 or len(set(t)) < 2:
        return out
    fit = sps.linregress(np.asarray(t, dtype=float), np.asarray(ops, dtype=float))
    half = float(sps.t.ppf(0.975, n - 2) * fit.stderr)
    low, high = fit.slope - half, fit.slope + half
    direction = "up" if low > 0 else "down" if high < 0 else "flat"
    out.update(slope_per_s=float(fit.slope), ci_low=float(low), ci_high=float(high),
               direction=direction)
    return out


PATH_STAGES = ("data_processing", "model_inference", "signal_generation", "order_execution")


def identify_bottlenecks(stats: dict) -> dict:
    """Where the tick-to-order time goes, and which stages' p99 exceed their threshold.

    A stage's share is its time per tick: mean x count / total_pipeline's count (order
    execution runs on few ticks, so its per-call mean overstates it). What the path stages do
    not explain is queueing and scheduling delay (total_pipeline counts from each tick's
    scheduled time). Shares are fractions of total_pipeline's mean; None without data.
    """
    total = stats.get(TOTAL_STAGE) or {}
    total_mean, total_count = total.get("mean_us"), total.get("count") or 0
    per_tick = {name: stats[name]["mean_us"] * stats[name]["count"] / total_count
                for name in PATH_STAGES
                if total_count and (stats.get(name) or {}).get("mean_us") is not None}
    dominant = max(per_tick, key=per_tick.get) if per_tick else None
    share = per_tick[dominant] / total_mean if dominant is not None and total_mean else None
    queueing = (max(total_mean - sum(per_tick.values()), 0.0) if per_tick and total_mean else None)
    over = [{"stage": name, "p99_us": s["p99_us"], "threshold_us": s["threshold_us"],
             "excess_ratio": s["p99_us"] / s["threshold_us"]}
            for name, s in stats.items()
            if s.get("p99_us") is not None and s.get("threshold_us")
            and s["p99_us"] > s["threshold_us"]]
    over.sort(key=lambda row: row["excess_ratio"], reverse=True)
    return {"dominant_stage": dominant, "dominant_share": share, "over_threshold": over,
            "per_tick_us": per_tick, "queueing_us": queueing,
            "queueing_share": queueing / total_mean if queueing is not None else None}
