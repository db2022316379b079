"""`cache.optimize`: tune the shared cache policy from what the console's processes observed.

Each process with a CacheManager publishes its statistics and access profile
(core.cache.publish_statistics). This task merges the profiles, lets core.cache.recommend pick
TTL per prefix and the L1 size, stores them (schema.CACHE_POLICY / CACHE_L1_SIZE: processes
adopt them with CacheManager.load_policy), enforces the stated L2 capacity, and records the
change with the measured effect: the multi-tier hit rate at the previous run against now.
"""
from __future__ import annotations

import time

from celery_config import celery_app
from core import cache, runtime_config, schema
from core.alerts import raise_alert
from workers._optimize import run_locked

LOCK_S = 120
HIT_RATE_TARGET = 0.90     # the spec's multi-tier hit rate


def _merge_profiles(stats: dict[str, dict]) -> dict:
    """Per prefix, the access profile of the process that saw it most."""
    profile: dict[str, dict] = {}
    for st in stats.values():
        for prefix, p in (st.get("profile") or {}).items():
            cur = profile.get(prefix)
            if cur is None or p.get("requests", 0) > cur.get("requests", 0):
                profile[prefix] = p
    return profile


def _work(client) -> dict:
    s = runtime_config.effective_settings(runtime_config.live("worker").values)
    stats = cache.read_statistics(client)
    profile, merged = _merge_profiles(stats), cache.merge_statistics(stats)
    requests, hit_rate = merged["requests"], merged["multitier_hit_rate"]
    policy = schema.read_json_hash(client, schema.CACHE_POLICY)
    l1_now = int(client.get(schema.CACHE_L1_SIZE) or s.cache_max_entries)
    rec = cache.recommend(profile, {p: v.get("ttl_s", s.cache_ttl_s) for p, v in policy.items()
                                    if isinstance(v, dict)},
                          l1_now, s.cache_ttl_s, max_l1=10 * s.cache_max_entries)
    pipe = client.pipeline(transaction=False)
    for prefix, ttl in rec["ttl_s"].items():
        pipe.hset(schema.CACHE_POLICY, prefix, schema.dumps({**(policy.get(prefix) or {}), "ttl_s": ttl}))
    pipe.set(schema.CACHE_L1_SIZE, rec["l1_max_entries"])
    sample = {"t": time.time(), "requests": requests, "multitier_hit_rate": hit_rate,
              **{f"{t}_hit_rate": v["hit_rate"] for t, v in merged["tiers"].items()}}
    schema.add_to_series(pipe, schema.CACHE_STATS_SERIES, sample["t"], schema.dumps(sample),
                         schema.SECOND_SERIES_RETENTION_S)
    pipe.execute()
    capacity = cache.enforce_l2_capacity(client, s.cache_l2_max_bytes)
    last = schema.loads(client.get(schema.opt_last("cache"))) or {}
    if hit_rate is not None and requests >= 1000 and hit_rate < HIT_RATE_TARGET:
        raise_alert(client, "warning", "cache", f"multi-tier hit rate {hit_rate:.1%} below the "
                    f"{HIT_RATE_TARGET:.0%} target", dedupe_key="cache:hit_rate", dedupe_s=600)
    changes = list(rec["changes"])
    if capacity["evicted"]:
        changes.append({"what": "l2 bytes", "before": capacity["bytes"] + capacity["evicted_bytes"],
                        "after": capacity["bytes"]})
    return {"changes": changes, "recommendation": rec, "profile": profile, "processes": len(stats),
            "l2": {**capacity, "capacity_bytes": s.cache_l2_max_bytes},
            "effect": {"hit_rate_before": last.get("hit_rate_now"), "hit_rate_now": hit_rate},
            "hit_rate_now": hit_rate}


@celery_app.task(name="cache.optimize", soft_time_limit=60, time_limit=90, ignore_result=False)
def optimize(trigger: str = "beat") -> dict:
    """One cache optimization run; "skipped" when another holds the lock."""
    if trigger not in ("beat", "manual", "auto"):
        return {"status": "failed", "reason": f"unknown trigger {trigger!r}"}
    return run_locked("cache", LOCK_S, _work, trigger)
