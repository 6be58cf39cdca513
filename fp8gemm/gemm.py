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


def dense_arguments(with_c: bool) -> tuple[str, ...]:
    """The launch arguments of a dense GEMM, in the order ``GemmPlan.launch`` (and the C
    runtime) pass them: C last for the variants that read one."""
    return ("a", "a_scales", "b", "b_scales", "out") + (("c",) if with_c else ())


class GemmPlan(KernelPlan):
    """A compiled, configured GEMM for fixed (M, N, K) and row strides.

    ``variant`` (``fp8gemm.config.VARIANTS``) picks the output: "bf16" (the default), "fp32",
    "bf16_c" / "fp32_c" (D = C + A.B) or "wgrad" (per-row B scales, D = C + A.B in FP32; the
    caller passes D as C to accumulate); a forced ``config`` carries its own variant.
    Strides are in elements: ``a_stride`` (row stride of A, default K), ``out_stride``
    (row stride of D, default N), ``c_stride`` (of C, default ``out_stride``), ``sfa_stride``
    (distance between the columns of the MN-major A scales, default M rounded up to 4),
    ``sfb_stride`` (per-row B scales: between their columns, default N rounded up to 4).
    """

    def __init__(self, m: int, n: int, k: int, *, config: GemmConfig | None = None, variant: str = "bf16",
                 num_sms: int | None = None, device: int = 0, a_stride: int | None = None,
                 out_stride: int | None = None, sfa_stride: int | None = None, b_stride: int | None = None,
                 c_stride: int | None = None, sfb_stride: int | None = None,
                 debug: bool | None = None, sass_pass: bool | None = None):
        who = "plan_gemm"
        m, n, k, _ = check_problem(who, m, n, k)          # everything checked before any device query
        if config is not None:
            if not isinstance(config, GemmConfig):
                raise TypeError(f"{who}: config must be a GemmConfig, got {type(config).__name__}")
            if config.kind != "dense":
                raise ValueError(f"{who}: config is for the {config.kind} layout, not dense")
            variant = config_module.variant_of(config)
        elif variant not in config_module.VARIANTS:
            raise ValueError(f"{who}: variant must be one of {sorted(config_module.VARIANTS)}, got {variant!r}")
        self.variant = variant
        fields = config_module.VARIANTS[variant]
        out_bytes = 4 if fields.get("out_dtype") == "float32" else 2
        self.m, self.n, self.k = m, n, k
        self.kb = ceil_div(k, BLOCK_K)
        self.a_stride = stride_or(f"{who}: a_stride", a_stride, k)
        self.b_stride = stride_or(f"{who}: b_stride", b_stride, k)
        self.out_stride = stride_or(f"{who}: out_stride", out_stride, n)
        self.c_stride = stride_or(f"{who}: c_stride", c_stride, self.out_stride)
        self.sfa_stride = stride_or(f"{who}: sfa_stride", sfa_stride, ceil_div(m, 4) * 4)
        self.sfb_stride = stride_or(f"{who}: sfb_stride", sfb_stride, ceil_div(n, 4) * 4)
        strides = {"a_stride": (self.a_stride, k, 1), "b_stride": (self.b_stride, k, 1),
                   "out_stride": (self.out_stride, n, out_bytes), "sfa_stride": (self.sfa_stride, m, 4)}
        if fields.get("with_c"):
            strides["c_stride"] = (self.c_stride, n, out_bytes)
        if fields.get("b_scales") == "row":
            strides["sfb_stride"] = (self.sfb_stride, n, 4)
        check_strides(who, strides)
        if config is None:
            config, grid = select_config(m, n, k, num_sms=num_sms, device=device, variant=variant)
        else:
            grid = default_grid(config, m, n, 1, num_sms, device)
        self.arguments = dense_arguments(config.with_c)
        values = dict(m=m, n=n, k=k, groups=1, kb=self.kb, a_stride=self.a_stride, b_stride=self.b_stride,
                      out_stride=self.out_stride, sfa_stride=self.sfa_stride, c_stride=self.c_stride,
                      sfb_stride=self.sfb_stride)
        super().__init__(config, grid, values, device=device, debug=debug, sass_pass=sass_pass)

    def launch(self, a_ptr: int, a_scales_ptr: int, b_ptr: int, b_scales_ptr: int, out_ptr: int,
               stream: int = 0, c_ptr: int | None = None) -> None:
        """Launch on raw device pointers (ints) and a raw CUstream (int). Variants with C take
        ``c_ptr`` (default ``out_ptr``: accumulate into D)."""
        if self.config.with_c:
            self._launch((a_ptr, a_scales_ptr, b_ptr, b_scales_ptr, out_ptr,
                          out_ptr if c_ptr is None else c_ptr), stream)
        else:
            self._launch((a_ptr, a_scales_ptr, b_ptr, b_scales_ptr, out_ptr), stream)


def plan_gemm(m: int, n: int, k: int, **kw) -> GemmPlan:
    """The raw layer: a plan for D[m, n] = A[m, k] . B[n, k]^T (see ``GemmPlan``)."""
    return GemmPlan(m, n, k, **kw)


def plan_wgrad_gemm(m: int, n: int, k: int, **kw) -> GemmPlan:
    """A plan for the weight-gradient GEMM, out[m, n] (fp32) += A[m, k] . B[n, k]^T with 1x128
    scales on both (``launch(a, sa, b, sb, out, stream)`` accumulates into ``out``)."""
    return GemmPlan(m, n, k, variant="wgrad", **kw)


# ---- array-level API ------------------------------------------------------------------------
_plans: dict[tuple, GemmPlan] = {}
config_module._on_num_sms_change.append(_plans.clear)


def _check_operands(lhs, rhs, out, variant: str = "bf16", c=None):
    """Views of the operands, checked for ``variant``: (a, sa, b, sb, d, c, sfa_stride, sfb_stride)."""
    fields = config_module.VARIANTS[variant]
    out_dtype = fields.get("out_dtype", "bfloat16")
    row_scales = fields.get("b_scales") == "row"
    a, sa, b, sb = arrays.fp8_operands(lhs, rhs)
    d = as_view(out, "out")
    check_dtype(d, "out", out_dtype)
    check_shape(a, "a", (None, None))
    m, k = a.shape
    check_shape(b, "b", (None, k))
    n = b.shape[0]
    check_shape(d, "out", (m, n))
    kb = ceil_div(k, BLOCK_K)
    check_shape(sa, "a_scales", (m, kb))
    check_shape(sb, "b_scales", (n, kb) if row_scales else (ceil_div(n, BLOCK_K), kb))
    cv = None
    if c is not None:
        cv = as_view(c, "c")
        check_dtype(cv, "c", out_dtype)
        check_shape(cv, "c", (m, n))
    if k % 16:
        raise ValueError(f"a: K = {k} must be a multiple of 16 (16-byte rows for TMA)")
    if n % 8:
        raise ValueError(f"b: N = {n} must be a multiple of 8 (16-byte rows of the output)")
    for v, name in ((a, "a"), (b, "b"), (d, "out")) + (((cv, "c"),) if cv is not None else ()):
        check_rows(v, name)
    if m == 0:   # nothing to compute; strides of empty arrays are meaningless
        return a, sa, b, sb, d, cv, 4, 4
    if cv is not None and cv.ptr != d.ptr and _overlap(cv, d):
        raise ValueError("c: overlaps out without being the same array (c may be out itself)")
    if cv is not None and cv.ptr == d.ptr and cv.strides != d.strides:
        raise ValueError("c: starts where out does but with other strides")
    sfa_stride = _mn_major_stride(sa, "a_scales", m, kb)
    if row_scales:
        sfb_stride = _mn_major_stride(sb, "b_scales", n, kb)
    else:
        sfb_stride = ceil_div(n, 4) * 4
        nb = ceil_div(n, BLOCK_K)
        if (kb > 1 and sb.strides[1] != 1) or (nb > 1 and sb.strides[0] != kb):
            raise ValueError(f"b_scales: must be a contiguous row-major [{nb}, {kb}] array, got strides {sb.strides}")
        if sb.ptr % 4:
            raise ValueError("b_scales: data pointer must be 4-byte aligned")
    return a, sa, b, sb, d, cv, sfa_stride, sfb_stride


def _mn_major_stride(s, name: str, rows: int, kb: int) -> int:
    """MN-major 1x128 scales [rows, kb] (what per_token_cast_to_fp8 writes): their column stride."""
    if rows > 1 and s.strides[0] != 1:
        raise ValueError(f"{name}: must be MN-major (stride 1 along M), got strides {s.strides}; "
                         "per_token_cast_to_fp8 writes this layout")
    stride = s.strides[1] if kb > 1 else ceil_div(rows, 4) * 4
    if kb > 1 and (stride < rows or stride % 4):
        raise ValueError(f"{name}: column stride {stride} must be >= {rows} and a multiple of 4 "
                         "(TMA-aligned; see get_tma_aligned_size)")
    if s.ptr % 16:
        raise ValueError(f"{name}: data pointer must be 16-byte aligned")
    return stride


def _overlap(x, y) -> bool:
    """Whether two 2-D views' byte ranges intersect (conservatively: their spans)."""
    def span(v):
        end = v.ptr + ((v.shape[0] - 1) * v.strides[0] + (v.shape[1] - 1) * v.strides[1] + 1) * v.itemsize
        return v.ptr, end
    (a0, a1), (b0, b1) = span(x), span(y)
    return a0 < b1 and b0 < a1


# Validated argument signatures: the shape, strides and dtype of each array (and the config)
# decide every check but the pointers' alignment, so a signature seen before skips them.
_checked: dict[tuple, tuple[int, int]] = {}


def _operands(lhs, rhs, out, config, variant: str = "bf16", c=None):
    """_check_operands, with the pointer-independent checks done once per signature."""
    if isinstance(lhs, tuple) and len(lhs) == 2 and isinstance(rhs, tuple) and len(rhs) == 2:
        views = (as_view(lhs[0], "a"), as_view(lhs[1], "a_scales"), as_view(rhs[0], "b"),
                 as_view(rhs[1], "b_scales"), as_view(out, "out"))
        cv = None if c is None else as_view(c, "c")
        sig = tuple((v.shape, v.strides, v.dtype) for v in views) + (config, variant)
        if cv is not None:
            sig += ((cv.shape, cv.strides, cv.dtype, cv.ptr - views[4].ptr),)
        hit = _checked.get(sig)
        a, sa, b, sb, d = views
        if hit is not None and not ((a.ptr | sa.ptr | b.ptr | d.ptr | (cv.ptr if cv else 0)) % 16
                                    or (sb.ptr % (16 if variant == "wgrad" else 4))):
            return (a, sa, b, sb, d, cv) + hit
    result = _check_operands(lhs, rhs, out, variant, c)          # raises, naming the argument
    a, sa, b, sb, d, cv = result[:6]
    sig = tuple((v.shape, v.strides, v.dtype) for v in (a, sa, b, sb, d)) + (config, variant)
    if cv is not None:
        sig += ((cv.shape, cv.strides, cv.dtype, cv.ptr - d.ptr),)
    _checked[sig] = result[6:]
    return result


def _gemm(lhs, rhs, out, stream, config, variant: str, c=None) -> None:
    if config is not None:
        if not isinstance(config, GemmConfig):
            raise TypeError(f"config: must be a GemmConfig, got {type(config).__name__}")
        if config.kind == "dense" and config_module.variant_of(config) != variant:
            raise ValueError(f"config: {config.name} is a {config_module.variant_of(config)!r} kernel; "
                             f"this call needs a {variant!r} one")
    a, sa, b, sb, d, cv, sfa_stride, sfb_stride = _operands(lhs, rhs, out, config, variant, c)
    m, k = a.shape
    n = b.shape[0]
    views = {"a": a, "a_scales": sa, "b": b, "b_scales": sb, "out": d}
    if cv is not None:
        views["c"] = cv
    device = arrays.check_same_device(views)
    if m == 0 or n == 0:
        return
    if k == 0:
        raise ValueError("a: K must be positive")
    launcher.context_for(device)
    c_stride = cv.strides[0] if cv is not None else d.strides[0]
    key = (m, n, k, a.strides[0], b.strides[0], d.strides[0], sfa_stride, device, config, variant, c_stride,
           sfb_stride)
    plan = _plans.get(key)
    if plan is None:
        plan = _plans[key] = GemmPlan(m, n, k, config=config, variant=variant, device=device,
                                      a_stride=a.strides[0], b_stride=b.strides[0], out_stride=d.strides[0],
                                      sfa_stride=sfa_stride, c_stride=c_stride, sfb_stride=sfb_stride)
    plan.launch(a.ptr, sa.ptr, b.ptr, sb.ptr, d.ptr, arrays.resolve_stream(stream, [a], device),
                None if cv is None else cv.ptr)


def gemm_fp8_fp8_bf16_nt(lhs: tuple, rhs: tuple, out: Any, stream: Any = None,
                         config: GemmConfig | None = None, c: Any = None) -> None:
    """out[M, N] (bf16) = (a * a_scales) . (b * b_scales)^T (+ c) with 1x128 / 128x128 scaling.

    lhs = (a e4m3 [M, K], a_scales f32 [M, ceil(K/128)] MN-major, TMA-aligned)
    rhs = (b e4m3 [N, K], b_scales f32 [ceil(N/128), ceil(K/128)] row-major)
    c   = None, or bf16 [M, N] added to the product (in FP32, before rounding); may be ``out``.
    """
    _gemm(lhs, rhs, out, stream, config, "bf16" if c is None else "bf16_c", c)


def gemm_fp8_fp8_fp32_nt(lhs: tuple, rhs: tuple, out: Any, stream: Any = None,
                         config: GemmConfig | None = None, c: Any = None) -> None:
    """out[M, N] (fp32) = (a * a_scales) . (b * b_scales)^T (+ c): the operands and scales of
    ``gemm_fp8_fp8_bf16_nt``, an FP32 output; ``c`` (fp32 [M, N], may be ``out``) is added."""
    _gemm(lhs, rhs, out, stream, config, "fp32" if c is None else "fp32_c", c)


def wgrad_gemm_fp8_fp8_fp32_nt(lhs: tuple, rhs: tuple, out: Any, stream: Any = None,
                               config: GemmConfig | None = None) -> None:
    """out[M, N] (fp32) += (a * a_scales) . (b * b_scales)^T with 1x128 scales on both operands
    (the weight gradient of FP8 training).

    lhs = (a e4m3 [M, K], a_scales f32 [M, ceil(K/128)] MN-major, TMA-aligned)
    rhs = (b e4m3 [N, K], b_scales f32 [N, ceil(K/128)] MN-major, TMA-aligned: what
           ``per_token_cast_to_fp8`` writes for B's rows too)
    """
    _gemm(lhs, rhs, out, stream, config, "wgrad", out)
