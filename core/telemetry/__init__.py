"""Latency and throughput telemetry: record in-process, flush to Redis, roll up, query.

Hot path (any process):       measure_latency / timed / record / register_stage
Shipping (one per process):   start_flusher(role)  -> Flusher
Rolling up (a Celery task):   rollup(client)
Reading (dashboard, bench):   get_latency_statistics, stage_series, latency_distribution,
                              throughput_trend, identify_bottlenecks, window_histogram
"""
from core.telemetry.flusher import Flusher, start_flusher
from core.telemetry.histogram import Histogram, HistogramDecodeError
from core.telemetry.query import (get_latency_statistics, identify_bottlenecks,
                                  latency_distribution, stage_series, throughput_trend,
                                  window_histogram)
from core.telemetry.recorder import (RECORDER, UnknownStageError, measure_latency, record,
                                     register_stage, timed)
from core.telemetry.rollup import rollup

__all__ = [
    "Flusher", "Histogram", "HistogramDecodeError", "RECORDER", "UnknownStageError",
    "get_latency_statistics", "identify_bottlenecks", "latency_distribution", "measure_latency",
    "record", "register_stage", "rollup", "stage_series", "start_flusher", "throughput_trend",
    "timed", "window_histogram",
]
