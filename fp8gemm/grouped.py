"""The MoE grouped GEMMs: contiguous (rows of all groups concatenated) and masked.

Both multiply each group's rows of A by that group's B ``[N, K]`` out of ``B [G, N, K]``,
with the dense GEMM's scaling (1x128 A scales, 128x128 B scales) and kernel; only the
tile scheduler and the operand maps differ (``ptx_templates/scheduler.py``).

* contiguous: A ``[M_sum, K]``, D ``[M_sum, N]``; each row's group comes from ``m_indices``
  (int32 per row, -1 for padding) or from ``group_ends`` (int32 per group: group g owns
  rows ``[align(group_ends[g-1], 128), group_ends[g])``). Every group starts at a multiple
  of ``get_m_alignment_for_contiguous_layout()`` rows.
* masked: A ``[G, M_max, K]``, D ``[G, M_max, N]``; group g computes its first
  ``masked_m[g]`` rows, ``masked_m`` read on the device only (no host synchronisation, so
  the call can be captured in a CUDA graph and replayed after ``masked_m`` changes).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import arrays, launcher
from .arrays import View, as_view, check_dtype, check_rows, check_shape
from .checks import check_problem, check_strides, positive_int, stride_or
from . import config as config_module
from .config import BLOCK_K, GemmConfig, ceil_div, select_config
from .plan import KernelPlan, default_grid
from .ptx_templates.scheduler import CONTIGUOUS_ALIGNMENT

_LAYOUTS = {"indices": ("contiguous", "m_indices"), "group_ends": ("contiguous_psum", "group_ends")}


def get_m_alignment_for_contiguous_layout() -> int:
    """Rows of each group in the contiguous grouped layout start at a multiple of this."""
    return CONTIGUOUS_ALIGNMENT


_positive = positive_int


class ContiguousPlan(KernelPlan):
    """The contiguous grouped GEMM for fixed (M_sum, N, K, G) and strides; ``launch`` takes
    the addresses of a, a_scales, b, b_scales, out and the layout array (``m_indices`` or
    ``group_ends``), and a raw CUstream."""

    def __init__(self, m_sum: int, n: int, k: int, groups: int, *, layout: str = "indices",
                 expected_m: int | None = None, config: GemmConfig | None = None, num_sms: int | None = None,
                 device: int = 0, a_stride: int | None = None, b_stride: int | None = None,
                 b_group_stride: int | None = None, out_stride: int | None = None,
                 sfa_stride: int | None = None, debug: bool | None = None, sass_pass: bool | None = None):
        who = "plan_m_grouped_gemm_contiguous"
        m_sum, n, k, groups = check_problem(who, m_sum, n, k, groups, m_name="m_sum")
        if layout not in _LAYOUTS:
            raise ValueError(f"{who}: layout must be one of {sorted(_LAYOUTS)}, got {layout!r}")
        kind, layout_arg = _LAYOUTS[layout]
        self.arguments = ("a", "a_scales", "b", "b_scales", "out", layout_arg)
        kb = ceil_div(k, BLOCK_K)
        a_stride, b_stride = stride_or(f"{who}: a_stride", a_stride, k), stride_or(f"{who}: b_stride", b_stride, k)
        out_stride = stride_or(f"{who}: out_stride", out_stride, n)
        b_group_stride = stride_or(f"{who}: b_group_stride", b_group_stride, n * b_stride)
        sfa_stride = stride_or(f"{who}: sfa_stride", sfa_stride, ceil_div(m_sum, 4) * 4)
        if expected_m is not None:
            _positive(f"{who}: expected_m", expected_m)
        check_strides(who, {"a_stride": (a_stride, k, 1), "b_stride": (b_stride, k, 1),
                             "b_group_stride": (b_group_stride, n * b_stride if groups > 1 else 0, 1),
                             "out_stride": (out_stride, n, 2), "sfa_stride": (sfa_stride, m_sum, 4)})
        expected = expected_m or max(1, m_sum // groups)
        if config is None:
            config, _ = select_config(expected, n, k, groups, kind=kind, num_sms=num_sms, device=device)
            grid = default_grid(config, m_sum, n, 1, num_sms, device)
        else:
            if config.kind != kind:
                raise ValueError(f"{who}: config is for the {config.kind} layout, not {kind}")
            grid = default_grid(config, m_sum, n, 1, num_sms, device)
        self.layout = layout
        values = dict(m=m_sum, n=n, k=k, groups=groups, kb=kb, a_stride=a_stride, b_stride=b_stride,
                      b_group_stride=b_group_stride, out_stride=out_stride, sfa_stride=sfa_stride)
        super().__init__(config, grid, values, device=device, debug=debug, sass_pass=sass_pass)

    def launch(self, a_ptr: int, a_scales_ptr: int, b_ptr: int, b_scales_ptr: int, out_ptr: int,
               layout_ptr: int, stream: int = 0) -> None:
        self._launch((a_ptr, a_scales_ptr, b_ptr, b_scales_ptr, out_ptr, layout_ptr), stream)


class MaskedPlan(KernelPlan):
    """The masked grouped GEMM for fixed (M_max, N, K, G) and strides; ``launch`` takes the
    addresses of a, a_scales, b, b_scales, out and masked_m, and a raw CUstream."""
    arguments = ("a", "a_scales", "b", "b_scales", "out", "masked_m")

    def __init__(self, m_max: int, n: int, k: int, groups: int, expected_m: int, *,
                 config: GemmConfig | None = None, num_sms: int | None = None, device: int = 0,
                 a_stride: int | None = None, a_group_stride: int | None = None, b_stride: int | None = None,
                 b_group_stride: int | None = None, out_stride: int | None = None,
                 out_group_stride: int | None = None, sfa_stride: int | None = None,
                 sfa_group_stride: int | None = None, debug: bool | None = None, sass_pass: bool | None = None):
        who = "plan_m_grouped_gemm_masked"
        m_max, n, k, groups = check_problem(who, m_max, n, k, groups, m_name="m_max")
        _positive(f"{who}: expected_m", expected_m)
        kb = ceil_div(k, BLOCK_K)
        st = masked_strides(who, m_max, n, k, groups, a_stride=a_stride, a_group_stride=a_group_stride,
                            b_stride=b_stride, b_group_stride=b_group_stride, out_stride=out_stride,
                            out_group_stride=out_group_stride, sfa_stride=sfa_stride,
                            sfa_group_stride=sfa_group_stride)
        expected = min(expected_m, m_max)
        if config is None:
            config, _ = select_config(expected, n, k, groups, kind="masked", num_sms=num_sms, device=device)
        elif config.kind != "masked":
            raise ValueError(f"{who}: config is for the {config.kind} layout, not masked")
        grid = default_grid(config, m_max, n, groups, num_sms, device)
        values = dict(m=m_max, n=n, k=k, groups=groups, kb=kb, **st)
        super().__init__(config, grid, values, device=device, debug=debug, sass_pass=sass_pass)

    def launch(self, a_ptr: int, a_scales_ptr: int, b_ptr: int, b_scales_ptr: int, out_ptr: int,
               masked_m_ptr: int, stream: int = 0) -> None:
        self._launch((a_ptr, a_scales_ptr, b_ptr, b_scales_ptr, out_ptr, masked_m_ptr), stream)


def masked_strides(who: str, m_max: int, n: int, k: int, groups: int, **given: int | None) -> dict[str, int]:
    """The masked layout's strides (elements), defaults filled in, checked: rows and groups
    no closer than their extent, 16-byte multiples (TMA)."""
    kb = ceil_div(k, BLOCK_K)
    st = {x: given.get(x) for x in ("a_stride", "b_stride", "out_stride", "sfa_stride", "a_group_stride",
                                      "b_group_stride", "out_group_stride", "sfa_group_stride")}
    def fill(name, default):
        st[name] = stride_or(f"{who}: {name}", st[name], default)
    fill("a_stride", k)
    fill("b_stride", k)
    fill("out_stride", n)
    fill("sfa_stride", ceil_div(m_max, 4) * 4)
    fill("a_group_stride", m_max * st["a_stride"])
    fill("b_group_stride", n * st["b_stride"])
    fill("out_group_stride", m_max * st["out_stride"])
    fill("sfa_group_stride", kb * st["sfa_stride"])
    many = groups > 1
    check_strides(who, {"a_stride": (st["a_stride"], k, 1), "b_stride": (st["b_stride"], k, 1),
                         "out_stride": (st["out_stride"], n, 2), "sfa_stride": (st["sfa_stride"], m_max, 4),
                         "a_group_stride": (st["a_group_stride"], m_max * st["a_stride"] if many else 0, 1),
                         "b_group_stride": (st["b_group_stride"], n * st["b_stride"] if many else 0, 1),
                         "out_group_stride": (st["out_group_stride"], m_max * st["out_stride"] if many else 0, 2),
                         "sfa_group_stride": (st["sfa_group_stride"], kb * st["sfa_stride"] if many else 0, 4)})
    return st


def plan_m_grouped_gemm_contiguous(m_sum: int, n: int, k: int, groups: int, **kw) -> ContiguousPlan:
    """The raw layer of the contiguous grouped GEMM (see ``ContiguousPlan``)."""
    return ContiguousPlan(m_sum, n, k, groups, **kw)


def plan_m_grouped_gemm_masked(m_max: int, n: int, k: int, groups: int, expected_m: int, **kw) -> MaskedPlan:
    """The raw layer of the masked grouped GEMM (see ``MaskedPlan``)."""
    return MaskedPlan(m_max, n, k, groups, expected_m, **kw)


# ---- array-level API ------------------------------------------------------------------------
_plans: dict[tuple, KernelPlan] = {}
config_module._on_num_sms_change.append(_plans.clear)


def _check_b(b: View, sb: View, k: int) -> tuple[int, int]:
    """B [G, N, K] e4m3 and its scales [G, ceil(N/128), ceil(K/128)] (contiguous): (G, N)."""
    check_shape(b, "b", (None, None, k))
    groups, n = b.shape[0], b.shape[1]
    nb, kb = ceil_div(n, BLOCK_K), ceil_div(k, BLOCK_K)
    check_shape(sb, "b_scales", (groups, nb, kb))
    if groups < 1:
        raise ValueError("b: needs at least one group")
    if n % 8:
        raise ValueError(f"b: N = {n} must be a multiple of 8 (16-byte rows of the bf16 output)")
    check_rows(b, "b")
    want = (nb * kb, kb, 1)
    if any(d > 1 and s != w for d, s, w in zip(sb.shape, sb.strides, want)):
        raise ValueError(f"b_scales: must be a contiguous [{groups}, {nb}, {kb}] array, got strides {sb.strides}")
    if sb.ptr % 4:
        raise ValueError("b_scales: data pointer must be 4-byte aligned")
    return groups, n


def _check_int_vector(v: Any, name: str, length: int) -> View:
    view = as_view(v, name)
    check_dtype(view, name, "int32")
    check_shape(view, name, (length,))
    if length > 1 and view.strides[0] != 1:
        raise ValueError(f"{name}: must be contiguous, got stride {view.strides[0]}")
    if view.ptr % 4:
        raise ValueError(f"{name}: data pointer must be 4-byte aligned")
    return view


def _sfa_column_stride(sa: View, rows: int, kb: int, axis: int) -> int:
    """The MN-major A scales' column stride (elements), checked: >= rows, a multiple of 4."""
    if rows > 1 and sa.strides[axis] != 1:
        raise ValueError(f"a_scales: must be MN-major (stride 1 along M), got strides {sa.strides}; "
                         "per_token_cast_to_fp8 writes this layout")
    s = sa.strides[axis + 1] if kb > 1 else ceil_div(rows, 4) * 4
    if kb > 1 and (s < rows or s % 4):
        raise ValueError(f"a_scales: column stride {s} must be >= M and a multiple of 4 "
                         "(TMA-aligned; see get_tma_aligned_size)")
    if sa.ptr % 16:
        raise ValueError("a_scales: data pointer must be 16-byte aligned")
    return s


def _read_int32(view: View, stream: int) -> np.ndarray:
    """Device int32 vector -> host, after the work queued on ``stream`` (validation only)."""
    launcher.stream_synchronize(stream)
    buf = launcher.copy_to_host(view.ptr, 4 * view.shape[0])
    return np.frombuffer(bytes(buf), dtype=np.int32)


def _validate_m_indices(idx: np.ndarray, groups: int) -> None:
    bad = np.flatnonzero((idx < -1) | (idx >= groups))
    if bad.size:
        raise ValueError(f"m_indices: row {bad[0]} has group {idx[bad[0]]}, outside [-1, {groups})")
    a = CONTIGUOUS_ALIGNMENT
    pad = (-len(idx)) % a
    blocks = np.concatenate([idx, np.full(pad, -1, np.int32)]).reshape(-1, a)
    first = blocks[:, :1]
    # a block holds one group's rows, then padding (-1) to its end
    ok = ((blocks == first) | (blocks == -1)).all(axis=1)
    valid = blocks != -1
    ok &= (valid[:, :-1] | ~valid[:, 1:]).all(axis=1)          # no valid row after a -1 row
    bad = np.flatnonzero(~ok)
    if bad.size:
        raise ValueError(f"m_indices: rows {bad[0] * a}..{bad[0] * a + a - 1} mix groups or start a group "
                         f"after padding; every group must start at a multiple of {a} rows")


def _validate_group_ends(ends: np.ndarray, m_sum: int) -> None:
    if (ends < 0).any() or (ends > m_sum).any():
        g = int(np.flatnonzero((ends < 0) | (ends > m_sum))[0])
        raise ValueError(f"group_ends: group {g} ends at {ends[g]}, outside [0, M_sum = {m_sum}]")
    if (np.diff(ends) < 0).any():
        g = int(np.flatnonzero(np.diff(ends) < 0)[0]) + 1
        raise ValueError(f"group_ends: must be non-decreasing; group {g} ends at {ends[g]} before "
                         f"group {g - 1} ({ends[g - 1]})")


def m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(lhs: tuple, rhs: tuple, out: Any, m_indices: Any = None, *,
                                              group_ends: Any = None, stream: Any = None,
                                              config: GemmConfig | None = None, validate: bool = False) -> None:
    """out[M_sum, N] = per row r: (a[r] * a_scales[r]) . (b[g] * b_scales[g])^T, g = the row's group.

    lhs = (a e4m3 [M_sum, K], a_scales f32 [M_sum, ceil(K/128)] MN-major, TMA-aligned)
    rhs = (b e4m3 [G, N, K], b_scales f32 [G, ceil(N/128), ceil(K/128)] contiguous)
    m_indices: int32 [M_sum] on the device, each row's group or -1 (padding); or instead
    group_ends: int32 [G] on the device, group g owning rows [align(ends[g-1], 128), ends[g]).
    Every group starts at a multiple of ``get_m_alignment_for_contiguous_layout()`` rows.

    Not written: rows of a 128-row block that is all padding (and, with ``group_ends``, every
    row outside the groups). Padding rows in a block that also holds a group's rows may
    receive any value. ``validate=True`` checks the device metadata first (a synchronisation).
    """
    a, sa, b, sb = arrays.fp8_operands(lhs, rhs)
    d = as_view(out, "out")
    check_dtype(d, "out", "bfloat16")
    check_shape(a, "a", (None, None))
    m_sum, k = a.shape
    groups, n = _check_b(b, sb, k)
    kb = ceil_div(k, BLOCK_K)
    check_shape(sa, "a_scales", (m_sum, kb))
    check_shape(d, "out", (m_sum, n))
    if k % 16 or k == 0:
        raise ValueError(f"a: K = {k} must be a positive multiple of 16 (16-byte rows for TMA)")
    check_rows(a, "a")
    check_rows(d, "out")
    if (m_indices is None) == (group_ends is None):
        raise TypeError("m_grouped_gemm_fp8_fp8_bf16_nt_contiguous: pass exactly one of m_indices and group_ends")
    layout, lay = (("indices", _check_int_vector(m_indices, "m_indices", m_sum)) if m_indices is not None
                   else ("group_ends", _check_int_vector(group_ends, "group_ends", groups)))
    if m_sum == 0:
        return
    sfa_stride = _sfa_column_stride(sa, m_sum, kb, 0)
    device = arrays.check_same_device({"a": a, "a_scales": sa, "b": b, "b_scales": sb, "out": d,
                                       ("m_indices" if layout == "indices" else "group_ends"): lay})
    launcher.context_for(device)
    st = arrays.resolve_stream(stream, [a], device)
    if validate:
        vals = _read_int32(lay, st)
        if layout == "indices":
            _validate_m_indices(vals, groups)
        else:
            _validate_group_ends(vals, m_sum)
    key = ("contiguous", layout, m_sum, n, k, groups, a.strides[0], b.strides[1], b.strides[0], d.strides[0],
           sfa_stride, device, config)
    plan = _plans.get(key)
    if plan is None:
        plan = _plans[key] = ContiguousPlan(
            m_sum, n, k, groups, layout=layout, config=config, device=device, a_stride=a.strides[0],
            b_stride=b.strides[1], b_group_stride=b.strides[0] if groups > 1 else None,
            out_stride=d.strides[0], sfa_stride=sfa_stride)
    plan.launch(a.ptr, sa.ptr, b.ptr, sb.ptr, d.ptr, lay.ptr, st)


def m_grouped_gemm_fp8_fp8_bf16_nt_masked(lhs: tuple, rhs: tuple, out: Any, masked_m: Any, expected_m: int, *,
                                          stream: Any = None, config: GemmConfig | None = None,
                                          validate: bool = False) -> None:
    """out[g, :masked_m[g]] = (a[g] * a_scales[g]) . (b[g] * b_scales[g])^T for every group g.

    lhs = (a e4m3 [G, M_max, K], a_scales f32 [G, M_max, ceil(K/128)], MN-major per group:
           strides (s_g, 1, s) with s >= M_max, s % 4 == 0)
    rhs = (b e4m3 [G, N, K], b_scales f32 [G, ceil(N/128), ceil(K/128)] contiguous)
    masked_m: int32 [G] on the device, read only by the kernel (no host synchronisation:
    the call can be captured in a CUDA graph); expected_m: a host hint of the typical rows.

    Tiles wholly at or past ``masked_m[g]`` are neither computed nor stored; rows past it in
    the group's last partial tile may receive any value. ``validate=True`` checks masked_m
    first (a synchronisation).
    """
    a, sa, b, sb = arrays.fp8_operands(lhs, rhs)
    d = as_view(out, "out")
    check_dtype(d, "out", "bfloat16")
    check_shape(a, "a", (None, None, None))
    groups, m_max, k = a.shape
    g_b, n = _check_b(b, sb, k)
    if g_b != groups:
        raise ValueError(f"b: has {g_b} groups but a has {groups}")
    kb = ceil_div(k, BLOCK_K)
    check_shape(sa, "a_scales", (groups, m_max, kb))
    check_shape(d, "out", (groups, m_max, n))
    if k % 16 or k == 0:
        raise ValueError(f"a: K = {k} must be a positive multiple of 16 (16-byte rows for TMA)")
    check_rows(a, "a")
    check_rows(d, "out")
    mm = _check_int_vector(masked_m, "masked_m", groups)
    _positive("expected_m", expected_m, zero_ok=True)
    if m_max == 0:
        return
    sfa_stride = _sfa_column_stride(sa, m_max, kb, 1)
    sfa_group = sa.strides[0] if groups > 1 else kb * sfa_stride
    if sfa_group % 4 or (groups > 1 and sfa_group < kb * sfa_stride):
        raise ValueError(f"a_scales: group stride {sfa_group} must be >= {kb * sfa_stride} and a multiple of 4")
    strides = dict(a_stride=a.strides[1], a_group_stride=a.strides[0] if groups > 1 else None,
                   b_stride=b.strides[1], b_group_stride=b.strides[0] if groups > 1 else None,
                   out_stride=d.strides[1], out_group_stride=d.strides[0] if groups > 1 else None,
                   sfa_stride=sfa_stride, sfa_group_stride=sfa_group)
    masked_strides("m_grouped_gemm_fp8_fp8_bf16_nt_masked", m_max, n, k, groups, **strides)
    device = arrays.check_same_device({"a": a, "a_scales": sa, "b": b, "b_scales": sb, "out": d, "masked_m": mm})
    launcher.context_for(device)
    st = arrays.resolve_stream(stream, [a], device)
    if validate:
        vals = _read_int32(mm, st)
        bad = np.flatnonzero((vals < 0) | (vals > m_max))
        if bad.size:
            raise ValueError(f"masked_m: group {bad[0]} has {vals[bad[0]]} rows, outside [0, M_max = {m_max}]")
    expected = max(1, min(int(expected_m), m_max))
    key = ("masked", m_max, n, k, groups, expected, tuple(strides.values()), device, config)
    plan = _plans.get(key)
    if plan is None:
        plan = _plans[key] = MaskedPlan(m_max, n, k, groups, expected, config=config, device=device, **strides)
    plan.launch(a.ptr, sa.ptr, b.ptr, sb.ptr, d.ptr, mm.ptr, st)
