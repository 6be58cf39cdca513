"""The FP8 GEMM: plans (the raw, pointer-level layer) and the array-level API.

A ``GemmPlan`` holds a compiled kernel, its launch configuration and packed parameters for
one problem shape; ``plan.launch(pointers..., stream)`` only writes the pointers into the
parameter block (re-encoding a tensor map when its pointer changed) and launches.
"""
from __future__ import annotations

from typing import Any

from . import arrays, launcher
from .arrays import as_view, check_dtype, check_rows, check_shape
from .checks import check_problem, check_strides, stride_or
from . import config as config_module
from .config import BLOCK_K, GemmConfig, ceil_div, select_config
from .plan import KernelPlan, default_grid


class DeadlockError(RuntimeError):
    """A debug build's mbarrier wait gave up (the kernel trapped)."""


class GemmPlan(KernelPlan):
    """A compiled, configured GEMM for fixed (M, N, K) and row strides.

    Strides are in elements: ``a_stride`` (row stride of A, default K), ``out_stride``
    (row stride of D, default N), ``sfa_stride`` (distance between the columns of the
    MN-major A scales, default M rounded up to 4).
    """
    arguments = ("a", "a_scales", "b", "b_scales", "out")

    def __init__(self, m: int, n: int, k: int, *, config: GemmConfig | None = None,
                 num_sms: int | None = None, device: int = 0, a_stride: int | None = None,
                 out_stride: int | None = None, sfa_stride: int | None = None, b_stride: int | None = None,
                 debug: bool | None = None, sass_pass: bool | None = None):
        who = "plan_gemm"
        m, n, k, _ = check_problem(who, m, n, k)          # everything checked before any device query
        self.m, self.n, self.k = m, n, k
        self.kb = ceil_div(k, BLOCK_K)
        self.a_stride = stride_or(f"{who}: a_stride", a_stride, k)
        self.b_stride = stride_or(f"{who}: b_stride", b_stride, k)
        self.out_stride = stride_or(f"{who}: out_stride", out_stride, n)
        self.sfa_stride = stride_or(f"{who}: sfa_stride", sfa_stride, ceil_div(m, 4) * 4)
        check_strides(who, {"a_stride": (self.a_stride, k, 1), "b_stride": (self.b_stride, k, 1),
                            "out_stride": (self.out_stride, n, 2), "sfa_stride": (self.sfa_stride, m, 4)})
        if config is None:
            config, grid = select_config(m, n, k, num_sms=num_sms, device=device)
        else:
            if not isinstance(config, GemmConfig):
                raise TypeError(f"{who}: config must be a GemmConfig, got {type(config).__name__}")
            if config.kind != "dense":
                raise ValueError(f"{who}: config is for the {config.kind} layout, not dense")
            grid = default_grid(config, m, n, 1, num_sms, device)
        values = dict(m=m, n=n, k=k, groups=1, kb=self.kb, a_stride=self.a_stride, b_stride=self.b_stride,
                      out_stride=self.out_stride, sfa_stride=self.sfa_stride)
        super().__init__(config, grid, values, device=device, debug=debug, sass_pass=sass_pass)

    def launch(self, a_ptr: int, a_scales_ptr: int, b_ptr: int, b_scales_ptr: int, out_ptr: int,
               stream: int = 0) -> None:
        """Launch on raw device pointers (ints) and a raw CUstream (int)."""
        self._launch((a_ptr, a_scales_ptr, b_ptr, b_scales_ptr, out_ptr), stream)


def plan_gemm(m: int, n: int, k: int, **kw) -> GemmPlan:
    """The raw layer: a plan for D[m, n] = A[m, k] . B[n, k]^T (see ``GemmPlan``)."""
    return GemmPlan(m, n, k, **kw)


# ---- array-level API ------------------------------------------------------------------------
_plans: dict[tuple, GemmPlan] = {}
config_module._on_num_sms_change.append(_plans.clear)


def _check_operands(lhs, rhs, out):
    a, sa, b, sb = arrays.fp8_operands(lhs, rhs)
    d = as_view(out, "out")
    check_dtype(d, "out", "bfloat16")
    check_shape(a, "a", (None, None))
    m, k = a.shape
    check_shape(b, "b", (None, k))
    n = b.shape[0]
    check_shape(d, "out", (m, n))
    kb = ceil_div(k, BLOCK_K)
    check_shape(sa, "a_scales", (m, kb))
    check_shape(sb, "b_scales", (ceil_div(n, BLOCK_K), kb))
    if k % 16:
        raise ValueError(f"a: K = {k} must be a multiple of 16 (16-byte rows for TMA)")
    if n % 8:
        raise ValueError(f"b: N = {n} must be a multiple of 8 (16-byte rows of the bf16 output)")
    for v, name in ((a, "a"), (b, "b"), (d, "out")):
        check_rows(v, name)
    if m == 0:   # nothing to compute; strides of empty arrays are meaningless
        return a, sa, b, sb, d, 4
    if m > 1 and sa.strides[0] != 1:
        raise ValueError(f"a_scales: must be MN-major (stride 1 along M), got strides {sa.strides}; "
                         "per_token_cast_to_fp8 writes this layout")
    sfa_stride = sa.strides[1] if kb > 1 else ceil_div(m, 4) * 4
    if kb > 1 and (sfa_stride < m or sfa_stride % 4):
        raise ValueError(f"a_scales: column stride {sfa_stride} must be >= M and a multiple of 4 "
                         "(TMA-aligned; see get_tma_aligned_size)")
    if sa.ptr % 16:
        raise ValueError("a_scales: data pointer must be 16-byte aligned")
    nb = ceil_div(n, BLOCK_K)
    if (kb > 1 and sb.strides[1] != 1) or (nb > 1 and sb.strides[0] != kb):
        raise ValueError(f"b_scales: must be a contiguous row-major [{nb}, {kb}] array, got strides {sb.strides}")
    if sb.ptr % 4:
        raise ValueError("b_scales: data pointer must be 4-byte aligned")
    return a, sa, b, sb, d, sfa_stride


# Validated argument signatures: the shape, strides and dtype of each array (and the config)
# decide every check but the pointers' alignment, so a signature seen before skips them.
_checked: dict[tuple, int] = {}


def _operands(lhs, rhs, out, config):
    """_check_operands, with the pointer-independent checks done once per signature."""
    if isinstance(lhs, tuple) and len(lhs) == 2 and isinstance(rhs, tuple) and len(rhs) == 2:
        views = (as_view(lhs[0], "a"), as_view(lhs[1], "a_scales"), as_view(rhs[0], "b"),
                 as_view(rhs[1], "b_scales"), as_view(out, "out"))
        sig = tuple((v.shape, v.strides, v.dtype) for v in views) + (config,)
        sfa_stride = _checked.get(sig)
        a, sa, b, sb, d = views
        if sfa_stride is not None and not ((a.ptr | sa.ptr | b.ptr | d.ptr) % 16 or sb.ptr % 4):
            return a, sa, b, sb, d, sfa_stride
    result = _check_operands(lhs, rhs, out)          # raises, naming the argument
    a, sa, b, sb, d, sfa_stride = result
    _checked[tuple((v.shape, v.strides, v.dtype) for v in (a, sa, b, sb, d)) + (config,)] = sfa_stride
    return result


def gemm_fp8_fp8_bf16_nt(lhs: tuple, rhs: tuple, out: Any, stream: Any = None,
                         config: GemmConfig | None = None) -> None:
    """out[M, N] (bf16) = (a * a_scales) . (b * b_scales)^T with 1x128 / 128x128 scaling.

    lhs = (a e4m3 [M, K], a_scales f32 [M, ceil(K/128)] MN-major, TMA-aligned)
    rhs = (b e4m3 [N, K], b_scales f32 [ceil(N/128), ceil(K/128)] row-major)
    """
    a, sa, b, sb, d, sfa_stride = _operands(lhs, rhs, out, config)
    m, k = a.shape
    n = b.shape[0]
    device = arrays.check_same_device({"a": a, "a_scales": sa, "b": b, "b_scales": sb, "out": d})
    if m == 0 or n == 0:
        return
    if k == 0:
        raise ValueError("a: K must be positive")
    launcher.context_for(device)
    key = (m, n, k, a.strides[0], b.strides[0], d.strides[0], sfa_stride, device, config)
    plan = _plans.get(key)
    if plan is None:
        plan = _plans[key] = GemmPlan(m, n, k, config=config, device=device, a_stride=a.strides[0],
                                      b_stride=b.strides[0], out_stride=d.strides[0], sfa_stride=sfa_stride)
    plan.launch(a.ptr, sa.ptr, b.ptr, sb.ptr, d.ptr, arrays.resolve_stream(stream, [a], device))
