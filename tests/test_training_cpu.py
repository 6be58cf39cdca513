"""The training GEMMs without a GPU: every variant config compiles without spills, the PTX and
spec have the structure the host relies on, the k-grouped scheduler covers the right tiles,
the references are right, and bad input is refused before any device query."""
import re

import numpy as np
import pytest

import fp8gemm
from fp8gemm import jit
from fp8gemm import reference as ref
from fp8gemm.arrays import DeviceArray
from fp8gemm.config import VARIANTS, GemmConfig, select_config, variant_configs, variant_fields, variant_of
from fp8gemm.ptx_templates import gemm as template
from fp8gemm.ptx_templates import scheduler
from fp8gemm.ptx_templates.builder import param_bytes

VARIANT_CONFIGS = [c for v in VARIANTS if v != "bf16" for c in variant_configs(v)] + \
    variant_configs("wgrad", kind="k_grouped") + \
    variant_configs("wgrad", heuristic=False) + variant_configs("wgrad", kind="k_grouped", heuristic=False)


@pytest.mark.parametrize("cfg", VARIANT_CONFIGS, ids=lambda c: c.name)
def test_variant_config_compiles_without_spills(cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("FP8GEMM_CACHE_DIR", str(tmp_path))
    k = template.build(cfg)
    c = jit.compile_ptx(k.render(), k.name, use_cache=False)
    assert c.resources.spills == 0 and c.resources.stack_frame == 0, c.resources
    assert c.resources.registers * cfg.threads <= 65536


def test_variant_names_round_trip():
    for v in VARIANTS:
        cfg = GemmConfig(128, 128, 3, **variant_fields(v))
        assert variant_of(cfg) == v
    kg = GemmConfig(128, 128, 3, **variant_fields("wgrad", "k_grouped", 8))
    assert variant_of(kg) == "wgrad" and kg.groups == 8 and kg.name.endswith("_g8")


def test_config_rules():
    with pytest.raises(ValueError, match="at most 128 rows"):
        GemmConfig(256, 128, 2, out_dtype="float32")
    GemmConfig(128, 128, 3, out_dtype="float32", cluster=2)          # dense: clusters allowed
    with pytest.raises(ValueError, match=r"k_grouped layout \(without\)"):
        GemmConfig(128, 128, 3, out_dtype="float32", with_c=True, b_scales="row", kind="k_grouped", groups=4,
                   cluster=2)
    with pytest.raises(ValueError, match="for the dense layout"):
        GemmConfig(128, 128, 3, with_c=True, kind="masked")
    with pytest.raises(ValueError, match="accumulates FP32"):
        GemmConfig(128, 128, 3, kind="k_grouped", groups=4)
    with pytest.raises(ValueError, match="groups must be"):
        GemmConfig(128, 128, 3, **dict(variant_fields("wgrad", "k_grouped"), groups=121))
    with pytest.raises(ValueError, match="k_grouped layout only"):
        GemmConfig(128, 128, 3, groups=2)
    # per-row B scales have no 128-column rule: BN 176 is fine there, not with block scales
    GemmConfig(64, 176, 3, **variant_fields("wgrad"))
    with pytest.raises(ValueError, match="two"):
        GemmConfig(64, 176, 3)


def test_fp32_tile_layout():
    """FP32 D doubles the tile and its swizzle atoms hold 32 columns; C adds one barrier;
    per-row B scales add a BN-float region per stage."""
    cfg = GemmConfig(128, 128, 3, **variant_fields("wgrad"))
    lay = cfg.smem_layout
    assert lay["a"] - lay["d"] == 128 * 128 * 4
    assert cfg.d_swizzle == 128 and cfg.d_store_threads == 4
    assert lay["bar"] - lay["sfb"] == 3 * 512
    assert lay["end"] - lay["bar"] == 3 * 16 + 16
    bf = GemmConfig(128, 128, 3)
    assert bf.d_store_threads == 2 and "sfb" not in bf.smem_layout


@pytest.mark.parametrize("variant,kind", [("fp32", "dense"), ("fp32_c", "dense"), ("bf16_c", "dense"),
                                          ("wgrad", "dense"), ("wgrad", "k_grouped")])
def test_variant_ptx_and_spec(variant, kind):
    cfg = GemmConfig(128, 144, 3, **variant_fields(variant, kind, 3))
    gen = template.GemmGen(cfg)
    spec, ptx = gen.spec, gen.build().render()
    maps = {t.param: t for t in spec.tensor_maps}
    out_t = "float32" if cfg.out_dtype == "float32" else "bfloat16"
    assert maps["tmap_d"].dtype == out_t
    assert ("tmap_c" in maps) == cfg.with_c
    if cfg.with_c:
        c, d = maps["tmap_c"], maps["tmap_d"]
        assert (c.dtype, c.dims, c.box, c.swizzle) == (d.dtype, d.dims, d.box, d.swizzle) and c.array == "c"
        assert "mbarrier.try_wait.parity.shared::cta.b64 %p_ready" in ptx and "[%c_full], %c_phase" in ptx
        assert "cp.async.bulk.wait_group.read 0" in ptx
    row = cfg.b_scales == "row"
    assert ("tmap_sfb" in maps) == row and any(p.name == "sfb" for p in spec.params) != row
    assert spec.expect_tx_bytes == (cfg.block_m + cfg.block_n) * 128 + cfg.block_m * 4 + (cfg.block_n * 4 if row else 0)
    if row:   # one FMUL + one FFMA per promoted element, the column scales from the stage
        assert ptx.count("fma.rn.f32") == cfg.block_n // 2 and ptx.count("ld.shared.v2.f32 {%sbc") == cfg.block_n // 8
    if cfg.out_dtype == "float32":
        assert "stmatrix" not in ptx and ptx.count("st.shared.v2.f32") == cfg.block_n // 4
    else:
        assert ("ldmatrix.sync.aligned" in ptx) == cfg.with_c
    if kind == "k_grouped":
        assert maps["tmap_a"].per_group and maps["tmap_b"].per_group
        assert maps["tmap_a"].offset == "m * k_start_g" and maps["tmap_a"].strides == ("k_g",)
        assert re.search(rf"\.param \.align 64 \.b8 {cfg.name}_param_tmap_a\[{128 * 3}\]", ptx)
        assert re.search(rf"\.param \.align 4 \.b8 {cfg.name}_param_group_kb\[12\]", ptx)
        assert "ld.param.u32 %math_kb_count, [%group_param" in ptx


def test_large_groups_use_ptx_8_1():
    small = GemmConfig(128, 128, 3, **variant_fields("wgrad", "k_grouped", 4))
    big = GemmConfig(128, 128, 3, **variant_fields("wgrad", "k_grouped", 60))
    assert ".version 8.0" in template.build(small).render()
    assert ".version 8.1" in template.build(big).render()
    assert param_bytes([(p.name, p.ptx_type(60)) for p in template.spec(big).params]) > 4352


def test_k_grouped_tiles():
    """Every (group, m block, n block) of each group with K > 0, once; none of an empty group."""
    cfg = GemmConfig(128, 96, 3, **variant_fields("wgrad", "k_grouped", 5))
    ks = [256, 0, 4096, 16, 0]
    m, n = 300, 1000
    grid = cfg.grid(m, n, 132, 5)
    work = scheduler.for_config(cfg).tiles(grid, m, n, 5, ks)
    got = [(t.group, t.m_blk, t.n_blk) for w in work.values() for t in w]
    want = {(g, i, j) for g, k in enumerate(ks) if k for i in range(3) for j in range(11)}
    assert len(got) == len(set(got)) and set(got) == want


def test_heuristic_variants():
    for v in ("fp32", "fp32_c", "bf16_c", "wgrad"):
        cfg, grid = select_config(7168, 4096, 4096, num_sms=132, variant=v)
        assert variant_of(cfg) == v and cfg.kind == "dense" and cfg.cluster == 1 and 1 <= grid <= 132
    cfg, _ = select_config(7168, 4096, 4096, 8, kind="k_grouped", num_sms=132)
    assert cfg.kind == "k_grouped" and cfg.groups == 8 and variant_of(cfg) == "wgrad"


def test_references():
    rng = np.random.default_rng(0)
    m, n, ks = 16, 24, [128, 0, 200]
    a = rng.standard_normal((m, sum(ks))).astype(np.float32)
    b = rng.standard_normal((n, sum(ks))).astype(np.float32)
    # per group, row-major [rows, k_g] back to back
    a_flat = np.concatenate([a[:, sum(ks[:g]):sum(ks[:g + 1])].ravel() for g in range(3)])
    b_flat = np.concatenate([b[:, sum(ks[:g]):sum(ks[:g + 1])].ravel() for g in range(3)])
    qa = [ref.per_token_cast_to_fp8(a_flat[m * sum(ks[:g]):m * sum(ks[:g + 1])].reshape(m, k)) for g, k in
          enumerate(ks)]
    qb = [ref.per_token_cast_to_fp8(b_flat[n * sum(ks[:g]):n * sum(ks[:g + 1])].reshape(n, k)) for g, k in
          enumerate(ks)]
    a_q = np.concatenate([q.ravel() for q, _ in qa])
    b_q = np.concatenate([q.ravel() for q, _ in qb])
    a_s = np.concatenate([s.T for _, s in qa])
    b_s = np.concatenate([s.T for _, s in qb])
    got = ref.k_grouped_wgrad_nt(a_q, a_s, b_q, b_s, m, n, ks)
    assert got.shape == (3, m, n) and not got[1].any()
    for g in (0, 2):
        want = a[:, sum(ks[:g]):sum(ks[:g + 1])].astype(np.float64) @ b[:, sum(ks[:g]):sum(ks[:g + 1])].T
        assert ref.rel_error(got[g], want) < 0.1                 # e4m3 quantization error only
        assert np.allclose(got[g], ref.wgrad_nt(*qa[g], *qb[g]))


# ---- validation, before any device query ----------------------------------------------------
def _dense(m, n, k, out_dtype="float32", b_rows=False):
    kb = -(-k // 128)
    a = DeviceArray(1 << 20, (m, k), "float8_e4m3fn")
    sa = DeviceArray(1 << 21, (m, kb), "float32", strides=(1, -(-m // 4) * 4))
    b = DeviceArray(1 << 22, (n, k), "float8_e4m3fn")
    sb = (DeviceArray(1 << 23, (n, kb), "float32", strides=(1, -(-n // 4) * 4)) if b_rows
          else DeviceArray(1 << 23, (-(-n // 128), kb), "float32"))
    d = DeviceArray(1 << 24, (m, n), out_dtype)
    return (a, sa), (b, sb), d


def test_dense_variant_validation():
    lhs, rhs, d = _dense(64, 128, 256, "bfloat16")
    with pytest.raises(TypeError, match="out: dtype is bfloat16; expected float32"):
        fp8gemm.gemm_fp8_fp8_fp32_nt(lhs, rhs, d)
    lhs, rhs, d = _dense(64, 128, 256)
    with pytest.raises(TypeError, match="c: dtype is bfloat16; expected float32"):
        fp8gemm.gemm_fp8_fp8_fp32_nt(lhs, rhs, d, c=DeviceArray(1 << 25, (64, 128), "bfloat16"))
    with pytest.raises(ValueError, match="c: shape"):
        fp8gemm.gemm_fp8_fp8_fp32_nt(lhs, rhs, d, c=DeviceArray(1 << 25, (64, 120), "float32"))
    with pytest.raises(ValueError, match="overlaps out"):
        fp8gemm.gemm_fp8_fp8_fp32_nt(lhs, rhs, d, c=DeviceArray((1 << 24) + 64, (64, 128), "float32"))
    with pytest.raises(ValueError, match="b_scales: shape"):       # wgrad wants per-row B scales
        fp8gemm.wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, d)
    lhs, rhs, d = _dense(64, 128, 256, b_rows=True)
    b, sb = rhs
    with pytest.raises(ValueError, match="b_scales: must be MN-major"):
        fp8gemm.wgrad_gemm_fp8_fp8_fp32_nt(lhs, (b, DeviceArray(sb.ptr, sb.shape, "float32")), d)
    with pytest.raises(ValueError, match="config: .* is a 'bf16' kernel"):
        fp8gemm.wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, d, config=GemmConfig(128, 128, 3))


def test_plan_variant_validation():
    with pytest.raises(ValueError, match="variant must be one of"):
        fp8gemm.plan_gemm(64, 128, 256, variant="fp16")
    with pytest.raises(ValueError, match="sfb_stride = 100 is smaller than 128"):
        fp8gemm.plan_wgrad_gemm(64, 128, 256, sfb_stride=100)
    with pytest.raises(ValueError, match="c_stride = 130 elements is not a multiple of 16 bytes"):
        fp8gemm.plan_gemm(64, 128, 256, variant="fp32_c", c_stride=130)


def _k_grouped(m, n, ks, groups=None):
    kb = sum(-(-k // 128) for k in ks)
    a = DeviceArray(1 << 20, (m * sum(ks),), "float8_e4m3fn")
    sa = DeviceArray(1 << 24, (kb, m), "float32")
    b = DeviceArray(1 << 26, (n * sum(ks),), "float8_e4m3fn")
    sb = DeviceArray(1 << 28, (kb, n), "float32")
    d = DeviceArray(1 << 30, (groups or len(ks), m, n), "float32")
    return (a, sa), (b, sb), d


def test_k_grouped_validation():
    f = fp8gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt
    lhs, rhs, d = _k_grouped(128, 256, [128, 256])
    with pytest.raises(ValueError, match="batch_sizes has 3 entries for 2 groups"):
        f(lhs, rhs, d, [128, 256, 0])
    with pytest.raises(ValueError, match=r"batch_sizes\[1\] = 250 must be a multiple of 16"):
        f(lhs, rhs, d, [128, 250])
    with pytest.raises(ValueError, match=r"batch_sizes\[0\]: must be >= 0"):
        f(lhs, rhs, d, [-128, 512])
    with pytest.raises(TypeError, match="batch_sizes must be a sequence"):
        f(lhs, rhs, d, 384)
    with pytest.raises(ValueError, match="a: has 49152 elements; the groups need 65536"):
        f(lhs, rhs, d, [256, 256])
    lhs2, rhs2, d2 = _k_grouped(124, 256, [128])
    with pytest.raises(ValueError, match="out: M = 124 must be a multiple of 8"):
        f(lhs2, rhs2, d2, [128])
    with pytest.raises(ValueError, match="a_scales: must be"):
        f((lhs[0], DeviceArray(1 << 24, (2, 128), "float32")), rhs, d, [128, 256])
    with pytest.raises(TypeError, match="out: dtype is bfloat16"):
        f(lhs, rhs, DeviceArray(1 << 30, (2, 128, 256), "bfloat16"), [128, 256])
    with pytest.raises(ValueError, match="groups = 121 exceeds 120"):
        fp8gemm.plan_k_grouped_wgrad_gemm(128, 256, 121)
    with pytest.raises(ValueError, match="N = 12 must be a multiple of 8"):
        fp8gemm.plan_k_grouped_wgrad_gemm(128, 12, 2)


def test_group_values():
    """An empty group keeps K = 0 (so no K block: the kernel skips it); the starts add up."""
    from fp8gemm.wgrad import group_values
    gv = group_values([256, 0, 144, 16])
    assert [g["k_g"] for g in gv] == [256, 0, 144, 16]
    assert [g["k_start_g"] for g in gv] == [0, 256, 256, 400]
    assert [g["kb_start_g"] for g in gv] == [0, 2, 2, 4]
    assert [g["k_blocks_g"] for g in gv] == [2, 0, 2, 1]


def test_k_grouped_forced_config_is_checked_before_any_launch():
    """More than 120 groups run as several launches: a forced config must fit the first one and
    is refused, naming config, before anything runs (not on the second launch, after the first
    has written its groups)."""
    from fp8gemm.config import variant_fields
    f = fp8gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt
    ks = [128] * 130
    lhs, rhs, d = _k_grouped(64, 128, ks)
    wrong = GemmConfig(64, 112, 4, **variant_fields("wgrad", "k_grouped", 130 - 120))
    with pytest.raises(ValueError, match=r"config: must be a k_grouped config for 120 groups"):
        f(lhs, rhs, d, ks, config=wrong)
    with pytest.raises(ValueError, match=r"config: must be a k_grouped config for 2 groups"):
        f(*_k_grouped(64, 128, [128, 128]), [128, 128], config=GemmConfig(64, 112, 4))
    with pytest.raises(TypeError, match="config: must be a GemmConfig"):
        f(lhs, rhs, d, ks, config="64x112")


@pytest.mark.parametrize("kind,bn", [("dense", 160), ("dense", 128), ("dense", 104), ("dense", 152),
                                     ("k_grouped", 152)])
def test_reduce_out_kernels(kind, bn):
    """The reduce-add epilogue: one cp.reduce.async.bulk.tensor store, no C map, load or barrier;
    compiles without spills; a wgrad config for the host (the wgrad and k-grouped calls)."""
    cfg = GemmConfig(128, bn, 3, **dict(variant_fields("wgrad", kind, 4 if kind == "k_grouped" else 0),
                                         with_c=False, reduce_out=True))
    assert cfg.name.endswith("_f32_red_sfbrow" + ("_g4" if kind == "k_grouped" else ""))
    assert variant_of(cfg) == "wgrad"
    kern = template.build(cfg)
    ptx = kern.render()
    assert len(re.findall(r"cp\.reduce\.async\.bulk\.tensor\.[23]d\.global\.shared::cta\.add\.tile\.bulk_group", ptx)) == 1
    assert "tmap_c" not in ptx and "c_full" not in ptx
    assert not re.search(r"cp\.async\.bulk\.tensor\.[23]d\.global\.shared::cta\.bulk_group", ptx)   # no plain store
    assert [t.array for t in template.spec(cfg).tensor_maps if t.array == "c"] == []
    res = jit.compile_ptx(ptx, kern.name).resources
    assert res.spill_stores == 0 and res.spill_loads == 0
    load = GemmConfig(128, bn, 3, **variant_fields("wgrad", kind, 4 if kind == "k_grouped" else 0))
    assert cfg.smem_bytes <= load.smem_bytes
    # each math warpgroup stores its own 64-row slab, synchronising only itself (named barrier
    # 2 + wg), and BN = 8 (mod 16) rows go unswizzled in one box per slab
    d = template.spec(cfg).tensor_map("tmap_d")
    assert cfg.d_store_rows == 64 and d.box[1] == "min(64, m)"
    assert (d.swizzle == 0 and d.box[0] == bn) if bn % 16 == 8 else (d.swizzle > 0 and d.box[0] == d.swizzle // 4)
    assert "bar.sync %store_bar, 128" in ptx and f"bar.sync 1, 256" not in ptx.split("EPILOGUE")[1]
    assert d.box == template.spec(load).tensor_map("tmap_d").box[:1] + ("min(64, m)",) + d.box[2:] or bn % 16 == 8


@pytest.mark.parametrize("fields", [dict(out_dtype="bfloat16", b_scales="row"), dict(out_dtype="float32"),
                                    dict(out_dtype="float32", b_scales="row", with_c=True)])
def test_reduce_out_is_for_the_wgrad_kernels_only(fields):
    with pytest.raises(ValueError, match="reduce_out"):
        GemmConfig(128, 128, 3, reduce_out=True, **fields)
    with pytest.raises(ValueError, match="reduce_out"):
        GemmConfig(32, 128, 3, reduce_out=True, out_dtype="float32", b_scales="row")


@pytest.mark.parametrize("on_a", [True, False])
def test_wgrad_cluster_shares_the_operand_with_its_scales(on_a):
    """A 2-CTA wgrad kernel multicasts A with its row scales, or B with its per-row B scales."""
    from fp8gemm.config import heuristic_fields
    cfg = GemmConfig(128, 152, 4, cluster=2, multicast_on_a=on_a, **heuristic_fields("wgrad"))
    ptx = template.build(cfg).render()
    shared = {m.group(1) for m in re.finditer(r"multicast::cluster[^\[]*\[[^\]]*\], \[%tmap_(\w+),", ptx)}
    assert shared == ({"a", "sfa"} if on_a else {"b", "sfb"})
    res = jit.compile_ptx(ptx, cfg.name).resources
    assert res.spill_stores == 0 and res.spill_loads == 0
