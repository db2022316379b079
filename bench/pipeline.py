"""Area `pipeline`: tick-to-order latency with the whole console running.

Starts a private redis-server on a free port with a temporary var dir, a Celery worker, Celery
beat (which rolls telemetry up every second), the web app when wsgi.py exists, and the
pipeline runner, all as the Procfile would, with env overrides. The runner's rate is driven
through schema.PIPELINE_CONTROL; latencies are read back from the telemetry the runner ships
(`core.telemetry.query.window_histogram` over the rolled-up per-second histograms), so the
figures are what the dashboard shows. `total_pipeline` is measured by the runner from each
tick's scheduled time (open loop), so queueing delay counts.

- pipeline.p99_us: p99 of total_pipeline at 1,000 ticks/s over P99_WINDOW_S (goal <= 1,000 us);
- pipeline.max_ticks_per_s: the highest rate whose p99 stays <= 1 ms, found by stepping up
  through RATE_STEPS until one fails, then bisecting between the last pass and the first fail.
  A step also fails when the runner had to skip ticks (more than 2 s behind schedule), and a
  failing step is measured a second time before it counts (see _measure_twice_if_over).
  The 1,000/s figure is reported from one window, as measured.

Measured here (shared 2-core VM, BENCH_QUICK=1, whole console running), four runs:
pipeline.p99_us 480 / 715 / 813 / 1,274 us; pipeline.max_ticks_per_s 7,500 / 8,800 / 4,200 /
500 (the last during a neighbour's burst, before failing steps were re-measured). The hot path
itself costs ~5 us per tick (230,000 ticks/s closed loop); the tail comes from the machine:
a bare thread that only sleeps to a 1 ms schedule shows p99 130-860 us here depending on
what else runs, and time.sleep overshoots by ~60-80 us (the p50).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core import redis_server, schema
from core.telemetry.query import window_histogram
from core.telemetry.rollup import GRACE_S

ROOT = Path(__file__).resolve().parent.parent
GOAL_US = 1000.0
RATE_STEPS = [1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000]
STAGES = ("data_processing", "model_inference", "signal_generation", "order_execution",
          "total_pipeline")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"bench pipeline: timed out after {timeout_s:.0f}s waiting for {what}")


class Console:
    """The console's processes on a private Redis, stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.env = {**os.environ, "REDIS_URL": self.url, "CONSOLE_REDIS_PORT": str(self.port),
                    "CONSOLE_VAR_DIR": str(self.tmp / "var"), "PORT": str(_free_port()),
                    "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def __enter__(self) -> "Console":
        self.redis = redis_server.start(self.port, self.tmp / "redis", appendonly=False)
        py = sys.executable
        self._spawn("worker", [py, "-m", "celery", "-A", "celery_config", "worker", "--loglevel=WARNING",
                               "--concurrency=2", "-n", f"bench{self.port}@%h"])
        self._spawn("beat", [py, "-m", "celery", "-A", "celery_config", "beat", "--loglevel=WARNING"])
        if (ROOT / "wsgi.py").exists():
            self._spawn("web", [py, "-m", "gunicorn", "wsgi:server", "--config", "gunicorn.conf.py"])
        self._spawn("pipeline", [py, "-m", "workers.pipeline_runner"])
        self.client = schema.connect(self.url)
        try:
            _wait(lambda: self.client.get(schema.heartbeat("pipeline")), 60, "the pipeline heartbeat")
            _wait(lambda: self.client.get(schema.TELE_ROLLUP_LAST), 60, "the first telemetry rollup")
        except RuntimeError:
            for name, _ in self.procs:   # say why before the logs go with the temp dir
                tail = (self.tmp / f"{name}.log").read_text(errors="replace")[-1500:]
                print(f"--- {name}.log (tail)\n{tail}", file=sys.stderr)
            self.__exit__(None, None, None)
            raise
        return self

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "ab")
        self.procs.append((name, subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log,
                                                  stderr=subprocess.STDOUT, start_new_session=True)))

    def __exit__(self, *exc) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.redis.terminate()
        self.redis.wait(timeout=10)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def status(self) -> dict:
        return schema.loads(self.client.get(schema.PIPELINE_STATUS)) or {}

    def measure(self, rate: float, window_s: int, settle_s: float = 1.0) -> dict:
        """Run at `rate` for `window_s` whole seconds; stats of that window from telemetry."""
        self.client.set(schema.PIPELINE_CONTROL, schema.dumps({"tick_rate": rate}))
        _wait(lambda: self.status().get("tick_rate") == rate, 10, f"rate {rate}")
        time.sleep(settle_s)
        skipped0 = self.status().get("skipped_ticks", 0)
        start_s = int(time.time()) + 1
        end_s = start_s + window_s - 1
        time.sleep(max(0.0, end_s + 1 - time.time()))
        skipped = self.status().get("skipped_ticks", 0) - skipped0
        _wait(lambda: int(self.client.get(schema.TELE_ROLLUP_LAST) or 0) >= end_s,
              GRACE_S + 10, "the rollup of the window")
        hists = {s: window_histogram(self.client, s, start_s, end_s) for s in STAGES}
        total = hists["total_pipeline"]
        p50, p99 = total.percentiles([50, 99]) if total.count else (None, None)
        result = {"rate": rate, "count": total.count, "p50_us": _us(p50), "p99_us": _us(p99),
                  "max_us": _us(total.max if total.count else None), "skipped": skipped,
                  "achieved": total.count / window_s}
        result.update({f"{s}_p99_us": _us(h.percentile(99)) for s, h in hists.items()
                       if s != "total_pipeline" and h.count})
        # the tick count tells whether the runner kept the schedule (open loop: it should)
        result["ok"] = (result["p99_us"] is not None and result["p99_us"] <= GOAL_US
                        and skipped == 0 and result["achieved"] >= 0.9 * rate)
        return result


def _us(ns) -> float | None:
    return None if ns is None else float(ns) / 1e3


def _row(r: dict) -> str:
    fmt = lambda v: "-" if v is None else f"{v:,.0f}"  # noqa: E731
    return (f"  {r['rate']:>9,.0f}  {r['achieved']:>9,.0f}  {fmt(r['p50_us']):>8}  {fmt(r['p99_us']):>9}"
            f"  {fmt(r['max_us']):>9}  {r['skipped']:>7}  {'ok' if r['ok'] else 'OVER'}")


def _measure_twice_if_over(console: Console, rate: float, window_s: int, rows: list) -> dict:
    """A rate fails only if two windows in a row fail: on this shared machine a neighbour's
    burst can stall any process for tens of ms, which says nothing about the pipeline's capacity."""
    r = console.measure(rate, window_s)
    rows.append(r)
    print(_row(r), flush=True)
    if not r["ok"]:
        r = console.measure(rate, window_s)
        rows.append(r)
        print(_row(r) + "   (re-measured)", flush=True)
    return r


def _search(console: Console, window_s: int, bisect_steps: int, rows: list, base: dict) -> float:
    """Step up from the 1,000/s baseline until a rate fails, then bisect."""
    last_ok, first_bad = (base["rate"], None) if base["ok"] else (0.0, base["rate"])
    for rate in [r for r in RATE_STEPS if r > base["rate"]] if base["ok"] else []:
        r = _measure_twice_if_over(console, rate, window_s, rows)
        if not r["ok"]:
            first_bad = rate
            break
        last_ok = rate
    for _ in range(bisect_steps if first_bad else 0):
        mid = round((last_ok + first_bad) / 2, -2)   # rates to the nearest 100 ticks/s
        if mid <= last_ok or mid >= first_bad:
            break
        r = _measure_twice_if_over(console, mid, window_s, rows)
        if r["ok"]:
            last_ok = mid
        else:
            first_bad = mid
    return float(last_ok)


def run(quick: bool) -> dict[str, float]:
    p99_window, step_window, bisect_steps = (10, 3, 2) if quick else (30, 8, 4)
    with Console() as console:
        print(f"   console up (redis :{console.port}, processes: "
              f"{', '.join(n for n, _ in console.procs)}); telemetry via window_histogram", flush=True)
        print("       rate   achieved   p50 us     p99 us     max us  skipped  status")
        base = console.measure(1000, p99_window)
        print(_row(base) + f"   <- pipeline.p99_us window {p99_window}s", flush=True)
        stage_p99 = {k: v for k, v in base.items() if k.endswith("_p99_us") and k != "p99_us"}
        print("   stage p99 at 1,000/s (us): " + ", ".join(f"{k[:-7]} {v:.1f}" for k, v in stage_p99.items()))
        rows: list[dict] = []
        max_rate = _search(console, step_window, bisect_steps, rows, base)
        status = console.status()
        print(f"   runner: {status.get('ticks_total', 0):,} ticks, {status.get('orders_total', 0):,} orders, "
              f"late {status.get('late_ticks', 0):,}, sim day {status.get('sim_day')}")
    return {"pipeline.p99_us": base["p99_us"] if base["p99_us"] is not None else float("nan"),
            "pipeline.max_ticks_per_s": max_rate}


if __name__ == "__main__":
    import json
    print(json.dumps(run(os.environ.get("BENCH_QUICK", "") not in ("", "0")), indent=2))
