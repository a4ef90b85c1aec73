"""ggml (via ``ggml-python``) as an outside reference for the CPU kernel benchmarks.

``GgmlMatmul(w, x, qtype, threads)`` quantizes the fp32 weight ``w [N, K]`` to a ggml block type
(Q1_0, Q2_K, Q3_K, Q4_0, ...), builds ``y = ggml_mul_mat(W, x)`` for a fixed ``x [M, K]`` once,
and ``run()`` recomputes the graph with a persistent work buffer. ggml's CPU path quantizes the
activations to 8 bits (Q8_0 / Q8_K) inside the product, so it is not fp32-exact.
"""

from __future__ import annotations

import ctypes

import numpy as np

try:
    import ggml
except ImportError:  # pragma: no cover - optional dependency
    ggml = None


def available() -> bool:
    return ggml is not None


def qtype(name: str) -> int | None:
    """The ggml type id for a name such as ``"Q4_0"``, or None if this ggml lacks it."""
    if ggml is None:
        return None
    return getattr(ggml, f"GGML_TYPE_{name}", None)


class GgmlMatmul:
    def __init__(self, w: np.ndarray, x: np.ndarray, qtype_id: int, threads: int) -> None:
        n, k = w.shape
        m = x.shape[0]
        w = np.ascontiguousarray(w, dtype=np.float32)
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.wbytes = int(ggml.ggml_row_size(qtype_id, k)) * n
        mem = self.wbytes + 4 * (m * k + m * n) + 64 * 1024 * 1024
        params = ggml.ggml_init_params(mem_size=mem, mem_buffer=None, no_alloc=False)
        self.ctx = ggml.ggml_init(params)
        wt = ggml.ggml_new_tensor_2d(self.ctx, qtype_id, k, n)
        ggml.ggml_quantize_chunk(qtype_id, w.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                 ggml.ggml_get_data(wt), 0, n, k, None)
        xt = ggml.ggml_new_tensor_2d(self.ctx, ggml.GGML_TYPE_F32, k, m)
        ctypes.memmove(ggml.ggml_get_data(xt), x.ctypes.data, x.nbytes)
        self.y = ggml.ggml_mul_mat(self.ctx, wt, xt)
        self.graph = ggml.ggml_new_graph(self.ctx)
        ggml.ggml_build_forward_expand(self.graph, self.y)
        self.plan = ggml.ggml_graph_plan(self.graph, threads, None)
        self.work = None
        if self.plan.work_size > 0:
            self.work = (ctypes.c_uint8 * self.plan.work_size)()
            self.plan.work_data = ctypes.cast(self.work, ctypes.POINTER(ctypes.c_uint8))
        self.shape = (m, n)

    def run(self) -> None:
        ggml.ggml_graph_compute(self.graph, ctypes.pointer(self.plan))

    def result(self) -> np.ndarray:
        m, n = self.shape
        ptr = ctypes.cast(ggml.ggml_get_data(self.y), ctypes.POINTER(ctypes.c_float))
        return np.ctypeslib.as_array(ptr, shape=(m, n)).copy()

    def close(self) -> None:
        if self.ctx is not None:
            ggml.ggml_free(self.ctx)
            self.ctx = None

    def __del__(self) -> None:
        self.close()
