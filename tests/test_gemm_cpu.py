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


def test_candidate_space_covers_the_design():
    bms = {c.block_m for c in CONFIGS}
    bns = {c.block_n for c in CONFIGS}
    assert bms == {64, 128, 256}
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


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
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


@pytest.mark.parametrize("cfg", [GemmConfig(64, 24, 8), GemmConfig(128, 112, 4), GemmConfig(256, 128, 3)],
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
    # the promotion: one FFMA per accumulator element per slab and K block
    assert ptx.count("fma.rn.f32") == cfg.block_n // 2 * cfg.waves
    two = 128 % cfg.block_n != 0
    assert ("selp.f32" in ptx) == two


def test_builder_refuses_special_register_names():
    from fp8gemm.ptx_templates.builder import Kernel
    k = Kernel("x", [], maxntid=32)
    with pytest.raises(ValueError, match="special register"):
        k.reg("u32", "pm0")


@pytest.mark.parametrize("m,n,k", [(1, 8, 16), (64, 2112, 7168), (4096, 7168, 16384), (7, 24576, 1536),
                                   (8192, 8, 16384), (100000, 4096, 128)])
def test_heuristic(m, n, k):
    cfg, grid = select_config(m, n, k, num_sms=132)
    assert 1 <= grid <= 132
    tiles = fp8gemm.ceil_div(m, cfg.block_m) * fp8gemm.ceil_div(n, cfg.block_n)
    assert grid == min(132, tiles)
    assert cfg.stages <= max(1, fp8gemm.ceil_div(k, 128))
    assert cfg.smem_bytes <= SMEM_LIMIT


def test_heuristic_prefers_big_tiles_for_big_problems():
    cfg, _ = select_config(4096, 7168, 16384, num_sms=132)
    assert cfg.block_m >= 128 and cfg.block_n >= 64


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
