"""The Latency page's compute-kernels section: the live benchmark table of the data-processing
step per path, the selection per kernel, and the signal model's out-of-sample hit rate.
Built from what kernels.optimize wrote to Redis; no computation here."""
from __future__ import annotations

import time

import dash_bootstrap_components as dbc
from dash import html

from app.components import charts

KERNEL_PATHS = (("python", "pure Python"), ("numpy", "numpy"), ("numba", "numba"), ("onnx", "ONNX Runtime"))


def _ms(value) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f} ms" if value >= 100 else f"{value:.1f} ms" if value >= 1 else f"{value * 1e3:.0f} µs"


def kernels_section(bench: dict | None, selection: dict | None, model: dict | None,
                    pipeline: dict | None = None):
    """The live table: time and speed-up per path of the data-processing step (squash), the
    selected backend per kernel, the signal model's out-of-sample hit rate, and the backend the
    running pipeline's model_inference uses (`pipeline`: its status JSON)."""
    if not bench:
        return html.Div([html.P("No kernel benchmark yet: the kernels.optimize task runs at start and on "
                                "its beat schedule.", className="text-body-secondary", id="latency-kernels-empty"),
                         _backend_line(pipeline)])
    rows = bench.get("rows") or []
    squash = {r["backend"]: r for r in rows if r.get("kernel") == "squash"}
    shape = next(iter(squash.values()), {}).get("shape") or ["?", "?"]
    head = html.Thead(html.Tr([html.Th(h) for h in ("Path", "Time", "Speed-up vs pure Python",
                                                     "Max error vs reference", "Status")]))
    body = []
    for key, label in KERNEL_PATHS:
        r = squash.get(key)
        if r is None:
            body.append(html.Tr([html.Td(label), html.Td("–"), html.Td("–"), html.Td("–"),
                                 html.Td(dbc.Badge("disabled", color="secondary"))]))
            continue
        note = f" (scaled from {r['scaled_from']:,} rows)" if r.get("scaled_from") else ""
        status = (dbc.Badge("selected", color="success") if r.get("selected") else
                  dbc.Badge("rejected", color="danger", title=r.get("error") or "") if not r.get("ok") else
                  dbc.Badge("reference" if key == "python" else "correct", color="light", text_color="dark"))
        body.append(html.Tr([html.Td(html.B(label) if r.get("selected") else label), html.Td(_ms(r.get("ms")) + note),
                             html.Td(f"{r['speedup']:,.0f}×" if r.get("speedup") else "–"),
                             html.Td("–" if r.get("max_error") is None else f"{r['max_error']:.1e}"),
                             html.Td(status)], className="table-success" if r.get("selected") else ""))
    table = dbc.Table([head, html.Tbody(body)], size="sm", bordered=True, id="latency-kernels-table")
    caption = html.P(f"normalize + clip + tanh over {shape[0]:,} × {shape[1]} float64, every path on the same "
                     f"input into the same output buffer; measured "
                     f"{time.strftime('%H:%M:%S', time.localtime(bench.get('ts', 0)))}.",
                     className="small text-body-secondary mb-1")
    return html.Div([caption, table, _selection_line(rows, selection), _model_line(model),
                     _backend_line(pipeline)])


BACKEND_LABELS = {"onnx": "ONNX Runtime", "python": "the same model in Python arithmetic",
                  "linear": "the start-up linear fit (signal model not loaded)"}


def _backend_line(pipeline: dict | None):
    """Which backend scores the live ticks, the onnx_enabled flag, and the last switch."""
    backend = (pipeline or {}).get("model_backend")
    if not backend:
        return html.P("Pipeline model_inference: the pipeline has not reported yet.", className="small",
                      id="latency-kernels-backend")
    flag = pipeline.get("onnx_enabled")
    parts = [html.B("Pipeline model_inference: "), BACKEND_LABELS.get(backend, backend),
             "" if flag is None else f" (onnx_enabled {'on' if flag else 'off'})"]
    switch = pipeline.get("model_switch")
    if switch:
        parts.append(f"; switched {switch['before']} → {switch['after']} at "
                     f"{time.strftime('%H:%M:%S', time.localtime(switch['ts']))} ({switch.get('reason') or ''})")
    return html.P(parts + ["."], className="small", id="latency-kernels-backend")


def _selection_line(rows: list[dict], selection: dict | None):
    picks = (selection or {}).get("kernels") or {}
    parts = []
    for kernel, backend in picks.items():
        ms = next((r.get("ms") for r in rows if r.get("kernel") == kernel and r.get("backend") == backend), None)
        parts.append(f"{kernel}: {backend} ({_ms(ms)})")
    extra = []
    if selection:
        extra.append(f"numba threads {selection.get('numba_threads')}, max_workers {selection.get('max_workers')}")
        if selection.get("batch_size"):
            extra.append(f"model batch size {selection['batch_size']:,}")
        sess = selection.get("session")
        if sess:
            extra.append(f"ONNX Runtime: {sess['intra_op_threads']} intra-op thread(s), "
                         f"{sess['execution_mode']}, optimization {sess['graph_optimization']}")
    text = "Selected per kernel: " + ("; ".join(parts) or "none yet") + ". Rolling kernels have no ONNX path (N/A)."
    return html.P([text, html.Br(), "; ".join(extra)], className="small", id="latency-kernels-selection")


def _model_line(model: dict | None):
    if not model or model.get("hit_rate") is None:
        return html.P("Signal model: not measured yet.", className="small", id="latency-kernels-model")
    tick = model.get("tick") or {}
    good = (model.get("ci_low") or 0) > 0.5
    return html.P([
        html.B("Signal model (ONNX): "),
        f"out-of-sample hit rate {100 * model['hit_rate']:.2f}% "
        f"[95% CI {100 * model['ci_low']:.2f}%, {100 * model['ci_high']:.2f}%] on {model.get('n', 0):,} ticks "
        f"it never saw; ",
        dbc.Badge("above chance" if good else "not above chance", color="success" if good else "warning"),
        f"  tick path (features + inference) p50 {charts.fmt_us(tick.get('p50_us'))}, "
        f"p99 {charts.fmt_us(tick.get('p99_us'))}." if tick else "",
    ], className="small", id="latency-kernels-model")
