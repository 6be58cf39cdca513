"""fp8gemm's GEMMs and casts as torch custom ops (namespace ``fp8gemm``), for torch.compile.

``import fp8gemm.torch_ops`` registers, once per process:

    torch.ops.fp8gemm.gemm_fp8_fp8_bf16_nt(a, a_scales, b, b_scales, out, c=None, accumulate=False) -> ()
    torch.ops.fp8gemm.gemm_fp8_fp8_fp32_nt(a, a_scales, b, b_scales, out, c=None, accumulate=False) -> ()
    torch.ops.fp8gemm.wgrad_gemm_fp8_fp8_fp32_nt(a, a_scales, b, b_scales, out) -> ()          (out +=)
    torch.ops.fp8gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt(a, a_scales, b, b_scales, out, batch_sizes) -> ()
    torch.ops.fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(a, a_scales, b, b_scales, out, m_indices) -> ()
    torch.ops.fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous_group_ends(a, a_scales, b, b_scales, out,
                                                                            group_ends) -> ()
    torch.ops.fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked(a, a_scales, b, b_scales, out, masked_m,
                                                              expected_m) -> ()
    torch.ops.fp8gemm.per_token_cast_to_fp8(x) -> (q, scales)      torch.ops.fp8gemm.per_token_cast_to_fp8_out(x, q, scales) -> ()
    torch.ops.fp8gemm.per_block_cast_to_fp8(x) -> (q, scales)      torch.ops.fp8gemm.per_block_cast_to_fp8_out(x, q, scales) -> ()

The dense GEMMs add ``c`` (D = C + A.B) when it is given. A custom op may not take one tensor as
two arguments of which one is mutated, so ``c = out`` (accumulate into out) is spelled
``accumulate=True`` with ``c=None``: the op then calls the library with ``c=out``. Under
torch.compile the public functions' ``c=out`` (the same tensor object) becomes exactly that; a
``c`` that is another view of out's memory is not supported. ``batch_sizes`` (the groups' K)
is a list of ints.

The GEMMs fill ``out`` (declared mutated, returning nothing) like the library's functions; each
op runs the library function on torch's current stream. Every op has a fake implementation that
checks dtypes and shapes and allocates the outputs with the real strides, so torch.compile
traces through them without running a kernel.

The import also tells torch.compile's frontend to put these ops in the graph wherever it meets
``fp8gemm``'s public functions themselves (``torch.compiler.substitute_in_graph``), so code that
calls ``fp8gemm.gemm_fp8_fp8_bf16_nt(...)`` compiles with ``fullgraph=True`` unchanged. That
costs nothing outside tracing: the eager functions are not wrapped or touched.

Importing ``fp8gemm`` alone never imports torch; this module does.
"""
# No ``from __future__ import annotations``: custom_op reads the type hints to build each
# schema, and older torch releases cannot resolve hints written as strings.
from typing import Any, List, Optional

try:
    import torch
    from torch import Tensor
except ImportError as e:          # say what to install instead of a bare "No module named"
    raise ImportError("fp8gemm.torch_ops needs torch: pip install 'fp8gemm[torch]'") from e

from . import gemm as _gemm
from . import grouped as _grouped
from . import quant as _quant
from . import wgrad as _wgrad
from .reference import ceil_div, tma_aligned_size

_FP8 = torch.float8_e4m3fn
_BLOCK = 128


# ---- cheap checks for the fake implementations (the real ones check everything) -----------
def _want_dtype(t: Tensor, name: str, *dtypes: torch.dtype) -> None:
    if t.dtype not in dtypes:
        names = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: dtype is {str(t.dtype).replace('torch.', '')}; expected {names}")


def _want_shape(t: Tensor, name: str, *shape) -> None:
    """``shape`` entries are sizes or None (any size); symbolic sizes compare as guards."""
    if t.dim() != len(shape) or any(w is not None and s != w for s, w in zip(t.shape, shape)):
        want = "[" + ", ".join("*" if w is None else str(w) for w in shape) + "]"
        raise ValueError(f"{name}: shape is {list(t.shape)}; expected {want}")


def _check_dtypes(a: Tensor, a_scales: Tensor, b: Tensor, b_scales: Tensor, out: Tensor,
                  out_dtype: torch.dtype = torch.bfloat16) -> None:
    for t, name in ((a, "a"), (b, "b")):
        _want_dtype(t, name, _FP8)
    for t, name in ((a_scales, "a_scales"), (b_scales, "b_scales")):
        _want_dtype(t, name, torch.float32)
    _want_dtype(out, "out", out_dtype)


def _check_nk(n, k) -> None:
    if k % 16:
        raise ValueError(f"a: K = {k} must be a multiple of 16 (16-byte rows for TMA)")
    if n % 8:
        raise ValueError(f"b: N = {n} must be a multiple of 8 (16-byte rows of the output)")


def _check_dense(a, a_scales, b, b_scales, out, out_dtype=torch.bfloat16, row_scales: bool = False) -> None:
    """The dense GEMMs: 128x128 B scales [ceil(N/128), kb], or (``row_scales``, wgrad) 1x128 ones [N, kb]."""
    _check_dtypes(a, a_scales, b, b_scales, out, out_dtype)
    _want_shape(a, "a", None, None)
    m, k = a.shape
    _want_shape(b, "b", None, k)
    n = b.shape[0]
    kb = ceil_div(k, _BLOCK)
    _want_shape(a_scales, "a_scales", m, kb)
    _want_shape(b_scales, "b_scales", n if row_scales else ceil_div(n, _BLOCK), kb)
    _want_shape(out, "out", m, n)
    _check_nk(n, k)


def _c_of(out: Tensor, c: Optional[Tensor], accumulate: bool) -> Optional[Tensor]:
    """The library's ``c`` for an op's (c, accumulate)."""
    if c is not None and (accumulate or c is out):
        raise ValueError("c: to add out itself pass accumulate=True and no c (an op may not take out twice); "
                         "c and accumulate=True together are refused")
    return out if accumulate else c


def _check_c(out: Tensor, c: Optional[Tensor], accumulate: bool) -> None:
    _c_of(out, c, accumulate)         # raises for c with accumulate=True, or c = out
    if c is not None:
        _want_dtype(c, "c", out.dtype)
        _want_shape(c, "c", *out.shape)


def _check_grouped_b(b: Tensor, b_scales: Tensor, k) -> tuple:
    _want_shape(b, "b", None, None, k)
    groups, n = b.shape[0], b.shape[1]
    _want_shape(b_scales, "b_scales", groups, ceil_div(n, _BLOCK), ceil_div(k, _BLOCK))
    return groups, n


def _check_int32(t: Tensor, name: str, length) -> None:
    _want_dtype(t, name, torch.int32)
    _want_shape(t, name, length)


def _check_contiguous(a, a_scales, b, b_scales, out, layout: Tensor, layout_name: str) -> None:
    _check_dtypes(a, a_scales, b, b_scales, out)
    _want_shape(a, "a", None, None)
    m_sum, k = a.shape
    groups, n = _check_grouped_b(b, b_scales, k)
    _want_shape(a_scales, "a_scales", m_sum, ceil_div(k, _BLOCK))
    _want_shape(out, "out", m_sum, n)
    _check_nk(n, k)
    _check_int32(layout, layout_name, m_sum if layout_name == "m_indices" else groups)


def _check_cast_input(x: Tensor) -> tuple:
    _want_dtype(x, "x", torch.bfloat16, torch.float32)
    _want_shape(x, "x", None, None)
    rows, k = x.shape
    if k % 16:
        raise ValueError(f"x: K = {k} must be a multiple of 16 (FP8 rows are read with TMA)")
    return rows, k


def _token_scales_layout(m, k) -> tuple[tuple, tuple]:
    """The per-token scales' (shape, strides): MN-major, each column TMA-aligned."""
    return (m, ceil_div(k, _BLOCK)), (1, tma_aligned_size(m))


# ---- dense ---------------------------------------------------------------------------------
@torch.library.custom_op("fp8gemm::gemm_fp8_fp8_bf16_nt", mutates_args=("out",))
def gemm_op(a: Tensor, a_scales: Tensor, b: Tensor, b_scales: Tensor, out: Tensor, c: Optional[Tensor] = None,
            accumulate: bool = False) -> None:
    _gemm.gemm_fp8_fp8_bf16_nt((a, a_scales), (b, b_scales), out, c=_c_of(out, c, accumulate))


@gemm_op.register_fake
def _gemm_fake(a, a_scales, b, b_scales, out, c=None, accumulate=False) -> None:
    _check_dense(a, a_scales, b, b_scales, out)
    _check_c(out, c, accumulate)


@torch.library.custom_op("fp8gemm::gemm_fp8_fp8_fp32_nt", mutates_args=("out",))
def gemm_fp32_op(a: Tensor, a_scales: Tensor, b: Tensor, b_scales: Tensor, out: Tensor, c: Optional[Tensor] = None,
                 accumulate: bool = False) -> None:
    _gemm.gemm_fp8_fp8_fp32_nt((a, a_scales), (b, b_scales), out, c=_c_of(out, c, accumulate))


@gemm_fp32_op.register_fake
def _gemm_fp32_fake(a, a_scales, b, b_scales, out, c=None, accumulate=False) -> None:
    _check_dense(a, a_scales, b, b_scales, out, torch.float32)
    _check_c(out, c, accumulate)


# ---- weight gradients ----------------------------------------------------------------------
@torch.library.custom_op("fp8gemm::wgrad_gemm_fp8_fp8_fp32_nt", mutates_args=("out",))
def wgrad_op(a: Tensor, a_scales: Tensor, b: Tensor, b_scales: Tensor, out: Tensor) -> None:
    _gemm.wgrad_gemm_fp8_fp8_fp32_nt((a, a_scales), (b, b_scales), out)


@wgrad_op.register_fake
def _wgrad_fake(a, a_scales, b, b_scales, out) -> None:
    _check_dense(a, a_scales, b, b_scales, out, torch.float32, row_scales=True)


def _check_stacked_scales(s: Tensor, name: str, kb_total, width) -> None:
    """[sum kb, width] stacked 1x128 scales, or the same memory as the MN-major [width, sum kb]."""
    _want_dtype(s, name, torch.float32)
    if s.dim() != 2 or (tuple(s.shape) != (kb_total, width) and tuple(s.shape) != (width, kb_total)):
        raise ValueError(f"{name}: shape is {list(s.shape)}; expected [{kb_total}, {width}] "
                         f"(or its MN-major view [{width}, {kb_total}])")


@torch.library.custom_op("fp8gemm::k_grouped_wgrad_gemm_fp8_fp8_fp32_nt", mutates_args=("out",))
def k_grouped_op(a: Tensor, a_scales: Tensor, b: Tensor, b_scales: Tensor, out: Tensor,
                 batch_sizes: List[int]) -> None:
    _wgrad.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt((a, a_scales), (b, b_scales), out, batch_sizes)


@k_grouped_op.register_fake
def _k_grouped_fake(a, a_scales, b, b_scales, out, batch_sizes) -> None:
    _check_dtypes(a, a_scales, b, b_scales, out, torch.float32)
    _want_shape(out, "out", None, None, None)
    groups, m, n = out.shape
    if groups < 1:
        raise ValueError("out: needs at least one group")
    if len(batch_sizes) != groups:
        raise ValueError(f"batch_sizes: has {len(batch_sizes)} entries for {groups} groups")
    for g, x in enumerate(batch_sizes):
        if x < 0 or x % 16:
            raise ValueError(f"batch_sizes[{g}] = {x} must be a multiple of 16 and >= 0")
    for name, v in (("M", m), ("N", n)):
        if v % 8:
            raise ValueError(f"out: {name} = {v} must be a multiple of 8")
    k_sum = sum(batch_sizes)
    for t, name, rows in ((a, "a", m), (b, "b", n)):
        if t.numel() != rows * k_sum:
            raise ValueError(f"{name}: has {t.numel()} elements; the groups need {rows * k_sum} "
                             f"(the concatenated row-major [rows, k_g] matrices)")
    kb_total = sum(ceil_div(x, _BLOCK) for x in batch_sizes)
    if kb_total:          # as the library: scales of groups that all have K = 0 are not read
        _check_stacked_scales(a_scales, "a_scales", kb_total, m)
        _check_stacked_scales(b_scales, "b_scales", kb_total, n)


# ---- grouped -------------------------------------------------------------------------------
@torch.library.custom_op("fp8gemm::m_grouped_gemm_fp8_fp8_bf16_nt_contiguous", mutates_args=("out",))
def contiguous_op(a: Tensor, a_scales: Tensor, b: Tensor, b_scales: Tensor, out: Tensor,
                  m_indices: Tensor) -> None:
    _grouped.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((a, a_scales), (b, b_scales), out, m_indices)


@contiguous_op.register_fake
def _contiguous_fake(a, a_scales, b, b_scales, out, m_indices) -> None:
    _check_contiguous(a, a_scales, b, b_scales, out, m_indices, "m_indices")


@torch.library.custom_op("fp8gemm::m_grouped_gemm_fp8_fp8_bf16_nt_contiguous_group_ends", mutates_args=("out",))
def contiguous_group_ends_op(a: Tensor, a_scales: Tensor, b: Tensor, b_scales: Tensor, out: Tensor,
                             group_ends: Tensor) -> None:
    _grouped.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((a, a_scales), (b, b_scales), out,
                                                       group_ends=group_ends)


@contiguous_group_ends_op.register_fake
def _contiguous_group_ends_fake(a, a_scales, b, b_scales, out, group_ends) -> None:
    _check_contiguous(a, a_scales, b, b_scales, out, group_ends, "group_ends")


@torch.library.custom_op("fp8gemm::m_grouped_gemm_fp8_fp8_bf16_nt_masked", mutates_args=("out",))
def masked_op(a: Tensor, a_scales: Tensor, b: Tensor, b_scales: Tensor, out: Tensor, masked_m: Tensor,
              expected_m: int) -> None:
    _grouped.m_grouped_gemm_fp8_fp8_bf16_nt_masked((a, a_scales), (b, b_scales), out, masked_m, expected_m)


@masked_op.register_fake
def _masked_fake(a, a_scales, b, b_scales, out, masked_m, expected_m) -> None:
    _check_dtypes(a, a_scales, b, b_scales, out)
    _want_shape(a, "a", None, None, None)
    groups, m_max, k = a.shape
    _, n = _check_grouped_b(b, b_scales, k)
    _want_shape(b, "b", groups, None, None)
    _want_shape(a_scales, "a_scales", groups, m_max, ceil_div(k, _BLOCK))
    _want_shape(out, "out", groups, m_max, n)
    _check_nk(n, k)
    _check_int32(masked_m, "masked_m", groups)


# ---- casts ---------------------------------------------------------------------------------
@torch.library.custom_op("fp8gemm::per_token_cast_to_fp8", mutates_args=())
def per_token_op(x: Tensor) -> tuple[Tensor, Tensor]:
    return _quant.per_token_cast_to_fp8(x)


@per_token_op.register_fake
def _per_token_fake(x):
    m, k = _check_cast_input(x)
    shape, strides = _token_scales_layout(m, k)
    return (torch.empty((m, k), dtype=_FP8, device=x.device),
            torch.empty_strided(shape, strides, dtype=torch.float32, device=x.device))


@torch.library.custom_op("fp8gemm::per_token_cast_to_fp8_out", mutates_args=("q", "scales"))
def per_token_out_op(x: Tensor, q: Tensor, scales: Tensor) -> None:
    _quant.per_token_cast_to_fp8(x, out=(q, scales))


@per_token_out_op.register_fake
def _per_token_out_fake(x, q, scales) -> None:
    m, k = _check_cast_input(x)
    _want_dtype(q, "q", _FP8)
    _want_shape(q, "q", m, k)
    _want_dtype(scales, "scales", torch.float32)
    _want_shape(scales, "scales", m, ceil_div(k, _BLOCK))


@torch.library.custom_op("fp8gemm::per_block_cast_to_fp8", mutates_args=())
def per_block_op(x: Tensor) -> tuple[Tensor, Tensor]:
    return _quant.per_block_cast_to_fp8(x)


@per_block_op.register_fake
def _per_block_fake(x):
    n, k = _check_cast_input(x)
    return (torch.empty((n, k), dtype=_FP8, device=x.device),
            torch.empty((ceil_div(n, _BLOCK), ceil_div(k, _BLOCK)), dtype=torch.float32, device=x.device))


@torch.library.custom_op("fp8gemm::per_block_cast_to_fp8_out", mutates_args=("q", "scales"))
def per_block_out_op(x: Tensor, q: Tensor, scales: Tensor) -> None:
    _quant.per_block_cast_to_fp8(x, out=(q, scales))


@per_block_out_op.register_fake
def _per_block_out_fake(x, q, scales) -> None:
    n, k = _check_cast_input(x)
    _want_dtype(q, "q", _FP8)
    _want_shape(q, "q", n, k)
    _want_dtype(scales, "scales", torch.float32)
    _want_shape(scales, "scales", ceil_div(n, _BLOCK), ceil_div(k, _BLOCK))


OPS = {op._name: op for op in (gemm_op, gemm_fp32_op, wgrad_op, k_grouped_op, contiguous_op, contiguous_group_ends_op,
                                masked_op, per_token_op, per_token_out_op, per_block_op, per_block_out_op)}


# ---- what torch.compile sees in place of the public functions -------------------------------
def _compile_only(name: str, **unsupported: Any) -> None:
    """Arguments the graph cannot carry (a raw stream, a forced config, a synchronising check)."""
    for arg, value in unsupported.items():
        if value is not None and value is not False:       # identity: stream=0 is a stream
            raise ValueError(f"{name}: {arg}= is not supported under torch.compile; call torch.ops.fp8gemm "
                             f"ops on torch's current stream, or call {name} outside the compiled region")


def _traced_dense(name: str, op, lhs, rhs, out, stream, config, c) -> None:
    _compile_only(name, stream=stream, config=config)
    if c is None:
        op(lhs[0], lhs[1], rhs[0], rhs[1], out)
    elif c is out:        # the op may not take out twice: accumulate=True means c = out
        op(lhs[0], lhs[1], rhs[0], rhs[1], out, accumulate=True)
    else:
        op(lhs[0], lhs[1], rhs[0], rhs[1], out, c=c)


def _traced_gemm(lhs, rhs, out, stream=None, config=None, c=None):
    _traced_dense("gemm_fp8_fp8_bf16_nt", torch.ops.fp8gemm.gemm_fp8_fp8_bf16_nt, lhs, rhs, out, stream, config, c)


def _traced_gemm_fp32(lhs, rhs, out, stream=None, config=None, c=None):
    _traced_dense("gemm_fp8_fp8_fp32_nt", torch.ops.fp8gemm.gemm_fp8_fp8_fp32_nt, lhs, rhs, out, stream, config, c)


def _traced_wgrad(lhs, rhs, out, stream=None, config=None):
    _compile_only("wgrad_gemm_fp8_fp8_fp32_nt", stream=stream, config=config)
    torch.ops.fp8gemm.wgrad_gemm_fp8_fp8_fp32_nt(lhs[0], lhs[1], rhs[0], rhs[1], out)


def _traced_k_grouped(lhs, rhs, out, batch_sizes, stream=None, config=None):
    _compile_only("k_grouped_wgrad_gemm_fp8_fp8_fp32_nt", stream=stream, config=config)
    torch.ops.fp8gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt(lhs[0], lhs[1], rhs[0], rhs[1], out, list(batch_sizes))


def _traced_contiguous(lhs, rhs, out, m_indices=None, *, group_ends=None, stream=None, config=None,
                       validate=False):
    name = "m_grouped_gemm_fp8_fp8_bf16_nt_contiguous"
    _compile_only(name, stream=stream, config=config, validate=validate)
    if (m_indices is None) == (group_ends is None):
        raise TypeError(f"{name}: pass exactly one of m_indices and group_ends")
    if m_indices is not None:
        torch.ops.fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(lhs[0], lhs[1], rhs[0], rhs[1], out, m_indices)
    else:
        torch.ops.fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous_group_ends(lhs[0], lhs[1], rhs[0], rhs[1],
                                                                               out, group_ends)


def _traced_masked(lhs, rhs, out, masked_m, expected_m, *, stream=None, config=None, validate=False):
    _compile_only("m_grouped_gemm_fp8_fp8_bf16_nt_masked", stream=stream, config=config, validate=validate)
    torch.ops.fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked(lhs[0], lhs[1], rhs[0], rhs[1], out, masked_m,
                                                            expected_m)


def _traced_per_token(x, out=None, stream=None):
    _compile_only("per_token_cast_to_fp8", stream=stream)
    if out is None:
        return torch.ops.fp8gemm.per_token_cast_to_fp8(x)
    torch.ops.fp8gemm.per_token_cast_to_fp8_out(x, out[0], out[1])
    return out


def _traced_per_block(x, out=None, stream=None):
    _compile_only("per_block_cast_to_fp8", stream=stream)
    if out is None:
        return torch.ops.fp8gemm.per_block_cast_to_fp8(x)
    torch.ops.fp8gemm.per_block_cast_to_fp8_out(x, out[0], out[1])
    return out


SUBSTITUTES = {_gemm.gemm_fp8_fp8_bf16_nt: _traced_gemm,
               _gemm.gemm_fp8_fp8_fp32_nt: _traced_gemm_fp32,
               _gemm.wgrad_gemm_fp8_fp8_fp32_nt: _traced_wgrad,
               _wgrad.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt: _traced_k_grouped,
               _grouped.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous: _traced_contiguous,
               _grouped.m_grouped_gemm_fp8_fp8_bf16_nt_masked: _traced_masked,
               _quant.per_token_cast_to_fp8: _traced_per_token,
               _quant.per_block_cast_to_fp8: _traced_per_block}


def _substitute_public_functions() -> bool:
    """Register SUBSTITUTES with torch.compile's frontend; False where this torch has no such hook
    (the ops still work when called as torch.ops.fp8gemm.*)."""
    substitute = getattr(torch.compiler, "substitute_in_graph", None)
    if substitute is None:
        return False
    for original, traced in SUBSTITUTES.items():
        substitute(original)(traced)
    return True


PUBLIC_FUNCTIONS_COMPILE = _substitute_public_functions()
