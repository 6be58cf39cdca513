"""The torch custom ops (fp8gemm.torch_ops) without a GPU: schemas, fake implementations (shapes,
strides, dtypes, argument errors), torch.library.opcheck, and torch.compile(fullgraph=True) of
functions calling the public fp8gemm functions.

Without a GPU the ops' real kernels cannot run, so the tests that execute ops register CPU
stand-ins (float64 matmuls, the NumPy reference quantizers) for them. Each stand-in first runs the
library's own argument checks on the same tensors (stopping at the first device query), then
allocates and writes as the real implementation does; so opcheck and torch.compile test the op
registrations (schema, mutation, fake outputs, tracing) and that what a compiled graph hands the
ops is accepted by the library, not the kernels: those are compared with the compiled graphs on a
GPU in test_torch_compile_gpu.py. Every test here but the first two skips without torch (the
second checks, from torch_ops.py's source, that each compile substitute keeps the signature of
the public function it stands for: torch refuses the import otherwise).
"""
from __future__ import annotations

import ast
import importlib.util
import inspect
import shutil
import subprocess
import sys

from unittest import mock

import numpy as np
import pytest

import fp8gemm
from fp8gemm import DeviceArray, arrays, reference

OPS = ("gemm_fp8_fp8_bf16_nt", "gemm_fp8_fp8_fp32_nt", "wgrad_gemm_fp8_fp8_fp32_nt",
       "k_grouped_wgrad_gemm_fp8_fp8_fp32_nt", "m_grouped_gemm_fp8_fp8_bf16_nt_contiguous",
       "m_grouped_gemm_fp8_fp8_bf16_nt_contiguous_group_ends", "m_grouped_gemm_fp8_fp8_bf16_nt_masked",
       "per_token_cast_to_fp8", "per_token_cast_to_fp8_out", "per_block_cast_to_fp8", "per_block_cast_to_fp8_out")


def test_importing_fp8gemm_does_not_import_torch():
    code = "import sys, fp8gemm; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def _without_annotations(sig: inspect.Signature) -> inspect.Signature:
    return sig.replace(parameters=[p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()],
                       return_annotation=inspect.Signature.empty)


def _source_signature(fn: ast.FunctionDef) -> inspect.Signature:
    """A function's signature (names, kinds, literal defaults) read from its source."""
    P, args = inspect.Parameter, fn.args
    positional = args.posonlyargs + args.args
    defaults = [P.empty] * (len(positional) - len(args.defaults)) + [ast.literal_eval(d) for d in args.defaults]
    params = [P(a.arg, P.POSITIONAL_ONLY if i < len(args.posonlyargs) else P.POSITIONAL_OR_KEYWORD, default=d)
              for i, (a, d) in enumerate(zip(positional, defaults))]
    if args.vararg:
        params.append(P(args.vararg.arg, P.VAR_POSITIONAL))
    params += [P(a.arg, P.KEYWORD_ONLY, default=P.empty if d is None else ast.literal_eval(d))
               for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    if args.kwarg:
        params.append(P(args.kwarg.arg, P.VAR_KEYWORD))
    return inspect.Signature(params)


def test_substitutes_match_the_public_signatures_without_torch():
    """torch.compiler.substitute_in_graph refuses a substitute whose parameters (names, kinds,
    defaults) differ from the original's, so a parameter added to a public function breaks
    ``import fp8gemm.torch_ops``. Checked here from torch_ops.py's source, so that it runs where
    torch is not installed (CI): every SUBSTITUTES entry against the function it stands for, and
    every public GEMM and cast has one."""
    substitutes = _substitutes_from_source()
    for original, traced in substitutes.items():
        want, got = _without_annotations(inspect.signature(original)), _source_signature(traced)
        assert got == want, f"{original.__name__}: torch_ops.{traced.name}{got} != {want}"
    assert {f.__name__ for f in substitutes} == _public_gemms_and_casts()


def _public_gemms_and_casts() -> set:
    return {name for name in fp8gemm.__all__ if name.endswith(("_nt", "_nt_contiguous", "_nt_masked", "_to_fp8"))}


def _substitutes_from_source() -> dict:
    """torch_ops.SUBSTITUTES read from the source: {original function: substitute's ast node}."""
    path = importlib.util.find_spec("fp8gemm.torch_ops").origin
    tree = ast.parse(open(path, encoding="utf-8").read())
    modules = {a.asname or a.name: importlib.import_module(f"fp8gemm.{a.name}")
               for node in tree.body if isinstance(node, ast.ImportFrom) and node.level == 1 and not node.module
               for a in node.names}
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    table = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "SUBSTITUTES" for t in node.targets))
    return {getattr(modules[k.value.id], k.attr): functions[v.id] for k, v in zip(table.keys, table.values)}


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    import fp8gemm.torch_ops  # noqa: F401  (registers the ops)
    return torch


# ---- CPU stand-ins for the real kernels ---------------------------------------------------
def _rows(q, s):
    """Dequantized rows: q [R, K] e4m3 times its 1x128 scales s [R, ceil(K/128)], in float64."""
    return q.double() * s.double().repeat_interleave(128, dim=-1)[..., :q.shape[-1]]


def _blocks(q, s):
    """Dequantized B: q [N, K] e4m3 times its 128x128 scales s [ceil(N/128), ceil(K/128)]."""
    n, k = q.shape
    return q.double() * s.double().repeat_interleave(128, dim=0)[:n].repeat_interleave(128, dim=1)[:, :k]


def _e4m3(torch, q: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(q).view(np.uint8)).view(torch.float8_e4m3fn)


class _Validated(Exception):
    """Raised in place of the first device query: the real implementation accepted the arguments."""


def _as_device_array(t):
    return DeviceArray(t.data_ptr(), tuple(t.shape), str(t.dtype).replace("torch.", ""), t.stride())


def validated_by_the_library(public_fn):
    """Decorate a stand-in so that it first runs the library's own argument checks on the same
    tensors (as raw DeviceArrays): every check the real kernel's caller makes (strides, alignment,
    dtypes) passes or raises as it would on a GPU; the call stops at the first device query."""
    def check_then_run(standin):
        def run(*args, **kwargs):
            def stop(*_a, **_k):
                raise _Validated
            wrap = lambda x: _as_device_array(x) if hasattr(x, "data_ptr") else x  # noqa: E731
            with mock.patch.object(arrays, "check_same_device", stop):
                try:
                    public_fn(*map(wrap, args), **{k: wrap(v) for k, v in kwargs.items()})
                except _Validated:
                    pass
            return standin(*args, **kwargs)
        return run
    return check_then_run


# The library's functions as imported, for the stand-ins' checks.
_GEMM, _CONTIGUOUS, _MASKED = (fp8gemm.gemm_fp8_fp8_bf16_nt, fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous,
                               fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked)
_TOKEN, _BLOCK = fp8gemm.per_token_cast_to_fp8, fp8gemm.per_block_cast_to_fp8
_GEMM32, _WGRAD, _KGROUPED = (fp8gemm.gemm_fp8_fp8_fp32_nt, fp8gemm.wgrad_gemm_fp8_fp8_fp32_nt,
                              fp8gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt)


def _ops_args(fn):
    """The public function called with an op's flat arguments (a, a_scales, b, b_scales, out, ...)."""
    return lambda a, sa, b, sb, out, *rest: fn((a, sa), (b, sb), out, *rest)


def _dense_ops_args(fn):
    """A dense GEMM's op arguments as the public function takes them: accumulate=True is c=out
    (the same array, as the real op passes it)."""
    def call(a, sa, b, sb, out, c=None, accumulate=False):
        fn((a, sa), (b, sb), out, c=out if accumulate else c)
    return call


def _dense_cpu(a, a_scales, b, b_scales, out, c, accumulate):
    """The float64 product, plus C in FP32 before the one rounding (as the kernels add it)."""
    acc = _rows(a, a_scales) @ _blocks(b, b_scales).t()
    c = out if accumulate else c
    out.copy_(acc if c is None else acc.float() + c.float())


@validated_by_the_library(_dense_ops_args(_GEMM))
def _gemm_cpu(a, a_scales, b, b_scales, out, c=None, accumulate=False):
    _dense_cpu(a, a_scales, b, b_scales, out, c, accumulate)


@validated_by_the_library(_dense_ops_args(_GEMM32))
def _gemm32_cpu(a, a_scales, b, b_scales, out, c=None, accumulate=False):
    _dense_cpu(a, a_scales, b, b_scales, out, c, accumulate)


@validated_by_the_library(_ops_args(_WGRAD))
def _wgrad_cpu(a, a_scales, b, b_scales, out):
    out.copy_(out.double() + _rows(a, a_scales) @ _rows(b, b_scales).t())


def _stacked(s, kb_total, width):
    """k-grouped scales as [sum kb, width], from that or the MN-major [width, sum kb] view."""
    return s if tuple(s.shape) == (kb_total, width) else s.t()


@validated_by_the_library(lambda a, sa, b, sb, out, ks: _KGROUPED((a, sa), (b, sb), out, ks))
def _k_grouped_cpu(a, a_scales, b, b_scales, out, batch_sizes):
    groups, m, n = out.shape
    kb_total = sum(-(-k // 128) for k in batch_sizes)
    sa, sb = _stacked(a_scales, kb_total, m), _stacked(b_scales, kb_total, n)
    a, b = a.reshape(-1), b.reshape(-1)
    k0 = kb0 = 0
    for g, k in enumerate(batch_sizes):
        kb = -(-k // 128)
        if k:
            ag, bg = a[m * k0:m * (k0 + k)].view(m, k), b[n * k0:n * (k0 + k)].view(n, k)
            prod = _rows(ag, sa[kb0:kb0 + kb].t()) @ _rows(bg, sb[kb0:kb0 + kb].t()).t()
            out[g] = out[g].double() + prod
        k0, kb0 = k0 + k, kb0 + kb


@validated_by_the_library(_ops_args(_CONTIGUOUS))
def _contiguous_cpu(a, a_scales, b, b_scales, out, m_indices):
    for g in range(b.shape[0]):
        rows = (m_indices == g).nonzero().flatten()
        out[rows] = (_rows(a[rows], a_scales[rows]) @ _blocks(b[g], b_scales[g]).t()).to(out.dtype)


@validated_by_the_library(_ops_args(lambda lhs, rhs, out, ends: _CONTIGUOUS(lhs, rhs, out, group_ends=ends)))
def _group_ends_cpu(a, a_scales, b, b_scales, out, group_ends):
    start = 0
    for g, end in enumerate(group_ends.tolist()):
        if end > start:
            out[start:end] = _rows(a[start:end], a_scales[start:end]) @ _blocks(b[g], b_scales[g]).t()
        start = -(-end // 128) * 128


@validated_by_the_library(_ops_args(_MASKED))
def _masked_cpu(a, a_scales, b, b_scales, out, masked_m, expected_m):
    for g, rows in enumerate(masked_m.tolist()):
        out[g, :rows] = _rows(a[g, :rows], a_scales[g, :rows]) @ _blocks(b[g], b_scales[g]).t()


def _token_into(torch, x, q, scales):
    qn, sn = reference.per_token_cast_to_fp8(x.float().numpy())
    q.copy_(_e4m3(torch, qn))
    scales.copy_(torch.from_numpy(sn))


def _block_into(torch, x, q, scales):
    qn, sn = reference.per_block_cast_to_fp8(x.float().numpy())
    q.copy_(_e4m3(torch, qn))
    scales.copy_(torch.from_numpy(sn))


@pytest.fixture(scope="module")
def cpu_standins(torch):
    """Register the stand-ins as the ops' CPU kernels (process-wide; nothing else runs these ops
    on CPU tensors, whose real implementation only raises 'host (CPU) tensor')."""
    @validated_by_the_library(_TOKEN)
    def per_token(x):
        m, k = x.shape
        kb, am = fp8gemm.ceil_div(k, 128), fp8gemm.get_tma_aligned_size(m)
        q = torch.empty((m, k), dtype=torch.float8_e4m3fn)
        s = torch.empty((kb, am)).as_strided((m, kb), (1, am))     # as fp8gemm.quant allocates
        _token_into(torch, x, q, s)
        return q, s

    @validated_by_the_library(_BLOCK)
    def per_block(x):
        n, k = x.shape
        q = torch.empty((n, k), dtype=torch.float8_e4m3fn)
        s = torch.empty((fp8gemm.ceil_div(n, 128), fp8gemm.ceil_div(k, 128)))
        _block_into(torch, x, q, s)
        return q, s

    kernels = {"gemm_fp8_fp8_bf16_nt": _gemm_cpu, "gemm_fp8_fp8_fp32_nt": _gemm32_cpu,
               "wgrad_gemm_fp8_fp8_fp32_nt": _wgrad_cpu, "k_grouped_wgrad_gemm_fp8_fp8_fp32_nt": _k_grouped_cpu,
               "m_grouped_gemm_fp8_fp8_bf16_nt_contiguous": _contiguous_cpu,
               "m_grouped_gemm_fp8_fp8_bf16_nt_contiguous_group_ends": _group_ends_cpu,
               "m_grouped_gemm_fp8_fp8_bf16_nt_masked": _masked_cpu,
               "per_token_cast_to_fp8": per_token, "per_block_cast_to_fp8": per_block,
               "per_token_cast_to_fp8_out": validated_by_the_library(
                   lambda x, q, s: _TOKEN(x, out=(q, s)))(
                   lambda x, q, s: _token_into(torch, x, q, s)),
               "per_block_cast_to_fp8_out": validated_by_the_library(
                   lambda x, q, s: _BLOCK(x, out=(q, s)))(
                   lambda x, q, s: _block_into(torch, x, q, s))}
    for name, fn in kernels.items():
        torch.library.register_kernel(f"fp8gemm::{name}", "cpu", fn)
    return kernels


def _quantized(torch, m, n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn((m, k), generator=g).to(torch.bfloat16)
    b = torch.randn((n, k), generator=g).to(torch.bfloat16)
    return a, b


# ---- schemas -------------------------------------------------------------------------------
def test_every_op_is_registered_with_its_schema(torch):
    for name in OPS:
        assert hasattr(torch.ops.fp8gemm, name), name
    schema = lambda name: str(getattr(torch.ops.fp8gemm, name).default._schema)  # noqa: E731
    operands = "Tensor a, Tensor a_scales, Tensor b, Tensor b_scales, Tensor(a4!) out"
    for name in ("gemm_fp8_fp8_bf16_nt", "gemm_fp8_fp8_fp32_nt"):     # c = out is accumulate=True
        assert schema(name) == f"fp8gemm::{name}({operands}, Tensor? c=None, bool accumulate=False) -> ()"
    assert schema("wgrad_gemm_fp8_fp8_fp32_nt") == f"fp8gemm::wgrad_gemm_fp8_fp8_fp32_nt({operands}) -> ()"
    assert schema("k_grouped_wgrad_gemm_fp8_fp8_fp32_nt") == (
        f"fp8gemm::k_grouped_wgrad_gemm_fp8_fp8_fp32_nt({operands}, SymInt[] batch_sizes) -> ()")
    assert schema("m_grouped_gemm_fp8_fp8_bf16_nt_masked").endswith(
        "Tensor(a4!) out, Tensor masked_m, SymInt expected_m) -> ()")
    for name in OPS[4:6]:
        assert "Tensor(a4!) out" in schema(name) and schema(name).endswith("-> ()")
    for name in ("per_token_cast_to_fp8", "per_block_cast_to_fp8"):
        assert schema(name) == f"fp8gemm::{name}(Tensor x) -> (Tensor, Tensor)"
        assert schema(name + "_out") == f"fp8gemm::{name}_out(Tensor x, Tensor(a1!) q, Tensor(a2!) scales) -> ()"


def test_every_substitute_has_its_originals_signature(torch):
    """torch.compiler.substitute_in_graph refuses a substitute whose parameters (names, kinds,
    defaults) differ from the original's, so a parameter added to a public function breaks
    ``import fp8gemm.torch_ops``: this names the function that needs its substitute updated."""
    from fp8gemm import torch_ops
    assert torch_ops.PUBLIC_FUNCTIONS_COMPILE
    for original, traced in torch_ops.SUBSTITUTES.items():
        want, got = inspect.signature(original), inspect.signature(traced)
        assert _without_annotations(got) == _without_annotations(want), (
            f"{original.__name__}: substitute {traced.__name__}{got} != {want}")


def test_every_public_gemm_and_cast_has_a_substitute(torch):
    from fp8gemm import torch_ops
    assert {f.__name__ for f in torch_ops.SUBSTITUTES} == _public_gemms_and_casts()
    assert all(getattr(fp8gemm, f.__name__) is f for f in torch_ops.SUBSTITUTES)


# ---- fake implementations ------------------------------------------------------------------
@pytest.fixture
def fake(torch):
    """A FakeTensorMode in which tensors may say device='cuda' although this machine has none."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        yield


@pytest.mark.parametrize("m, k", [(1, 128), (301, 1008), (4096, 7168)])
def test_fake_per_token_cast_has_the_libraries_scale_layout(torch, fake, m, k):
    x = torch.empty((m, k), dtype=torch.bfloat16, device="cuda")
    q, s = torch.ops.fp8gemm.per_token_cast_to_fp8(x)
    assert (q.shape, q.dtype, q.device.type) == ((m, k), torch.float8_e4m3fn, "cuda")
    assert q.is_contiguous()
    assert (s.shape, s.stride(), s.dtype) == ((m, -(-k // 128)), (1, fp8gemm.get_tma_aligned_size(m)), torch.float32)


def test_fake_per_block_cast(torch, fake):
    x = torch.empty((300, 1008), dtype=torch.float32, device="cuda")
    q, s = torch.ops.fp8gemm.per_block_cast_to_fp8(x)
    assert (q.shape, q.dtype) == ((300, 1008), torch.float8_e4m3fn)
    assert (s.shape, s.stride(), s.dtype) == ((3, 8), (8, 1), torch.float32)


def _fake_operands(torch, m, n, k, groups=None):
    lead = () if groups is None else (groups,)
    kb = -(-k // 128)
    a = torch.empty((m, k), dtype=torch.float8_e4m3fn, device="cuda")
    sa = torch.empty_strided((m, kb), (1, fp8gemm.get_tma_aligned_size(m)), device="cuda")
    b = torch.empty((*lead, n, k), dtype=torch.float8_e4m3fn, device="cuda")
    sb = torch.empty((*lead, -(-n // 128), kb), device="cuda")
    out = torch.empty((m, n), dtype=torch.bfloat16, device="cuda")
    return a, sa, b, sb, out


def test_fake_gemms_accept_good_arguments(torch, fake):
    ops = torch.ops.fp8gemm
    a, sa, b, sb, out = _fake_operands(torch, 256, 512, 640)
    assert ops.gemm_fp8_fp8_bf16_nt(a, sa, b, sb, out) is None
    a, sa, b, sb, out = _fake_operands(torch, 384, 512, 640, groups=3)
    ops.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(a, sa, b, sb, out, torch.empty(384, dtype=torch.int32, device="cuda"))
    ops.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous_group_ends(a, sa, b, sb, out,
                                                            torch.empty(3, dtype=torch.int32, device="cuda"))
    am = torch.empty((3, 100, 640), dtype=torch.float8_e4m3fn, device="cuda")
    sam = torch.empty_strided((3, 100, 5), (500, 1, 100), device="cuda")
    outm = torch.empty((3, 100, 512), dtype=torch.bfloat16, device="cuda")
    ops.m_grouped_gemm_fp8_fp8_bf16_nt_masked(am, sam, b, sb, outm, torch.empty(3, dtype=torch.int32, device="cuda"), 64)


def test_fake_gemms_name_the_bad_argument(torch, fake):
    ops = torch.ops.fp8gemm
    # (fresh tensors, not views: a view of a fake CUDA tensor needs a CUDA build of torch)
    empty = lambda *shape, dtype=torch.float32: torch.empty(shape, dtype=dtype, device="cuda")  # noqa: E731
    a, sa, b, sb, out = _fake_operands(torch, 256, 512, 640)
    with pytest.raises(TypeError, match="a: dtype is bfloat16; expected float8_e4m3fn"):
        ops.gemm_fp8_fp8_bf16_nt(empty(256, 640, dtype=torch.bfloat16), sa, b, sb, out)
    with pytest.raises(TypeError, match="out: dtype is float32; expected bfloat16"):
        ops.gemm_fp8_fp8_bf16_nt(a, sa, b, sb, empty(256, 512))
    with pytest.raises(ValueError, match=r"b_scales: shape is \[4, 4\]; expected \[4, 5\]"):
        ops.gemm_fp8_fp8_bf16_nt(a, sa, b, empty(4, 4), out)
    with pytest.raises(ValueError, match=r"out: shape is \[256, 256\]; expected \[256, 512\]"):
        ops.gemm_fp8_fp8_bf16_nt(a, sa, b, sb, empty(256, 256, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"a_scales: shape is \[128, 5\]; expected \[256, 5\]"):
        ops.gemm_fp8_fp8_bf16_nt(a, empty(128, 5), b, sb, out)
    with pytest.raises(ValueError, match="b: N = 500 must be a multiple of 8"):
        ops.gemm_fp8_fp8_bf16_nt(a, sa, empty(500, 640, dtype=torch.float8_e4m3fn), empty(4, 5),
                                 empty(256, 500, dtype=torch.bfloat16))
    a, sa, b, sb, out = _fake_operands(torch, 384, 512, 640, groups=3)
    with pytest.raises(TypeError, match="m_indices: dtype is int64; expected int32"):
        ops.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(a, sa, b, sb, out, empty(384, dtype=torch.long))
    with pytest.raises(ValueError, match=r"group_ends: shape is \[384\]; expected \[3\]"):
        ops.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous_group_ends(a, sa, b, sb, out, empty(384, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"a: shape is \[384, 640\]; expected \[\*, \*, \*\]"):
        ops.m_grouped_gemm_fp8_fp8_bf16_nt_masked(a, sa, b, sb, out, empty(3, dtype=torch.int32), 64)
    with pytest.raises(ValueError, match="x: K = 120 must be a multiple of 16"):
        ops.per_token_cast_to_fp8(empty(64, 120, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="x: dtype is float16"):
        ops.per_block_cast_to_fp8(empty(64, 128, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"scales: shape is \[64, 2\]; expected \[64, 1\]"):
        ops.per_token_cast_to_fp8_out(empty(64, 128), empty(64, 128, dtype=torch.float8_e4m3fn), empty(64, 2))


def _fake_k_grouped(torch, m, n, ks, mn_major=False):
    """k-grouped operands for the groups' K ``ks``: flat A and B, stacked scales [sum kb, M/N]
    (or, ``mn_major``, the same memory seen as [M/N, sum kb]), out f32 [G, M, N]."""
    kb = sum(-(-k // 128) for k in ks)
    scales = lambda w: (torch.empty_strided((w, kb), (1, w), device="cuda") if mn_major  # noqa: E731
                        else torch.empty((kb, w), device="cuda"))
    a = torch.empty(m * sum(ks), dtype=torch.float8_e4m3fn, device="cuda")
    b = torch.empty(n * sum(ks), dtype=torch.float8_e4m3fn, device="cuda")
    return a, scales(m), b, scales(n), torch.empty((len(ks), m, n), device="cuda")


def test_fake_training_gemms_accept_good_arguments(torch, fake):
    ops = torch.ops.fp8gemm
    empty = lambda *shape, dtype=torch.float32: torch.empty(shape, dtype=dtype, device="cuda")  # noqa: E731
    a, sa, b, sb, out = _fake_operands(torch, 256, 512, 640)
    assert ops.gemm_fp8_fp8_bf16_nt(a, sa, b, sb, out, empty(256, 512, dtype=torch.bfloat16)) is None
    ops.gemm_fp8_fp8_bf16_nt(a, sa, b, sb, out, accumulate=True)
    out32 = empty(256, 512)
    ops.gemm_fp8_fp8_fp32_nt(a, sa, b, sb, out32)
    ops.gemm_fp8_fp8_fp32_nt(a, sa, b, sb, out32, c=empty(256, 512))
    ops.gemm_fp8_fp8_fp32_nt(a, sa, b, sb, out32, accumulate=True)
    sb_rows = torch.empty_strided((512, 5), (1, 512), device="cuda")     # 1x128 scales of B's rows
    assert ops.wgrad_gemm_fp8_fp8_fp32_nt(a, sa, b, sb_rows, out32) is None
    for mn_major in (False, True):
        assert ops.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt(*_fake_k_grouped(torch, 128, 256, [256, 0, 144], mn_major),
                                                        [256, 0, 144]) is None
    ops.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt(*_fake_k_grouped(torch, 8, 16, [0, 0]), [0, 0])


def test_fake_training_gemms_name_the_bad_argument(torch, fake):
    ops = torch.ops.fp8gemm
    empty = lambda *shape, dtype=torch.float32: torch.empty(shape, dtype=dtype, device="cuda")  # noqa: E731
    a, sa, b, sb, out = _fake_operands(torch, 256, 512, 640)
    out32 = empty(256, 512)
    with pytest.raises(TypeError, match="out: dtype is bfloat16; expected float32"):
        ops.gemm_fp8_fp8_fp32_nt(a, sa, b, sb, out)
    with pytest.raises(TypeError, match="c: dtype is float32; expected bfloat16"):
        ops.gemm_fp8_fp8_bf16_nt(a, sa, b, sb, out, empty(256, 512))
    with pytest.raises(ValueError, match=r"c: shape is \[256, 256\]; expected \[256, 512\]"):
        ops.gemm_fp8_fp8_fp32_nt(a, sa, b, sb, out32, empty(256, 256))
    with pytest.raises(ValueError, match="c: to add out itself pass accumulate=True"):
        ops.gemm_fp8_fp8_fp32_nt(a, sa, b, sb, out32, empty(256, 512), True)
    with pytest.raises(ValueError, match="c: to add out itself pass accumulate=True"):
        ops.gemm_fp8_fp8_bf16_nt(a, sa, b, sb, out, out)
    with pytest.raises(ValueError, match="b: N = 500 must be a multiple of 8"):
        ops.gemm_fp8_fp8_fp32_nt(a, sa, empty(500, 640, dtype=torch.float8_e4m3fn), empty(4, 5), empty(256, 500))
    with pytest.raises(ValueError, match="a: K = 632 must be a multiple of 16"):
        ops.gemm_fp8_fp8_fp32_nt(empty(256, 632, dtype=torch.float8_e4m3fn), sa,
                                 empty(512, 632, dtype=torch.float8_e4m3fn), sb, out32)
    # wgrad: B's scales are per row ([N, kb]), not 128x128 blocks
    with pytest.raises(ValueError, match=r"b_scales: shape is \[4, 5\]; expected \[512, 5\]"):
        ops.wgrad_gemm_fp8_fp8_fp32_nt(a, sa, b, sb, out32)
    sb_rows = empty(512, 5)
    with pytest.raises(TypeError, match="out: dtype is bfloat16; expected float32"):
        ops.wgrad_gemm_fp8_fp8_fp32_nt(a, sa, b, sb_rows, out)
    with pytest.raises(TypeError, match="b: dtype is bfloat16; expected float8_e4m3fn"):
        ops.wgrad_gemm_fp8_fp8_fp32_nt(a, sa, empty(512, 640, dtype=torch.bfloat16), sb_rows, out32)
    with pytest.raises(ValueError, match=r"a_scales: shape is \[5, 256\]; expected \[256, 5\]"):
        ops.wgrad_gemm_fp8_fp8_fp32_nt(a, empty(5, 256), b, sb_rows, out32)
    # k-grouped
    ks = [256, 0, 144]
    ka, ksa, kb, ksb, kout = _fake_k_grouped(torch, 128, 256, ks)
    kgw = ops.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt
    with pytest.raises(ValueError, match="batch_sizes: has 2 entries for 3 groups"):
        kgw(ka, ksa, kb, ksb, kout, [256, 144])
    with pytest.raises(ValueError, match=r"batch_sizes\[1\] = 8 must be a multiple of 16"):
        kgw(ka, ksa, kb, ksb, kout, [256, 8, 136])
    with pytest.raises(ValueError, match=r"batch_sizes\[0\] = -16 must be a multiple of 16 and >= 0"):
        kgw(ka, ksa, kb, ksb, kout, [-16, 272, 144])
    with pytest.raises(TypeError, match="out: dtype is bfloat16; expected float32"):
        kgw(ka, ksa, kb, ksb, empty(3, 128, 256, dtype=torch.bfloat16), ks)
    with pytest.raises(ValueError, match=r"out: shape is \[128, 256\]; expected \[\*, \*, \*\]"):
        kgw(ka, ksa, kb, ksb, empty(128, 256), ks)
    with pytest.raises(ValueError, match="out: M = 100 must be a multiple of 8"):
        kgw(ka, ksa, kb, ksb, empty(3, 100, 256), ks)
    with pytest.raises(ValueError, match="out: N = 252 must be a multiple of 8"):
        kgw(ka, ksa, kb, ksb, empty(3, 128, 252), ks)
    with pytest.raises(ValueError, match="a: has 51200 elements; the groups need 53248"):
        kgw(ka, ksa, kb, ksb, kout, [256, 0, 160])                    # sum K 400 -> 416
    with pytest.raises(ValueError, match=r"a_scales: shape is \[3, 128\]; expected \[4, 128\]"):
        kgw(ka, empty(3, 128), kb, ksb, kout, ks)
    with pytest.raises(ValueError, match=r"b_scales: shape is \[4, 128\]; expected \[4, 256\]"):
        kgw(ka, ksa, kb, empty(4, 128), kout, ks)
    with pytest.raises(TypeError, match="a: dtype is bfloat16; expected float8_e4m3fn"):
        kgw(empty(128 * 400, dtype=torch.bfloat16), ksa, kb, ksb, kout, ks)
    with pytest.raises(TypeError, match="b_scales: dtype is bfloat16; expected float32"):
        kgw(ka, ksa, kb, empty(4, 256, dtype=torch.bfloat16), kout, ks)


def test_make_fx_traces_the_ops_on_fake_cuda_tensors(torch, fake):
    """Tracing needs no CUDA: a cast + cast + GEMM function becomes three fp8gemm ops."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def step(a, b, out):
        lhs = torch.ops.fp8gemm.per_token_cast_to_fp8(a)
        rhs = torch.ops.fp8gemm.per_block_cast_to_fp8(b)
        torch.ops.fp8gemm.gemm_fp8_fp8_bf16_nt(lhs[0], lhs[1], rhs[0], rhs[1], out)
        return out

    a = torch.empty((300, 1024), dtype=torch.bfloat16, device="cuda")
    b = torch.empty((512, 1024), dtype=torch.bfloat16, device="cuda")
    out = torch.empty((300, 512), dtype=torch.bfloat16, device="cuda")
    gm = make_fx(step)(a, b, out)
    targets = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
    assert [t for t in targets if t.startswith("fp8gemm.")] == [
        "fp8gemm.per_token_cast_to_fp8.default", "fp8gemm.per_block_cast_to_fp8.default",
        "fp8gemm.gemm_fp8_fp8_bf16_nt.default"], targets


# ---- opcheck on the CPU stand-ins ----------------------------------------------------------
# opcheck's test_schema compares each input before and after with torch.allclose, which has no
# float8 kernel; it runs for the casts (no e4m3 input) and is left out for the GEMMs.
WITHOUT_SCHEMA = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _cpu_problem(torch, m=200, n=256, k=384, groups=None):
    a, b = _quantized(torch, m, n if groups is None else groups * n, k)
    aq, sa = torch.ops.fp8gemm.per_token_cast_to_fp8(a)
    bq, sb = torch.ops.fp8gemm.per_block_cast_to_fp8(b)
    if groups is not None:
        bq, sb = bq.view(groups, n, k), sb.view(groups, n // 128, -1)
    return aq, sa, bq, sb


def test_opcheck_casts(torch, cpu_standins):
    for x in (torch.randn(200, 384).to(torch.bfloat16), torch.randn(7, 1008)):
        torch.library.opcheck(torch.ops.fp8gemm.per_token_cast_to_fp8.default, (x,))
        torch.library.opcheck(torch.ops.fp8gemm.per_block_cast_to_fp8.default, (x,))
    # M a multiple of 4 for the out= forms: opcheck's AOT tests hand the op a clone of each
    # mutated input made dense ((1, M) strides), which the library rejects unless M % 4 == 0;
    # torch.compile itself keeps the strides (tested below with M = 7).
    for x in (torch.randn(200, 384).to(torch.bfloat16), torch.randn(12, 1008)):
        m, k = x.shape
        kb, am = -(-k // 128), fp8gemm.get_tma_aligned_size(m)
        q = torch.empty((m, k), dtype=torch.float8_e4m3fn)
        torch.library.opcheck(torch.ops.fp8gemm.per_token_cast_to_fp8_out.default,
                              (x, q, torch.empty((kb, am)).as_strided((m, kb), (1, am))), test_utils=WITHOUT_SCHEMA)
        torch.library.opcheck(torch.ops.fp8gemm.per_block_cast_to_fp8_out.default,
                              (x, q, torch.empty((-(-m // 128), kb))), test_utils=WITHOUT_SCHEMA)


def _masked_a(torch, groups=3, m_max=64, k=384, seed=5):
    """Masked A quantized per group into [G, M_max, K] e4m3 and MN-major per-group scales
    [G, M_max, kb] with strides (kb*s, 1, s), s = get_tma_aligned_size(M_max)."""
    kb, s = -(-k // 128), fp8gemm.get_tma_aligned_size(m_max)
    a = torch.randn((groups, m_max, k), generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)
    aq = torch.empty((groups, m_max, k), dtype=torch.float8_e4m3fn)
    sa = torch.empty((groups, kb, s)).transpose(1, 2)[:, :m_max, :]
    for g in range(groups):
        torch.ops.fp8gemm.per_token_cast_to_fp8_out(a[g], aq[g], sa[g])
    return aq, sa


def test_opcheck_gemms(torch, cpu_standins):
    ops = torch.ops.fp8gemm
    aq, sa, bq, sb = _cpu_problem(torch)
    torch.library.opcheck(ops.gemm_fp8_fp8_bf16_nt.default, (aq, sa, bq, sb, torch.zeros(200, 256, dtype=torch.bfloat16)),
                          test_utils=WITHOUT_SCHEMA)
    aq, sa, bq, sb = _cpu_problem(torch, m=384, groups=3)
    out = torch.zeros(384, 256, dtype=torch.bfloat16)
    m_indices = torch.tensor([0] * 100 + [-1] * 28 + [2] * 128 + [-1] * 128, dtype=torch.int32)
    torch.library.opcheck(ops.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous.default, (aq, sa, bq, sb, out, m_indices),
                          test_utils=WITHOUT_SCHEMA)
    ends = torch.tensor([100, 200, 384], dtype=torch.int32)
    torch.library.opcheck(ops.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous_group_ends.default,
                          (aq, sa, bq, sb, out, ends), test_utils=WITHOUT_SCHEMA)
    am, sam = _masked_a(torch)
    torch.library.opcheck(ops.m_grouped_gemm_fp8_fp8_bf16_nt_masked.default,
                          (am, sam, bq, sb, torch.zeros(3, 64, 256, dtype=torch.bfloat16),
                           torch.tensor([64, 0, 17], dtype=torch.int32), 32), test_utils=WITHOUT_SCHEMA)


def _cpu_wgrad_operands(torch, m=200, n=256, k=384 + 48, seed=3):
    """The wgrad GEMM's operands: A and B both cast per token (1x128 scales, MN-major)."""
    a, b = _quantized(torch, m, n, k, seed)
    return torch.ops.fp8gemm.per_token_cast_to_fp8(a), torch.ops.fp8gemm.per_token_cast_to_fp8(b)


def _cpu_k_grouped(torch, m, n, ks, seed=0):
    """The k-grouped layout on CPU (as fp8gemm.testing.k_grouped_inputs builds it on a GPU):
    (a flat, a_scales [sum kb, M]), (b flat, b_scales [sum kb, N]) and each group's quantized
    (A_g, B_g) pairs (None for K = 0)."""
    g = torch.Generator().manual_seed(seed)
    cast = torch.ops.fp8gemm.per_token_cast_to_fp8
    pairs = [(cast(torch.randn((m, k), generator=g).to(torch.bfloat16)),
              cast(torch.randn((n, k), generator=g).to(torch.bfloat16))) if k else None for k in ks]

    def flat(side, rows):
        qs = [p[side] for p in pairs if p]
        data = torch.cat([q.reshape(-1) for q, _ in qs]) if qs else torch.empty(0, dtype=torch.float8_e4m3fn)
        scales = torch.cat([s.t() for _, s in qs]).contiguous() if qs else torch.empty((0, rows))
        return data, scales
    return flat(0, m), flat(1, n), pairs


def _wgrad_reference(lhs, rhs):
    """float64 A . B^T with 1x128 scales on both operands."""
    return _rows(*lhs) @ _rows(*rhs).t()


def test_opcheck_training_gemms(torch, cpu_standins):
    ops = torch.ops.fp8gemm
    aq, sa, bq, sb = _cpu_problem(torch)
    g = torch.Generator().manual_seed(4)
    c16 = (torch.randn((200, 256), generator=g) * 30).to(torch.bfloat16)
    c32 = torch.randn((200, 256), generator=g) * 30
    for op, c in ((ops.gemm_fp8_fp8_bf16_nt, c16), (ops.gemm_fp8_fp8_fp32_nt, c32)):
        torch.library.opcheck(op.default, (aq, sa, bq, sb, torch.zeros_like(c), c), test_utils=WITHOUT_SCHEMA)
        torch.library.opcheck(op.default, (aq, sa, bq, sb, c.clone()), {"accumulate": True},
                              test_utils=WITHOUT_SCHEMA)
    torch.library.opcheck(ops.gemm_fp8_fp8_fp32_nt.default, (aq, sa, bq, sb, torch.zeros_like(c32)),
                          test_utils=WITHOUT_SCHEMA)
    lhs, rhs = _cpu_wgrad_operands(torch)
    torch.library.opcheck(ops.wgrad_gemm_fp8_fp8_fp32_nt.default, (*lhs, *rhs, c32.clone()), test_utils=WITHOUT_SCHEMA)
    ks = [256, 0, 144]
    (a, sa), (b, sb), _ = _cpu_k_grouped(torch, 64, 128, ks)
    torch.library.opcheck(ops.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt.default,
                          (a, sa, b, sb, torch.randn((3, 64, 128), generator=g), ks), test_utils=WITHOUT_SCHEMA)


# ---- torch.compile(fullgraph=True) through the public functions ----------------------------
def _dense_step(a, b, out):
    lhs = fp8gemm.per_token_cast_to_fp8(a)
    rhs = fp8gemm.per_block_cast_to_fp8(b)
    fp8gemm.gemm_fp8_fp8_bf16_nt(lhs, rhs, out)
    return out


def _dense_step_ops(a, b, out):
    """_dense_step spelled with the ops: the eager public functions reject CPU tensors."""
    import torch
    aq, sa = torch.ops.fp8gemm.per_token_cast_to_fp8(a)
    bq, sb = torch.ops.fp8gemm.per_block_cast_to_fp8(b)
    torch.ops.fp8gemm.gemm_fp8_fp8_bf16_nt(aq, sa, bq, sb, out)
    return out


@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
def test_public_functions_compile_with_fullgraph(torch, cpu_standins, backend):
    """No graph break: the public functions become the ops (aot_eager and inductor also
    functionalize the mutation of out); the compiled result equals the eager one bit for bit."""
    if backend == "inductor" and not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("inductor on CPU needs a C++ compiler")
    torch._dynamo.reset()
    compiled = torch.compile(_dense_step, fullgraph=True, backend=backend)
    for seed, (m, n, k) in enumerate([(200, 256, 384), (64, 512, 1024)]):
        a, b = _quantized(torch, m, n, k, seed)
        got = torch.full((m, n), float("nan"), dtype=torch.bfloat16)
        assert compiled(a, b, got) is got
        want = _dense_step_ops(a, b, torch.full((m, n), float("nan"), dtype=torch.bfloat16))
        assert torch.equal(got, want)
        ref = (_rows(*torch.ops.fp8gemm.per_token_cast_to_fp8(a)) @ _blocks(*torch.ops.fp8gemm.per_block_cast_to_fp8(b)).t())
        assert torch.equal(got, ref.to(torch.bfloat16))


def test_grouped_public_functions_compile_with_fullgraph(torch, cpu_standins):
    def step(aq, sa, bq, sb, out_c, m_indices, out_e, ends, am, sam, out_m, masked_m):
        fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((aq, sa), (bq, sb), out_c, m_indices)
        fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((aq, sa), (bq, sb), out_e, group_ends=ends)
        fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked((am, sam), (bq, sb), out_m, masked_m, 32)

    def step_ops(aq, sa, bq, sb, out_c, m_indices, out_e, ends, am, sam, out_m, masked_m):
        ops = torch.ops.fp8gemm
        ops.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(aq, sa, bq, sb, out_c, m_indices)
        ops.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous_group_ends(aq, sa, bq, sb, out_e, ends)
        ops.m_grouped_gemm_fp8_fp8_bf16_nt_masked(am, sam, bq, sb, out_m, masked_m, 32)

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    aq, sa, bq, sb = _cpu_problem(torch, m=384, groups=3)
    am, sam = _masked_a(torch)
    args = dict(m_indices=torch.tensor([0] * 100 + [-1] * 28 + [2] * 128 + [-1] * 128, dtype=torch.int32),
                ends=torch.tensor([100, 200, 384], dtype=torch.int32), masked_m=torch.tensor([64, 0, 17], dtype=torch.int32))

    def outs():
        nan = float("nan")
        return dict(out_c=torch.full((384, 256), nan, dtype=torch.bfloat16),
                    out_e=torch.full((384, 256), nan, dtype=torch.bfloat16),
                    out_m=torch.full((3, 64, 256), nan, dtype=torch.bfloat16))

    got, want = outs(), outs()
    compiled(aq, sa, bq, sb, am=am, sam=sam, **got, **args)
    step_ops(aq, sa, bq, sb, am=am, sam=sam, **want, **args)
    for name in got:     # bit for bit, the unwritten (NaN) rows included
        assert torch.equal(got[name].view(torch.int16), want[name].view(torch.int16)), name
    assert torch.isnan(got["out_c"][100:128]).all() and not torch.isnan(got["out_c"][:100]).any()
    assert not torch.isnan(got["out_m"][0]).any() and torch.isnan(got["out_m"][1]).all()


# The training GEMMs, one compiled function each: (what it calls, its op spelling for the eager
# twin, the problems it runs on). Each problem: a dict of inputs made by _training_inputs.
def _bf16_c(a, b, c, out):
    fp8gemm.gemm_fp8_fp8_bf16_nt(fp8gemm.per_token_cast_to_fp8(a), fp8gemm.per_block_cast_to_fp8(b), out, c=c)


def _bf16_c_is_out(a, b, out):
    fp8gemm.gemm_fp8_fp8_bf16_nt(fp8gemm.per_token_cast_to_fp8(a), fp8gemm.per_block_cast_to_fp8(b), out, c=out)


def _fp32(a, b, out):
    fp8gemm.gemm_fp8_fp8_fp32_nt(fp8gemm.per_token_cast_to_fp8(a), fp8gemm.per_block_cast_to_fp8(b), out)


def _fp32_c_is_out(a, b, out):
    fp8gemm.gemm_fp8_fp8_fp32_nt(fp8gemm.per_token_cast_to_fp8(a), fp8gemm.per_block_cast_to_fp8(b), out, c=out)


def _wgrad(a, b, out):
    fp8gemm.wgrad_gemm_fp8_fp8_fp32_nt(fp8gemm.per_token_cast_to_fp8(a), fp8gemm.per_token_cast_to_fp8(b), out)


def _k_grouped(a, sa, b, sb, out, ks):
    fp8gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt((a, sa), (b, sb), out, ks)


def _ops_twin(case, torch):
    """The case's function spelled with the ops (the eager public functions reject CPU tensors)."""
    ops = torch.ops.fp8gemm
    tok, blk = ops.per_token_cast_to_fp8, ops.per_block_cast_to_fp8
    return {"bf16_c": lambda a, b, c, out: ops.gemm_fp8_fp8_bf16_nt(*tok(a), *blk(b), out, c),
            "bf16_c=out": lambda a, b, out: ops.gemm_fp8_fp8_bf16_nt(*tok(a), *blk(b), out, accumulate=True),
            "fp32": lambda a, b, out: ops.gemm_fp8_fp8_fp32_nt(*tok(a), *blk(b), out),
            "fp32_c=out": lambda a, b, out: ops.gemm_fp8_fp8_fp32_nt(*tok(a), *blk(b), out, accumulate=True),
            "wgrad": lambda a, b, out: ops.wgrad_gemm_fp8_fp8_fp32_nt(*tok(a), *tok(b), out),
            "k_grouped": lambda a, sa, b, sb, out, ks: ops.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt(a, sa, b, sb, out, ks),
            }[case]


TRAINING_CASES = {"bf16_c": _bf16_c, "bf16_c=out": _bf16_c_is_out, "fp32": _fp32, "fp32_c=out": _fp32_c_is_out,
                  "wgrad": _wgrad, "k_grouped": _k_grouped}
# the op each case's graph holds, and the (c, accumulate) it is called with
TRAINING_OPS = {"bf16_c": ("gemm_fp8_fp8_bf16_nt", "c", False), "bf16_c=out": ("gemm_fp8_fp8_bf16_nt", None, True),
                "fp32": ("gemm_fp8_fp8_fp32_nt", None, False), "fp32_c=out": ("gemm_fp8_fp8_fp32_nt", None, True),
                "wgrad": ("wgrad_gemm_fp8_fp8_fp32_nt", None, False),
                "k_grouped": ("k_grouped_wgrad_gemm_fp8_fp8_fp32_nt", None, False)}


def _training_inputs(torch, case, run):
    """(inputs as keyword arguments, float64 answer). Two problems per case, the second of other
    sizes (a recompile, with dynamic shapes); out starts random where the GEMM adds to it, NaN
    where it must write every element."""
    g = torch.Generator().manual_seed(100 + run)
    m, n, k = [(200, 256, 384 + 48), (64, 136, 1040)][run]
    if case == "k_grouped":
        m, n, ks = [(64, 128, [256, 0, 144]), (40, 24, [16, 400, 0])][run]
        (a, sa), (b, sb), pairs = _cpu_k_grouped(torch, m, n, ks, seed=run)
        out = torch.randn((len(ks), m, n), generator=g) * 30
        want = out.double().clone()
        for i, p in enumerate(pairs):
            if p:
                want[i] += _wgrad_reference(*p)
        return dict(a=a, sa=sa, b=b, sb=sb, out=out, ks=ks), want
    a, b = _quantized(torch, m, n, k, seed=run)
    dtype = torch.bfloat16 if case.startswith("bf16") else torch.float32
    tok, blk = torch.ops.fp8gemm.per_token_cast_to_fp8, torch.ops.fp8gemm.per_block_cast_to_fp8
    prod = _wgrad_reference(tok(a), tok(b)) if case == "wgrad" else _rows(*tok(a)) @ _blocks(*blk(b)).t()
    old = (torch.randn((m, n), generator=g) * 30).to(dtype)
    if case == "bf16_c":
        return dict(a=a, b=b, c=old, out=torch.full((m, n), float("nan"), dtype=dtype)), prod + old.double()
    if case == "fp32":
        return dict(a=a, b=b, out=torch.full((m, n), float("nan"), dtype=dtype)), prod
    return dict(a=a, b=b, out=old), prod + old.double()     # c = out, and wgrad: out += A.B^T


def _recording(torch, backend, graphs):
    """``backend``, keeping each Dynamo graph it is handed."""
    def compile_graph(gm, example_inputs):
        graphs.append(gm)
        if backend == "eager":
            return gm.forward
        return torch._dynamo.lookup_backend(backend)(gm, example_inputs)
    return compile_graph


@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
@pytest.mark.parametrize("case", list(TRAINING_CASES))
def test_training_gemms_compile_with_fullgraph(torch, cpu_standins, case, backend):
    """Each training GEMM's public function compiles with no graph break into its op; c = out
    becomes accumulate=True (no c: an op may not take out twice); the compiled result equals the
    ops run eagerly bit for bit (out accumulated where it should be) and the float64 answer."""
    if backend == "inductor" and not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("inductor on CPU needs a C++ compiler")
    torch._dynamo.reset()
    graphs = []
    compiled = torch.compile(TRAINING_CASES[case], fullgraph=True, backend=_recording(torch, backend, graphs))
    for run in range(2):
        inputs, want = _training_inputs(torch, case, run)
        twin = {name: x.clone() if name == "out" else x for name, x in inputs.items()}
        assert compiled(**inputs) is None
        _ops_twin(case, torch)(**twin)
        got = inputs["out"]
        assert torch.equal(got.view(torch.int16 if got.dtype == torch.bfloat16 else torch.int32),
                           twin["out"].view(torch.int16 if got.dtype == torch.bfloat16 else torch.int32)), run
        tol = 1e-2 if got.dtype == torch.bfloat16 else 1e-6
        assert torch.isfinite(got).all()
        assert ((got.double() - want).norm() / want.norm()).item() < tol, run
    name, c, accumulate = TRAINING_OPS[case]
    calls = [node for gm in graphs for node in gm.graph.nodes
             if node.op == "call_function" and str(node.target).startswith(f"fp8gemm.{name}")]
    assert len(calls) == len(graphs) >= 1, [str(gm.graph) for gm in graphs]
    for node in calls:
        schema = node.target.default._schema            # Dynamo's graphs call the packet
        bound = dict(zip([a.name for a in schema.arguments], node.args), **node.kwargs)
        assert (bound.get("c") is None) == (c is None), node.format_node()
        assert bound.get("accumulate", False) is accumulate, node.format_node()


def test_k_grouped_batch_sizes_may_be_a_tuple_under_compile(torch, cpu_standins):
    torch._dynamo.reset()
    inputs, want = _training_inputs(torch, "k_grouped", 0)
    inputs["ks"] = tuple(inputs["ks"])
    torch.compile(_k_grouped, fullgraph=True, backend="aot_eager")(**inputs)
    assert ((inputs["out"].double() - want).norm() / want.norm()).item() < 1e-6


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_out_variants_of_the_casts_compile(torch, cpu_standins, backend):
    """The mutated q and scales reach the op with their own strides (the library checks them)."""
    if backend == "inductor" and not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("inductor on CPU needs a C++ compiler")

    def step(x, q, s):
        fp8gemm.per_token_cast_to_fp8(x, out=(q, s))

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    x = torch.randn(7, 256)                    # M % 4 != 0: the scales' strides are (1, 8)
    q = torch.empty((7, 256), dtype=torch.float8_e4m3fn)
    s = torch.full((2, 8), float("nan")).t()[:7]
    compiled(x, q, s)
    qn, sn = reference.per_token_cast_to_fp8(x.numpy())
    assert torch.equal(q.view(torch.uint8), _e4m3(torch, qn).view(torch.uint8))
    assert torch.equal(s, torch.from_numpy(sn))


def test_unsupported_arguments_fail_clearly_under_compile(torch, cpu_standins):
    def step(a, b, out):
        lhs, rhs = fp8gemm.per_token_cast_to_fp8(a), fp8gemm.per_block_cast_to_fp8(b)
        fp8gemm.gemm_fp8_fp8_bf16_nt(lhs, rhs, out, stream=7)

    torch._dynamo.reset()
    a, b = _quantized(torch, 64, 128, 128)
    with pytest.raises(Exception, match="stream= is not supported under torch.compile"):
        torch.compile(step, fullgraph=True, backend="eager")(a, b, torch.empty(64, 128, dtype=torch.bfloat16))

    def wgrad_step(a, b, out32):
        lhs, rhs = fp8gemm.per_token_cast_to_fp8(a), fp8gemm.per_token_cast_to_fp8(b)
        fp8gemm.wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out32, config=fp8gemm.GemmConfig(128, 128, 3))

    torch._dynamo.reset()
    with pytest.raises(Exception, match="wgrad_gemm_fp8_fp8_fp32_nt: config= is not supported"):
        torch.compile(wgrad_step, fullgraph=True, backend="eager")(a, b, torch.empty(64, 128))

    def k_grouped_step(a, sa, b, sb, out, ks):
        fp8gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt((a, sa), (b, sb), out, ks, stream=0)

    torch._dynamo.reset()
    inputs, _ = _training_inputs(torch, "k_grouped", 0)
    with pytest.raises(Exception, match="k_grouped_wgrad_gemm_fp8_fp8_fp32_nt: stream= is not supported"):
        torch.compile(k_grouped_step, fullgraph=True, backend="eager")(**inputs)
