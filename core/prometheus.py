"""The console's figures in the Prometheus text exposition format (version 0.0.4).

Everything is read from Redis, where workers aggregated it, so every gunicorn worker answers
the same numbers and a scrape never depends on which worker it hits. Stage latencies come from
the cumulative histograms the telemetry rollup keeps (counters since start: Prometheus
handles a reset if Redis is flushed), exposed with microsecond-range `le` buckets.
"""
from __future__ import annotations

import math
import time

import redis

from core import alerts, health, metrics, schema
from core.telemetry import query
from core.telemetry.histogram import Histogram, HistogramDecodeError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# seconds: 1 us .. 1 s, the range where trading-stage latencies live
BUCKETS_S = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
             1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0)
TRADING_STATES = ("ACTIVE", "REDUCING", "HALTED")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _num(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(int(value))


class _Writer:
    def __init__(self):
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, value, **labels) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_num(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _stage_histograms(client, out: _Writer) -> None:
    stages = query.registered_stages(client)
    out.family("console_stage_latency_seconds", "histogram",
               "Latency per pipeline stage (total_pipeline from each tick's scheduled time).")
    blobs = client.mget([schema.tele_cumulative_hist(s) for s in stages]) if stages else []
    bounds_ns = [b * 1e9 for b in BUCKETS_S]
    for stage, blob in zip(stages, blobs):
        try:
            hist = Histogram.decode(blob) if blob else Histogram()
        except HistogramDecodeError:
            hist = Histogram()
        for le, n in zip(BUCKETS_S, hist.counts_at_or_below(bounds_ns)):
            out.sample("console_stage_latency_seconds_bucket", int(n), stage=stage, le=repr(le))
        out.sample("console_stage_latency_seconds_bucket", hist.count, stage=stage, le="+Inf")
        out.sample("console_stage_latency_seconds_sum", hist.total / 1e9, stage=stage)
        out.sample("console_stage_latency_seconds_count", hist.count, stage=stage)
    out.family("console_stage_threshold_seconds", "gauge", "Latency threshold per stage.")
    for stage, threshold_ms in stages.items():
        out.sample("console_stage_threshold_seconds", None if threshold_ms is None else threshold_ms / 1000,
                   stage=stage)


def _pipeline(client, out: _Writer) -> None:
    status = schema.loads(client.get(schema.PIPELINE_STATUS)) or {}
    for field, help_text in (("ticks_total", "Ticks processed by the reference pipeline."),
                             ("orders_total", "Orders sent by the reference pipeline."),
                             ("fills_total", "Fills received by the reference pipeline.")):
        name = f"console_pipeline_{field}"
        out.family(name, "counter", help_text)
        out.sample(name, status.get(field))
    state = client.get(schema.TRADING_STATE)
    state = state.decode() if isinstance(state, bytes) else state
    out.family("console_trading_state", "gauge", "1 for the current trading state.")
    for name in TRADING_STATES:
        out.sample("console_trading_state", 1 if state == name else 0, state=name)


def _system(client, out: _Writer) -> None:
    sample = metrics.latest_metrics(client) or {}
    for field, name, help_text in (
            ("cpu_pct", "console_system_cpu_percent", "Machine CPU use, percent."),
            ("mem_pct", "console_system_memory_percent", "Machine memory use, percent."),
            ("console_rss_bytes", "console_memory_rss_bytes", "RSS of all console processes.")):
        out.family(name, "gauge", help_text)
        out.sample(name, sample.get(field))
    out.family("console_process_rss_bytes", "gauge", "RSS per console process.")
    for proc in sample.get("procs") or []:
        out.sample("console_process_rss_bytes", proc.get("rss_bytes"), role=proc.get("role"),
                   pid=proc.get("pid"))


def _alert_counts(client, out: _Writer) -> None:
    out.family("console_alerts_total", "counter", "Alerts raised, per severity.")
    for severity, n in alerts.alert_counts(client).items():
        out.sample("console_alerts_total", n, severity=severity)


def render(client: redis.Redis, settings) -> str:
    """The whole exposition. With Redis unreachable only `console_up` is exported."""
    out = _Writer()
    status = health.health_status(client, settings)
    out.family("console_up", "gauge", "1 when the part is healthy (redis, worker, beat, pipeline).")
    for part, info in status["parts"].items():
        out.sample("console_up", 1 if info["status"] == "ok" else 0, part=part)
    if status["parts"]["redis"]["status"] != "ok":
        return out.text()
    try:
        _stage_histograms(client, out)
        _pipeline(client, out)
        _system(client, out)
        _alert_counts(client, out)
    except redis.RedisError:
        pass  # a scrape during an outage gets what was read; console_up says why
    out.family("console_scrape_timestamp_seconds", "gauge", "When this exposition was built.")
    out.sample("console_scrape_timestamp_seconds", time.time())
    return out.text()
