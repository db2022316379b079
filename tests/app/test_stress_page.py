"""The Stress tests page in real Chromium against the whole console (worker consuming the
stress queue, beat, pipeline, gunicorn): Run (double-clicked: one job) -> progress -> result
cards and charts; Monte Carlo progress through its chunks and its distribution; cancel; bad
input beside the field and no job; per-row CSV errors, then an uploaded book run; a viewer
refused on the server; saved custom scenarios; history, comparison and downloads. Last, the
callbacks in-process against an unreachable Redis: placeholders, never a 500."""
from __future__ import annotations

import re
import time

import flask
import pytest
from dash import no_update

from app import data
from core import risk_manager, schema, stress_jobs, users
from core.audit import recent_audit
from tests.app.conftest import login
from tests.app.test_risk_page import _text
from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.timeout(300)

MONEY = re.compile(r"-?[\d,]+(\.\d\d)? ?[kM]?")
GRAPH_DATA = "(sel) => { const g = document.querySelector(sel + ' .js-plotly-plot'); " \
             "return g && g.data ? g.data.map(t => [t.type, (t.x || []).length]) : null; }"
GRAPH_SHAPES = "(sel) => { const g = document.querySelector(sel + ' .js-plotly-plot'); " \
               "return g && g.layout ? (g.layout.shapes || []).length : null; }"
VIEWER, VIEWER_PASSWORD = "stressviewer", "viewer-password-1"


@pytest.fixture
def client(redis_url):
    c = schema.connect(redis_url)
    yield c
    c.close()


def _field(key: str) -> str:
    return f"#stress-field-{key} input, #stress-field-{key} textarea"


def _feedback(page, key: str) -> str:
    return page.inner_text(f"#stress-field-{key} .invalid-feedback")


def _job_count(client) -> int:
    return client.zcard(schema.STRESS_JOBS)


def _newest_job(client) -> dict:
    return stress_jobs.get_job(client, stress_jobs.list_jobs(client, 1)[0]["id"])


def _open(page, console, client):
    """The page with the live book's summary shown (the pipeline has opened positions)."""
    wait_for(lambda: risk_manager.read_portfolio(client)[1], 120, 0.5, "open positions in the live book")
    page.goto(console + "/stress")
    wait_for(lambda: "Live paper book" in page.inner_text("#stress-portfolio-summary"), 30, 0.5,
             "the live book's summary")
    wait_for(lambda: page.is_enabled("#stress-run-market_crash"), 60, 0.3, "no job of ours running")


def _status(page) -> str:
    loc = page.locator("#stress-status")
    return loc.inner_text() if loc.count() else ""


def _wait_status(page, *statuses: str, timeout: float = 120) -> str:
    return wait_for(lambda: _status(page) if _status(page) in statuses else None, timeout, 0.2,
                    f"job status in {statuses}")


def test_double_click_run_crash_gives_one_job_progress_and_a_result_card(console, page, client):
    _open(page, console, client)
    before = _job_count(client)
    page.dblclick("#stress-run-market_crash")
    page.wait_for_selector("#stress-progress-bar", timeout=30_000)
    assert _wait_status(page, "done", "failed", "cancelled") == "done", page.inner_text("#stress-job-panel")
    assert _job_count(client) == before + 1                   # a double click is one job
    job = _newest_job(client)
    assert job["user"] == "admin" and job["source"] == "web" and job["portfolio_info"]["source"] == "live"
    assert job["scenarios"][0]["params"]["index_shock"] == -0.20       # -20 % in the form
    assert job["progress"]["done"] == job["progress"]["total"] == 1
    page.wait_for_selector("#stress-card-0", timeout=30_000)
    card = page.inner_text("#stress-card-0")
    assert "Market crash" in card and "VaR" in card and "→" in card
    pnl = page.inner_text("#stress-card-0-pnl")
    assert MONEY.fullmatch(pnl.strip()), pnl
    assert f"{100 * job['results'][0]['pnl_pct']:.2f} %" in card
    wait_for(lambda: page.evaluate(GRAPH_DATA, "#stress-waterfall-graph") == [
        ["waterfall", min(len(job["results"][0]["positions"]), 10) + (len(job["results"][0]["positions"]) > 10) + 1]],
        30, 0.3, "the waterfall of the crash")
    assert page.evaluate(GRAPH_DATA, "#stress-pnl-graph") == [["bar", 1]]
    wait_for(lambda: page.locator(f"#stress-history-row-{job['id']}").count(), 30, 0.5, "the run in the history")
    assert "Market crash" in page.inner_text(f"#stress-history-row-{job['id']}")
    assert any(a["action"] == "stress_run" and a["details"].get("job_id") == job["id"]
               for a in recent_audit(client, 50))
    assert not page.console_errors, page.console_errors


def test_monte_carlo_progress_advances_to_all_chunks_and_shows_the_distribution(console, page, client):
    _open(page, console, client)
    page.fill(_field("monte_carlo-n_paths"), "1,000,000")
    page.click("#stress-run-monte_carlo")
    page.wait_for_selector("#stress-progress-bar", timeout=30_000)
    seen = set()

    def finished():
        bar = page.locator("#stress-progress-bar")
        if bar.count():
            seen.add(bar.inner_text())
        return _status(page) in ("done", "failed", "cancelled")
    wait_for(finished, 180, 0.05, "the Monte Carlo job to end")
    assert _status(page) == "done", page.inner_text("#stress-job-panel")
    job = _newest_job(client)
    total = job["progress"]["total"]
    assert total == len(job["plan"]["rows"]) >= 4 and job["plan"]["n_paths"] == 1_000_000
    done = sorted(int(s.split(" / ")[0]) for s in seen)
    assert done[-1] == total and done[0] < total, seen       # seen below the total, then complete
    wait_for(lambda: (page.evaluate(GRAPH_DATA, "#stress-mc-graph") or [[None, 0]])[0][0] == "bar", 30, 0.3,
             "the distribution")
    assert page.evaluate(GRAPH_DATA, "#stress-mc-graph")[0][1] == len(job["mc"]["histogram"]["counts"])
    assert page.evaluate(GRAPH_SHAPES, "#stress-mc-graph") == 2             # VaR and CVaR lines
    assert "Monte Carlo" in page.inner_text("#stress-card-0")
    assert not page.console_errors, page.console_errors


def test_cancel_a_large_monte_carlo_job(console, page, client):
    """Deterministic whatever the machine's speed: the workers stop taking stress tasks while
    the job is started and cancelled (a queued job), and take them again afterwards; the
    cancelled job's delivered task then does nothing. Cancelling a job mid-run is covered with
    the real worker in tests/workers/test_stress_tasks.py."""
    from celery_config import celery_app
    _open(page, console, client)
    page.fill(_field("monte_carlo-n_paths"), "1000000")
    assert celery_app.control.cancel_consumer("stress", reply=True, timeout=5), "no worker answered"
    try:
        page.click("#stress-run-monte_carlo")
        wait_for(lambda: page.is_enabled("#stress-cancel"), 30, 0.05, "the Cancel button")
        page.click("#stress-cancel")
        assert _wait_status(page, "done", "failed", "cancelled") == "cancelled", page.inner_text("#stress-job-panel")
    finally:
        celery_app.control.add_consumer("stress", reply=True, timeout=5)
    assert "cancelled by admin" in page.inner_text("#stress-job-error")
    job_id = _newest_job(client)["id"]
    time.sleep(3)                      # the worker takes the queued task again: it must not run it
    job = stress_jobs.get_job(client, job_id)
    assert job["status"] == "cancelled" and job["progress"]["done"] == 0 < job["progress"]["total"]
    assert page.is_enabled("#stress-run-monte_carlo") and not page.is_enabled("#stress-cancel")
    assert not page.console_errors, page.console_errors


def test_out_of_range_input_is_refused_beside_the_field_and_starts_nothing(console, page, client):
    _open(page, console, client)
    before = _job_count(client)
    page.fill(_field("market_crash-index_shock"), "-150")
    wait_for(lambda: "≥ -100 %" in _feedback(page, "market_crash-index_shock"), 15, 0.2, "the message beside it")
    assert _feedback(page, "market_crash-index_shock") == "Index shock must be ≥ -100 % and < 0 %; got -150 %"
    page.fill(_field("volatility_spike-multiplier"), "NaN")
    wait_for(lambda: "finite" in _feedback(page, "volatility_spike-multiplier"), 15, 0.2, "the NaN message")
    page.click("#stress-run-market_crash")
    wait_for(lambda: "Not started" in page.inner_text("#stress-run-msg"), 15, 0.2, "the refusal")
    assert "Index shock" in page.inner_text("#stress-run-msg")
    page.click("#stress-run-all")
    wait_for(lambda: "Volatility multiplier" in page.inner_text("#stress-run-msg"), 15, 0.2, "Run all refused")
    assert _job_count(client) == before
    page.fill(_field("market_crash-index_shock"), "-100")
    wait_for(lambda: not _feedback(page, "market_crash-index_shock"), 15, 0.2, "the message gone at -100 %")
    assert not page.console_errors, page.console_errors


def test_malformed_csv_shows_per_row_errors_and_a_valid_one_runs(console, page, client):
    _open(page, console, client)
    before = _job_count(client)
    bad = b"symbol,quantity,price\nSYM01,abc,10\nNOPE,5,10\nSYM02,10,-3\nSYM03,100,\n"
    page.set_input_files("#stress-upload input[type=file]",
                         files=[{"name": "bad.csv", "mimeType": "text/csv", "buffer": bad}])
    page.wait_for_selector("#stress-csv-errors-table", timeout=30_000)
    table = page.inner_text("#stress-csv-errors-table")
    assert "quantity 'abc' is not a number" in table and "unknown symbol 'NOPE'" in table
    assert "price must be > 0" in table
    rows = [r.split("\t")[0].strip() for r in table.splitlines()[1:]]
    assert rows == ["2", "3", "4"], table
    assert "No valid CSV" in page.inner_text("#stress-portfolio-summary")
    page.click("#stress-run-market_crash")
    wait_for(lambda: "Not started" in page.inner_text("#stress-run-msg"), 15, 0.2, "the refusal")
    assert _job_count(client) == before
    good = b"symbol;weight\nSYM01;30%\nSYM02;-10%\nSYM03;0.2\n"
    page.set_input_files("#stress-upload input[type=file]",
                         files=[{"name": "good.csv", "mimeType": "text/csv", "buffer": good}])
    wait_for(lambda: "3 positions" in page.inner_text("#stress-portfolio-summary"), 30, 0.2, "the upload summary")
    assert "gross 600.00 k" in page.inner_text("#stress-portfolio-summary")
    page.click("#stress-run-market_crash")
    assert _wait_status(page, "done", "failed", "cancelled") == "done", page.inner_text("#stress-job-panel")
    job = _newest_job(client)
    assert job["portfolio_info"]["source"] == "upload" and job["portfolio_info"]["n_assets"] == 3
    page.wait_for_selector("#stress-card-0", timeout=30_000)
    assert not page.console_errors, page.console_errors


def test_viewer_is_refused_on_the_server_and_no_job_starts(console, anonymous_page, client):
    if users.get_user(client, VIEWER) is None:
        users.create_user(client, VIEWER, VIEWER_PASSWORD, "viewer")
    page = anonymous_page
    login(page, console, VIEWER, VIEWER_PASSWORD)
    page.goto(console + "/stress")
    page.wait_for_selector("#stress-viewer-note", timeout=30_000)
    before = _job_count(client)
    page.click("#stress-run-market_crash")
    wait_for(lambda: "operator role" in page.inner_text("#stress-run-msg"), 15, 0.2, "the role message")
    page.click("#stress-custom-save")
    wait_for(lambda: "operator role" in page.inner_text("#stress-custom-msg"), 15, 0.2, "save refused")
    assert _job_count(client) == before
    assert not client.hexists(schema.STRESS_CUSTOM, "My scenario")


def test_custom_scenario_saved_loaded_checked_against_the_book_run_and_deleted(console, page, client):
    _open(page, console, client)
    page.set_input_files("#stress-upload input[type=file]", files=[{
        "name": "three.csv", "mimeType": "text/csv", "buffer": b"symbol,quantity\nSYM01,100\nSYM02,-50\nSYM03,80\n"}])
    wait_for(lambda: "3 positions" in page.inner_text("#stress-portfolio-summary"), 30, 0.2, "the upload summary")
    page.fill(_field("custom-name"), "Tech selloff")
    page.fill(_field("custom-asset_shocks"), "SYM01 -30\nSYM02 +10")
    page.fill(_field("custom-index"), "-5")
    page.click("#stress-custom-save")
    wait_for(lambda: "Saved Tech selloff" in page.inner_text("#stress-custom-msg"), 15, 0.2, "saved")
    stored = schema.loads(client.hget(schema.STRESS_CUSTOM, "Tech selloff"))
    assert stored["spec"]["params"] == {"asset_shocks": {"SYM01": -0.30, "SYM02": 0.10},
                                        "factor_shocks": {"index": -0.05}} and stored["user"] == "admin"
    # a symbol the uploaded book does not hold: refused at Run, beside the shocks
    before = _job_count(client)
    page.fill(_field("custom-asset_shocks"), "SYM09 -30")
    page.click("#stress-run-custom")
    wait_for(lambda: "unknown symbol 'SYM09'" in _feedback(page, "custom-asset_shocks"), 15, 0.2,
             "the unknown symbol beside the shocks")
    assert _job_count(client) == before
    page.select_option("#stress-custom-saved", "Tech selloff")
    wait_for(lambda: page.input_value("#stress-field-custom-asset_shocks textarea") == "SYM01 -30\nSYM02 10",
             15, 0.2, "the saved shocks loaded")
    assert page.input_value("#stress-field-custom-index input") == "-5"
    page.click("#stress-run-custom")
    assert _wait_status(page, "done", "failed", "cancelled") == "done", page.inner_text("#stress-job-panel")
    page.wait_for_selector("#stress-card-0", timeout=30_000)
    wait_for(lambda: "Tech selloff" in page.inner_text("#stress-card-0"), 15, 0.2, "the custom result")
    shocks = _newest_job(client)["results"][0]["extras"]["shocks"]
    assert shocks["SYM01"] == -0.30 and shocks["SYM02"] == 0.10 and shocks["SYM03"] < 0   # beta x -5 %
    page.click("#stress-custom-delete")
    wait_for(lambda: "Deleted Tech selloff" in page.inner_text("#stress-custom-msg"), 15, 0.2, "deleted")
    assert not client.hexists(schema.STRESS_CUSTOM, "Tech selloff")
    actions = [a["action"] for a in recent_audit(client, 50)]
    assert "stress_custom_save" in actions and "stress_custom_delete" in actions
    assert not page.console_errors, page.console_errors


def test_history_views_a_past_run_compares_two_and_downloads_csv_and_json(console, page, client):
    _open(page, console, client)
    page.set_input_files("#stress-upload input[type=file]", files=[{
        "name": "longs.csv", "mimeType": "text/csv", "buffer": b"symbol,quantity\nSYM01,100\nSYM02,50\n"}])
    wait_for(lambda: "2 positions" in page.inner_text("#stress-portfolio-summary"), 30, 0.2, "the upload summary")
    for shock in ("-10", "-30"):
        page.fill(_field("market_crash-index_shock"), shock)
        page.click("#stress-run-market_crash")
        assert _wait_status(page, "done", "failed", "cancelled") == "done"
        wait_for(lambda: page.is_enabled("#stress-run-market_crash"), 30, 0.2, "Run enabled again")
    first, second = [j["id"] for j in stress_jobs.list_jobs(client, 2)][::-1]
    page.click(f"#stress-history-row-{first} button")
    wait_for(lambda: first in page.inner_text("#stress-view-header"), 15, 0.2, "the first run shown")
    page.select_option("#stress-compare-a", first)
    page.select_option("#stress-compare-b", second)
    page.wait_for_selector("#stress-compare-table", timeout=15_000)
    row = page.inner_text("#stress-compare-table").splitlines()[1]
    pnl_a, pnl_b = (stress_jobs.read_record(client, j)["summary"][0]["pnl"] for j in (first, second))
    assert row.startswith("Market crash") and pnl_b < pnl_a < 0          # longs: a deeper crash loses more
    with page.expect_download() as csv_download:
        page.click("#stress-download-csv")
    text = open(csv_download.value.path()).read()
    assert text.startswith(",".join(stress_jobs.CSV_COLUMNS)) and f"{first},1,market_crash" in text
    with page.expect_download() as json_download:
        page.click("#stress-download-json")
    assert f'"id": "{first}"' in open(json_download.value.path()).read()
    assert not page.console_errors, page.console_errors


def test_every_callback_reading_redis_shows_a_placeholder_while_redis_is_down(monkeypatch):
    """In-process, against a Redis address nobody listens on: each guarded callback answers
    its full set of outputs with a placeholder (a wrong count would be a 500 in the browser)."""
    from app.main import create_app
    app = create_app()
    from app.pages import stress as page_module      # importable once the app has pages
    down = schema.connect(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.2, socket_connect_timeout=0.2)
    monkeypatch.setattr(data, "client", lambda: down)
    job = "0123456789abcdef"
    with app.server.test_request_context("/stress"):
        flask.session["user"] = {"username": "admin", "role": "admin"}
        polled = page_module.poll(3, {"id": job, "open": True}, None)
        assert len(polled) == 5 + len(page_module.RUN_IDS) and "Redis unreachable" in _text(polled[0])
        shown = page_module.show_run(job)
        assert len(shown) == 8 and "Redis unreachable" in _text(shown[0]) and shown[6] is True
        assert page_module.show_waterfall("0", job)["layout"]["annotations"][0]["text"] == "Redis unreachable"
        assert "Redis unreachable" in _text(page_module.show_history(1, job, None)[0])
        assert "Redis unreachable" in _text(page_module.compare(job, job))
        assert "Redis unreachable" in _text(page_module.show_portfolio("live", None, 1))
        assert "not cancelled" in _text(page_module.cancel(1, {"id": job, "open": True})[0])
        assert page_module.load_custom("Tech selloff") == (no_update,) * 3
        assert page_module.download(1, None, job) is no_update
