"""torch.compile(fullgraph=True) (inductor) of functions calling fp8gemm's public functions, which
``import fp8gemm.torch_ops`` turns into the fp8gemm custom ops in the graph: a per-token cast, a
per-block cast and a dense GEMM; a cast and the contiguous GEMM in both forms plus per-group casts
and the masked GEMM. Each compiled result is compared bit for bit with the same function run
eagerly and with the float64 reference; the dense step is also captured, compiled, in a
torch.cuda.graph and replayed with new data. The training GEMMs likewise: FP32 output, c = out
(bf16 and FP32; the op's accumulate=True), wgrad and k-grouped wgrad (outputs start random and
must be accumulated into; a K = 0 group left as it was). Fresh random inputs every run, outputs
poisoned with NaN before each one where every element must be written. Last,
torch.library.opcheck on every op with real CUDA tensors (the fake implementations' shapes and
strides against the real outputs)."""
from __future__ import annotations

import pytest

import fp8gemm
from fp8gemm.testing import ContiguousLayout, check, k_grouped_inputs, reference, reference_wgrad

pytestmark = pytest.mark.gpu
DEVICE = "cuda"        # the only device here; a module constant so the steps read plainly


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    import fp8gemm.torch_ops  # noqa: F401  (registers the ops and the compile substitutions)
    return torch


@pytest.fixture
def fresh_dynamo(torch):
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _randn(torch, shape, seed):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    return torch.randn(shape, device=DEVICE, generator=g).to(torch.bfloat16)


def _nan(torch, shape, dtype=None):
    return torch.full(shape, float("nan"), device=DEVICE, dtype=dtype or torch.bfloat16)


def _randn32(torch, shape, seed, scale=1.0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    return torch.randn(shape, device=DEVICE, generator=g) * scale


def _bits(torch, t):
    """Integer view of the same bytes: torch.equal on it compares bit for bit, NaNs included."""
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def _same(torch, x, y) -> bool:
    return x.shape == y.shape and torch.equal(_bits(torch, x), _bits(torch, y))


def _sync(torch):
    if DEVICE == "cuda":
        torch.cuda.synchronize()


# ---- the functions compiled ----------------------------------------------------------------
def dense_step(a, b, out):
    lhs = fp8gemm.per_token_cast_to_fp8(a)
    rhs = fp8gemm.per_block_cast_to_fp8(b)
    fp8gemm.gemm_fp8_fp8_bf16_nt(lhs, rhs, out)
    return lhs, rhs


def grouped_step(x, bq, sb, m_indices, out_c, group_ends, out_e, a_m, aq_m, sa_m, masked_m, out_m):
    lhs = fp8gemm.per_token_cast_to_fp8(x)
    fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(lhs, (bq, sb), out_c, m_indices)
    fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(lhs, (bq, sb), out_e, group_ends=group_ends)
    for g in range(a_m.shape[0]):                  # per-group casts into views of the masked A
        fp8gemm.per_token_cast_to_fp8(a_m[g], out=(aq_m[g], sa_m[g]))
    fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked((aq_m, sa_m), (bq, sb), out_m, masked_m, 64)
    return lhs


# ---- dense ---------------------------------------------------------------------------------
def _check_dense(torch, a, b, out, lhs, rhs, what):
    """``out``/``lhs``/``rhs`` of a compiled or replayed dense_step against the eager run on the
    same inputs (bit for bit) and the float64 reference."""
    want_out = _nan(torch, out.shape)
    want_lhs, want_rhs = dense_step(a, b, want_out)
    _sync(torch)
    m = a.shape[0]
    assert lhs[1].stride() == want_lhs[1].stride() == (1, fp8gemm.get_tma_aligned_size(m)), what
    for got, want, name in ((lhs, want_lhs, "per-token"), (rhs, want_rhs, "per-block")):
        assert _same(torch, got[0], want[0]) and _same(torch, got[1], want[1]), f"{what}: {name} cast differs"
    assert _same(torch, out, want_out), f"{what}: GEMM output differs from eager"
    err, _ = check(torch, out, reference(torch, lhs, rhs))
    assert err <= 2e-3, (what, err)


def test_dense_step_compiles_and_matches_eager(torch, fresh_dynamo):
    compiled = torch.compile(dense_step, fullgraph=True)
    # the second shape recompiles (M and K change), exercising the fake kernels once more
    for i, (m, n, k) in enumerate([(300, 1024, 1536), (300, 1024, 1536), (77, 2048, 7168)]):
        a, b = _randn(torch, (m, k), 10 + i), _randn(torch, (n, k), 20 + i)
        out = _nan(torch, (m, n))
        lhs, rhs = compiled(a, b, out)
        _sync(torch)
        _check_dense(torch, a, b, out, lhs, rhs, f"run {i} ({m}x{n}x{k})")


def test_compiled_dense_step_replays_in_a_cuda_graph(torch, fresh_dynamo):
    m, n, k = 300, 1024, 1536
    compiled = torch.compile(dense_step, fullgraph=True)
    a, b = _randn(torch, (m, k), 1), _randn(torch, (n, k), 2)
    out = _nan(torch, (m, n))
    # compile, plan and load every kernel outside the capture, on a side stream as torch advises
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            compiled(a, b, out)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        lhs, rhs = compiled(a, b, out)
    for i in range(3):
        a.copy_(_randn(torch, (m, k), 30 + i))
        b.copy_(_randn(torch, (n, k), 40 + i))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        _check_dense(torch, a, b, out, lhs, rhs, f"replay {i}")


# ---- grouped -------------------------------------------------------------------------------
def _masked_scales(torch, groups, m_max, kb):
    """The masked GEMM's A scales, MN-major per group: [G, M_max, kb] with strides (kb*s, 1, s),
    s = get_tma_aligned_size(M_max); NaN until a cast writes them."""
    s = fp8gemm.get_tma_aligned_size(m_max)
    return torch.full((groups, kb, s), float("nan"), device=DEVICE).transpose(1, 2)[:, :m_max, :]


class GroupedInputs:
    """Inputs of grouped_step: contiguous groups of [200, 0, 90] rows (either form), masked
    groups of up to 128 rows with masked_m = [128, 0, 33]; B shared by both."""

    def __init__(self, torch, seed, n=512, k=1024):
        groups, m_max = 3, 128
        self.lay = ContiguousLayout.build([200, 0, 90])
        kb, s = fp8gemm.ceil_div(k, 128), fp8gemm.get_tma_aligned_size(m_max)
        self.x = _randn(torch, (self.lay.m_sum, k), seed)
        b = _randn(torch, (groups, n, k), seed + 1)
        self.bq = torch.empty((groups, n, k), device=DEVICE, dtype=torch.float8_e4m3fn)
        self.sb = torch.empty((groups, n // 128, kb), device=DEVICE)
        for g in range(groups):
            fp8gemm.per_block_cast_to_fp8(b[g], out=(self.bq[g], self.sb[g]))
        int32 = lambda v: torch.tensor(v, dtype=torch.int32, device=DEVICE)  # noqa: E731
        self.m_indices, self.group_ends = int32(self.lay.m_indices()), int32(self.lay.group_ends())
        self.a_m = _randn(torch, (groups, m_max, k), seed + 2)
        self.aq_m = torch.empty((groups, m_max, k), device=DEVICE, dtype=torch.float8_e4m3fn)
        self.sa_m = _masked_scales(torch, groups, m_max, kb)
        self.masked = [128, 0, 33]
        self.masked_m = int32(self.masked)
        self.out_c = _nan(torch, (self.lay.m_sum, n))
        self.out_e = _nan(torch, (self.lay.m_sum, n))
        self.out_m = _nan(torch, (groups, m_max, n))

    def args(self):
        return (self.x, self.bq, self.sb, self.m_indices, self.out_c, self.group_ends, self.out_e, self.a_m,
                self.aq_m, self.sa_m, self.masked_m, self.out_m)

    def eager_twin(self, torch):
        """The same inputs with new output buffers (poisoned), for the eager run."""
        twin = object.__new__(GroupedInputs)
        twin.__dict__.update(self.__dict__)
        twin.aq_m = torch.empty_like(self.aq_m)
        twin.sa_m = _masked_scales(torch, *self.sa_m.shape)
        twin.out_c, twin.out_e, twin.out_m = (_nan(torch, t.shape) for t in (self.out_c, self.out_e, self.out_m))
        return twin


def _check_grouped(torch, got: GroupedInputs, lhs, want: GroupedInputs, want_lhs, what):
    assert _same(torch, lhs[0], want_lhs[0]) and _same(torch, lhs[1], want_lhs[1]), f"{what}: cast differs"
    lay = got.lay
    for g, s, e in lay.valid():
        ref = reference(torch, (lhs[0][s:e], lhs[1][s:e]), (got.bq[g], got.sb[g]))
        for name in ("out_c", "out_e"):
            o, w = getattr(got, name)[s:e], getattr(want, name)[s:e]
            assert _same(torch, o, w), f"{what}: {name} group {g} differs from eager"
            err, _ = check(torch, o, ref)
            assert err <= 2e-3, (what, name, g, err)
    for s, e in lay.unwritten("indices"):
        assert torch.isnan(got.out_c[s:e]).all(), f"{what}: out_c rows [{s}, {e}) written"
    for s, e in lay.unwritten("group_ends"):
        assert torch.isnan(got.out_e[s:e]).all(), f"{what}: out_e rows [{s}, {e}) written"
    assert _same(torch, got.aq_m, want.aq_m), f"{what}: masked A cast differs"
    for g, rows in enumerate(got.masked):
        assert _same(torch, got.sa_m[g], want.sa_m[g]), f"{what}: masked A scales of group {g} differ"
        if rows:
            o = got.out_m[g, :rows]
            assert _same(torch, o, want.out_m[g, :rows]), f"{what}: out_m group {g} differs from eager"
            err, _ = check(torch, o, reference(torch, (got.aq_m[g, :rows], got.sa_m[g, :rows]),
                                               (got.bq[g], got.sb[g])))
            assert err <= 2e-3, (what, "masked", g, err)
        if rows == 0:
            assert torch.isnan(got.out_m[g]).all(), f"{what}: out_m group {g} written with masked_m = 0"


def test_grouped_step_compiles_and_matches_eager(torch, fresh_dynamo):
    compiled = torch.compile(grouped_step, fullgraph=True)
    for i in range(2):
        got = GroupedInputs(torch, seed=100 + 10 * i)
        want = got.eager_twin(torch)
        lhs = compiled(*got.args())
        want_lhs = grouped_step(*want.args())
        _sync(torch)
        _check_grouped(torch, got, lhs, want, want_lhs, f"run {i}")


# ---- training GEMMs -------------------------------------------------------------------------
def fp32_step(a, b, out):
    lhs, rhs = fp8gemm.per_token_cast_to_fp8(a), fp8gemm.per_block_cast_to_fp8(b)
    fp8gemm.gemm_fp8_fp8_fp32_nt(lhs, rhs, out)
    return lhs, rhs


def bf16_accumulate_step(a, b, out):
    lhs, rhs = fp8gemm.per_token_cast_to_fp8(a), fp8gemm.per_block_cast_to_fp8(b)
    fp8gemm.gemm_fp8_fp8_bf16_nt(lhs, rhs, out, c=out)          # the op gets accumulate=True
    return lhs, rhs


def fp32_accumulate_step(a, b, out):
    lhs, rhs = fp8gemm.per_token_cast_to_fp8(a), fp8gemm.per_block_cast_to_fp8(b)
    fp8gemm.gemm_fp8_fp8_fp32_nt(lhs, rhs, out, c=out)
    return lhs, rhs


def wgrad_step(a, b, out):
    lhs, rhs = fp8gemm.per_token_cast_to_fp8(a), fp8gemm.per_token_cast_to_fp8(b)   # 1x128 scales on both
    fp8gemm.wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out)
    return lhs, rhs


def k_grouped_step(a, sa, b, sb, out, ks):
    fp8gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt((a, sa), (b, sb), out, ks)


TRAINING_STEPS = {"fp32": fp32_step, "bf16_c=out": bf16_accumulate_step, "fp32_c=out": fp32_accumulate_step,
                  "wgrad": wgrad_step}


def _training_out(torch, case, shape, seed):
    """The output as the step starts: NaN where every element must be written (fp32), random
    where the GEMM adds to it (c = out, wgrad)."""
    if case == "fp32":
        return _nan(torch, shape, torch.float32)
    if case == "bf16_c=out":
        return _randn32(torch, shape, seed, scale=10.0).to(torch.bfloat16)
    return _randn32(torch, shape, seed, scale=50.0)


@pytest.mark.parametrize("case", list(TRAINING_STEPS))
def test_training_step_compiles_and_matches_eager(torch, fresh_dynamo, case):
    """fp32 out, bf16 and fp32 c = out, and wgrad (out +=) under torch.compile(fullgraph=True):
    bit for bit the eager step on the same inputs and starting out, and the float64 reference
    (plus the starting out where it accumulates). The last shape recompiles."""
    step = TRAINING_STEPS[case]
    compiled = torch.compile(step, fullgraph=True)
    for i, (m, n, k) in enumerate([(300, 1000, 1040), (300, 1000, 1040), (77, 2112, 7168 + 48)]):
        what = f"{case} run {i} ({m}x{n}x{k})"
        a, b = _randn(torch, (m, k), 50 + i), _randn(torch, (n, k), 60 + i)
        out = _training_out(torch, case, (m, n), 70 + i)
        old = out.clone()
        want_out = out.clone()
        lhs, rhs = compiled(a, b, out)
        want_lhs, want_rhs = step(a, b, want_out)
        _sync(torch)
        for got, want, name in ((lhs, want_lhs, "A cast"), (rhs, want_rhs, "B cast")):
            assert _same(torch, got[0], want[0]) and _same(torch, got[1], want[1]), f"{what}: {name} differs"
        assert _same(torch, out, want_out), f"{what}: GEMM output differs from eager"
        assert torch.isfinite(out).all(), f"{what}: NaN/Inf in the output"
        ref = reference_wgrad(torch, lhs, rhs) if case == "wgrad" else reference(torch, lhs, rhs)
        if case == "fp32":
            err = ((out.double() - ref).norm() / ref.norm()).item()
            assert err < 1e-3, (what, err)
        elif case == "bf16_c=out":                        # one bf16 rounding of old + A.B
            want = old.double() + ref
            err = ((out.double() - want).norm() / want.norm()).item()
            assert err < 2e-3, (what, err)
        else:                                             # fp32: out - old is the product
            err = ((out.double() - old.double() - ref).norm() / ref.norm()).item()
            assert err < 1e-3, (what, err)


def test_k_grouped_step_compiles_and_matches_eager(torch, fresh_dynamo):
    """The k-grouped wgrad GEMM under torch.compile(fullgraph=True): groups with K tails and one
    with K = 0 (its slice left as it was), the groups' K a host list (the last problem, other
    K and sizes, recompiles); bit for bit the eager call, and each group's float64 reference
    added to its starting slice."""
    compiled = torch.compile(k_grouped_step, fullgraph=True)
    for i, (m, n, ks) in enumerate([(256, 384, [1040, 0, 272]), (256, 384, [1040, 0, 272]),
                                    (128, 512, [0, 528, 144])]):
        what = f"run {i} ({m}x{n}, K {ks})"
        (a, sa), (b, sb), qa, qb = k_grouped_inputs(torch, m, n, ks, seed=80 + i)
        out = _randn32(torch, (len(ks), m, n), seed=90 + i, scale=20.0)
        old, want_out = out.clone(), out.clone()
        compiled(a, sa, b, sb, out, ks)
        k_grouped_step(a, sa, b, sb, want_out, ks)
        _sync(torch)
        assert _same(torch, out, want_out), f"{what}: output differs from eager"
        for g, k in enumerate(ks):
            if k == 0:
                assert _same(torch, out[g], old[g]), f"{what}: group {g} has K = 0 and was written"
                continue
            ref = reference_wgrad(torch, qa[g], qb[g])
            assert torch.isfinite(out[g]).all(), (what, g)
            err = ((out[g].double() - old[g].double() - ref).norm() / ref.norm()).item()
            assert err < 1e-3, (what, g, err)


# ---- opcheck with real kernels -------------------------------------------------------------
# test_schema compares inputs with torch.allclose, which has no float8 kernel: left out for the
# ops that take e4m3 tensors. Outputs start as zeros: opcheck compares with assert_close, for
# which the NaN of rows a grouped GEMM leaves unwritten would count as a difference.
WITHOUT_SCHEMA = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def test_opcheck_every_op_on_the_gpu(torch):
    ops = torch.ops.fp8gemm
    x = _randn(torch, (300, 1536), 7)
    torch.library.opcheck(ops.per_token_cast_to_fp8.default, (x,))
    torch.library.opcheck(ops.per_block_cast_to_fp8.default, (x,))
    lhs, rhs = fp8gemm.per_token_cast_to_fp8(x), fp8gemm.per_block_cast_to_fp8(_randn(torch, (1024, 1536), 8))
    am = fp8gemm.get_tma_aligned_size(300)          # 300: a multiple of 4 (see the CPU test's opcheck)
    scales = torch.empty((12, am), device=DEVICE).t()[:300]     # MN-major, as the library allocates
    torch.library.opcheck(ops.per_token_cast_to_fp8_out.default, (x, torch.empty_like(lhs[0]), scales),
                          test_utils=WITHOUT_SCHEMA)
    torch.library.opcheck(ops.per_block_cast_to_fp8_out.default,
                          (x, torch.empty_like(lhs[0]), torch.empty((3, 12), device=DEVICE)), test_utils=WITHOUT_SCHEMA)
    torch.library.opcheck(ops.gemm_fp8_fp8_bf16_nt.default, (*lhs, *rhs, torch.zeros((300, 1024), device=DEVICE,
                                                                                 dtype=torch.bfloat16)),
                          test_utils=WITHOUT_SCHEMA)
    p = GroupedInputs(torch, seed=9)
    aq, sa = fp8gemm.per_token_cast_to_fp8(p.x)
    torch.library.opcheck(ops.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous.default,
                          (aq, sa, p.bq, p.sb, torch.zeros_like(p.out_c), p.m_indices), test_utils=WITHOUT_SCHEMA)
    torch.library.opcheck(ops.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous_group_ends.default,
                          (aq, sa, p.bq, p.sb, torch.zeros_like(p.out_e), p.group_ends), test_utils=WITHOUT_SCHEMA)
    for g in range(3):
        fp8gemm.per_token_cast_to_fp8(p.a_m[g], out=(p.aq_m[g], p.sa_m[g]))
    torch.library.opcheck(ops.m_grouped_gemm_fp8_fp8_bf16_nt_masked.default,
                          (p.aq_m, p.sa_m, p.bq, p.sb, torch.zeros_like(p.out_m), p.masked_m, 64), test_utils=WITHOUT_SCHEMA)


def test_opcheck_training_ops_on_the_gpu(torch):
    ops = torch.ops.fp8gemm
    m, n, k = 300, 1024, 1536 + 48
    a, b = _randn(torch, (m, k), 11), _randn(torch, (n, k), 12)
    lhs, rhs = fp8gemm.per_token_cast_to_fp8(a), fp8gemm.per_block_cast_to_fp8(b)
    c16 = _randn32(torch, (m, n), 13, scale=10.0).to(torch.bfloat16)
    c32 = _randn32(torch, (m, n), 14, scale=10.0)
    for op, c in ((ops.gemm_fp8_fp8_bf16_nt, c16), (ops.gemm_fp8_fp8_fp32_nt, c32)):
        torch.library.opcheck(op.default, (*lhs, *rhs, torch.zeros_like(c), c), test_utils=WITHOUT_SCHEMA)
        torch.library.opcheck(op.default, (*lhs, *rhs, c.clone()), {"accumulate": True}, test_utils=WITHOUT_SCHEMA)
    torch.library.opcheck(ops.gemm_fp8_fp8_fp32_nt.default, (*lhs, *rhs, torch.zeros_like(c32)),
                          test_utils=WITHOUT_SCHEMA)
    rows = fp8gemm.per_token_cast_to_fp8(b)
    torch.library.opcheck(ops.wgrad_gemm_fp8_fp8_fp32_nt.default, (*lhs, *rows, c32.clone()),
                          test_utils=WITHOUT_SCHEMA)
    ks = [1040, 0, 272]
    (ka, ksa), (kb, ksb), _, _ = k_grouped_inputs(torch, 256, 384, ks, seed=15)
    torch.library.opcheck(ops.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt.default,
                          (ka, ksa, kb, ksb, _randn32(torch, (3, 256, 384), 16), ks), test_utils=WITHOUT_SCHEMA)
