"""Area `load`: 20 signed-in users polling the Latency and Overview pages at 1 Hz while the
pipeline trades at 1,000 ticks/s, against the whole console (bench.pipeline.Console).

The requests are the pages' real ones: a headless Chromium signs in, opens both pages and
records the `/_dash-update-component` bodies their 1-second interval sends; each simulated
user (its own signed-in session) then replays that set once a second, as the browser would.
Figures: callback p95 latency, errors (non-200 answers or exceptions), the console's total
RSS growth from the end of the warm-up to the end of the run, and Redis memory.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import threading
import time

import numpy as np
import psutil
import requests

from bench.pipeline import Console, _wait

USERS = 20
PASSWORD = "bench-load-password"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]


def _up(base: str) -> bool:
    try:
        return requests.get(base + "/login", timeout=5).ok
    except requests.RequestException:
        return False


def _login(base: str) -> requests.Session:
    session = requests.Session()
    form = session.get(base + "/login", timeout=10).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    answer = session.post(base + "/login", data={"username": "admin", "password": PASSWORD,
                                                 "csrf_token": token, "next": "/"}, timeout=10)
    answer.raise_for_status()
    if "/login" in answer.url:
        raise RuntimeError("bench load: sign-in failed")
    return session


def _capture_payloads(base: str) -> list[tuple[str, bytes]]:
    """(url, body) of the interval-driven callbacks the Latency and Overview pages really send
    (Dash 4 posts each callback to /_dash-update-component/<callback hash>)."""
    from playwright.sync_api import sync_playwright
    bodies: dict[str, tuple[str, bytes]] = {}

    def keep(request):
        if "/_dash-update-component" in request.url and request.method == "POST":
            body = json.loads(request.post_data)
            if "shell-interval.n_intervals" in body.get("changedPropIds", []):
                bodies[body["output"]] = (request.url, request.post_data.encode())

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(base + "/login")
        page.fill("#login-username", "admin")
        page.fill("#login-password", PASSWORD)
        page.click("#login-submit")
        page.wait_for_url(lambda u: "/login" not in u)
        page.on("request", keep)
        for path in ("/latency", "/"):
            page.goto(base + path)
            page.wait_for_timeout(6000)
        browser.close()
    if not bodies:
        raise RuntimeError("bench load: captured no interval callbacks")
    return list(bodies.values())


def _user(session: requests.Session, payloads: list[tuple[str, bytes]], stop: threading.Event,
          latencies: list, errors: list) -> None:
    headers = {"Content-Type": "application/json"}
    while not stop.is_set():
        started = time.monotonic()
        for url, body in payloads:
            t0 = time.perf_counter()
            try:
                answer = session.post(url, data=body, headers=headers, timeout=10)
                ok = answer.status_code in (200, 204)
            except requests.RequestException:
                ok = False
            latencies.append((time.perf_counter() - t0) * 1000)
            if not ok:
                errors.append(1)
        stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))


def _console_rss(console: Console) -> int:
    total = 0
    roots = [proc.pid for _, proc in console.procs] + [console.redis.pid]
    for pid in roots:
        try:
            root = psutil.Process(pid)
            total += sum(p.memory_info().rss for p in [root] + root.children(recursive=True))
        except psutil.Error:
            continue
    return total


def run(quick: bool) -> dict[str, float]:
    os.environ["CONSOLE_ADMIN_PASSWORD"] = PASSWORD
    duration_s, warmup_s = (60, 10) if quick else (600, 60)
    with Console() as console:
        base = f"http://127.0.0.1:{console.env['PORT']}"
        _wait(lambda: _up(base), 90, "the web app")
        payloads = _capture_payloads(base)
        sessions = [_login(base) for _ in range(USERS)]
        stop, latencies, errors = threading.Event(), [], []
        threads = [threading.Thread(target=_user, args=(s, payloads, stop, latencies, errors),
                                    daemon=True) for s in sessions]
        for t in threads:
            t.start()
        time.sleep(warmup_s)
        rss_start, redis_start = _console_rss(console), console.client.info("memory")["used_memory"]
        measured_from = len(latencies)
        time.sleep(duration_s - warmup_s)
        rss_end, redis_end = _console_rss(console), console.client.info("memory")["used_memory"]
        stop.set()
        for t in threads:
            t.join(timeout=15)
        sample = latencies[measured_from:]
        status = console.status()
    p95 = float(np.percentile(sample, 95)) if sample else float("nan")
    figures = {"load.callback_p95_ms": p95, "load.errors": float(len(errors)),
               "load.rss_growth_pct": 100.0 * (rss_end - rss_start) / rss_start,
               "load.redis_used_memory_mb": redis_end / 2**20,
               "load.redis_growth_mb": (redis_end - redis_start) / 2**20}
    print(f"   {USERS} users x {len(payloads)} callbacks/s for {duration_s}s "
          f"({len(sample)} measured requests, median {statistics.median(sample):.1f} ms, "
          f"p95 {p95:.1f} ms, goal <= 200), errors {len(errors)} (goal 0)")
    print(f"   console RSS {rss_start / 2**20:.0f} -> {rss_end / 2**20:.0f} MiB "
          f"({figures['load.rss_growth_pct']:+.1f} %, goal < 10), Redis {redis_start / 2**20:.1f} -> "
          f"{redis_end / 2**20:.1f} MiB; pipeline ticked {status.get('ticks_total')} times")
    return figures
