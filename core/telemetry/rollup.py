"""Roll raw per-process flushes up into per-second and per-minute series, for every stage.

A second is finalized only GRACE_S after it ended, so flushes from every process (each ships
just after the second ends) are in. For each finalized (stage, second) the histograms of all
processes are merged and written as a summary JSON (tele_sec_summary) and a histogram blob
(tele_sec_hist); each touched minute is then re-merged from its second blobs
(tele_min_hist). Every write replaces the member at that score, so a rerun overwrites rather
than duplicates; TELE_ROLLUP_LAST remembers the last finalized second.
"""
from __future__ import annotations

import collections
import logging
import struct
import time

from core import schema
from core.telemetry.histogram import Histogram, HistogramDecodeError

log = logging.getLogger(__name__)

GRACE_S = 3
# Entries for second s are written at or after s+1 (wall clock); read a little earlier than
# that so a clock step of the writer cannot hide an entry.
READ_SLACK_S = 5
_SEC = struct.Struct(">q")
PERCENTILES = (50.0, 95.0, 99.0, 99.9)


def pack_member(second: int, blob: bytes) -> bytes:
    """Zset members must be unique: prefix the blob with its 8-byte second."""
    return _SEC.pack(second) + blob


def unpack_member(member: bytes) -> bytes:
    return member[_SEC.size:]


def summarize(second: int, hist: Histogram, span_s: float = 1.0) -> dict:
    """The per-second summary (latencies in microseconds, missing -> None)."""
    count = hist.count
    p50, p95, p99, p999 = hist.percentiles(PERCENTILES)
    mean = hist.mean()
    us = (lambda ns: None if ns is None else ns / 1000.0)
    return {"t": int(second), "count": count, "ops_s": count / span_s, "mean_us": us(mean),
            "p50_us": us(p50), "p95_us": us(p95), "p99_us": us(p99), "p999_us": us(p999),
            "max_us": us(hist.max) if count else None}


def _merge_raw(entries, after: int, final: int, report: dict) -> dict:
    """{(stage, second): merged Histogram} for seconds in (after, final]."""
    merged: dict = {}
    for entry_id, fields in entries:
        try:
            second = int(fields[b"sec"])
        except (KeyError, ValueError):
            report["bad"] += 1
            log.warning("telemetry rollup: raw entry %s has no valid 'sec'; skipped", entry_id)
            continue
        if second > final:
            continue
        if second <= after:
            # written after the rollup that finalized `after` could have run: missed it
            if int(entry_id.split(b"-")[0]) >= (after + GRACE_S) * 1000:
                report["late"] += 1
            continue
        for key, blob in fields.items():
            if not key.startswith(b"h:"):
                continue
            stage = key[2:].decode(errors="replace")
            try:
                hist = Histogram.decode(blob)
            except HistogramDecodeError as exc:
                report["bad"] += 1
                log.warning("telemetry rollup: raw entry %s stage %r skipped: %s", entry_id, stage, exc)
                continue
            if (stage, second) in merged:
                merged[(stage, second)].merge(hist)
            else:
                merged[(stage, second)] = hist
    return merged


def _write_seconds(client, merged: dict) -> None:
    pipe = client.pipeline(transaction=False)
    for (stage, second), hist in sorted(merged.items(), key=lambda kv: kv[0][1]):
        for key, member in ((schema.tele_sec_hist(stage), pack_member(second, hist.encode())),
                            (schema.tele_sec_summary(stage), schema.dumps(summarize(second, hist)))):
            pipe.zremrangebyscore(key, second, second)
            schema.add_to_series(pipe, key, second, member, schema.SECOND_SERIES_RETENTION_S)
    pipe.execute()


BLOCK_S = 10  # resolution of the summaries long chart windows read


def _merge_blocks(client, blocks: list[tuple[str, int]], width: int) -> list[Histogram]:
    """Merged per-second histograms of each (stage, first second) block of `width` seconds."""
    pipe = client.pipeline(transaction=False)
    for stage, first in blocks:
        pipe.zrangebyscore(schema.tele_sec_hist(stage), first, first + width - 1)
    merged = []
    for members in pipe.execute():
        hist = Histogram()
        for member in members:
            hist.merge_blob(unpack_member(member))
        merged.append(hist)
    return merged


def _write_minutes(client, minutes: list[tuple[str, int]]) -> None:
    pipe = client.pipeline(transaction=False)
    for (stage, minute), hist in zip(minutes, _merge_blocks(client, minutes, 60)):
        key = schema.tele_min_hist(stage)
        pipe.zremrangebyscore(key, minute, minute)
        schema.add_to_series(pipe, key, minute, pack_member(minute, hist.encode()),
                             schema.MINUTE_SERIES_RETENTION_S)
    pipe.execute()


def _write_blocks(client, blocks: list[tuple[str, int]], final: int) -> None:
    """10-second summaries; a block still filling counts ops/s over its finalized seconds."""
    pipe = client.pipeline(transaction=False)
    for (stage, first), hist in zip(blocks, _merge_blocks(client, blocks, BLOCK_S)):
        key = schema.tele_10s_summary(stage)
        span = max(1, min(BLOCK_S, final - first + 1))
        pipe.zremrangebyscore(key, first, first)
        schema.add_to_series(pipe, key, first, schema.dumps(summarize(first, hist, span)),
                             schema.SECOND_SERIES_RETENTION_S)
    pipe.execute()


def _accumulate_and_commit(client, merged: dict, final: int) -> None:
    """Fold the finalized seconds into each stage's cumulative histogram and advance
    TELE_ROLLUP_LAST in one transaction, so a crash in between never counts a second twice."""
    stages = sorted({stage for stage, _ in merged})
    pipe = client.pipeline(transaction=False)
    for stage in stages:
        pipe.get(schema.tele_cumulative_hist(stage))
    totals = {}
    for stage, blob in zip(stages, pipe.execute()):
        try:
            totals[stage] = Histogram.decode(blob) if blob else Histogram()
        except HistogramDecodeError as exc:
            log.warning("telemetry rollup: cumulative histogram of %r reset (%s)", stage, exc)
            totals[stage] = Histogram()
    for (stage, _second), hist in merged.items():
        totals[stage].merge(hist)
    tx = client.pipeline(transaction=True)
    for stage, hist in totals.items():
        tx.set(schema.tele_cumulative_hist(stage), hist.encode())
    tx.set(schema.TELE_ROLLUP_LAST, final)
    tx.execute()


def rollup(client, now: float | None = None) -> dict:
    """Finalize every second up to now - GRACE_S. Returns what it did:
    {"last": last finalized second, "entries": raw entries read, "seconds": (stage, second)
    pairs written, "minutes": (stage, minute) pairs rewritten, "bad": undecodable blobs or
    entries skipped, "late": entries for seconds already finalized (not merged)}."""
    now = time.time() if now is None else now
    final = int(now) - GRACE_S
    raw_last = client.get(schema.TELE_ROLLUP_LAST)
    after = int(raw_last) if raw_last is not None else None
    report = {"last": after, "entries": 0, "seconds": 0, "minutes": 0, "bad": 0, "late": 0}
    if after is not None and after >= final:
        return report
    start = "-" if after is None else str(max(0, (after + 1 - READ_SLACK_S) * 1000))
    entries = client.xrange(schema.TELE_RAW, min=start, max="+")
    report["entries"] = len(entries)
    merged = _merge_raw(entries, after if after is not None else -1, final, report)
    if merged:
        _write_seconds(client, merged)
        minutes = sorted({(stage, second - second % 60) for stage, second in merged})
        _write_minutes(client, minutes)
        _write_blocks(client, sorted({(stage, second - second % BLOCK_S) for stage, second in merged}),
                      final)
        report["minutes"] = len(minutes)
        _accumulate_and_commit(client, merged, final)
    else:
        client.set(schema.TELE_ROLLUP_LAST, final)
    report.update(last=final, seconds=len(merged))
    return report
