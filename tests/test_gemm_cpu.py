"""GEMM without a GPU: every config compiles cleanly, the PTX has the expected structure,
the heuristic is sane, and bad input is rejected before any launch."""
import re

import pytest

import fp8gemm
from fp8gemm import jit
from fp8gemm.arrays import DeviceArray
from fp8gemm.config import SMEM_LIMIT, GemmConfig, candidate_configs, select_config
from fp8gemm.ptx_templates import gemm as template

CONFIGS = candidate_configs()
ALL_KIND_CONFIGS = [c for kind in ("dense", "contiguous", "contiguous_psum", "masked")
                    for c in candidate_configs(kind=kind)]


def test_candidate_space_covers_the_design():
    bms = {c.block_m for c in CONFIGS}
    bns = {c.block_n for c in CONFIGS}
    assert bms == {16, 32, 64, 128, 256}
    assert set(range(16, 129, 8)) | {136, 144, 160} <= bns
    assert all(c.smem_bytes <= SMEM_LIMIT for c in CONFIGS)


def test_tiles_touch_at_most_two_scale_blocks():
    """The promotion selects between two B scales, so no tile may span three 128-wide blocks."""
    for c in CONFIGS:
        for j in range(256):
            n0 = j * c.block_n
            assert (n0 + c.block_n - 1) // 128 - n0 // 128 <= 1, c
    with pytest.raises(ValueError, match="two"):
        GemmConfig(64, 176, 4)


@pytest.mark.parametrize("cfg", ALL_KIND_CONFIGS, ids=lambda c: c.name)
def test_config_compiles_without_spills(cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("FP8GEMM_CACHE_DIR", str(tmp_path))
    k = template.build(cfg)
    c = jit.compile_ptx(k.render(), k.name, use_cache=False)
    assert c.resources.spills == 0 and c.resources.stack_frame == 0, c.resources
    # the entry cap that makes setmaxnreg legal: 65536 registers over all threads
    assert c.resources.registers * cfg.threads <= 65536


def test_debug_build_compiles(tmp_path, monkeypatch):
    monkeypatch.setenv("FP8GEMM_CACHE_DIR", str(tmp_path))
    cfg = GemmConfig(128, 128, 4, debug=True)
    ptx = template.build(cfg).render()
    assert "trap;" in ptx and ptx.count("mbarrier.try_wait.parity") >= 2
    c = jit.compile_ptx(ptx, cfg.name, use_cache=False)
    assert c.resources.spills == 0


@pytest.mark.parametrize("cfg", [GemmConfig(64, 24, 8), GemmConfig(128, 112, 4), GemmConfig(256, 128, 3),
                                 GemmConfig(16, 64, 8)],
                         ids=lambda c: c.name)
def test_ptx_structure(cfg):
    ptx = template.build(cfg).render()
    assert ".target sm_90a" in ptx and ".maxntid %d, 1, 1" % cfg.threads in ptx
    wg = re.findall(r"wgmma\.mma_async\.sync\.aligned\.m64n(\d+)k32\.f32\.e4m3\.e4m3", ptx)
    assert wg and set(wg) == {str(cfg.block_n)}
    assert len(wg) == 4 * cfg.waves                     # four k32 steps per 128-wide K block per slab
    assert "setmaxnreg.dec.sync.aligned.u32 40" in ptx and "setmaxnreg.inc.sync.aligned.u32" in ptx
    assert ptx.count("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes") == 3
    assert "cp.async.bulk.tensor.2d.global.shared::cta.bulk_group" in ptx
    assert "mbarrier.arrive.expect_tx" in ptx and "stmatrix.sync.aligned" in ptx
    assert "fence.proxy.async.shared::cta" in ptx
    two = 128 % cfg.block_n != 0
    splits = template.split_points(cfg.block_n) if two else [0]
    # one unrolled promotion block per split point of the two B-scale blocks
    assert ptx.count("fma.rn.f32") == cfg.block_n // 2 * cfg.waves * len(splits)
    assert "selp.f32" not in ptx


def test_small_tiles():
    """16/32-row tiles: the WGMMA still reads 64 rows of each A stage, so shared memory reaches
    64 rows past the last stage's start; warps past the tile's rows store nothing and read a
    valid row's A scale; dense layout only, no cluster."""
    for cfg in (GemmConfig(16, 16, 1), GemmConfig(16, 32, 8), GemmConfig(32, 64, 16)):
        lay = cfg.smem_layout
        assert lay["end"] >= lay["a"] + (cfg.stages - 1) * cfg.block_m * 128 + 64 * 128
        assert cfg.math_warpgroups == 1 and cfg.waves == 1 and cfg.valid_warps == cfg.block_m // 16
        ptx = template.build(cfg).render()
        assert f"and.b32 %sfa_row_in_wave, %row_in_wave, {cfg.block_m - 1};" in ptx
        assert f"setp.lt.u32 %p_valid_warp, %warp_in_wg, {cfg.valid_warps};" in ptx
        assert "@!%p_valid_warp bra.uni L_stmatrix_done;" in ptx
        assert ptx.count("stmatrix.sync.aligned") > 0
    assert "p_valid_warp" not in template.build(GemmConfig(64, 32, 8)).render()
    with pytest.raises(ValueError, match="dense layout without a cluster"):
        GemmConfig(16, 64, 4, cluster=2)
    with pytest.raises(ValueError, match="dense layout without a cluster"):
        GemmConfig(32, 64, 4, kind="masked")


@pytest.mark.parametrize("bn", [24, 112, 160, 192])
def test_two_scale_dispatch_reaches_the_right_block(bn):
    """Follow the PTX branch chain for every split value: it must land in that value's FFMA block."""
    cfg = GemmConfig(64, bn, 4)
    lines = [x.strip() for x in template.build(cfg).render().splitlines()]
    start = next(i for i, x in enumerate(lines) if x.startswith("setp.eq.u32 %p_split"))
    labels = {x[:-1]: i for i, x in enumerate(lines) if x.endswith(":")}
    for v in template.split_points(bn):
        i = start
        while True:                                     # the chain: setp.eq / @p bra pairs
            m = re.match(r"setp\.eq\.u32 (%p_split_\d+), %former, (\d+);", lines[i])
            if not m:
                break
            if int(m.group(2)) == v:
                i = labels[re.match(r"@%p_split_\d+ bra\.uni (\w+);", lines[i + 1]).group(1)]
                break
            i += 2
        nxt = next(x for x in lines[i:] if x.startswith("// slices"))
        assert nxt.startswith(f"// slices 0..{v - 1} scaled by the first"), (v, nxt)


def test_split_points():
    assert template.split_points(112) == [2, 4, 6, 8, 10, 12, 14]
    assert template.split_points(160) == [4, 8, 12, 16]
    assert template.split_points(24) == [1, 2, 3]
    assert template.split_points(144) == [2, 4, 6, 8, 10, 12, 14, 16]


@pytest.mark.parametrize("cfg", [GemmConfig(128, 128, 5, cluster=2), GemmConfig(256, 112, 3, cluster=2,
                                                                        multicast_on_a=False)],
                         ids=lambda c: c.name)
def test_multicast_ptx_structure(cfg):
    ptx = template.build(cfg).render()
    shared = ("tmap_a", "tmap_sfa") if cfg.multicast_on_a else ("tmap_b",)
    mc = re.findall(r"@%p_rank0 cp\.async\.bulk\.tensor\.2d\S*\.multicast::cluster \[[^]]+\], \[%(\w+),", ptx)
    assert sorted(mc) == sorted(shared)                         # only rank 0 issues the shared loads
    assert ptx.count("cp.async.bulk.tensor.2d.shared::cluster.global.tile") == 3
    # empty barriers count the math warps of both CTAs; consumers arrive locally and remotely
    assert re.search(r"mbarrier\.init\.shared::cta\.b64 \[%%smem_bar\+%d\], %d;" %
                     (8 * cfg.stages, 8 * cfg.math_warpgroups), ptx)
    assert "mapa.shared::cluster.u32" in ptx
    assert "mbarrier.arrive.shared::cluster.b64" in ptx
    assert "release.cluster.shared::cluster" not in ptx and "acquire.cluster" not in ptx   # MEMBAR.GPU / CCTL
    assert ptx.count("barrier.cluster.arrive") == 2 and ptx.count("barrier.cluster.wait") == 2
    assert "%clusterid.x" in ptx and "%cluster_ctarank" in ptx


def _simulate_units(cfg, m, n, grid):
    """The PTX unit scheduler in Python: (cta -> list of (m_blk, n_blk, ghost))."""
    from fp8gemm.ptx_templates.gemm import STRIP
    mb, nb = -(-m // cfg.block_m), -(-n // cfg.block_n)
    um, un = mb, nb
    if cfg.cluster > 1:
        if cfg.multicast_on_a:
            un = -(-nb // 2)
        else:
            um = -(-mb // 2)
    strip_w = STRIP // 2 if cfg.cluster > 1 and cfg.multicast_on_a else STRIP
    work = {}
    for cta in range(grid):
        start, step = (cta // 2, grid // 2) if cfg.cluster > 1 else (cta, grid)
        out = []
        for u in range(start, um * un, step):
            strip, inner = divmod(u, um * strip_w)
            width = min(un - strip * strip_w, strip_w)
            a, b = divmod(inner, width)
            b += strip * strip_w
            if cfg.cluster == 1:
                out.append((a, b, False))
            elif cfg.multicast_on_a:
                mine = 2 * b + cta % 2
                out.append((a, mine - (mine >= nb), mine >= nb))
            else:
                mine = 2 * a + cta % 2
                out.append((mine - (mine >= mb), b, mine >= mb))
        work[cta] = out
    return work, mb, nb


@pytest.mark.parametrize("mc", ["", "a", "b"])
@pytest.mark.parametrize("m,n", [(4096, 7168), (333, 1000), (129, 24576), (8192, 136), (1, 8)])
def test_unit_scheduler_covers_every_tile_once(mc, m, n):
    cfg = GemmConfig(128, 112, 4, cluster=2 if mc else 1, multicast_on_a=mc != "b")
    grid = cfg.grid(m, n, 132)
    work, mb, nb = _simulate_units(cfg, m, n, grid)
    stored = [(a, b) for w in work.values() for a, b, ghost in w if not ghost]
    assert sorted(stored) == [(a, b) for a in range(mb) for b in range(nb)]
    if cfg.cluster > 1:
        for c in range(0, grid, 2):                      # the two CTAs of a cluster stay in step ...
            r0, r1 = work[c], work[c + 1]
            assert len(r0) == len(r1)
            for (a0, b0, g0), (a1, b1, g1) in zip(r0, r1):
                assert not g0                            # ... rank 0 never idles, and they share A or B
                assert (a0 == a1) if cfg.multicast_on_a else (b0 == b1)


def test_builder_refuses_special_register_names():
    from fp8gemm.ptx_templates.builder import Kernel
    k = Kernel("x", [], maxntid=32)
    with pytest.raises(ValueError, match="special register"):
        k.reg("u32", "pm0")


@pytest.mark.parametrize("m,n,k", [(1, 8, 16), (64, 2112, 7168), (4096, 7168, 16384), (7, 24576, 1536),
                                   (8192, 8, 16384), (100000, 4096, 128)])
def test_heuristic(m, n, k):
    cfg, grid = select_config(m, n, k, num_sms=132)
    assert 1 <= grid <= 132 and grid % cfg.cluster == 0
    assert grid == cfg.cluster * min(132 // cfg.cluster, cfg.units(m, n))
    if m < 512:
        assert cfg.cluster == 1            # multicast only pays off with enough M blocks
    assert cfg.stages <= max(1, fp8gemm.ceil_div(k, 128))
    assert cfg.smem_bytes <= SMEM_LIMIT


def test_heuristic_prefers_big_tiles_for_big_problems():
    cfg, _ = select_config(4096, 7168, 16384, num_sms=132)
    assert cfg.block_m >= 128 and cfg.block_n >= 64


def test_heuristic_uses_multicast_where_measured_to_pay():
    cfg, grid = select_config(2048, 7168, 16384, num_sms=132)
    assert (cfg.block_m, cfg.cluster, cfg.multicast_on_a) == (128, 2, True) and grid % 2 == 0
    cfg, _ = select_config(2048, 7168, 16384, num_sms=131)        # odd SM count: no clusters
    assert cfg.cluster == 1


@pytest.mark.parametrize("m", [1, 8, 16, 17, 32])
def test_heuristic_small_m_takes_the_smallest_small_tile(m):
    cfg, _ = select_config(m, 7168, 16384, num_sms=132)
    assert cfg.block_m == (16 if m <= 16 else 32)
    assert cfg.stages > 8                  # deep pipelines: B streams from DRAM


@pytest.mark.parametrize("m,n,k,bn", [(8, 2112, 7168, 16), (16, 4096, 7168, 32), (8, 7168, 16384, 64),
                                      (32, 4096, 7168, 32), (16, 7168, 2048, 64)])
def test_heuristic_decode_block_n_as_measured(m, n, k, bn):
    """The best BN of the forced decode configs on the H200 (benchmarks/NOTES.md, explore-small)."""
    cfg, _ = select_config(m, n, k, num_sms=132)
    assert cfg.block_n == bn


@pytest.mark.parametrize("kind", ["contiguous", "contiguous_psum", "masked"])
def test_grouped_kinds_are_not_silently_dense(kind):
    """B of a grouped kernel is [G, N, K]: its loads carry a group coordinate (3-D maps)."""
    ptx = template.build(GemmConfig(128, 128, 4, kind=kind)).render()
    assert re.search(r"cp\.async\.bulk\.tensor\.3d\S* \[%pdst_b\], \[%tmap_b, \{[^}]*,[^}]*,[^}]*\}\]", ptx)
    assert "ld.param.u64 %layout_ptr" in ptx
    dense = template.build(GemmConfig(128, 128, 4)).render()
    assert ".3d." not in dense and "%layout_ptr" not in dense


def test_print_configs(monkeypatch, capsys):
    monkeypatch.setenv("FP8GEMM_PRINT_CONFIGS", "1")
    select_config(333, 4096, 7168, num_sms=132)
    assert "m=333 n=4096 k=7168" in capsys.readouterr().out


def test_bad_configs_rejected():
    with pytest.raises(ValueError, match="block_m"):
        GemmConfig(96, 128, 4)
    with pytest.raises(ValueError, match="block_n"):
        GemmConfig(128, 12, 4)
    with pytest.raises(ValueError, match="shared memory"):
        GemmConfig(128, 128, 9)


# ---- validation --------------------------------------------------------------------------
def _ops(m=256, n=512, k=1024, **over):
    kb = fp8gemm.ceil_div(k, 128)
    am = fp8gemm.get_tma_aligned_size(m)
    d = dict(a=DeviceArray(0x100000, (m, k), "e4m3"),
             sa=DeviceArray(0x200000, (m, kb), "f32", strides=(1, am)),
             b=DeviceArray(0x300000, (n, k), "e4m3"),
             sb=DeviceArray(0x400000, (fp8gemm.ceil_div(n, 128), kb), "f32"),
             out=DeviceArray(0x500000, (m, n), "bf16"))
    d.update(over)
    return (d["a"], d["sa"]), (d["b"], d["sb"]), d["out"]


@pytest.mark.parametrize("over,exc,msg", [
    (dict(a=DeviceArray(0x100000, (256, 1024), "bf16")), TypeError, "a: dtype is bfloat16"),
    (dict(a=DeviceArray(0x100000, (256, 1024), "uint8")), TypeError, "view_as"),
    (dict(b=DeviceArray(0x300000, (512, 1024), "f32")), TypeError, "b: dtype"),
    (dict(out=DeviceArray(0x500000, (256, 512), "f32")), TypeError, "out: dtype"),
    (dict(sa=DeviceArray(0x200000, (256, 8), "bf16", strides=(1, 256))), TypeError, "a_scales: dtype"),
    (dict(b=DeviceArray(0x300000, (512, 512), "e4m3")), ValueError, r"b: shape is \[512, 512\]"),
    (dict(out=DeviceArray(0x500000, (256, 520), "bf16")), ValueError, r"out: shape"),
    (dict(sa=DeviceArray(0x200000, (256, 7), "f32", strides=(1, 256))), ValueError, "a_scales: shape"),
    (dict(sb=DeviceArray(0x400000, (5, 8), "f32")), ValueError, "b_scales: shape"),
    (dict(sa=DeviceArray(0x200000, (256, 8), "f32")), ValueError, "MN-major"),
    (dict(sa=DeviceArray(0x200000, (256, 8), "f32", strides=(1, 258))), ValueError, "TMA-aligned"),
    (dict(sb=DeviceArray(0x400000, (4, 8), "f32", strides=(1, 4))), ValueError, "b_scales: must be a contiguous"),
    (dict(a=DeviceArray(0x100008, (256, 1024), "e4m3")), ValueError, "not 16-byte aligned"),
    (dict(a=DeviceArray(0x100000, (256, 1024), "e4m3", strides=(1030, 1))), ValueError, "multiple of 16 bytes"),
    (dict(out=DeviceArray(0x500000, (256, 512), "bf16", strides=(1, 256))), ValueError, "contiguous"),
])
def test_gemm_validation(over, exc, msg):
    lhs, rhs, out = _ops(**over)
    with pytest.raises(exc, match=msg):
        fp8gemm.gemm_fp8_fp8_bf16_nt(lhs, rhs, out)


def test_gemm_validation_n_and_k_alignment():
    lhs, rhs, out = _ops(n=500)
    with pytest.raises(ValueError, match="multiple of 8"):
        fp8gemm.gemm_fp8_fp8_bf16_nt(lhs, rhs, out)
    lhs, rhs, out = _ops(k=1000)
    with pytest.raises(ValueError, match="multiple of 16"):
        fp8gemm.gemm_fp8_fp8_bf16_nt(lhs, rhs, out)
    with pytest.raises(TypeError, match="tuple"):
        fp8gemm.gemm_fp8_fp8_bf16_nt(lhs[0], rhs, out)


def test_plan_validation():
    with pytest.raises(ValueError, match="multiple of 8"):
        fp8gemm.plan_gemm(128, 100, 256)
    with pytest.raises(ValueError, match="multiple of 16"):
        fp8gemm.plan_gemm(128, 128, 250)
    with pytest.raises(ValueError, match="positive"):
        fp8gemm.plan_gemm(0, 128, 256)


def test_no_driver_is_a_clean_error():
    from fp8gemm import launcher
    if launcher.device_count() > 0:
        pytest.skip("a GPU is present")
    lhs, rhs, out = _ops()
    with pytest.raises(launcher.NoDriverError):
        fp8gemm.gemm_fp8_fp8_bf16_nt(lhs, rhs, out)
