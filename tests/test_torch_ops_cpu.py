"""The torch custom ops (fp8gemm.torch_ops) without a GPU: schemas, fake implementations (shapes,
strides, dtypes, argument errors), torch.library.opcheck, and torch.compile(fullgraph=True) of
functions calling the public fp8gemm functions.

Without a GPU the ops' real kernels cannot run, so the tests that execute ops register CPU
stand-ins (float64 matmuls, the NumPy reference quantizers) for them. Each stand-in first runs the
library's own argument checks on the same tensors (stopping at the first device query), then
allocates and writes as the real implementation does; so opcheck and torch.compile test the op
registrations (schema, mutation, fake outputs, tracing) and that what a compiled graph hands the
ops is accepted by the library, not the kernels: those are compared with the compiled graphs on a
GPU in test_torch_compile_gpu.py. Every test here but the first skips without torch.
"""
from __future__ import annotations

import shutil
import subprocess
import sys

from unittest import mock

import numpy as np
import pytest

import fp8gemm
from fp8gemm import DeviceArray, arrays, reference

OPS = ("gemm_fp8_fp8_bf16_nt", "m_grouped_gemm_fp8_fp8_bf16_nt_contiguous",
       "m_grouped_gemm_fp8_fp8_bf16_nt_contiguous_group_ends", "m_grouped_gemm_fp8_fp8_bf16_nt_masked",
       "per_token_cast_to_fp8", "per_token_cast_to_fp8_out", "per_block_cast_to_fp8", "per_block_cast_to_fp8_out")


def test_importing_fp8gemm_does_not_import_torch():
    code = "import sys, fp8gemm; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


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
        def run(*args):
            def stop(*_a, **_k):
                raise _Validated
            wrapped = [_as_device_array(x) if hasattr(x, "data_ptr") else x for x in args]
            with mock.patch.object(arrays, "check_same_device", stop):
                try:
                    public_fn(*wrapped)
                except _Validated:
                    pass
            return standin(*args)
        return run
    return check_then_run


# The library's functions as imported, for the stand-ins' checks.
_GEMM, _CONTIGUOUS, _MASKED = (fp8gemm.gemm_fp8_fp8_bf16_nt, fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous,
                               fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked)
_TOKEN, _BLOCK = fp8gemm.per_token_cast_to_fp8, fp8gemm.per_block_cast_to_fp8


def _ops_args(fn):
    """The public function called with an op's flat arguments (a, a_scales, b, b_scales, out, ...)."""
    return lambda a, sa, b, sb, out, *rest: fn((a, sa), (b, sb), out, *rest)


@validated_by_the_library(_ops_args(_GEMM))
def _gemm_cpu(a, a_scales, b, b_scales, out):
    out.copy_(_rows(a, a_scales) @ _blocks(b, b_scales).t())


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

    kernels = {"gemm_fp8_fp8_bf16_nt": _gemm_cpu, "m_grouped_gemm_fp8_fp8_bf16_nt_contiguous": _contiguous_cpu,
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
    assert schema("gemm_fp8_fp8_bf16_nt") == ("fp8gemm::gemm_fp8_fp8_bf16_nt(Tensor a, Tensor a_scales, Tensor b, "
                                              "Tensor b_scales, Tensor(a4!) out) -> ()")
    assert schema("m_grouped_gemm_fp8_fp8_bf16_nt_masked").endswith(
        "Tensor(a4!) out, Tensor masked_m, SymInt expected_m) -> ()")
    for name in OPS[1:3]:
        assert "Tensor(a4!) out" in schema(name) and schema(name).endswith("-> ()")
    for name in ("per_token_cast_to_fp8", "per_block_cast_to_fp8"):
        assert schema(name) == f"fp8gemm::{name}(Tensor x) -> (Tensor, Tensor)"
        assert schema(name + "_out") == f"fp8gemm::{name}_out(Tensor x, Tensor(a1!) q, Tensor(a2!) scales) -> ()"


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
