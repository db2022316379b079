"""The flusher: one Redis write per interval whatever the sample rate, a bounded backlog while
Redis is down, recovery, and a thread that survives errors."""
from __future__ import annotations

import time

import pytest

from core import redis_server, schema
from core.telemetry import measure_latency, start_flusher
from core.telemetry.flusher import Flusher
from core.telemetry.histogram import Histogram
from core.telemetry.recorder import Recorder
from tests.conftest import free_port, wait_for


@pytest.fixture
def rec():
    return Recorder({"alpha": 5.0, "beta": 1.0})


def _commands(client) -> dict[str, int]:
    return {k: v["calls"] for k, v in client.info("commandstats").items()}


def _delta(before, after) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def test_one_entry_per_interval_holds_every_stage_and_registry_is_shipped_once(redis_client, redis_url, rec):
    flusher = Flusher("test", redis_url, interval_s=1.0, recorder=rec)
    for v in range(100):
        rec.record("alpha", 1000 + v)
    rec.record("beta", 77)
    flusher.flush_once(1_000)
    entries = redis_client.xrange(schema.TELE_RAW)
    assert len(entries) == 1
    fields = entries[0][1]
    assert fields[b"sec"] == b"1000" and fields[b"role"] == b"test"
    assert Histogram.decode(fields[b"h:alpha"]).count == 100
    assert Histogram.decode(fields[b"h:beta"]).max == 77
    assert schema.loads(redis_client.hget(schema.TELE_STAGES, "alpha")) == {"threshold_ms": 5.0}
    before = _commands(redis_client)
    rec.record("alpha", 5)
    flusher.flush_once(1_001)
    assert _delta(before, _commands(redis_client)).keys() <= {"cmdstat_xadd", "cmdstat_info"}
    assert flusher.stats()["flushed"] == 2


def test_redis_commands_per_interval_do_not_grow_with_the_sample_rate(redis_client, redis_url, rec):
    flusher = Flusher("test", redis_url, interval_s=1.0, recorder=rec)
    flusher.flush_once(1)                       # ships the registry
    costs = []
    for n in (10, 100_000):
        before = redis_client.info("stats")["total_commands_processed"]
        for i in range(n):
            rec.record("alpha", i)
        flusher.flush_once(2)
        costs.append(redis_client.info("stats")["total_commands_processed"] - before)
    assert costs[0] == costs[1] <= 3            # one XADD (+ our INFO call)


def test_nothing_recorded_means_no_redis_write(redis_client, redis_url, rec):
    flusher = Flusher("test", redis_url, interval_s=1.0, recorder=rec)
    flusher.flush_once(1)
    flusher.flush_once(2)
    assert redis_client.xlen(schema.TELE_RAW) == 0
    assert flusher.stats() == {"flushed": 0, "dropped": 0, "backlog": 0, "errors": 0,
                               "dropped_samples": 0, "invalid_samples": 0}


@pytest.mark.timeout(60)
def test_backlog_is_bounded_while_redis_is_down_and_ships_after_recovery(rec, test_tmp_dir):
    port = free_port()
    flusher = Flusher("test", f"redis://127.0.0.1:{port}/0", interval_s=0.05, recorder=rec, backlog=3)
    for second in range(6):
        rec.record("alpha", 1000 * (second + 1))
        flusher.flush_once(100 + second)        # never raises
    stats = flusher.stats()
    assert stats["backlog"] == 3 and stats["dropped"] == 3 and stats["dropped_samples"] == 3
    assert stats["errors"] >= 1 and stats["flushed"] == 0
    server = redis_server.start(port, test_tmp_dir / f"flusher-{port}", appendonly=False)
    try:
        wait_for(lambda: (flusher.flush_once(), flusher.stats()["backlog"] == 0)[1], 10,
                 what="backlog shipped after recovery")
        client = schema.connect(f"redis://127.0.0.1:{port}/0")
        secs = [int(f[b"sec"]) for _, f in client.xrange(schema.TELE_RAW)]
        assert secs == [103, 104, 105]          # the oldest were dropped, in order otherwise
        assert client.hlen(schema.TELE_STAGES) == 2
        assert flusher.stats()["flushed"] == 3
        client.close()
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.timeout(30)
def test_flusher_thread_survives_errors_and_stop_flushes_the_rest(redis_client, redis_url, rec):
    real_collect, calls = rec.collect, []

    def flaky_collect(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected")
        return real_collect(*args, **kwargs)

    rec.collect = flaky_collect
    flusher = Flusher("test", redis_url, interval_s=0.1, recorder=rec).start()
    wait_for(lambda: flusher.stats()["errors"] == 1, 5, what="injected error")
    rec.record("alpha", 10)
    wait_for(lambda: redis_client.xlen(schema.TELE_RAW) >= 1, 5, what="a flush after the error")
    assert flusher._thread.is_alive()
    rec.record("beta", 20)
    flusher.stop()
    assert not flusher._thread.is_alive()
    blobs = [f for _, f in redis_client.xrange(schema.TELE_RAW)]
    assert any(b"h:beta" in f for f in blobs)


@pytest.mark.timeout(30)
def test_one_second_intervals_are_aligned_to_the_wall_clock(redis_client, redis_url, rec):
    flusher = Flusher("test", redis_url, interval_s=1.0, recorder=rec).start()
    try:
        rec.record("alpha", 1)
        entry = wait_for(lambda: redis_client.xrange(schema.TELE_RAW), 5, what="first flush")[0]
        written_ms = int(entry[0].split(b"-")[0])
        second = int(entry[1][b"sec"])
        assert written_ms // 1000 == second + 1 and written_ms % 1000 < 300
    finally:
        flusher.stop()


@pytest.mark.timeout(30)
def test_start_flusher_ships_the_default_recorder_and_returns_the_running_one(redis_client, redis_url):
    flusher = start_flusher("test-proc", redis_url, interval_s=0.2)
    try:
        assert start_flusher("test-proc", redis_url, interval_s=0.2) is flusher
        with measure_latency("order_execution"):
            time.sleep(0.001)
        entry = wait_for(lambda: [f for _, f in redis_client.xrange(schema.TELE_RAW)
                                  if b"h:order_execution" in f], 5, what="a flush")[0]
        assert Histogram.decode(entry[b"h:order_execution"]).max >= 1_000_000
        assert entry[b"proc"].endswith(b":test-proc")
        assert redis_client.hlen(schema.TELE_STAGES) >= 7
    finally:
        flusher.stop()
    again = start_flusher("test-proc", redis_url, interval_s=0.2)   # a stopped one is replaced
    assert again is not flusher
    again.stop()
