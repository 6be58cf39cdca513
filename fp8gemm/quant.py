"""FP8 quantization on the GPU: per-token (1x128) and per-block (128x128) casts to e4m3.

Outputs are written directly in the layouts the GEMMs read: per-token scales MN-major
(``[M, ceil(K/128)]`` with strides ``(1, tma_aligned(M))``), per-block scales row-major
``[ceil(N/128), ceil(K/128)]``.
"""
from __future__ import annotations

import functools
import sys
import threading
from typing import Any

from . import arrays, launcher, runtime
from .arrays import DeviceArray, View, as_view, check_dtype, check_rows, check_shape
from .ptx_templates import quant as templates
from .ptx_templates.spec import compiled
from .reference import ceil_div, tma_aligned_size

_SRC = {"bfloat16": "bf16", "float32": "f32"}
_launches: dict[tuple, tuple] = {}
_thread_packs = threading.local()


def _empty(shape, dtype: str, like: View, device: int, strides=None, alloc_shape=None):
    """An output array of the input's framework (torch) or an owned DeviceArray."""
    alloc_shape = alloc_shape or shape
    if like.framework == "torch":
        torch = sys.modules["torch"]
        t = torch.empty(alloc_shape, dtype=getattr(torch, dtype), device=f"cuda:{device}")
        return t if strides is None else t.as_strided(shape, strides)
    nbytes = arrays.DTYPES[dtype]
    for s in alloc_shape:
        nbytes *= s
    buf = launcher.DeviceBuffer(nbytes, device)
    return DeviceArray(buf.ptr, shape, dtype, strides, device, owner=buf)


def _check_input(x: Any, name: str) -> View:
    v = as_view(x, name)
    check_dtype(v, name, "bfloat16", "float32")
    check_shape(v, name, (None, None))
    check_rows(v, name)
    if v.shape[1] % 16:
        raise ValueError(f"{name}: K = {v.shape[1]} must be a multiple of 16 "
                         "(FP8 rows are read with TMA, which needs 16-byte row strides)")
    return v


def _check_q(out: Any, name: str, shape) -> View:
    v = as_view(out, name)
    check_dtype(v, name, "float8_e4m3fn")
    check_shape(v, name, shape)
    check_rows(v, name)
    return v


def _launch(kind: str, src: str, device: int, values: dict, arrays: dict, stream: int) -> None:
    """Launch a cast from its spec: the grid and every parameter come from the template's
    contract (``cast_spec``). Per problem (kind, source, device, sizes) the grid and the size
    parameters are worked out once; a call then writes only the three array addresses."""
    key = (kind, src, device, *values.values())
    hit = _launches.get(key)
    if hit is None:
        spec = _spec(kind, src)
        grid = tuple(compiled(x)(values) for x in spec.grid_dims)
        make = templates.per_token_kernel if kind == "token" else templates.per_block_kernel
        fn, _ = runtime.get_function(("quant", kind, src), lambda: make(src), device)
        pack, slots = launcher.ParamPack([p.type for p in spec.params]), []
        for i, p in enumerate(spec.params):
            if p.array is not None:
                slots.append((i, p.array))
            else:
                pack[i] = compiled(p.value)(values)
        hit = _launches[key] = (launcher.Launch(fn, grid, (spec.threads, 1, 1), spec.smem_bytes, name=spec.name),
                                pack, tuple(slots))
    lc, template_pack, slots = hit
    packs = _thread_packs.__dict__.setdefault("packs", {})   # one pack per thread: no shared writes
    pack = packs.get(key)
    if pack is None:
        pack = packs[key] = template_pack.copy()
    for i, name in slots:
        pack[i] = arrays[name]
    lc(pack.address, stream)


@functools.lru_cache(maxsize=None)
def _spec(kind: str, src: str):
    return templates.cast_spec(kind, src)


def per_token_cast_to_fp8(x: Any, out: tuple | None = None, stream: Any = None):
    """Quantize x [M, K] (bf16/f32) per 1x128 group -> (q [M, K] e4m3, scales [M, ceil(K/128)]).

    ``scales`` is MN-major and TMA-aligned (strides ``(1, get_tma_aligned_size(M))``), the
    layout ``gemm_fp8_fp8_bf16_nt`` reads. ``out=(q, scales)`` writes into given arrays.
    """
    xv = _check_input(x, "x")
    m, k = xv.shape
    kb, am = ceil_div(k, 128), tma_aligned_size(m)
    if out is None:
        device = arrays.check_same_device({"x": xv})
        q = _empty((m, k), "float8_e4m3fn", xv, device)
        s = _empty((m, kb), "float32", xv, device, strides=(1, am), alloc_shape=(kb, am))
    else:
        q, s = out
    qv = _check_q(q, "out[0] (q)", (m, k))
    sv = as_view(s, "out[1] (scales)")
    check_dtype(sv, "out[1] (scales)", "float32")
    check_shape(sv, "out[1] (scales)", (m, kb))
    if m > 1 and sv.strides[0] != 1 or kb > 1 and (sv.strides[1] < m or sv.strides[1] % 4):
        raise ValueError(f"out[1] (scales): strides {sv.strides} must be (1, s) with s >= M and "
                         "s % 4 == 0 (MN-major, TMA-aligned)")
    device = arrays.check_same_device({"x": xv, "out[0] (q)": qv, "out[1] (scales)": sv})
    if m == 0 or k == 0:
        return q, s
    launcher.context_for(device)
    st = arrays.resolve_stream(stream, [xv], device)
    s_stride = sv.strides[1] if kb > 1 else am
    _launch("token", _SRC[xv.dtype], device,
            {"m": m, "k": k, "x_stride": xv.strides[0], "q_stride": qv.strides[0], "s_stride": s_stride},
            {"x": xv.ptr, "q": qv.ptr, "scales": sv.ptr}, st)
    return q, s


def per_block_cast_to_fp8(x: Any, out: tuple | None = None, stream: Any = None):
    """Quantize x [N, K] (bf16/f32) per 128x128 block -> (q [N, K] e4m3, scales [ceil(N/128), ceil(K/128)])."""
    xv = _check_input(x, "x")
    n, k = xv.shape
    nb, kb = ceil_div(n, 128), ceil_div(k, 128)
    if out is None:
        device = arrays.check_same_device({"x": xv})
        q = _empty((n, k), "float8_e4m3fn", xv, device)
        s = _empty((nb, kb), "float32", xv, device)
    else:
        q, s = out
    qv = _check_q(q, "out[0] (q)", (n, k))
    sv = as_view(s, "out[1] (scales)")
    check_dtype(sv, "out[1] (scales)", "float32")
    check_shape(sv, "out[1] (scales)", (nb, kb))
    if kb > 1 and sv.strides[1] != 1:
        raise ValueError(f"out[1] (scales): must be row-major, got strides {sv.strides}")
    device = arrays.check_same_device({"x": xv, "out[0] (q)": qv, "out[1] (scales)": sv})
    if n == 0 or k == 0:
        return q, s
    launcher.context_for(device)
    st = arrays.resolve_stream(stream, [xv], device)
    _launch("block", _SRC[xv.dtype], device,
            {"m": n, "k": k, "x_stride": xv.strides[0], "q_stride": qv.strides[0],
             "s_stride": sv.strides[0] if nb > 1 else kb},
            {"x": xv.ptr, "q": qv.ptr, "scales": sv.ptr}, st)
    return q, s
