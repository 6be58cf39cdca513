"""The training GEMMs on the GPU against float64 references: FP32 output, D = C + A.B (bf16 and
FP32 C, C = out), the wgrad GEMM (1x128 scales on both operands, accumulated) and the
k-grouped wgrad GEMM (one launch, groups with their own K). Outputs are pre-filled with random
values, so accumulation is checked, and poisoned wherever nothing may be written."""
import pytest

from fp8gemm.testing import check, k_grouped_inputs, reference, reference_wgrad

pytestmark = pytest.mark.gpu

# DeepGEMM's lists (03d0be3 tests): wgrad K x (M, N); k-grouped (G, base K) x (M, N)
WGRAD_MN = [(7168, 2112), (1536, 24576), (512, 32768), (16384, 7168), (7168, 4096), (2048, 7168)]
K_GROUPED = [(g, k, m, n) for g, k in ((4, 4096), (4, 8192), (8, 4096)) for m, n in ((7168, 4096), (2048, 7168))]


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _randn(torch, shape, seed, scale=1.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(shape, device="cuda", generator=g) * scale


def _wgrad_inputs(torch, m, n, k, seed):
    import fp8gemm
    a = _randn(torch, (m, k), seed).to(torch.bfloat16)
    b = _randn(torch, (n, k), seed + 1).to(torch.bfloat16)
    return fp8gemm.per_token_cast_to_fp8(a), fp8gemm.per_token_cast_to_fp8(b)


def _acc_error(torch, new, old, ref):
    """||new - (old + ref)|| / ||ref|| in float64; every element finite."""
    assert torch.isfinite(new).all(), "NaN/Inf in the output (unwritten element or overflow)"
    return ((new.double() - old.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("k", [4096, 8192])
@pytest.mark.parametrize("m,n", WGRAD_MN)
def test_wgrad_deepgemm_shapes(torch, m, n, k):
    import fp8gemm
    lhs, rhs = _wgrad_inputs(torch, m, n, k, seed=m + n + k)
    out = _randn(torch, (m, n), seed=k, scale=50.0)
    old = out.clone()
    fp8gemm.wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out)
    torch.cuda.synchronize()
    err = _acc_error(torch, out, old, reference_wgrad(torch, lhs, rhs))
    assert err < 1e-3, (m, n, k, err)


@pytest.mark.parametrize("m,n,k", [(1, 8, 16), (7, 136, 208), (100, 1000, 1040), (333, 264, 4096 + 48)])
def test_wgrad_tails_and_strided_out(torch, m, n, k):
    import fp8gemm
    lhs, rhs = _wgrad_inputs(torch, m, n, k, seed=m * 7 + k)
    buf = _randn(torch, (m, n + 40), seed=3)
    out = buf[:, :n]
    old = buf.clone()
    fp8gemm.wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out)
    torch.cuda.synchronize()
    err = _acc_error(torch, out, old[:, :n], reference_wgrad(torch, lhs, rhs))
    assert err < 1e-3, err
    assert torch.equal(buf[:, n:], old[:, n:]), "wrote into the row padding"


def _configs(variant, kind="dense"):
    import dataclasses
    from fp8gemm.config import variant_configs
    return [dataclasses.replace(c, stages=min(c.stages, 4)) for c in variant_configs(variant, 5 * 128, kind)]


@pytest.mark.parametrize("cfg", _configs("wgrad"), ids=lambda c: c.name)
def test_every_wgrad_config(torch, cfg):
    import fp8gemm
    m, n, k = 2 * cfg.block_m + 24, 3 * cfg.block_n + 8, 5 * 128 + 48
    lhs, rhs = _wgrad_inputs(torch, m, n, k, seed=cfg.block_m + cfg.block_n)
    out = _randn(torch, (m, n), seed=1)
    old = out.clone()
    fp8gemm.wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out, config=cfg)
    torch.cuda.synchronize()
    assert _acc_error(torch, out, old, reference_wgrad(torch, lhs, rhs)) < 1e-3


def _dense_inputs(torch, m, n, k, seed):
    import fp8gemm
    a = _randn(torch, (m, k), seed).to(torch.bfloat16)
    b = _randn(torch, (n, k), seed + 1).to(torch.bfloat16)
    return fp8gemm.per_token_cast_to_fp8(a), fp8gemm.per_block_cast_to_fp8(b)


@pytest.mark.parametrize("m,n,k", [(64, 2112, 7168), (300, 1000, 1040), (4096, 4096, 2048), (1, 8, 16)])
def test_fp32_out_rounds_to_the_bf16_kernel(torch, m, n, k):
    """The FP32 output is the bf16 kernel's accumulator before rounding: with the same tile,
    bf16(fp32 out) equals the bf16 GEMM bit for bit; and it matches the float64 reference."""
    import fp8gemm
    from fp8gemm import GemmConfig
    lhs, rhs = _dense_inputs(torch, m, n, k, seed=m + n)
    out32 = torch.full((m, n), float("nan"), device="cuda")
    out16 = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    fp8gemm.gemm_fp8_fp8_fp32_nt(lhs, rhs, out32, config=GemmConfig(128, 128, 3, out_dtype="float32"))
    fp8gemm.gemm_fp8_fp8_bf16_nt(lhs, rhs, out16, config=GemmConfig(128, 128, 3))
    torch.cuda.synchronize()
    ref = reference(torch, lhs, rhs)
    assert torch.isfinite(out32).all()
    assert ((out32.double() - ref).norm() / ref.norm()).item() < 1e-3
    assert torch.equal(out32.to(torch.bfloat16).view(torch.int16), out16.view(torch.int16))
    fp8gemm.gemm_fp8_fp8_fp32_nt(lhs, rhs, out32)         # the heuristic's own tile
    torch.cuda.synchronize()
    assert ((out32.double() - ref).norm() / ref.norm()).item() < 1e-3


@pytest.mark.parametrize("alias", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_c_input(torch, dtype, alias):
    """D = C + A.B: bit-identical to rounding (fp32 accumulator + C) once, with C separate,
    strided, or C = out."""
    import fp8gemm
    from fp8gemm import GemmConfig
    m, n, k = 333, 1000, 2048 + 48
    tdt = getattr(torch, dtype)
    lhs, rhs = _dense_inputs(torch, m, n, k, seed=5)
    acc = torch.empty((m, n), device="cuda")
    fp8gemm.gemm_fp8_fp8_fp32_nt(lhs, rhs, acc, config=GemmConfig(128, 128, 3, out_dtype="float32"))
    cbuf = (_randn(torch, (m, n + 24), seed=9) * 30).to(tdt)
    c = cbuf[:, :n]
    want = (acc + c.float()).to(tdt)
    cfg = GemmConfig(128, 128, 3, out_dtype=dtype, with_c=True)
    f = fp8gemm.gemm_fp8_fp8_fp32_nt if dtype == "float32" else fp8gemm.gemm_fp8_fp8_bf16_nt
    if alias:
        out = c
        f(lhs, rhs, out, c=out, config=cfg)
    else:
        out = torch.full((m, n), float("nan"), device="cuda", dtype=tdt)
        f(lhs, rhs, out, c=c, config=cfg)
    torch.cuda.synchronize()
    assert torch.equal(out.view(torch.int16 if dtype == "bfloat16" else torch.int32),
                       want.view(torch.int16 if dtype == "bfloat16" else torch.int32))
    f(lhs, rhs, out if alias else torch.empty_like(out), c=c if not alias else out)   # heuristic tile runs too


@pytest.mark.parametrize("variant", ["fp32", "fp32_c", "bf16_c"])
def test_every_variant_config(torch, variant):
    """Each config of the variant on a shape with M, N and K tails (one launch per config)."""
    import fp8gemm
    cfgs = _configs(variant)
    for cfg in cfgs:
        m, n, k = 2 * cfg.block_m + 17, 3 * cfg.block_n + 8, 5 * 128 + 48
        lhs, rhs = _dense_inputs(torch, m, n, k, seed=cfg.block_m * 1000 + cfg.block_n)
        tdt = getattr(torch, cfg.out_dtype)
        c = (_randn(torch, (m, n), seed=2) * 10).to(tdt) if cfg.with_c else None
        out = torch.full((m, n), float("nan"), device="cuda", dtype=tdt)
        f = fp8gemm.gemm_fp8_fp8_fp32_nt if cfg.out_dtype == "float32" else fp8gemm.gemm_fp8_fp8_bf16_nt
        f(lhs, rhs, out, c=c, config=cfg)
        torch.cuda.synchronize()
        want = reference(torch, lhs, rhs) + (c.double() if c is not None else 0)
        assert torch.isfinite(out).all(), cfg.name
        err = ((out.double() - want).norm() / want.norm()).item()
        assert err < (2e-3 if cfg.out_dtype == "bfloat16" else 1e-3), (cfg.name, err)


def _k_grouped_check(torch, m, n, ks, seed, out=None, config=None):
    import fp8gemm
    (a, sa), (b, sb), qa, qb = k_grouped_inputs(torch, m, n, ks, seed)
    if out is None:
        out = _randn(torch, (len(ks), m, n), seed=seed + 7, scale=20.0)
    old = out.clone()
    fp8gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt((a, sa), (b, sb), out, ks, config=config)
    torch.cuda.synchronize()
    for g, k in enumerate(ks):
        if k == 0:
            assert torch.equal(out[g], old[g]), f"group {g} has K = 0 and must be left as it was"
        else:
            err = _acc_error(torch, out[g], old[g], reference_wgrad(torch, qa[g], qb[g]))
            assert err < 1e-3, (g, k, err)
    return out, old


@pytest.mark.parametrize("groups,base_k,m,n", K_GROUPED)
def test_k_grouped_deepgemm_shapes(torch, groups, base_k, m, n):
    """DeepGEMM's k-grouped list: each K = base +- 128, the last making the sum G * base."""
    import random
    rng = random.Random(groups * base_k + m)
    ks = [base_k + rng.choice((-128, 0, 128)) for _ in range(groups - 1)]
    ks.append(groups * base_k - sum(ks))
    _k_grouped_check(torch, m, n, ks, seed=groups + m)


@pytest.mark.parametrize("ks", [[128], [16], [0, 256, 0], [1040, 144, 16, 4096 + 80], [128] * 7 + [0],
                                [4096], [2048, 0]])
def test_k_grouped_tails_and_empty_groups(torch, ks):
    _k_grouped_check(torch, 256, 384, ks, seed=len(ks) + sum(ks))


def test_k_grouped_strided_out_and_small_mn(torch):
    ks = [512, 0, 200 // 16 * 16, 1024]
    buf = _randn(torch, (len(ks), 40 + 8, 24 + 16), seed=4)
    out = buf[:, :40, :24]
    old_buf = buf.clone()
    _k_grouped_check(torch, 40, 24, ks, seed=11, out=out)
    pad = torch.ones_like(buf, dtype=torch.bool)
    pad[:, :40, :24] = False
    assert torch.equal(buf[pad], old_buf[pad]), "wrote outside the [G, M, N] view"


def test_k_grouped_every_config(torch):
    from fp8gemm.config import variant_configs
    for cfg in variant_configs("wgrad", 5 * 128, "k_grouped", 3)[::3]:
        import dataclasses
        cfg = dataclasses.replace(cfg, stages=min(cfg.stages, 4))
        _k_grouped_check(torch, 2 * cfg.block_m + 8, 3 * cfg.block_n + 8, [5 * 128 + 48, 0, 256],
                         seed=cfg.block_n, config=cfg)


def test_k_grouped_more_groups_than_one_launch_holds(torch):
    """Over 120 groups run as several launches; every group still right."""
    ks = [16 * (g % 5) for g in range(123)]
    _k_grouped_check(torch, 64, 64, ks, seed=123)


def test_k_grouped_plan_new_ks_each_launch(torch):
    """A plan reused with other K per group (the maps are re-encoded): each result right."""
    import fp8gemm
    m, n = 128, 256
    plan = fp8gemm.plan_k_grouped_wgrad_gemm(m, n, 3)
    for i, ks in enumerate(([256, 128, 0], [0, 512, 16], [1040, 1040, 1040])):
        (a, sa), (b, sb), qa, qb = k_grouped_inputs(torch, m, n, ks, seed=i)
        out = _randn(torch, (3, m, n), seed=i)
        old = out.clone()
        plan.launch(a.data_ptr(), sa.data_ptr(), b.data_ptr(), sb.data_ptr(), out.data_ptr(), ks,
                    torch.cuda.current_stream().cuda_stream)
        torch.cuda.synchronize()
        for g, k in enumerate(ks):
            if k:
                assert _acc_error(torch, out[g], old[g], reference_wgrad(torch, qa[g], qb[g])) < 1e-3
            else:
                assert torch.equal(out[g], old[g])


def test_wgrad_in_a_cuda_graph(torch):
    """wgrad and k-grouped wgrad captured once, replayed with new data in the same buffers."""
    import fp8gemm
    m, n, k, ks = 256, 512, 1024, [256, 0, 512]
    lhs, rhs = _wgrad_inputs(torch, m, n, k, seed=1)
    out = torch.zeros((m, n), device="cuda")
    (a, sa), (b, sb), _, _ = k_grouped_inputs(torch, m, n, ks, seed=2)
    kout = torch.zeros((3, m, n), device="cuda")

    def step():
        fp8gemm.wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out)
        fp8gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt((a, sa), (b, sb), kout, ks)

    step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for i in range(2):
        new_l, new_r = _wgrad_inputs(torch, m, n, k, seed=10 + i)
        for dst, src in zip(lhs + rhs, new_l + new_r):
            dst.copy_(src)
        (a2, sa2), (b2, sb2), qa, qb = k_grouped_inputs(torch, m, n, ks, seed=20 + i)
        a.copy_(a2), sa.copy_(sa2), b.copy_(b2), sb.copy_(sb2)
        out.copy_(_randn(torch, (m, n), seed=i))
        kout.copy_(_randn(torch, (3, m, n), seed=i + 5))
        old, kold = out.clone(), kout.clone()
        graph.replay()
        torch.cuda.synchronize()
        assert _acc_error(torch, out, old, reference_wgrad(torch, lhs, rhs)) < 1e-3
        for g in (0, 2):
            assert _acc_error(torch, kout[g], kold[g], reference_wgrad(torch, qa[g], qb[g])) < 1e-3
        assert torch.equal(kout[1], kold[1])


# ---- the reduce-add epilogue (reduce_out): out += D by a TMA reduce-add, no C load -----------
def _reduce_configs(kind="dense", groups=0):
    import dataclasses
    from fp8gemm.config import variant_configs
    from fp8gemm.config import GemmConfig, max_stages, variant_fields
    # the heuristic's (BN = 16 or 8 mod 16: unswizzled rows) and, forced, swizzled ones (BN = 0 mod 16)
    out = [dataclasses.replace(c, stages=min(c.stages, 4)) for c in variant_configs("wgrad", 5 * 128, kind, groups)[::3]]
    fields = dict(variant_fields("wgrad", kind, groups), with_c=False, reduce_out=True)
    for bm, bn in ((64, 64), (128, 112), (128, 144), (128, 152)):
        out.append(GemmConfig(bm, bn, min(4, max_stages(bm, bn, 5 * 128, **fields)), **fields))
    return out


@pytest.mark.parametrize("cfg", _reduce_configs(), ids=lambda c: c.name)
def test_wgrad_reduce_out_is_bit_identical_to_the_c_load(torch, cfg):
    """out + D in L2 is the same single FP32 add the C-loading epilogue does: same bits, tails,
    padding and the row stride included."""
    import dataclasses
    import fp8gemm
    # M: a partial last tile (a slab cut short, the next one wholly past M) and M < 64 (the
    # per-warpgroup store box is min(64, M) rows)
    for m in (2 * cfg.block_m + 24, 40):
        n, k = 3 * cfg.block_n + 8, 5 * 128 + 48
        lhs, rhs = _wgrad_inputs(torch, m, n, k, seed=cfg.block_n + m)
        buf = _randn(torch, (m, n + 24), seed=2, scale=30.0)
        out_load, out_red = buf.clone(), buf.clone()
        load = dataclasses.replace(cfg, reduce_out=False, with_c=True)
        fp8gemm.wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out_load[:, :n], config=load)
        fp8gemm.wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out_red[:, :n], config=cfg)
        torch.cuda.synchronize()
        assert torch.equal(out_red.view(torch.int32), out_load.view(torch.int32)), (cfg.name, m)
        assert torch.equal(out_red[:, n:], buf[:, n:]), "wrote into the row padding"
        assert _acc_error(torch, out_red[:, :n], buf[:, :n], reference_wgrad(torch, lhs, rhs)) < 1e-3


def test_k_grouped_reduce_out(torch):
    import dataclasses
    for cfg in _reduce_configs("k_grouped", 4)[::2]:
        ks = [5 * 128 + 48, 0, 256, 16]
        m, n = 2 * cfg.block_m + 8, 3 * cfg.block_n + 8
        out, _ = _k_grouped_check(torch, m, n, ks, seed=cfg.block_n, config=cfg)
        ref = _randn(torch, (len(ks), m, n), seed=cfg.block_n + 7, scale=20.0)   # _k_grouped_check's fill
        load = dataclasses.replace(cfg, reduce_out=False, with_c=True)
        _k_grouped_check(torch, m, n, ks, seed=cfg.block_n, out=ref, config=load)
        assert torch.equal(out.view(torch.int32), ref.view(torch.int32)), cfg.name


# ---- 2-CTA clusters on the dense training kernels (TMA multicast of A or of B) -----------------
@pytest.mark.parametrize("variant,bn", [("wgrad", 152), ("wgrad", 128), ("fp32", 128), ("fp32_c", 112)])
@pytest.mark.parametrize("on_a", [True, False])
def test_training_cluster_is_bit_identical(torch, variant, bn, on_a):
    """The pair computes each tile exactly as a lone CTA does: same bits, with an odd number of
    tiles along the shared dimension (a ghost tile) and K, M, N tails."""
    import dataclasses
    import fp8gemm
    from fp8gemm.config import GemmConfig, heuristic_fields
    fields = heuristic_fields(variant)
    alone = GemmConfig(128, bn, 3, **fields)
    pair = dataclasses.replace(alone, cluster=2, multicast_on_a=on_a)
    m, n, k = 3 * 128 + 40, 5 * bn + 8, 6 * 128 + 48
    wgrad = variant == "wgrad"
    lhs, rhs = (_wgrad_inputs if wgrad else _dense_inputs)(torch, m, n, k, seed=bn + on_a)
    base = _randn(torch, (m, n), seed=bn, scale=20.0)
    outs = []
    for cfg in (alone, pair):
        out = base.clone()
        if wgrad:
            fp8gemm.wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out, config=cfg)
        else:
            fp8gemm.gemm_fp8_fp8_fp32_nt(lhs, rhs, out, c=base if fields.get("with_c") else None, config=cfg)
        outs.append(out)
    torch.cuda.synchronize()
    assert torch.equal(outs[0].view(torch.int32), outs[1].view(torch.int32)), pair.name
    ref = reference_wgrad(torch, lhs, rhs) if wgrad else reference(torch, lhs, rhs)
    old = base if wgrad or fields.get("with_c") else torch.zeros_like(base)
    assert _acc_error(torch, outs[1], old, ref) < 1e-3
