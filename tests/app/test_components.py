"""Figure builders and formatting helpers of the dashboard (no browser needed)."""
from __future__ import annotations

import json

import plotly.io as pio

from app.components import charts
from app.components.kpi import against


def test_time_series_draws_gaps_for_missing_values_and_a_threshold_line():
    rows = [{"t": 1_700_000_000, "p99_us": 10.0}, {"t": 1_700_000_001, "p99_us": None},
            {"t": 1_700_000_002, "p99_us": 30.0}]
    fig = charts.time_series(rows, [("p99_us", "p99")], "x", "µs", threshold=20.0, scale=2.0)
    [trace] = fig["data"]
    assert trace["y"] == [20.0, None, 60.0]
    assert trace["x"][0] == "2023-11-14T22:13:20.000"
    assert fig["layout"]["shapes"][0]["y0"] == 20.0
    assert fig["layout"]["template"]["layout"]["paper_bgcolor"]  # the dark theme is resolved
    pio.from_json(json.dumps(fig))  # plotly accepts the plain-dict figure


def test_empty_rows_give_a_labelled_empty_figure():
    fig = charts.empty_figure("nothing yet")
    assert fig["data"] == [] and fig["layout"]["annotations"][0]["text"] == "nothing yet"
    assert "no data yet" in charts.time_series([], [("a", "a")], "CPU", "%")["layout"]["annotations"][0]["text"]


def test_formatting_picks_units_for_people():
    assert charts.fmt_us(850) == "850 µs" and charts.fmt_us(12_300) == "12.3 ms"
    assert charts.fmt_us(1_200_000) == "1.20 s" and charts.fmt_us(None) == "–"
    assert charts.fmt_bytes(3 * 1024**3) == "3.0 GiB" and charts.fmt_rate(1500, "/s") == "1.5 k/s"


def test_kpi_status_against_a_limit():
    assert against(None, 100) == "unknown"
    assert against(50, 100) == "ok" and against(90, 100) == "warn" and against(101, 100) == "fail"
