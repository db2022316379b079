"""Area `halt`: how fast the emergency stop stops strategy orders and flattens the book.

The whole console runs as bench/pipeline.py starts it (private Redis, worker, beat, gunicorn,
pipeline runner), with an API token. Each round waits until the pipeline holds positions,
calls `POST /api/trading/halt` over HTTP, then reads back what the paper broker accepted
(schema.BROKER_ORDERS, each order stamped with the runner's time.time() and its kind) and the
runner's liquidation audit record; then it resumes through the API.

- halt.strategy_order_after_ms_p99: time from the halt call returning to the last strategy
  (non-liquidation) order the broker accepted, clamped at 0, p99 over the rounds (goal <= 50);
- halt.flat_ms: time from the halt call to the fill that left every position flat, p99 over
  the rounds (goal <= 1,000).
The pipeline runs at the console's configured tick rate (CONSOLE_TICK_RATE, 1,000 ticks/s by
default); BENCH_HALT_RATE overrides it. Both processes stamp with the same wall clock.
"""
from __future__ import annotations

import json
import os
import secrets
import time
import urllib.request

import numpy as np

from bench.pipeline import Console, _wait
from core import emergency, safety, schema

GOAL_AFTER_MS = 50.0
GOAL_FLAT_MS = 1000.0


def _api(base: str, token: str, method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _open_positions(client) -> int:
    return sum(1 for v in client.hvals(schema.BROKER_POSITIONS) if (schema.loads(v) or {}).get("qty"))


def _round(console: Console, base: str, token: str, n_symbols: int) -> tuple[float, float, float]:
    client = console.client
    try:
        _wait(lambda: console.status().get("trading_state") == "ACTIVE"
              and _open_positions(client) >= max(1, n_symbols // 5), 30, "open positions")
    except RuntimeError as exc:   # say why: a safety rule may have stepped in
        raise RuntimeError(f"{exc}; state {safety.read_state(client)}, last transition "
                           f"{safety.read_meta(client)}, {_open_positions(client)} open") from None
    t0 = time.time()
    _api(base, token, "POST", "/api/trading/halt", {"reason": "bench halt"})
    t_ret = time.time()
    liq = _wait(lambda: [a for a in emergency.recent_audit(client, 10)
                         if a["action"] == "liquidation" and a["ts"] >= t0], 10,
                "the liquidation record")[0]
    time.sleep(0.6)                        # the runner persists orders every 250 ms
    rows = [{k.decode(): v.decode() for k, v in f.items()}
            for _, f in client.xrevrange(schema.BROKER_ORDERS, count=schema.ORDERS_MAXLEN)]
    strategy = [float(r["ts"]) for r in rows if r.get("kind") == "strategy" and float(r["ts"]) >= t0 - 5]
    after_ms = max(0.0, (max(strategy, default=t0) - t_ret) * 1000.0)
    flat_ms = (liq["details"]["done_at"] - t0) * 1000.0
    # when the runner's gate closed (its liquidation armed), relative to the call returning
    gate_ms = (liq["details"]["started_at"] - t_ret) * 1000.0
    _api(base, token, "POST", "/api/trading/resume", {"reason": "bench round done"})
    return after_ms, flat_ms, gate_ms


def run(quick: bool) -> dict[str, float]:
    rounds = 20 if quick else 40
    token = secrets.token_hex(16)
    console = Console()
    console.env["CONSOLE_API_TOKEN"] = token
    rate = os.environ.get("BENCH_HALT_RATE")
    if rate:
        console.env["CONSOLE_TICK_RATE"] = rate
    with console:
        base = f"http://127.0.0.1:{console.env['PORT']}"
        _wait(lambda: _try(lambda: _api(base, token, "GET", "/api/trading/state")), 60, "the web API")
        n_symbols = int(console.env.get("CONSOLE_SYMBOLS", 20))
        status = console.status()
        print(f"   console up (redis :{console.port}); pipeline at {status.get('tick_rate', 0):,.0f} "
              f"ticks/s; {rounds} halts through POST /api/trading/halt", flush=True)
        afters, flats, gates = [], [], []
        for i in range(rounds):
            a, f, g = _round(console, base, token, n_symbols)
            afters.append(a)
            flats.append(f)
            gates.append(g)
            print(f"   halt {i + 1:>2}: last strategy order {a:6.1f} ms after the call returned, "
                  f"runner gate closed at {g:+6.1f} ms, flat after {f:6.1f} ms", flush=True)
    after_p99 = float(np.percentile(afters, 99))
    flat_p99 = float(np.percentile(flats, 99))
    print(f"   strategy order after halt: p50 {np.median(afters):.1f} ms, p99 {after_p99:.1f} ms "
          f"(goal <= {GOAL_AFTER_MS:.0f}: {after_p99 / GOAL_AFTER_MS:.2f}x of goal)")
    print(f"   runner gate closed relative to the call returning: p50 {np.median(gates):+.1f} ms, "
          f"max {max(gates):+.1f} ms (negative: before the API answered; the publish precedes "
          f"the audit and alert writes)")
    print(f"   flat: p50 {np.median(flats):.1f} ms, p99 {flat_p99:.1f} ms, max {max(flats):.1f} ms "
          f"(goal <= {GOAL_FLAT_MS:.0f}: {flat_p99 / GOAL_FLAT_MS:.2f}x of goal)")
    return {"halt.strategy_order_after_ms_p99": after_p99, "halt.flat_ms": flat_p99}


def _try(fn):
    try:
        return fn()
    except Exception:
        return None


if __name__ == "__main__":
    print(json.dumps(run(os.environ.get("BENCH_QUICK", "") not in ("", "0")), indent=2))
