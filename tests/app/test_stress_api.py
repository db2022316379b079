"""The stress-job HTTP API on a Flask server against the session's real Redis, worker and
reference pipeline (its live book and price history): bearer auth and roles, 400 with a
message (per-row CSV errors included) and nothing queued for bad input, 404/409, 503 without
Redis; an uploaded portfolio run to done and listed, a double POST is one job, a live-book
job cancelled; and the daily beat job sent by name runs the standard scenarios on the live book."""
from __future__ import annotations

import time

import flask
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from app import api_stress, data
from celery_config import celery_app
from core import history, schema, stress, stress_jobs, users
from core.audit import recent_audit
from core.settings import get_settings
from tests.conftest import API_TOKEN, free_port, wait_for

pytestmark = pytest.mark.timeout(240)
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
ROUTES = [("post", "/api/stress/jobs"), ("get", "/api/stress/jobs"),
          ("get", "/api/stress/jobs/0123456789abcdef"), ("post", "/api/stress/jobs/0123456789abcdef/cancel")]


@pytest.fixture
def store(redis_url):
    client = schema.connect(redis_url)
    yield client
    client.close()


@pytest.fixture
def http(store):
    get_settings.cache_clear()
    server = flask.Flask("stress-api-test")
    api_stress.register(server)
    return server.test_client()


@pytest.fixture
def viewer(store):
    name = f"stress-viewer-{free_port()}"
    users.create_user(store, name, "viewer-password-1", "viewer")
    yield {"Authorization": f"Bearer {users.issue_api_token(store, name)}"}
    users.delete_user(store, name)


@pytest.fixture
def live_book(store, pipeline_process, celery_worker_process):
    """The pipeline has backfilled its history and holds positions. Both are waited for: an
    earlier module's runner may have left positions in Redis before this session's pipeline
    has backfilled the history."""
    wait_for(_history_days, 90, 0.5, "the backfilled history")
    wait_for(lambda: any(abs(schema.loads(v).get("qty", 0)) > 0
                         for v in store.hvals(schema.BROKER_POSITIONS)), 90, 0.5, "open positions")
    return store


def _history_days() -> bool:
    """True once the history holds enough days for the stress universe."""
    settings = get_settings()
    conn = history.connect(settings.database_url)
    try:
        symbols = sorted(history.last_closes(conn))
        return bool(symbols) and len(history.closes_matrix(conn, symbols)) > stress.MIN_HISTORY_DAYS + 1
    finally:
        conn.close()


def universe_csv(rows: list[str]) -> str:
    return "symbol,quantity,price\n" + "\n".join(rows) + "\n"


def symbols() -> tuple[str, ...]:
    settings = get_settings()
    conn = history.connect(settings.database_url)
    try:
        return stress.Universe.from_history(conn, settings).symbols
    finally:
        conn.close()


def poll(http, job_id, until=stress_jobs.TERMINAL_STATUSES, timeout=120.0) -> dict:
    return wait_for(lambda: (j := http.get(f"/api/stress/jobs/{job_id}", headers=AUTH).get_json())
                    ["status"] in until and j, timeout, 0.1, f"job {job_id} in {until}")


@pytest.mark.parametrize("method,path", ROUTES)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_TOKEN}"}])
def test_without_a_valid_token_every_stress_route_is_401_and_queues_nothing(http, store, method, path, headers):
    before = store.zcard(schema.STRESS_JOBS)
    r = getattr(http, method)(path, json={"scenarios": [{"kind": "market_crash"}]}, headers=headers)
    assert r.status_code == 401 and r.get_json()["error"]
    assert store.zcard(schema.STRESS_JOBS) == before


def test_a_viewer_token_reads_the_history_but_cannot_run_or_cancel(http, viewer):
    assert http.get("/api/stress/jobs", headers=viewer).status_code == 200
    r = http.post("/api/stress/jobs", json={"scenarios": [{"kind": "market_crash"}]}, headers=viewer)
    assert r.status_code == 403 and "operator" in r.get_json()["error"]
    r = http.post("/api/stress/jobs/0123456789abcdef/cancel", headers=viewer)
    assert r.status_code == 403


@pytest.mark.parametrize("body,field,text", [
    ("not json", None, "JSON object"),
    ([1, 2], None, "JSON object"),
    ({"scenarios": [{"kind": "market_crash"}], "extra": 1}, None, "unknown key"),
    ({}, "scenarios", "non-empty list"),
    ({"scenarios": [{"kind": "market_crash", "params": {"index_shock": -1.5}}]}, "index_shock", "within [-1, 0)"),
    ({"scenarios": [{"kind": "volatility_spike", "params": {"multiplier": 0}}]}, "multiplier", "multiplier"),
    ({"scenarios": [{"kind": "market_crash", "params": {"index_shock": "NaN"}}]}, "index_shock", "finite"),
    ({"scenarios": [{"kind": "meteor"}]}, "kind", "unknown scenario kind"),
    ({"scenarios": [{"kind": "market_crash"}], "options": {"confidence": 2}}, "confidence", "confidence"),
    ({"scenarios": [{"kind": "market_crash"}], "portfolio_csv": ""}, "portfolio_csv", "non-empty"),
])
def test_bad_input_is_400_with_a_message_and_nothing_is_queued(http, store, body, field, text):
    before = store.zcard(schema.STRESS_JOBS)
    kwargs = {"data": body} if isinstance(body, str) else {"json": body}
    r = http.post("/api/stress/jobs", headers={**AUTH, "Content-Type": "application/json"}, **kwargs)
    out = r.get_json()
    assert r.status_code == 400 and text in out["error"], out
    if field:
        assert out["field"] == field
    assert store.zcard(schema.STRESS_JOBS) == before


JSON = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=12)
BODIES = st.fixed_dictionaries({}, optional={"scenarios": st.lists(st.fixed_dictionaries(
    {"kind": st.sampled_from(stress.KINDS) | st.text(max_size=6)}, optional={"params": JSON, "name": JSON}),
    max_size=3) | JSON, "options": JSON, "portfolio_csv": JSON}) | JSON


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES)
def test_any_json_body_is_answered_with_a_4xx_message_or_accepted_never_a_500(http, body):
    r = http.post("/api/stress/jobs", json=body, headers=AUTH)
    assert r.status_code in (202, 400), (body, r.status_code, r.get_data(as_text=True)[:300])
    assert r.get_json()["error" if r.status_code == 400 else "job_id"]


def test_unknown_jobs_are_404_and_the_limit_is_checked(http):
    for path in ("/api/stress/jobs/0123456789abcdef", "/api/stress/jobs/not-an-id"):
        assert http.get(path, headers=AUTH).status_code == 404
    assert http.post("/api/stress/jobs/0123456789abcdef/cancel", headers=AUTH).status_code == 404
    for limit in ("0", "201", "x", "-1"):
        r = http.get(f"/api/stress/jobs?limit={limit}", headers=AUTH)
        assert r.status_code == 400 and "limit" in r.get_json()["error"]


def test_redis_down_is_503_never_500(http, monkeypatch):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setattr(data, "client", lambda: schema.connect(dead, socket_connect_timeout=0.2))
    assert http.get("/api/stress/jobs", headers=AUTH).status_code == 503
    assert http.get("/api/stress/jobs/0123456789abcdef", headers=AUTH).status_code == 503
    r = http.post("/api/stress/jobs", json={"scenarios": [{"kind": "market_crash"}]}, headers=AUTH)
    assert r.status_code == 503 and "nothing was done" in r.get_json()["error"]


def test_a_malformed_csv_is_400_with_errors_per_row_and_nothing_runs(http, store, live_book):
    before = store.zcard(schema.STRESS_JOBS)
    first = symbols()[0]
    csv_text = universe_csv([f"{first},100,10", "NOPE,5,10", f"{first},abc,", ",1,1"])
    r = http.post("/api/stress/jobs", json={"scenarios": [{"kind": "market_crash"}], "portfolio_csv": csv_text},
                  headers=AUTH)
    out = r.get_json()
    assert r.status_code == 400 and out["field"] == "portfolio_csv" and "nothing was run" in out["error"]
    assert {row["row"] for row in out["rows"]} == {3, 4, 5} and all(row["message"] for row in out["rows"])
    assert store.zcard(schema.STRESS_JOBS) == before


def test_an_uploaded_portfolio_runs_to_done_once_is_listed_and_audited(http, store, live_book):
    names = symbols()[:4]
    body = {"scenarios": [{"kind": k} for k in stress.STANDARD_KINDS], "options": {"seed": 3},
            "portfolio_csv": universe_csv([f"{s},{100 * (i + 1)}," for i, s in enumerate(names)])}
    r = http.post("/api/stress/jobs", json=body, headers=AUTH)
    assert r.status_code == 202 and r.get_json()["created"]
    job_id = r.get_json()["job_id"]
    again = http.post("/api/stress/jobs", json=body, headers=AUTH).get_json()
    assert again["job_id"] == job_id and not again["created"]              # a double click
    job = poll(http, job_id)
    assert job["status"] == "done", job["error"]
    assert [res["kind"] for res in job["results"]] == list(stress.STANDARD_KINDS)
    assert job["portfolio_info"]["source"] == "upload" and job["portfolio_info"]["n_assets"] == 4
    assert job["user"] == "api-token" and job["source"] == "api" and job["run_starts"] == 1
    listed = http.get("/api/stress/jobs?limit=200", headers=AUTH).get_json()["jobs"]
    assert job_id in [j["id"] for j in listed] and "results" not in listed[0]
    audit = [a for a in recent_audit(store, 200) if a["details"].get("job_id") == job_id]
    assert [(a["action"], a["source"]) for a in audit] == [("stress_run", "api")]


def test_a_live_book_monte_carlo_is_cancelled_through_the_api(http, store, live_book):
    body = {"scenarios": [{"kind": "monte_carlo", "params": {"n_paths": 1_000_000, "n_chunks": 40}}]}
    r = http.post("/api/stress/jobs", json=body, headers=AUTH)
    assert r.status_code == 202
    job_id = r.get_json()["job_id"]
    r = http.post(f"/api/stress/jobs/{job_id}/cancel", headers=AUTH)      # queued or just started
    assert r.status_code == 200 and r.get_json()["status"] == "cancelled"
    job = http.get(f"/api/stress/jobs/{job_id}", headers=AUTH).get_json()
    assert job["status"] == "cancelled" and job["error"] == "cancelled by api-token"
    assert job["portfolio_info"]["source"] == "live" and job["mc"] is None
    r = http.post(f"/api/stress/jobs/{job_id}/cancel", headers=AUTH)
    assert r.status_code == 409 and "already cancelled" in r.get_json()["error"]
    actions = [a["action"] for a in recent_audit(store, 200) if a["details"].get("job_id") == job_id]
    assert actions == ["stress_cancel", "stress_run"]


def test_the_daily_job_sent_by_name_runs_the_standard_scenarios_on_the_live_book(store, live_book):
    sent = time.time()
    celery_app.send_task("stress.daily", ignore_result=True)
    daily = wait_for(lambda: next((j for j in stress_jobs.list_jobs(store, 20)
                                   if j["source"] == "beat" and j["created"] >= sent), None),
                     60, 0.2, "the daily job")
    assert daily["user"] == "scheduler" and daily["portfolio_info"]["source"] == "live"
    job = wait_for(lambda: (j := stress_jobs.get_job(store, daily["id"]))["status"] in stress_jobs.TERMINAL_STATUSES
                   and j, 120, 0.2, "the daily job to end")
    assert job["status"] == "done", job["error"]
    assert [r["kind"] for r in job["results"]] == list(stress.STANDARD_KINDS)
