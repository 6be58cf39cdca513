"""The tile schedulers' PTX, run alone on the GPU, against their Python ``tiles()``."""
import struct

import pytest

from scheduler_cases import config, layouts

pytestmark = pytest.mark.gpu

CASES = layouts()


def _probe(cfg, m, n, groups, layout, grid):
    from fp8gemm import launcher, runtime
    from fp8gemm.ptx_templates import schedule_probe as sp
    fn, _ = runtime.get_function(("probe", cfg), lambda: sp.build(cfg), 0)
    max_tiles = 4096
    lay = launcher.DeviceBuffer(4 * max(1, len(layout)))
    lay.upload(struct.pack(f"<{len(layout)}i", *layout))
    out = launcher.DeviceBuffer(grid * max_tiles * 4 * sp.RECORD_WORDS)
    counts = launcher.DeviceBuffer(4 * grid)
    out.fill_u8(0xFF)
    counts.fill_u8(0xFF)
    params = launcher.ParamPack([t for _, t in sp.PARAMS])
    for i, v in enumerate((lay.ptr, out.ptr, counts.ptr, m, n, groups, max_tiles)):
        params[i] = v
    launcher.Launch(fn, (grid, 1, 1), (32, 1, 1), 0, (cfg.cluster, 1, 1))(params.address, 0)
    launcher.synchronize()
    cnt = struct.unpack(f"<{grid}I", bytes(counts.download()))
    raw = bytes(out.download())
    res = {}
    for cta in range(grid):
        assert cnt[cta] <= max_tiles
        recs = []
        for i in range(cnt[cta]):
            w = struct.unpack_from(f"<{sp.RECORD_WORDS}I", raw, (cta * max_tiles + i) * 4 * sp.RECORD_WORDS)
            recs.append((w[0], w[1], w[2], w[3], bool(w[4]), bool(w[5]), w[6]))
        res[cta] = recs
    return res


@pytest.mark.parametrize("mc", ["", "a", "b"])
@pytest.mark.parametrize("name,kind,m,groups,layout", CASES, ids=[c[0] for c in CASES])
def test_schedule_kernel_equals_python_tiles(name, kind, m, groups, layout, mc):
    from fp8gemm.ptx_templates import scheduler
    for block_m, block_n, n, sms in ((128, 112, 1000, 132), (64, 96, 4096, 20)):
        cfg = config(kind, block_m, block_n, mc)
        grid = cfg.grid(m, n, sms, groups)
        want = scheduler.for_config(cfg).tiles(grid, m, n, groups, layout)
        got = _probe(cfg, m, n, groups, layout, grid)
        assert got == {c: [(t.group, t.m_blk, t.n_blk, t.row, t.ghost, t.mc_valid, t.rows) for t in w]
                       for c, w in want.items()}, (name, cfg.name)


def test_dense_schedule_kernel():
    from fp8gemm.ptx_templates import scheduler
    for mc in ("", "a", "b"):
        cfg = config("dense", 128, 128, mc)
        grid = cfg.grid(4096, 7168, 132)
        want = scheduler.Dense(cfg).tiles(grid, 4096, 7168)
        got = _probe(cfg, 4096, 7168, 1, [0], grid)
        assert got == {c: [(t.group, t.m_blk, t.n_blk, t.row, t.ghost, t.mc_valid, t.rows) for t in w]
                       for c, w in want.items()}
