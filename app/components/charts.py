"""Figure builders shared by the pages. Inputs are already-aggregated rows read from Redis."""
from __future__ import annotations

import functools
from typing import Iterable, Sequence

import numpy as np
import plotly.io as pio
from dash_bootstrap_templates import load_figure_template

TEMPLATE = "bootstrap_dark"
MARGIN = dict(l=50, r=20, t=40, b=35)
SERIES_COLORS = ["#4cc9f0", "#f72585", "#ffd166", "#06d6a0", "#b5179e", "#fb8500", "#e9c46a", "#adb5bd"]
THRESHOLD_COLOR = "#ef476f"

# Figures are plain dicts, not plotly.graph_objects: the objects validate every property on
# construction, which cost 50-100 ms per callback on a 60-minute window (bench area
# `dashboard`); plotly.js validates on the client anyway. The theme template is resolved once.


@functools.lru_cache(maxsize=1)
def _template() -> dict:
    if TEMPLATE not in pio.templates:
        load_figure_template(TEMPLATE)
    return pio.templates[TEMPLATE].to_plotly_json()


def figure(traces: list[dict], title: str, height: int = 280, uirevision: str | None = None,
           **layout) -> dict:
    base = {"template": _template(), "height": height, "margin": MARGIN,
            "title": {"text": title, "x": 0.01, "font": {"size": 14}},
            "uirevision": uirevision or title,
            "legend": {"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"}}
    base.update(layout)
    return {"data": traces, "layout": base}


def hline(y: float, label: str, color: str = THRESHOLD_COLOR, dash: str = "dash",
          position: str = "left") -> tuple[dict, dict]:
    """A horizontal line across the plot and its label: (shape, annotation)."""
    shape = {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y", "y0": y, "y1": y,
             "line": {"dash": dash, "color": color, "width": 1}}
    note = {"xref": "paper", "x": 0 if position == "left" else 1, "yref": "y", "y": y,
            "text": label, "showarrow": False, "yanchor": "bottom",
            "xanchor": "left" if position == "left" else "right", "font": {"size": 11}}
    return shape, note


def to_datetimes(seconds: Iterable[float]) -> list[str]:
    """Unix seconds -> ISO-8601 UTC strings (what Plotly draws as a time axis)."""
    ms = (np.asarray(list(seconds), dtype=float) * 1000).astype("datetime64[ms]")
    return np.datetime_as_string(ms, unit="ms").tolist()


def line(x, y, name: str, color_index: int = 0, **extra) -> dict:
    trace = {"type": "scatter", "mode": "lines", "x": x, "y": y, "name": name,
             "line": {"width": 1.6, "color": SERIES_COLORS[color_index % len(SERIES_COLORS)]}}
    trace.update(extra)
    return trace


def empty_figure(message: str, height: int = 280) -> dict:
    return figure([], "", height, uirevision=message, xaxis={"visible": False},
                  yaxis={"visible": False},
                  annotations=[{"text": message, "showarrow": False, "font": {"size": 14},
                                "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5}])


def time_series(rows: Sequence[dict], fields: Sequence[tuple[str, str]], title: str,
                y_title: str, height: int = 280, threshold: float | None = None,
                threshold_label: str = "threshold", log_y: bool = False,
                scale: float = 1.0) -> dict:
    """Lines of `rows[*][field] * scale` against `rows[*]['t']`; None values leave gaps."""
    if not rows:
        return empty_figure(f"{title}: no data yet", height)
    x = to_datetimes(r["t"] for r in rows)
    traces = [line(x, [None if r.get(field) is None else r[field] * scale for r in rows], label, i)
              for i, (field, label) in enumerate(fields)]
    extra = {}
    if threshold is not None:
        shape, note = hline(threshold, threshold_label)
        extra = {"shapes": [shape], "annotations": [note]}
    return figure(traces, title, height, yaxis={"title": {"text": y_title},
                                                "type": "log" if log_y else "linear"}, **extra)


def fmt_us(value: float | None) -> str:
    """Latency for people: 850 us, 12.3 ms, 1.20 s."""
    if value is None:
        return "–"
    if value < 1000:
        return f"{value:.0f} µs"
    if value < 1_000_000:
        return f"{value / 1000:.1f} ms"
    return f"{value / 1e6:.2f} s"


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def fmt_rate(value: float | None, unit: str = "/s") -> str:
    if value is None:
        return "–"
    if value >= 1e6:
        return f"{value / 1e6:.2f} M{unit}"
    if value >= 1e3:
        return f"{value / 1e3:.1f} k{unit}"
    return f"{value:.0f} {unit}"
