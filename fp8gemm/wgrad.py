"""The k-grouped weight-gradient GEMM: one launch for G groups that share M and N and each have
their own K (the experts of an MoE layer in training).

    out[g] (fp32 [M, N]) += A_g . B_g^T      A_g e4m3 [M, k_g], B_g e4m3 [N, k_g], 1x128 scales

DeepGEMM's layout: ``a`` is the flat concatenation of the groups' row-major ``[M, k_g]``
matrices, ``b`` likewise with ``[N, k_g]``; the scales of every group are stacked MN-major,
``a_scales [sum ceil(k_g/128), M]`` and ``b_scales [sum ceil(k_g/128), N]``; ``out`` is
``[G, M, N]``. Each group's A and B have their own row stride, so each gets its own tensor
maps; the kernel (the ``k_grouped`` scheduler) reads them from arrays among its parameters,
which a plan fills at launch from the groups' K.
"""
from __future__ import annotations

import dataclasses

from typing import Any, Sequence

from . import arrays, launcher
from . import config as config_module
from .arrays import as_view, check_dtype, check_shape
from .checks import positive_int, stride_or
from .config import BLOCK_K, MAX_K_GROUPS, GemmConfig, ceil_div, select_config
from .plan import KernelPlan, default_grid
from .ptx_templates.spec import evaluate

EXPECTED_K = 4096          # the K per group the heuristic plans for when none is given


def check_batch_sizes(who: str, batch_sizes: Any, groups: int) -> tuple[int, ...]:
    """The groups' K: ``groups`` ints >= 0, each a multiple of 16 (16-byte rows for TMA)."""
    if isinstance(batch_sizes, (str, bytes)) or not hasattr(batch_sizes, "__len__"):
        raise TypeError(f"{who}: batch_sizes must be a sequence of ints (each group's K), "
                        f"got {type(batch_sizes).__name__}")
    if len(batch_sizes) != groups:
        raise ValueError(f"{who}: batch_sizes has {len(batch_sizes)} entries for {groups} groups")
    ks = tuple(positive_int(f"{who}: batch_sizes[{g}]", x, zero_ok=True) for g, x in enumerate(batch_sizes))
    for g, x in enumerate(ks):
        if x % 16:
            raise ValueError(f"{who}: batch_sizes[{g}] = {x} must be a multiple of 16 "
                             "(16-byte rows of e4m3 A and B)")
    return ks


def group_values(ks: Sequence[int]) -> list[dict[str, int]]:
    """Each group's values for the per-group spec expressions: k_g, k_start_g, kb_start_g."""
    out, k0, kb0 = [], 0, 0
    for k in ks:
        out.append({"k_g": k, "k_start_g": k0, "kb_start_g": kb0, "k_blocks_g": ceil_div(k, BLOCK_K)})
        k0 += k
        kb0 += ceil_div(k, BLOCK_K)
    return out


class KGroupedPlan(KernelPlan):
    """The k-grouped wgrad GEMM for fixed M, N, G and strides; the groups' K are given per launch.

    Strides are in elements: ``sfa_stride`` / ``sfb_stride`` (between the rows of the stacked
    ``[sum kb, M]`` / ``[sum kb, N]`` scales, default M / N), ``out_stride`` (row stride of out,
    default N) and ``out_group_stride`` (default M * out_stride). ``expected_k`` is the K per
    group the tile is chosen for.
    """
    arguments = ("a", "a_scales", "b", "b_scales", "out", "c")

    def __init__(self, m: int, n: int, groups: int, *, config: GemmConfig | None = None,
                 expected_k: int = EXPECTED_K, num_sms: int | None = None, device: int = 0,
                 sfa_stride: int | None = None, sfb_stride: int | None = None, out_stride: int | None = None,
                 out_group_stride: int | None = None, debug: bool | None = None, sass_pass: bool | None = None):
        who = "plan_k_grouped_wgrad_gemm"
        m, n, groups = (positive_int(f"{who}: {x}", v) for x, v in (("m", m), ("n", n), ("groups", groups)))
        expected_k = positive_int(f"{who}: expected_k", expected_k)
        for name, v in (("M", m), ("N", n)):
            if v % 8:
                raise ValueError(f"{who}: {name} = {v} must be a multiple of 8")
        if groups > MAX_K_GROUPS:
            raise ValueError(f"{who}: groups = {groups} exceeds {MAX_K_GROUPS} (the kernel's parameter space); "
                             "k_grouped_wgrad_gemm_fp8_fp8_fp32_nt splits larger counts")
        self.m, self.n, self.groups = m, n, groups
        self.sfa_stride = stride_or(f"{who}: sfa_stride", sfa_stride, m)
        self.sfb_stride = stride_or(f"{who}: sfb_stride", sfb_stride, n)
        self.out_stride = stride_or(f"{who}: out_stride", out_stride, n)
        self.out_group_stride = stride_or(f"{who}: out_group_stride", out_group_stride, m * self.out_stride)
        for name, s, least in (("sfa_stride", self.sfa_stride, m), ("sfb_stride", self.sfb_stride, n),
                               ("out_stride", self.out_stride, n),
                               ("out_group_stride", self.out_group_stride, m * self.out_stride)):
            if s < least:
                raise ValueError(f"{who}: {name} = {s} is smaller than {least}")
            if s % 4:
                raise ValueError(f"{who}: {name} = {s} elements is not a multiple of 16 bytes")
        if config is None:
            config, grid = select_config(m, n, expected_k, groups, kind="k_grouped", num_sms=num_sms,
                                         device=device)
        else:
            if not isinstance(config, GemmConfig):
                raise TypeError(f"{who}: config must be a GemmConfig, got {type(config).__name__}")
            if config.kind != "k_grouped" or config.groups != groups:
                raise ValueError(f"{who}: config must be a k_grouped config for {groups} groups, got {config.name}")
            grid = default_grid(config, m, n, groups, num_sms, device)
        self._base_values = dict(m=m, n=n, groups=groups, sfa_stride=self.sfa_stride, sfb_stride=self.sfb_stride,
                                 out_stride=self.out_stride, out_group_stride=self.out_group_stride,
                                 c_stride=self.out_stride, c_group_stride=self.out_group_stride)
        # placeholders until a launch gives the groups' K (every map must encode at plan time)
        super().__init__(config, grid, dict(self._base_values, k=16 * groups, kb=groups, kb_total=groups),
                         device=device, debug=debug, sass_pass=sass_pass)

    def launch(self, a_ptr: int, a_scales_ptr: int, b_ptr: int, b_scales_ptr: int, out_ptr: int,
               batch_sizes: Sequence[int], stream: int = 0) -> None:
        """out[g] += A_g . B_g^T for the groups' K ``batch_sizes`` (a host sequence); raw device
        pointers (ints) and a raw CUstream (int). Groups with K = 0 leave their slice untouched."""
        ks = check_batch_sizes("KGroupedPlan.launch", batch_sizes, self.groups)
        if not any(ks):
            return
        params, filled = self._thread_state()
        ptrs = (a_ptr, a_scales_ptr, b_ptr, b_scales_ptr, out_ptr, out_ptr)
        key = ptrs + ks
        if filled[0] != key:
            self._fill(params, dict(zip(self.arguments, ptrs)), ks)
            filled[0] = key
        self.kernel(params.address, stream)

    def _fill(self, params, ptrs: dict[str, int], ks: tuple[int, ...]) -> None:
        """Every parameter from the problem and the groups' K: the shared maps and scalars, then
        each group's maps (at its offset into A and B) and values."""
        per_group = group_values(ks)
        values = dict(self._base_values, block_m=self.config.block_m, block_n=self.config.block_n,
                      k=sum(ks), kb=sum(g["k_blocks_g"] for g in per_group),
                      kb_total=sum(g["k_blocks_g"] for g in per_group))
        spec = self.spec
        group_params = {i for i, _ in self._per_group}
        for i, p in enumerate(spec.params):
            if i in group_params:
                continue
            if p.type == "tmap":
                t = spec.tensor_map(p.name)
                params[i] = self._encode(t, ptrs[t.array], values)
            elif p.array == "debug":
                params[i] = self.debug_buffer.ptr if self.debug_buffer else 0
            elif p.array is not None:
                params[i] = ptrs[p.array]
            else:
                params[i] = evaluate(p.value, values)
        for i, what in self._per_group:
            for g, gv in enumerate(per_group):
                v = dict(values, **gv)
                if spec.params[i].type == "tmap":
                    base = ptrs[what.array] + evaluate(what.offset, v)
                    # an empty group's maps are never used (it has no K block), but must encode
                    enc = dict(v, k_g=max(v["k_g"], 16))
                    params.set_element(i, g, self._encode(what, base, enc))
                else:
                    params.set_element(i, g, evaluate(what.value, v))

    @staticmethod
    def _encode(t, ptr: int, values: dict) -> bytes:
        return launcher.encode_tensor_map(t.dtype, ptr, tuple(evaluate(x, values) for x in t.dims),
                                          tuple(evaluate(x, values) for x in t.strides),
                                          tuple(evaluate(x, values) for x in t.box), t.swizzle)


def plan_k_grouped_wgrad_gemm(m: int, n: int, groups: int, **kw) -> KGroupedPlan:
    """The raw layer of ``k_grouped_wgrad_gemm_fp8_fp8_fp32_nt`` (see ``KGroupedPlan``)."""
    return KGroupedPlan(m, n, groups, **kw)


# ---- array-level API ------------------------------------------------------------------------
_plans: dict[tuple, KGroupedPlan] = {}
config_module._on_num_sms_change.append(_plans.clear)


def _stacked_scales(s, name: str, kb_total: int, width: int, what: str) -> int:
    """Stacked 1x128 scales ``[sum kb, width]`` (row-major), or the same memory seen as the
    MN-major ``[width, sum kb]`` view: the distance between K blocks, checked."""
    check_dtype(s, name, "float32")
    if s.ndim == 2 and s.shape == (kb_total, width) and (width == 1 or s.strides[1] == 1):
        stride = s.strides[0] if kb_total > 1 else width
    elif s.ndim == 2 and s.shape == (width, kb_total) and (width == 1 or s.strides[0] == 1):
        stride = s.strides[1] if kb_total > 1 else width
    else:
        raise ValueError(f"{name}: must be [{kb_total}, {width}] (sum of ceil(k_g/128) rows of {what}), "
                         f"or its MN-major view [{width}, {kb_total}]; got shape {s.shape} strides {s.strides}")
    if stride < width or stride % 4:
        raise ValueError(f"{name}: the stride between K blocks, {stride}, must be >= {width} and a multiple of 4")
    if s.ptr % 16:
        raise ValueError(f"{name}: data pointer must be 16-byte aligned")
    return stride


def _flat_fp8(x, name: str, numel: int):
    v = as_view(x, name)
    check_dtype(v, name, "float8_e4m3fn")
    if v.numel() != numel:
        raise ValueError(f"{name}: has {v.numel()} elements; the groups need {numel} (the concatenated "
                         "row-major [rows, k_g] matrices)")
    expect, acc = [], 1
    for d in reversed(v.shape):
        expect.append(acc)
        acc *= d
    if any(d > 1 and s != e for d, s, e in zip(v.shape, v.strides, reversed(expect))):
        raise ValueError(f"{name}: must be contiguous (the groups' matrices back to back)")
    if v.ptr % 16:
        raise ValueError(f"{name}: data pointer must be 16-byte aligned")
    return v


def k_grouped_wgrad_gemm_fp8_fp8_fp32_nt(lhs: tuple, rhs: tuple, out: Any, batch_sizes: Sequence[int],
                                         stream: Any = None, config: GemmConfig | None = None) -> None:
    """out[g] (fp32 [M, N]) += A_g . B_g^T for each group g, in one launch.

    lhs = (a e4m3, flat: the groups' [M, k_g] row-major matrices back to back,
           a_scales f32 [sum ceil(k_g/128), M]: each group's 1x128 scales, MN-major, stacked)
    rhs = (b e4m3, flat [N, k_g] matrices, b_scales f32 [sum ceil(k_g/128), N])
    out = f32 [G, M, N] (rows may be padded); batch_sizes = the groups' K (host ints, multiples
    of 16, 0 allowed: that group's slice is left as it was). M and N are multiples of 8.
    More than 120 groups run as several launches of at most 120; a forced ``config`` is for the
    first launch's group count, and later launches take its tile with their own.
    """
    who = "k_grouped_wgrad_gemm_fp8_fp8_fp32_nt"
    if not (isinstance(lhs, tuple) and len(lhs) == 2 and isinstance(rhs, tuple) and len(rhs) == 2):
        raise TypeError(f"{who}: lhs and rhs must be (fp8 data, scales) pairs")
    d = as_view(out, "out")
    check_dtype(d, "out", "float32")
    check_shape(d, "out", (None, None, None))
    groups, m, n = d.shape
    if groups < 1:
        raise ValueError("out: needs at least one group")
    ks = check_batch_sizes(who, batch_sizes, groups)
    if config is not None:
        if not isinstance(config, GemmConfig):
            raise TypeError(f"config: must be a GemmConfig, got {type(config).__name__}")
        if config.kind != "k_grouped" or config.groups != min(groups, MAX_K_GROUPS):
            raise ValueError(f"config: must be a k_grouped config for {min(groups, MAX_K_GROUPS)} groups (the "
                             f"first launch's; later launches of more than {MAX_K_GROUPS} groups take its tile with "
                             f"their own count), got {config.name}")
    for name, v in (("M", m), ("N", n)):
        if v % 8:
            raise ValueError(f"out: {name} = {v} must be a multiple of 8")
    if d.strides[2] != 1 or d.strides[1] < n or d.strides[1] % 4 or d.strides[0] < m * d.strides[1] \
            or d.strides[0] % 4:
        raise ValueError(f"out: rows must be contiguous and 16-byte aligned, groups apart by >= M rows; "
                         f"got strides {d.strides}")
    if d.ptr % 16:
        raise ValueError("out: data pointer must be 16-byte aligned")
    kb_total = sum(ceil_div(x, BLOCK_K) for x in ks)
    a = _flat_fp8(lhs[0], "a", m * sum(ks))
    b = _flat_fp8(rhs[0], "b", n * sum(ks))
    sa, sb = as_view(lhs[1], "a_scales"), as_view(rhs[1], "b_scales")
    if kb_total == 0:
        return
    sfa_stride = _stacked_scales(sa, "a_scales", kb_total, m, "M scales")
    sfb_stride = _stacked_scales(sb, "b_scales", kb_total, n, "N scales")
    device = arrays.check_same_device({"a": a, "a_scales": sa, "b": b, "b_scales": sb, "out": d})
    launcher.context_for(device)
    raw_stream = arrays.resolve_stream(stream, [a], device)
    launches = []          # every plan first: a bad one raises before any group is written
    for g0 in range(0, groups, MAX_K_GROUPS):
        chunk = ks[g0:g0 + MAX_K_GROUPS]
        g = len(chunk)
        forced = config if config is None or config.groups == g else dataclasses.replace(config, groups=g)
        key = (m, n, g, sfa_stride, sfb_stride, d.strides[1], d.strides[0], device, forced)
        plan = _plans.get(key)
        if plan is None:
            plan = _plans[key] = KGroupedPlan(m, n, g, config=forced, device=device, sfa_stride=sfa_stride,
                                              sfb_stride=sfb_stride, out_stride=d.strides[1],
                                              out_group_stride=d.strides[0],
                                              expected_k=max(16, sum(chunk) // g // 16 * 16))
        launches.append((g0, chunk, plan))
    for g0, chunk, plan in launches:
        k0, kb0 = sum(ks[:g0]), sum(ceil_div(x, BLOCK_K) for x in ks[:g0])
        plan.launch(a.ptr + m * k0, sa.ptr + 4 * sfa_stride * kb0, b.ptr + n * k0, sb.ptr + 4 * sfb_stride * kb0,
                    d.ptr + 4 * d.strides[0] * g0, chunk, raw_stream)
