"""Stress-test job records on a real Redis, driven through the same functions the Celery tasks
call: validation, dedupe, progress that never double counts, exact Monte Carlo merge through
the store, cooperative cancel, stale detection, bounded history, capacity, exports."""
from __future__ import annotations

import csv
import dataclasses
import io
import json

import numpy as np
import pytest

from core import schema, stress, stress_jobs
from core.audit import recent_audit
from core.settings import get_settings
from core.stress import StressInputError

DB = 3
MC = {"kind": "monte_carlo", "params": {"n_paths": 4000, "n_chunks": 2}}


@pytest.fixture
def client(own_db):
    return own_db


@pytest.fixture(scope="module")
def book() -> stress.Portfolio:
    return stress.synthetic_portfolio(12, seed=3)


@pytest.fixture
def sent():
    """The queue side of start_job, recorded: (job_id, expires_s) per stress.run sent."""
    return []


def submit(client, sent, scenarios, book, user="olga", options=None, settings=None):
    return stress_jobs.start_job(client, user=user, source="web", scenarios=scenarios, portfolio=book,
                                 options=options, settings=settings,
                                 send=lambda job_id, expires: sent.append((job_id, expires)))


def run_plain_scenarios(client, job_id):
    """What stress.run does for the plain scenarios, in this process."""
    job = stress_jobs.begin_run(client, job_id)
    portfolio = stress_jobs.load_portfolio(client, job_id)
    for i, spec in enumerate(job["scenarios"]):
        if spec["kind"] != "monte_carlo":
            stress_jobs.record_result(client, job_id, i, stress.run_scenario(portfolio, spec), "x")
    return job


def run_chunk(client, job_id, index):
    """What stress.mc_chunk does, in this process."""
    plan = stress_jobs.read_record(client, job_id)["plan"]
    assert stress_jobs.begin_chunk(client, job_id, index) is not None
    chunk = stress.mc_chunk(stress_jobs.load_portfolio(client, job_id), plan["n_paths"], index,
                            plan["rows"][index], plan["seed"], tuple(plan["confidences"]), plan["distribution"])
    return stress_jobs.record_chunk(client, job_id, index, chunk)


@pytest.mark.parametrize("options,field,text", [
    ({"confidence": 1.0}, "confidence", "[0.5, 0.999]"),
    ({"confidence": float("nan")}, "confidence", "confidence must be"),
    ({"confidence": True}, "confidence", "confidence must be"),
    ({"seed": -1}, "seed", "seed must be"),
    ({"seed": 1.5}, "seed", "seed must be"),
    ({"chunks": 4}, "chunks", "unknown option"),
    ([1], "options", "must be an object"),
])
def test_bad_options_are_rejected_naming_the_field(options, field, text):
    with pytest.raises(StressInputError) as err:
        stress_jobs.validate_options(options)
    assert err.value.field == field and text in str(err.value)


@pytest.mark.parametrize("scenarios,field,text", [
    ([], "scenarios", "non-empty list"),
    ("market_crash", "scenarios", "non-empty list"),
    ([{"kind": "market_crash"}] * 21, "scenarios", "at most 20"),
    ([MC, MC], "scenarios", "at most one monte_carlo"),
    ([{"kind": "market_crash"}, {"kind": "market_crash", "params": {"index_shock": -1.5}}],
     "index_shock", "scenario 2: index_shock must be within"),
    ([{"kind": "custom", "params": {"asset_shocks": {"NOPE": -0.1}}}], "asset_shocks", "unknown symbol"),
])
def test_bad_scenarios_are_rejected_before_anything_is_stored(client, sent, book, scenarios, field, text):
    with pytest.raises(StressInputError) as err:
        submit(client, sent, scenarios, book)
    assert err.value.field == field and text in str(err.value)
    assert sent == [] and client.zcard(schema.STRESS_JOBS) == 0 and client.keys("*") == []


def test_start_job_records_a_queued_job_with_its_snapshot_audits_and_sends_once(client, sent, book):
    job_id, created = submit(client, sent, [{"kind": "market_crash"}, MC], book, options={"seed": 9})
    assert created and sent == [(job_id, get_settings().stress_queue_timeout_s)]
    job = stress_jobs.get_job(client, job_id)
    assert job["status"] == "queued" and job["user"] == "olga" and job["source"] == "web"
    assert job["options"] == {"confidence": 0.95, "seed": 9}
    plan = job["plan"]
    assert plan["index"] == 1 and sum(plan["rows"]) == 4000 and plan["seed"] == 9
    assert job["scenarios"][1]["params"]["n_chunks"] == len(plan["rows"])      # the spec reproduces it
    assert job["progress"] == {"done": 0, "total": 1 + len(plan["rows"]), "stage": "queued"}
    assert job["portfolio_info"]["n_assets"] == 12 and job["results"] == [] and job["mc"] is None
    snapshot = stress_jobs.load_portfolio(client, job_id)
    assert snapshot.digest == book.digest and snapshot.symbols == book.symbols
    [audit] = recent_audit(client, 5)
    assert audit["action"] == "stress_run" and audit["user"] == "olga" and audit["details"]["job_id"] == job_id


def test_a_job_the_broker_refused_is_failed_with_the_reason_not_left_queued(client, book):
    def refuse(job_id, expires):
        raise ConnectionError("broker down")
    with pytest.raises(ConnectionError):
        stress_jobs.start_job(client, user="olga", source="api", scenarios=[{"kind": "market_crash"}],
                              portfolio=book, send=refuse)
    [job] = stress_jobs.list_jobs(client)
    assert job["status"] == "failed" and job["error"] == "could not be queued: ConnectionError: broker down"


def test_the_snapshot_round_trips_bit_for_bit(book):
    back = stress_jobs.decode_snapshot(stress_jobs.encode_snapshot(book))
    for name in ("qty", "price", "betas", "adv", "half_spread_bps", "returns"):
        assert np.array_equal(getattr(back, name), getattr(book, name)), name
    assert (back.symbols, back.equity, back.source) == (book.symbols, book.equity, book.source)


def test_a_double_click_gives_one_job_and_a_different_request_another(client, sent, book):
    first, created = submit(client, sent, [{"kind": "market_crash"}], book)
    again, created_again = submit(client, sent, [{"kind": "market_crash", "params": {"index_shock": -0.2}}], book)
    assert created and not created_again and again == first          # same normalized request
    other, created_other = submit(client, sent, [{"kind": "market_crash"}], book, options={"seed": 1})
    someone, _ = submit(client, sent, [{"kind": "market_crash"}], book, user="pavel")
    assert created_other and len({first, other, someone}) == 3
    assert [s[0] for s in sent] == [first, other, someone] and client.zcard(schema.STRESS_JOBS) == 3


def test_progress_counts_each_unit_once_even_when_redelivered_and_the_job_finishes(client, sent, book):
    job_id, _ = submit(client, sent, [{"kind": "market_crash"}, {"kind": "liquidity_crisis"}], book)
    job = stress_jobs.begin_run(client, job_id)
    assert job["status"] == "running" and job["started"] is not None and job["run_starts"] == 1
    result = stress.run_scenario(book, job["scenarios"][0])
    assert stress_jobs.record_result(client, job_id, 0, result, "crash done") == 1
    assert stress_jobs.record_result(client, job_id, 0, result, "crash again") == 1   # overwrite
    assert not stress_jobs.try_finish(client, job_id)                                  # one missing
    assert stress_jobs.begin_run(client, job_id)["run_starts"] == 2                    # redelivered run
    assert stress_jobs.record_result(client, job_id, 1, stress.run_scenario(book, job["scenarios"][1]), "x") == 2
    assert stress_jobs.try_finish(client, job_id) and not stress_jobs.try_finish(client, job_id)
    done = stress_jobs.get_job(client, job_id)
    assert done["status"] == "done" and done["progress"]["done"] == done["progress"]["total"] == 2
    assert [r["kind"] for r in done["results"]] == ["market_crash", "liquidity_crisis"]
    assert done["summary"][0]["pnl"] == pytest.approx(result["pnl"]) and done["duration_s"] >= 0
    assert not client.exists(schema.stress_job(job_id, "portfolio"))                    # snapshot dropped
    assert not client.sismember(schema.STRESS_ACTIVE, job_id)
    assert stress_jobs.record_result(client, job_id, 0, result, "late") is None         # finished stays
    assert stress_jobs.begin_run(client, job_id) is None


def test_monte_carlo_merged_through_the_store_equals_the_single_process_scenario(client, sent, book):
    job_id, _ = submit(client, sent, [MC, {"kind": "market_crash"}], book, options={"seed": 5})
    job = run_plain_scenarios(client, job_id)
    n_chunks = len(job["plan"]["rows"])
    for index in reversed(range(n_chunks)):          # any order
        assert not stress_jobs.try_finish(client, job_id)
        run_chunk(client, job_id, index)
    assert stress_jobs.try_finish(client, job_id)     # as the last chunk's task does
    assert stress_jobs.begin_chunk(client, job_id, 0) is None   # a late duplicate does not start
    done = stress_jobs.get_job(client, job_id)
    assert done["status"] == "done" and done["progress"] == {"done": n_chunks + 1, "total": n_chunks + 1,
                                                             "stage": "done"}
    expected = stress.run_scenario(book, done["scenarios"][0], seed=5)
    got = done["results"][0]
    assert got["kind"] == "monte_carlo" and done["mc"] == got["extras"]["monte_carlo"]
    for key in ("pnl", "var_after", "cvar_after", "var_before"):
        assert got[key] == expected[key]
    assert done["mc"]["by_confidence"] == expected["extras"]["monte_carlo"]["by_confidence"]
    assert not client.exists(schema.stress_job(job_id, "chunks"))                        # merged, dropped
    assert {int(v) for v in client.hvals(schema.stress_job(job_id, "starts"))} == {1}


def test_cancel_mid_monte_carlo_stops_new_chunks_and_drops_results_in_flight(client, sent, book):
    job_id, _ = submit(client, sent, [MC], book)
    stress_jobs.begin_run(client, job_id)
    run_chunk(client, job_id, 0)
    in_flight = stress_jobs.begin_chunk(client, job_id, 1)
    assert in_flight == 1
    assert stress_jobs.request_cancel(client, job_id, "olga")
    job = stress_jobs.get_job(client, job_id)
    assert job["status"] == "cancelled" and job["error"] == "cancelled by olga" and job["finished"]
    assert job["chunk_starts_at_end"] == 2                       # chunk 0 done, chunk 1 in flight
    assert stress_jobs.record_chunk(client, job_id, 1, {"late": True}) is None
    assert stress_jobs.begin_chunk(client, job_id, 2) is None     # no chunk starts after the cancel
    assert not stress_jobs.touch(client, job_id, "still here?")
    assert not stress_jobs.request_cancel(client, job_id, "olga")           # already cancelled
    assert [a["action"] for a in recent_audit(client, 5)] == ["stress_cancel", "stress_run"]


def test_a_queued_job_cancelled_never_starts(client, sent, book):
    job_id, _ = submit(client, sent, [{"kind": "market_crash"}], book)
    assert stress_jobs.request_cancel(client, job_id, "olga", "api")
    assert stress_jobs.begin_run(client, job_id) is None
    assert stress_jobs.get_job(client, job_id)["status"] == "cancelled"
    assert not stress_jobs.request_cancel(client, "0123456789abcdef", "olga")
    assert not stress_jobs.request_cancel(client, "../../etc", "olga")


def test_a_silent_running_job_is_failed_with_the_reason_on_read_and_by_the_reaper(client, sent, book):
    settings = get_settings()
    quiet, _ = submit(client, sent, [{"kind": "market_crash"}], book)
    stress_jobs.begin_run(client, quiet)
    updated = stress_jobs.read_record(client, quiet)["updated"]
    fresh = stress_jobs.get_job(client, quiet, now=updated + settings.stress_stale_after_s - 1)
    assert fresh["status"] == "running"
    lost = stress_jobs.get_job(client, quiet, now=updated + settings.stress_stale_after_s + 1)
    assert lost["status"] == "failed" and "no progress for" in lost["error"] and "worker was lost" in lost["error"]
    waiting, _ = submit(client, sent, [{"kind": "liquidity_crisis"}], book)
    created = stress_jobs.read_record(client, waiting)["created"]
    assert stress_jobs.reap(client, now=created + 10) == []
    [reaped] = stress_jobs.reap(client, now=created + settings.stress_queue_timeout_s + 1)
    assert reaped["id"] == waiting and "not picked up" in reaped["reason"]
    assert stress_jobs.get_job(client, waiting)["status"] == "failed"
    assert client.scard(schema.STRESS_ACTIVE) == 0


def test_a_unit_that_keeps_losing_its_worker_fails_the_job(client, sent, book):
    job_id, _ = submit(client, sent, [{"kind": "market_crash"}], book)
    for _ in range(stress_jobs.MAX_UNIT_STARTS):
        assert stress_jobs.begin_run(client, job_id) is not None
    assert stress_jobs.begin_run(client, job_id) is None
    job = stress_jobs.get_job(client, job_id)
    assert job["status"] == "failed" and "lost its worker" in job["error"]


def test_history_is_bounded_and_listed_newest_first_without_results(client, sent, book):
    settings = dataclasses.replace(get_settings(), stress_history=10)
    ids = [submit(client, sent, [{"kind": "market_crash", "params": {"index_shock": -0.01 * (i + 1)}}],
                  book, settings=settings)[0] for i in range(12)]
    listed = stress_jobs.list_jobs(client, 50)
    assert [j["id"] for j in listed] == ids[::-1][:10]
    assert "results" not in listed[0] and "plan" not in listed[0] and listed[0]["progress"]["total"] == 1
    assert listed[0]["scenarios"][0]["params"]["index_shock"] == pytest.approx(-0.12)
    assert "results" not in stress_jobs.get_job(client, ids[-1], with_results=False)
    for gone in ids[:2]:
        assert stress_jobs.get_job(client, gone) is None
        assert not client.exists(schema.stress_job(gone, "portfolio"))
    with pytest.raises(ValueError):
        stress_jobs.list_jobs(client, 0)


def test_capacity_counts_fresh_stress_workers_only_and_sizes_the_fan_out(client):
    settings = get_settings()
    assert stress_jobs.stress_processes(client, fallback=3) == 3
    stress_jobs.report_capacity(client, "a@host", 4, now=100.0)
    stress_jobs.report_capacity(client, "b@host", 2, now=100.0)
    stress_jobs.report_capacity(client, "gone@host", 8, now=100.0 - stress_jobs.CAPACITY_FRESH_S - 1)
    assert stress_jobs.stress_processes(client, fallback=3, now=100.0) == 6
    assert client.hkeys(schema.STRESS_CAPACITY) and b"gone@host" not in client.hkeys(schema.STRESS_CAPACITY)
    assert stress_jobs.chunk_count(100_000, 2, 6, settings) == 12                # 2 per process
    assert stress_jobs.chunk_count(100_000, 20, 6, settings) == 20               # the scenario's floor
    assert stress_jobs.chunk_count(1_000_000, 2, 1, settings) == 40              # <= 25,000 paths each
    assert stress_jobs.chunk_count(2000, 2, 64, settings) == 4                   # >= 500 paths each


def test_exports_hold_every_result_field_as_csv_rows_and_json(client, sent, book):
    job_id, _ = submit(client, sent, [{"kind": "market_crash"}, {"kind": "liquidity_crisis"}], book)
    run_plain_scenarios(client, job_id)
    stress_jobs.try_finish(client, job_id)
    job = stress_jobs.get_job(client, job_id)
    rows = list(csv.DictReader(io.StringIO(stress_jobs.job_to_csv(job))))
    assert tuple(rows[0]) == stress_jobs.CSV_COLUMNS
    crash = {r["field"]: r["value"] for r in rows if r["scenario"] == "1"}
    assert float(crash["pnl"]) == pytest.approx(job["results"][0]["pnl"])
    symbol = book.symbols[0]
    assert float(crash[f"positions.{symbol}.pnl"]) == pytest.approx(job["results"][0]["positions"][0]["pnl"])
    assert {r["kind"] for r in rows} == {"market_crash", "liquidity_crisis"}
    assert json.loads(stress_jobs.job_to_json(job))["results"][1]["kind"] == "liquidity_crisis"


def test_unknown_or_malformed_ids_read_as_none(client):
    assert stress_jobs.get_job(client, "0123456789abcdef") is None
    assert stress_jobs.get_job(client, "x' OR 1") is None and stress_jobs.read_record(client, None) is None
