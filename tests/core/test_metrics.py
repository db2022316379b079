"""RealtimeMetricsCollector: stateless delta arithmetic, sample shape, retention, minute
aggregates, threshold alerts, and the process registry it measures."""
from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from core import schema
from core.metrics import (MAX_RATE_GAP_S, SAMPLE_KEYS, aggregate_minute, build_sample, collect_sample, counter_rate,
                          cpu_busy_pct, latest_metrics, metrics_series, process_cpu_pct)
from core.procs import console_processes, register_process
from tests.conftest import free_port


@pytest.fixture
def client(isolated_client):
    return isolated_client


T0 = 1_800_000_000.0  # a minute boundary (divisible by 60), far from the real clock


def _times(user, system, idle, iowait=0.0, guest=0.0):
    return {"user": user, "nice": 0.0, "system": system, "idle": idle, "iowait": iowait,
            "irq": 0.0, "softirq": 0.0, "steal": 0.0, "guest": guest, "guest_nice": 0.0}


def _counters(t, cpu, cores=None, disk=(0, 0), net=(0, 0), procs=None, ncpu=2):
    return {"t": t, "ncpu": ncpu, "cpu": cpu, "cpu_per_core": cores or [cpu],
            "disk": {"read": disk[0], "write": disk[1]}, "net": {"sent": net[0], "recv": net[1]},
            "procs": procs or {}}


GAUGES = {"mem_pct": 50.0, "mem_used_bytes": 4, "mem_total_bytes": 8, "mem_available_bytes": 4,
          "swap_pct": 0.0, "disk_pct": 10.0}


# ---- delta arithmetic ----------------------------------------------------------------
def test_cpu_busy_pct_is_busy_share_of_elapsed_cpu_time():
    prev = _times(user=10, system=5, idle=80, iowait=5)
    cur = _times(user=13, system=6, idle=85, iowait=6)    # +4 busy, +6 idle/iowait
    assert cpu_busy_pct(prev, cur) == pytest.approx(40.0)


def test_cpu_busy_pct_does_not_count_guest_time_twice():
    prev = _times(user=10, system=0, idle=10, guest=0)
    cur = _times(user=15, system=0, idle=15, guest=5)     # guest is already inside user
    assert cpu_busy_pct(prev, cur) == pytest.approx(50.0)


def test_cpu_busy_pct_is_none_on_first_sample_reset_or_no_elapsed_time():
    cur = _times(user=10, system=5, idle=80)
    assert cpu_busy_pct(None, cur) is None
    assert cpu_busy_pct(_times(user=99, system=5, idle=80), cur) is None   # counters reset
    assert cpu_busy_pct(cur, dict(cur)) is None


def test_cpu_busy_pct_tolerates_iowait_stepping_back():
    prev = _times(user=10, system=0, idle=80, iowait=5)
    cur = _times(user=12, system=0, idle=88, iowait=4.9)    # proc(5): iowait is not monotonic
    assert cpu_busy_pct(prev, cur) == pytest.approx(100.0 * (9.9 - 7.9) / 9.9)


def test_counter_rate_handles_first_sample_reset_and_gaps():
    assert counter_rate(1000, 3000, 2.0) == pytest.approx(1000.0)
    assert counter_rate(None, 3000, 2.0) is None
    assert counter_rate(3000, 1000, 2.0) is None                 # reset, not a negative rate
    assert counter_rate(1000, 3000, 0.0) is None
    assert counter_rate(1000, 3000, -1.0) is None                # wall clock stepped back
    assert counter_rate(1000, 3000, MAX_RATE_GAP_S + 1) is None  # too old to be "now"


def test_process_cpu_pct_is_share_of_the_whole_machine():
    # 1.5 CPU-seconds over 1 s on 4 cores: 1.5 cores busy = 37.5% of the machine
    assert process_cpu_pct(10.0, 11.5, 1.0, 4) == pytest.approx(37.5)
    assert process_cpu_pct(None, 11.5, 1.0, 4) is None


def test_build_sample_first_sample_has_gauges_but_no_rates():
    cur = _counters(T0, _times(1, 1, 1), procs={"5:1.00": {"role": "web", "pid": 5, "cpu_s": 1.0,
                                                           "rss": 100}})
    sample = build_sample(cur, None, GAUGES)
    assert list(sample) == list(SAMPLE_KEYS)
    assert sample["mem_pct"] == 50.0 and sample["console_rss_bytes"] == 100
    for key in ("cpu_pct", "disk_read_bps", "net_recv_bps", "console_cpu_pct"):
        assert sample[key] is None, key
    assert sample["cpu_per_core"] == [None]
    assert sample["procs"] == [{"role": "web", "pid": 5, "cpu_pct": None, "rss_bytes": 100}]


def test_build_sample_computes_rates_from_previous_counters():
    procs0 = {"5:1.00": {"role": "web", "pid": 5, "cpu_s": 1.0, "rss": 100}}
    procs1 = {"5:1.00": {"role": "web", "pid": 5, "cpu_s": 2.0, "rss": 300},
              "9:3.00": {"role": "worker", "pid": 9, "cpu_s": 50.0, "rss": 700}}
    cores0 = [_times(0, 0, 0), _times(0, 0, 0)]
    cores1 = [_times(1, 0, 1), _times(2, 0, 0)]
    prev = _counters(T0, _times(0, 0, 0), cores0, disk=(100, 200), net=(0, 0), procs=procs0)
    cur = _counters(T0 + 2, _times(3, 0, 1), cores1, disk=(300, 1200), net=(50, 4000), procs=procs1)
    s = build_sample(cur, prev, GAUGES)
    assert s["cpu_pct"] == pytest.approx(75.0)
    assert s["cpu_per_core"] == pytest.approx([50.0, 100.0])
    assert (s["disk_read_bps"], s["disk_write_bps"]) == pytest.approx((100.0, 500.0))
    assert (s["net_sent_bps"], s["net_recv_bps"]) == pytest.approx((25.0, 2000.0))
    web, worker = s["procs"]
    assert web["cpu_pct"] == pytest.approx(25.0)   # 1 CPU-s over 2 s on 2 cores
    assert worker["cpu_pct"] is None               # new process: nothing to diff against yet
    assert s["console_rss_bytes"] == 1000 and s["console_cpu_pct"] == pytest.approx(25.0)


def test_build_sample_does_not_diff_a_reused_pid_against_its_predecessor():
    prev = _counters(T0, _times(0, 0, 0), procs={"5:1.00": {"role": "web", "pid": 5, "cpu_s": 900.0,
                                                            "rss": 1}})
    cur = _counters(T0 + 1, _times(1, 0, 1), procs={"5:7.00": {"role": "web", "pid": 5, "cpu_s": 0.1,
                                                               "rss": 1}})
    assert build_sample(cur, prev, GAUGES)["procs"][0]["cpu_pct"] is None


def test_aggregate_minute_keeps_the_sample_shape_with_means_and_maxima():
    a = build_sample(_counters(T0, _times(0, 0, 0)), None, GAUGES)
    b = dict(a, cpu_pct=20.0, mem_used_bytes=7, cpu_per_core=[10.0, 30.0],
             procs=[{"role": "web", "pid": 5, "cpu_pct": 4.0, "rss_bytes": 10}])
    c = dict(a, cpu_pct=60.0, mem_used_bytes=8, cpu_per_core=[20.0, 50.0],
             procs=[{"role": "web", "pid": 5, "cpu_pct": 8.0, "rss_bytes": 30}])
    agg = aggregate_minute([a, b, c], T0)
    assert [k for k in agg if k in SAMPLE_KEYS] == list(SAMPLE_KEYS)
    assert agg["t"] == T0 and agg["n"] == 3
    assert agg["cpu_pct"] == pytest.approx(40.0) and agg["max"]["cpu_pct"] == 60.0
    assert agg["mem_used_bytes"] == round((4 + 7 + 8) / 3) and isinstance(agg["mem_used_bytes"], int)
    assert agg["cpu_per_core"] == pytest.approx([15.0, 40.0])
    assert agg["procs"] == [{"role": "web", "pid": 5, "cpu_pct": pytest.approx(6.0), "rss_bytes": 20}]


# ---- collection against real Redis and psutil ----------------------------------------
def test_collect_sample_writes_exact_shape_and_diffs_against_stored_counters(client):
    register_process(client, "web")
    first = collect_sample(client, now=T0)
    sum(i * i for i in range(1_000_000))  # burn a little CPU so this process's counter moves
    second = collect_sample(client, now=T0 + 1)
    assert list(second) == list(SAMPLE_KEYS)
    assert first["cpu_pct"] is None and first["disk_read_bps"] is None
    assert 0.0 <= second["cpu_pct"] <= 100.0
    assert len(second["cpu_per_core"]) == psutil.cpu_count()
    assert second["mem_total_bytes"] == psutil.virtual_memory().total
    me = [p for p in second["procs"] if p["pid"] == os.getpid()]
    assert me and me[0]["role"] == "web" and me[0]["rss_bytes"] > 10_000_000
    assert me[0]["cpu_pct"] is not None and me[0]["cpu_pct"] > 0
    assert latest_metrics(client) == schema.loads(schema.dumps(second))
    assert [s["t"] for s in metrics_series(client, 60, now=T0 + 1)] == [T0, T0 + 1]


def test_second_series_keeps_one_hour_only(client):
    collect_sample(client, now=T0)
    collect_sample(client, now=T0 + 10)
    collect_sample(client, now=T0 + schema.SECOND_SERIES_RETENTION_S + 5)
    scores = [s for _, s in client.zrange(schema.METRICS_SEC, 0, -1, withscores=True)]
    assert scores == [T0 + 10, T0 + schema.SECOND_SERIES_RETENTION_S + 5]


def test_completed_minute_is_aggregated_once_and_window_picks_the_series(client):
    samples = [collect_sample(client, now=T0 + dt) for dt in (0, 20, 40)]
    assert client.zcard(schema.METRICS_MIN) == 0          # minute still open
    collect_sample(client, now=T0 + 65)
    collect_sample(client, now=T0 + 70)                   # must not add a second copy
    minutes = metrics_series(client, 7200, now=T0 + 70)
    assert len(minutes) == 1 and minutes[0]["t"] == T0 and minutes[0]["n"] == 3
    assert minutes[0]["mem_pct"] == pytest.approx(sum(s["mem_pct"] for s in samples) / 3)
    assert len(metrics_series(client, 3600, now=T0 + 70)) == 5


def test_missed_minute_boundaries_are_caught_up(client):
    collect_sample(client, now=T0 + 5)
    collect_sample(client, now=T0 + 185)                  # three boundaries later
    assert [m["t"] for m in metrics_series(client, 7200, now=T0 + 185)] == [T0]


def test_minute_series_keeps_one_day_only(client):
    day = schema.MINUTE_SERIES_RETENTION_S
    collect_sample(client, now=T0 + 5)
    collect_sample(client, now=T0 + 65)                   # closes minute T0
    collect_sample(client, now=T0 + day + 70)
    collect_sample(client, now=T0 + day + 130)            # closes minute T0+day+60
    starts = [s for _, s in client.zrange(schema.METRICS_MIN, 0, -1, withscores=True)]
    assert starts == [T0 + day + 60]


@pytest.mark.parametrize("window", [0, -5, float("nan"), "60", None])
def test_metrics_series_rejects_a_bad_window(client, window):
    with pytest.raises(ValueError, match="window_s"):
        metrics_series(client, window)


def test_latest_metrics_is_none_before_the_first_sample(client):
    assert latest_metrics(client) is None


# ---- process registry ----------------------------------------------------------------
@pytest.mark.timeout(20)
def test_registry_prunes_a_process_that_exited(client):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        register_process(client, "pipeline", child.pid)
        register_process(client, "web")
        assert {p["pid"] for p in console_processes(client)} == {child.pid, os.getpid()}
    finally:
        child.kill()
        child.wait()
    assert [p["pid"] for p in console_processes(client)] == [os.getpid()]
    assert len(client.hkeys(schema.PROCS)) == 1


def test_registry_prunes_a_reused_pid(client):
    register_process(client, "web")
    field = next(iter(client.hkeys(schema.PROCS)))
    entry = schema.loads(client.hget(schema.PROCS, field))
    entry["started"] -= 100.0                 # the recorded process started earlier: not us
    client.hset(schema.PROCS, field, schema.dumps(entry))
    assert console_processes(client) == []
    assert client.hlen(schema.PROCS) == 0


def test_registry_leaves_other_hosts_alone(client):
    client.hset(schema.PROCS, "elsewhere:1", schema.dumps({"role": "web", "pid": 1,
                                                                 "host": "elsewhere", "started": 0}))
    assert console_processes(client) == []
    assert [p["pid"] for p in console_processes(client, host="elsewhere")] == [1]
    assert client.hexists(schema.PROCS, "elsewhere:1")   # unverifiable from here: kept


def test_register_process_rejects_an_unknown_role(client):
    with pytest.raises(ValueError, match="unknown process role 'gui'"):
        register_process(client, "gui")


def test_register_process_with_redis_down_logs_and_returns(caplog):
    dead = schema.connect(f"redis://127.0.0.1:{free_port()}/0")
    register_process(dead, "worker")
    assert "Redis unavailable" in caplog.text
