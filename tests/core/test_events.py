"""Event bus: fan-out, async edges, handler isolation and live statistics."""
from __future__ import annotations

import asyncio
import threading

import pytest

from core import schema
from core.events import DayClose, EventBus, Fill, Order, Tick


def tick(seq=0):
    return Tick(seq, 0, 100.0, 99.9, 100.1, 10.0, 0.1, 1000.0, 0, 0.0)


def order(i=1):
    return Order(i, "SYM00", 1, 10.0, 0.0, 0)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 5))


def test_publish_fans_out_to_every_subscriber_of_that_type_only():
    bus, seen = EventBus(), []
    bus.subscribe(Tick, lambda e: seen.append(("a", e.seq)), name="a")
    bus.subscribe(Tick, lambda e: seen.append(("b", e.seq)), name="b")
    bus.subscribe(Order, lambda e: seen.append(("order", e.order_id)), name="c")
    bus.publish(tick(7))
    bus.publish(Fill(1, "X", 1, 1.0, 1.0, 0.0, 0))            # nobody listens: ignored
    assert seen == [("a", 7), ("b", 7)]


def test_failing_handler_is_isolated_counted_and_others_keep_running():
    bus, seen = EventBus(), []

    def broken(e):
        raise RuntimeError(f"bad tick {e.seq}")

    bus.subscribe(Tick, broken, name="broken")
    bus.subscribe(Tick, lambda e: seen.append(e.seq), name="good")
    for i in range(3):
        bus.publish(tick(i))
    assert seen == [0, 1, 2]
    stats = {s["handler"]: s for s in bus.stats()}
    assert stats["broken"]["errors"] == 3 and "bad tick 2" in stats["broken"]["last_error"]
    assert stats["good"]["errors"] == 0 and stats["good"]["events_total"] == 3


def test_async_handlers_get_events_published_from_another_thread():
    async def scenario():
        bus, got, done = EventBus(), [], asyncio.Event()

        def on_order(e):
            got.append(e.order_id)
            if len(got) == 100:
                done.set()

        bus.subscribe(Order, on_order, name="orders_out", mode="async")
        await bus.start()
        producer = threading.Thread(target=lambda: [bus.publish(order(i)) for i in range(100)])
        producer.start()
        await done.wait()
        producer.join()
        stats = bus.stats()[0]
        await bus.stop()
        return got, stats

    got, stats = run(scenario())
    assert got == list(range(100))                              # in order, none lost
    assert stats["mode"] == "async" and stats["events_total"] == 100 and stats["queue_depth"] == 0


def test_async_coroutine_handler_errors_are_isolated():
    async def scenario():
        bus, got = EventBus(), []

        async def flaky(e):
            if e.order_id % 2:
                raise ValueError("odd")
            got.append(e.order_id)

        bus.subscribe(Order, flaky, name="flaky", mode="async")
        await bus.start()
        for i in range(6):
            bus.publish(order(i))
        await bus.drain()
        await asyncio.sleep(0.05)
        stats = bus.stats()[0]
        await bus.stop()
        return got, stats

    got, stats = run(scenario())
    assert got == [0, 2, 4] and stats["errors"] == 3 and stats["last_error"] == "ValueError: odd"


def test_async_queue_is_bounded_and_counts_drops_before_the_loop_runs():
    bus = EventBus()
    bus.subscribe(Order, lambda e: None, name="slow", mode="async", queue_max=5)
    for i in range(8):
        bus.publish(order(i))
    s = bus.stats()[0]
    assert s["queue_depth"] == 5 and s["dropped"] == 3


def test_stats_report_rate_and_latency_percentiles_and_publish_to_redis(redis_client):
    bus = EventBus()
    bus.subscribe(Tick, lambda e: sum(range(200)), name="pipeline")
    bus.subscribe(DayClose, lambda e: None, name="history_writer", mode="async")
    bus.stats()                                                   # rate mark
    for i in range(500):
        bus.publish(tick(i))
    s = bus.stats()[0]
    assert s["events_total"] == 500 and s["events_per_s"] > 0
    assert 0 < s["latency_p50_us"] <= s["latency_p99_us"]
    bus.publish_stats(redis_client)
    stored = {k.decode(): schema.loads(v) for k, v in redis_client.hgetall(schema.BUS_STATS).items()}
    assert set(stored) == {"pipeline", "history_writer"}
    expected_keys = {"handler", "event_type", "events_total", "events_per_s", "queue_depth",
                     "latency_p50_us", "latency_p99_us", "errors", "last_error"}
    assert expected_keys <= set(stored["pipeline"])
    assert stored["pipeline"]["event_type"] == "Tick"
    assert stored["history_writer"]["latency_p50_us"] is None     # no events yet: no made-up figure


def test_bad_subscriptions_are_rejected():
    bus = EventBus()
    with pytest.raises(ValueError, match="mode"):
        bus.subscribe(Tick, print, mode="threaded")
    with pytest.raises(TypeError):
        bus.subscribe("Tick", print)
    bus.subscribe(Tick, print, name="p")
    with pytest.raises(ValueError, match="already subscribed"):
        bus.subscribe(Tick, print, name="p")
