"""The tile schedulers' Python references, and the spec the template hands the host."""
import re

import pytest

from fp8gemm.config import GemmConfig
from fp8gemm.ptx_templates import gemm as template
from fp8gemm.ptx_templates import scheduler
from fp8gemm.ptx_templates.spec import evaluate
from scheduler_cases import ALIGN, config, expected_tiles, layouts

CASES = layouts()


@pytest.mark.parametrize("mc", ["", "a", "b"])
@pytest.mark.parametrize("block_m", [64, 128])
@pytest.mark.parametrize("name,kind,m,groups,layout", CASES, ids=[c[0] for c in CASES])
def test_tiles_cover_every_valid_tile_once(name, kind, m, groups, layout, block_m, mc):
    n, block_n = 1000, 112
    cfg = config(kind, block_m, block_n, mc)
    grid = cfg.grid(m, n, 132, groups)
    work = scheduler.for_config(cfg).tiles(grid, m, n, groups, layout)
    stored = [(t.group, t.m_blk, t.n_blk) for w in work.values() for t in w if not t.ghost]
    assert len(stored) == len(set(stored)), "a tile is stored twice"
    assert set(stored) == expected_tiles(kind, m, n, groups, layout, block_m, block_n)
    for w in work.values():
        for t in w:
            assert 0 <= t.group < groups
            if kind == "contiguous":            # never a padding block; rows index A/D directly
                assert layout[t.row] == t.group and t.row == t.m_blk * block_m
            elif kind == "masked":              # never a tile wholly past masked_m
                assert t.m_blk * block_m < min(layout[t.group], m)
            else:                               # inside the group's own rows; stores clip to them
                left = layout[t.group] - t.row
                assert left >= 1 and t.rows == min(block_m, left)
                assert t.row % ALIGN == (t.m_blk * block_m) % ALIGN


@pytest.mark.parametrize("mc", ["a", "b"])
@pytest.mark.parametrize("name,kind,m,groups,layout", CASES, ids=[c[0] for c in CASES])
def test_cluster_pairs_stay_in_step_and_never_share_across_groups(name, kind, m, groups, layout, mc):
    cfg = config(kind, 128, 96, mc)
    n = 1000
    grid = cfg.grid(m, n, 132, groups)
    work = scheduler.for_config(cfg).tiles(grid, m, n, groups, layout)
    for c in range(0, grid, 2):
        r0, r1 = work[c], work[c + 1]
        assert len(r0) == len(r1)                      # the same number of pipeline stages
        for t0, t1 in zip(r0, r1):
            assert not (t0.ghost and t1.ghost)
            if t0.mc_valid:                            # the multicast operand is the same block
                assert t0.group == t1.group
                if mc == "a":
                    assert t0.m_blk == t1.m_blk
                else:
                    assert t0.n_blk == t1.n_blk
            if t0.ghost or t1.ghost:
                assert (t0.group, t0.m_blk, t0.n_blk) == (t1.group, t1.m_blk, t1.n_blk)


def test_contiguous_b_pairs_of_two_groups_load_separately():
    cfg = config("contiguous", 128, 128, "b")
    idx = [0] * 128 + [1] * 128                       # one pair, two groups
    work = scheduler.for_config(cfg).tiles(2, 256, 128, 2, idx)
    assert [t.mc_valid for t in work[0]] == [False] and [t.group for t in work[1]] == [1]


def test_dense_tiles_match_the_unit_walk():
    from test_gemm_cpu import _simulate_units
    for mc in ("", "a", "b"):
        cfg = config("dense", 128, 112, mc)
        grid = cfg.grid(333, 1000, 132)
        ref, _, _ = _simulate_units(cfg, 333, 1000, grid)
        got = scheduler.Dense(cfg).tiles(grid, 333, 1000)
        assert {c: [(t.m_blk, t.n_blk, t.ghost) for t in w] for c, w in got.items()} == ref


# ---- the spec ---------------------------------------------------------------------------------
SPEC_CONFIGS = [GemmConfig(128, 128, 4, kind=k, cluster=c, multicast_on_a=a)
                for k in ("dense", "contiguous", "contiguous_psum", "masked") for c, a in ((1, True), (2, False))]


@pytest.mark.parametrize("cfg", SPEC_CONFIGS, ids=lambda c: c.name)
def test_spec_matches_the_ptx(cfg):
    gen = template.GemmGen(cfg)
    check_spec_matches_ptx(cfg, gen.spec, gen.build().render())


def check_spec_matches_ptx(cfg, spec, ptx):
    """A dense or M-grouped kernel's spec against its PTX: parameters, threads, stage bytes, map
    ranks, cluster, shared memory, one source per parameter (also used by the bundle tests)."""
    declared = re.findall(rf"\.param (?:\.align 64 \.b8|\.(\w+)) {cfg.name}_param_(\w+)", ptx)
    assert [(p.type if p.type != "tmap" else "", p.name) for p in spec.params] == declared
    assert f".maxntid {spec.threads}, 1, 1" in ptx
    assert f"mbarrier.arrive.expect_tx.shared::cta.b64 _, [%pfull], {spec.expect_tx_bytes};" in ptx
    row = cfg.b_scales == "row"                  # per-row B scales: a BN-float load per stage
    assert spec.expect_tx_bytes == (cfg.block_m + cfg.block_n) * 128 + cfg.block_m * 4 + (cfg.block_n * 4 if row else 0)
    for t in spec.tensor_maps:                  # every use of a map (load, store, reduce-add) has its rank
        uses = re.findall(rf"cp\.(?:reduce\.)?async\.bulk\.tensor\.(\d)d[^\[]*(?:\[[^\]]*\], )?\[%{t.param}, \{{([^}}]*)\}}", ptx)
        assert uses and all(int(r) == t.rank and len(c.split(",")) == t.rank for r, c in uses), t
    assert spec.cluster == (cfg.cluster, 1, 1) and spec.smem_bytes == cfg.smem_bytes
    for p in spec.params:                        # every parameter has exactly one source
        assert (p.type == "tmap") + (p.array is not None) + (p.value is not None) == 1, p


def test_spec_is_plain_data():
    import json
    d = template.spec(GemmConfig(128, 112, 4, kind="masked", cluster=2)).to_dict()
    assert json.loads(json.dumps(d)) == json.loads(json.dumps(d))
    assert {t["param"] for t in d["tensor_maps"]} == {"tmap_a", "tmap_b", "tmap_sfa", "tmap_d"}


def test_spec_expressions():
    v = dict(m=100, block_m=128, k=1040, s=4)
    assert evaluate("min(block_m, m)", v) == 100
    assert evaluate("ceil_div(k, 128) * s + 1", v) == 9 * 4 + 1
    assert evaluate(7, v) == 7
    for bad in ("__import__('os')", "m ** 2", "x"):
        with pytest.raises((ValueError, KeyError)):
            evaluate(bad, v)


@pytest.mark.parametrize("kind", ["dense", "contiguous", "contiguous_psum", "masked"])
def test_spec_units_match_the_config_model(kind):
    """The grid rule the spec hands to runtimes (Python plans, exported bundles) counts the same
    work units as the config's model, for every cluster mode."""
    import random
    rng = random.Random(kind)
    for cfg in [GemmConfig(bm, 128, 3, kind=kind, cluster=c, multicast_on_a=a)
                for bm in (64, 128) for c, a in ((1, True), (2, True), (2, False))]:
        units = template.spec(cfg).units
        for _ in range(20):
            m, n, g = rng.randint(1, 5000), 8 * rng.randint(1, 900), rng.randint(1, 9)
            groups = g if kind == "masked" else 1
            got = evaluate(units, dict(m=m, n=n, groups=g if kind == "masked" else groups,
                                       block_m=cfg.block_m, block_n=cfg.block_n))
            assert got == cfg.units(m, n, groups), (cfg.name, m, n, g)
