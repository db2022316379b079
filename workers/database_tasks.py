"""`database.analyze`: review the watched queries, apply indexes that measurably help.

core.db.review reads each watched query's plan, proposes indexes and verified rewrites; an
index is created only if it makes its query at least MIN_SPEEDUP times faster (else dropped
again). Findings go to schema.DB_FINDINGS, the changes to the optimization history.
"""
from __future__ import annotations

from celery_config import celery_app
from core import db, schema
from core.settings import get_settings
from workers._optimize import run_locked

LOCK_S = 300
MIN_SPEEDUP = 1.2


def _work(client) -> dict:
    database = db.Database(get_settings().database_url, pool_size=2)
    try:
        findings = db.review(database)
        changes = []
        for q in findings["queries"]:
            for suggestion in q.get("suggestions", []):
                sql, params = next((s, p) for n, s, p, _c in db.watched_queries(kind=database.kind) if n == q["name"])
                applied = db.apply_index(database, suggestion, sql, params, repeats=5,
                                         min_speedup=MIN_SPEEDUP)
                q.setdefault("applied", []).append(applied)
                changes.append({"what": f"index {suggestion['name']} ({'kept' if applied['kept'] else 'dropped'})",
                                "before": round(applied["before_ms"], 4), "after": round(applied["after_ms"], 4)})
            rw = q.get("rewrite") or {}
            if rw.get("applied"):
                changes.append({"what": f"rewrite '{q['name']}' ({'; '.join(rw['rules'])})",
                                "before": round(rw["before_ms"], 4), "after": round(rw["after_ms"], 4)})
    finally:
        database.close()
    client.set(schema.DB_FINDINGS, schema.dumps(findings))
    return {"changes": changes, "queries": len(findings["queries"])}


@celery_app.task(name="database.analyze", soft_time_limit=120, time_limit=180, ignore_result=False)
def analyze(trigger: str = "beat") -> dict:
    """One database review; "skipped" when another holds the lock."""
    if trigger not in ("beat", "manual"):
        return {"status": "failed", "reason": f"unknown trigger {trigger!r}"}
    return run_locked("database", LOCK_S, _work, trigger)
