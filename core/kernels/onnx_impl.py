"""ONNX Runtime path for the stateless transform (normalize, clip, tanh). Rolling kernels
have no ONNX path (a recurrence over time is not what ONNX's operator set is for): N/A.

The graph is built with onnx.helper, in memory; non-finite inputs are masked exactly as the
other backends do (excluded from the statistics, mapped to 0): `finite = (x - x == 0)`.
Sessions are cached per thread count, and run sequentially with intra-op threads set from
settings.max_workers (ORT's own pool; it does not share numba's).
"""
from __future__ import annotations

import functools

import numpy as np

from core.kernels.config import CLIP_Z, EPS, SQUASH_DEGENERATE_REL

OPSET = 18


def squash_model(eps: float = EPS, clip: float = CLIP_Z):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    const = {"axes": np.array([0], np.int64), "zero": np.array(0.0), "one": np.array(1.0),
             "eps": np.array(eps), "lo": np.array(-clip), "hi": np.array(clip),
             "rel": np.array(SQUASH_DEGENERATE_REL), "inf": np.array(np.inf)}
    n = helper.make_node
    nodes = [
        n("Sub", ["x", "x"], ["xx"]),
        n("Equal", ["xx", "zero"], ["finite"]),
        n("Where", ["finite", "x", "zero"], ["x0"]),
        n("Cast", ["finite"], ["finite_f"], to=TensorProto.DOUBLE),
        n("ReduceSum", ["finite_f", "axes"], ["cnt0"], keepdims=1),
        n("Max", ["cnt0", "one"], ["cnt"]),
        n("ReduceSum", ["x0", "axes"], ["sum"], keepdims=1),
        n("Div", ["sum", "cnt"], ["mean"]),
        n("Sub", ["x0", "mean"], ["d0"]),
        n("Where", ["finite", "d0", "zero"], ["d"]),
        n("Mul", ["d", "d"], ["d2"]),
        n("ReduceSum", ["d2", "axes"], ["ss"], keepdims=1),
        n("Div", ["ss", "cnt"], ["var"]),
        n("Sqrt", ["var"], ["std"]),
        n("Add", ["std", "eps"], ["den0"]),
        # constant up to rounding (std <= rel * |mean|): divide by inf, i.e. output 0
        n("Abs", ["mean"], ["abs_mean"]),
        n("Mul", ["abs_mean", "rel"], ["floor"]),
        n("LessOrEqual", ["std", "floor"], ["degenerate"]),
        n("Where", ["degenerate", "inf", "den0"], ["den"]),
        n("Div", ["d", "den"], ["z"]),
        n("Clip", ["z", "lo", "hi"], ["zc"]),
        n("Tanh", ["zc"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "squash",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, None])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None, None])],
        [numpy_helper.from_array(v, k) for k, v in const.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="console.kernels")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


@functools.lru_cache(maxsize=8)
def _session(threads: int, eps: float, clip: float):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(squash_model(eps, clip).SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def squash(x: np.ndarray, eps: float = EPS, clip: float = CLIP_Z, threads: int = 1,
           out: np.ndarray | None = None) -> np.ndarray:
    """With `out` (C-contiguous float64, x's shape) ORT writes into it through an IO binding."""
    session = _session(int(threads), float(eps), float(clip))
    if out is None:
        return session.run(["y"], {"x": x})[0]
    if out.shape != x.shape or out.dtype != np.float64 or not out.flags.c_contiguous:
        raise ValueError(f"squash (onnx): out must be C-contiguous float64 of shape {x.shape}")
    binding = session.io_binding()
    binding.bind_cpu_input("x", x)
    binding.bind_output("y", "cpu", 0, np.float64, list(out.shape), out.ctypes.data)
    session.run_with_iobinding(binding)
    return out
