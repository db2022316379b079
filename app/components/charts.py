"""Figure builders shared by the pages. Inputs are already-aggregated rows read from Redis."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import plotly.graph_objects as go

TEMPLATE = "bootstrap_dark"
MARGIN = dict(l=50, r=20, t=40, b=35)
SERIES_COLORS = ["#4cc9f0", "#f72585", "#ffd166", "#06d6a0", "#b5179e", "#fb8500", "#e9c46a", "#adb5bd"]


def to_datetimes(seconds: Iterable[float]) -> np.ndarray:
    """Unix seconds -> UTC datetime64 (what Plotly draws as a time axis)."""
    return (np.asarray(list(seconds), dtype=float) * 1000).astype("datetime64[ms]")


def empty_figure(message: str, height: int = 280) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(template=TEMPLATE, height=height, margin=MARGIN,
                      xaxis={"visible": False}, yaxis={"visible": False},
                      annotations=[{"text": message, "showarrow": False, "font": {"size": 14}}])
    return fig


def time_series(rows: Sequence[dict], fields: Sequence[tuple[str, str]], title: str,
                y_title: str, height: int = 280, threshold: float | None = None,
                threshold_label: str = "threshold", log_y: bool = False,
                scale: float = 1.0) -> go.Figure:
    """Lines of `rows[*][field] * scale` against `rows[*]['t']`; None values leave gaps."""
    if not rows:
        return empty_figure(f"{title}: no data yet", height)
    x = to_datetimes(r["t"] for r in rows)
    fig = go.Figure()
    for i, (field, label) in enumerate(fields):
        y = [None if r.get(field) is None else r[field] * scale for r in rows]
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=label,
                                 line={"width": 1.6, "color": SERIES_COLORS[i % len(SERIES_COLORS)]}))
    if threshold is not None:
        fig.add_hline(y=threshold, line={"dash": "dash", "color": "#ef476f", "width": 1},
                      annotation_text=threshold_label, annotation_position="top left")
    fig.update_layout(template=TEMPLATE, title={"text": title, "x": 0.01, "font": {"size": 14}},
                      height=height, margin=MARGIN, yaxis_title=y_title, uirevision=title,
                      legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"})
    if log_y:
        fig.update_yaxes(type="log")
    return fig


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
