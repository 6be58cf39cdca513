"""The dense GEMM on the GPU against the float64 reference of the dequantized inputs."""
import random

import pytest

from gemm_util import check, make_inputs, reference

pytestmark = pytest.mark.gpu

DEEPGEMM_DENSE = [(m, n, k) for m in (64, 128, 4096)
                  for (n, k) in ((2112, 7168), (24576, 1536), (32768, 512), (7168, 16384),
                                 (4096, 7168), (7168, 2048), (7168, 576))]


def _torch():
    return pytest.importorskip("torch")


def _run(torch, m, n, k, seed, config=None, a_row_stride=None, out_row_stride=None, stream=None):
    import fp8gemm
    lhs, rhs, out, unq = make_inputs(torch, m, n, k, seed, a_row_stride, out_row_stride)
    fp8gemm.gemm_fp8_fp8_bf16_nt(lhs, rhs, out, stream=stream, config=config)
    torch.cuda.synchronize()
    err, diff = check(torch, out, reference(torch, lhs, rhs), unq)
    assert err <= 2e-3, f"normwise relative error {err:.3e} for {(m, n, k)} {config}"
    assert diff < 1e-3, f"DeepGEMM diff {diff:.3e} for {(m, n, k)}"
    return err


@pytest.mark.parametrize("m,n,k", DEEPGEMM_DENSE)
def test_deepgemm_dense_shapes(m, n, k):
    _run(_torch(), m, n, k, seed=m ^ n ^ k)


def _random_shapes(count=32, seed=2026):
    rng = random.Random(seed)
    shapes = [(1, 8, 16), (7, 2120, 576), (65, 264, 1000 // 16 * 16), (1000, 4096, 7168)]
    while len(shapes) < count:
        m = rng.choice([rng.randint(1, 256), rng.randint(1, 8192)])
        n = 8 * rng.randint(1, rng.choice([64, 3072]))
        k = 16 * rng.randint(1, rng.choice([64, 1024]))
        if m * n * k <= 3e11:
            shapes.append((m, n, k))
    return shapes


@pytest.mark.parametrize("m,n,k", _random_shapes())
def test_random_shapes(m, n, k):
    _run(_torch(), m, n, k, seed=m * 31 + n * 7 + k)


def _configs():
    from fp8gemm.config import candidate_configs
    return candidate_configs()


@pytest.mark.parametrize("cfg", _configs(), ids=lambda c: c.name)
def test_every_heuristic_config(cfg):
    """Each config the heuristic can return, on a shape with M, N and K tails and several tiles per CTA."""
    import dataclasses
    torch = _torch()
    k = 5 * 128 + 48
    stages = min(cfg.stages, 6)
    cfg = dataclasses.replace(cfg, stages=stages)
    m = 2 * cfg.block_m + 17
    n = 3 * cfg.block_n + 8
    _run(torch, m, n, k, seed=cfg.block_m * 1000 + cfg.block_n, config=cfg)


MULTICAST_CASES = [
    # (m, n, k, block_m, block_n, stages, on_a): odd pair counts (ghost tiles), M/N/K tails
    (1000, 7 * 112, 1040, 128, 112, 4, True),
    (1000, 7 * 112, 1040, 128, 112, 4, False),
    (5 * 64 + 3, 1000, 576, 64, 96, 6, True),
    (5 * 64 + 3, 1000, 576, 64, 96, 6, False),
    (3 * 256 - 40, 3 * 128, 2048, 256, 128, 3, True),
    (3 * 256 - 40, 3 * 128, 2048, 256, 128, 3, False),
    (2048, 2112, 7168, 128, 144, 4, True),
    (4096, 7168, 2048, 256, 112, 3, False),
    (64, 128, 256, 128, 128, 2, False),        # a single tile: rank 1 is a ghost for the whole run
]


@pytest.mark.parametrize("m,n,k,bm,bn,stages,on_a", MULTICAST_CASES)
def test_multicast_matches_unclustered(m, n, k, bm, bn, stages, on_a):
    """TMA multicast changes where operands come from, not the arithmetic: outputs are bit-identical."""
    import fp8gemm
    from fp8gemm import GemmConfig
    torch = _torch()
    lhs, rhs, out, unq = make_inputs(torch, m, n, k, seed=m + bn)
    plain = GemmConfig(bm, bn, stages)
    fp8gemm.gemm_fp8_fp8_bf16_nt(lhs, rhs, out, config=plain)
    ref_out = out.clone()
    out.view(torch.int16).fill_(0x7FC1)
    mc = GemmConfig(bm, bn, stages, cluster=2, multicast_on_a=on_a)
    fp8gemm.gemm_fp8_fp8_bf16_nt(lhs, rhs, out, config=mc)
    torch.cuda.synchronize()
    err, diff = check(torch, out, reference(torch, lhs, rhs), unq)
    assert err <= 2e-3 and diff < 1e-3
    assert torch.equal(out.view(torch.int16), ref_out.view(torch.int16)), "multicast changed the result"


def test_multicast_plan_grid_is_whole_resident_clusters():
    import fp8gemm
    from fp8gemm import GemmConfig
    _torch()
    plan = fp8gemm.plan_gemm(4096, 7168, 4096, config=GemmConfig(128, 128, 5, cluster=2))
    assert plan.grid % 2 == 0 and 2 <= plan.grid <= fp8gemm.get_num_sms()


def test_config_stage_extremes():
    from fp8gemm import GemmConfig
    torch = _torch()
    for cfg in (GemmConfig(128, 128, 1), GemmConfig(64, 16, 8), GemmConfig(256, 128, 3), GemmConfig(128, 160, 5)):
        _run(torch, 333, 1000, 3 * 128 + 16, seed=cfg.stages, config=cfg)


def test_strided_a_and_out():
    _run(_torch(), 300, 1024, 2048, seed=1, a_row_stride=2048 + 64, out_row_stride=1024 + 24)


def test_two_streams():
    torch = _torch()
    import fp8gemm
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    jobs = []
    for i, s in enumerate((s1, s2)):
        lhs, rhs, out, unq = make_inputs(torch, 513, 2048, 1024, seed=40 + i)
        torch.cuda.synchronize()
        with torch.cuda.stream(s):
            fp8gemm.gemm_fp8_fp8_bf16_nt(lhs, rhs, out)
        jobs.append((lhs, rhs, out, unq))
    s1.synchronize()
    s2.synchronize()
    for lhs, rhs, out, unq in jobs:
        err, diff = check(torch, out, reference(torch, lhs, rhs), unq)
        assert err <= 2e-3 and diff < 1e-3


def test_plan_relaunch_with_new_pointers():
    """A plan re-encodes its tensor maps when pointers change and reuses them otherwise."""
    torch = _torch()
    import fp8gemm
    plan = fp8gemm.plan_gemm(256, 512, 768)
    for seed in (3, 4, 3):
        lhs, rhs, out, unq = make_inputs(torch, 256, 512, 768, seed=seed)
        plan.launch(lhs[0].data_ptr(), lhs[1].data_ptr(), rhs[0].data_ptr(), rhs[1].data_ptr(),
                    out.data_ptr(), torch.cuda.current_stream().cuda_stream)
        torch.cuda.synchronize()
        err, _ = check(torch, out, reference(torch, lhs, rhs))
        assert err <= 2e-3


def test_debug_build_is_correct():
    torch = _torch()
    import fp8gemm
    lhs, rhs, out, unq = make_inputs(torch, 700, 1536, 2048, seed=9)
    plan = fp8gemm.plan_gemm(700, 1536, 2048, debug=True, sfa_stride=lhs[1].stride(1))
    assert plan.config.debug
    plan.launch(lhs[0].data_ptr(), lhs[1].data_ptr(), rhs[0].data_ptr(), rhs[1].data_ptr(), out.data_ptr(), 0)
    torch.cuda.synchronize()
    assert plan.debug_info() is None
    err, _ = check(torch, out, reference(torch, lhs, rhs))
    assert err <= 2e-3


def test_m_zero_returns_and_bad_device_inputs_raise():
    torch = _torch()
    import fp8gemm
    k, n = 256, 128
    a = torch.empty(0, k, device="cuda", dtype=torch.float8_e4m3fn)
    sa = torch.empty(2, 0, device="cuda").t()
    b = torch.empty(n, k, device="cuda", dtype=torch.float8_e4m3fn)
    sb = torch.ones(1, 2, device="cuda")
    fp8gemm.gemm_fp8_fp8_bf16_nt((a, sa), (b, sb), torch.empty(0, n, device="cuda", dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="host"):
        fp8gemm.gemm_fp8_fp8_bf16_nt((a, sa), (b, sb.cpu()), torch.empty(0, n, device="cuda", dtype=torch.bfloat16))


@pytest.mark.parametrize("m", [1, 7, 16, 33, 100])
@pytest.mark.parametrize("bm,bn", [(16, 16), (16, 112), (32, 64), (32, 160)])
def test_small_tiles_match_the_64_row_tile(m, bm, bn):
    """A 16/32-row tile does the same arithmetic per element as the 64-row tile (the WGMMA is
    the same; only which rows are loaded and stored differs): outputs are bit-identical."""
    import fp8gemm
    from fp8gemm import GemmConfig
    torch = _torch()
    n, k = 3 * bn + 8, 4 * 128 + 80
    lhs, rhs, out, unq = make_inputs(torch, m, n, k, seed=m * bm + bn)
    fp8gemm.gemm_fp8_fp8_bf16_nt(lhs, rhs, out, config=GemmConfig(64, bn, 4))
    want = out.clone()
    out.view(torch.int16).fill_(0x7FC1)
    fp8gemm.gemm_fp8_fp8_bf16_nt(lhs, rhs, out, config=GemmConfig(bm, bn, 6))
    torch.cuda.synchronize()
    err, _ = check(torch, out, reference(torch, lhs, rhs), unq)
    assert err <= 2e-3
    assert torch.equal(out.view(torch.int16), want.view(torch.int16))
