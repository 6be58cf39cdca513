"""The grouped GEMMs (contiguous, contiguous with group ends, masked) on the GPU.

Every valid row is checked against the float64 reference of its group (grouped_util), and
every row the layout says is not written must still hold the poison.
"""
import dataclasses

import pytest

from grouped_util import (ALIGN, POISON, WIDEST_TILE, ContiguousLayout, ContiguousProblem, MaskedProblem,
                          deepgemm_sizes, expected_m_of, int32_on_device, same_valid_bits)

pytestmark = pytest.mark.gpu

# DeepGEMM 03d0be3 (facts §5.2): (G, expected M per group, K, N)
DEEPGEMM_CONTIGUOUS = [(4, 8192, 7168, 4096), (4, 8192, 2048, 7168), (8, 4096, 7168, 4096),
                       (8, 4096, 2048, 7168), (32, 256, 7168, 4096), (32, 256, 2048, 7168)]
DEEPGEMM_MASKED = [(g, e, k, n) for (g, e) in ((1, 1024), (2, 512), (4, 256))
                   for (k, n) in ((7168, 4096), (2048, 7168))]


def _torch():
    return pytest.importorskip("torch")


def _sync(torch):
    torch.cuda.synchronize()


# ---- DeepGEMM's shapes ------------------------------------------------------------------------
@pytest.mark.parametrize("groups,expected,k,n", DEEPGEMM_CONTIGUOUS)
def test_deepgemm_contiguous_shapes(groups, expected, k, n):
    torch = _torch()
    sizes = deepgemm_sizes(groups, expected, seed=groups * 7 + k)
    p = ContiguousProblem(torch, ContiguousLayout.build(sizes), n, k, seed=groups + expected + n)
    p.run()
    _sync(torch)
    p.check(torch, what=f"contiguous G={groups} m={sizes} k={k} n={n}")


@pytest.mark.parametrize("groups,expected,k,n", DEEPGEMM_MASKED)
def test_deepgemm_masked_shapes(groups, expected, k, n):
    """M_max = 4096; three trials of masked_m = int(expected * U(0.7, 1.3)) on the same inputs."""
    torch = _torch()
    p = MaskedProblem(torch, groups, 4096, n, k, seed=groups * 31 + k)
    for trial in range(3):
        masked = deepgemm_sizes(groups, expected, seed=1000 * trial + groups + n)
        p.set_masked(torch, masked)
        p.poison(torch)
        p.run()
        _sync(torch)
        p.check(torch, what=f"masked G={groups} masked_m={masked} k={k} n={n}")


# ---- group counts -----------------------------------------------------------------------------
@pytest.mark.parametrize("groups", [1, 64])
def test_contiguous_group_count(groups):
    torch = _torch()
    sizes = [777] if groups == 1 else deepgemm_sizes(64, 96, seed=64)
    n, k = (2048, 1024) if groups == 1 else (512, 768)
    p = ContiguousProblem(torch, ContiguousLayout.build(sizes), n, k, seed=groups)
    p.run(validate=True)
    _sync(torch)
    p.check(torch)


@pytest.mark.parametrize("groups", [1, 64])
def test_masked_group_count(groups):
    torch = _torch()
    if groups == 1:
        m_max, n, k, masked = 1024, 2048, 1024, [700]
    else:
        m_max, n, k = 128, 512, 768
        masked = [0, 1, 128, 127] + deepgemm_sizes(60, 90, seed=60)
        masked = [min(m, m_max) for m in masked]
    p = MaskedProblem(torch, groups, m_max, n, k, seed=groups + 5, masked=masked)
    p.run(validate=True)
    _sync(torch)
    p.check(torch)


# ---- awkward layouts --------------------------------------------------------------------------
# empty groups (first, middle and last), a one-row group, a full 128-row group, all -1 blocks
# before the first group, in the middle and at the end; N and K tails
EDGE_SIZES = [0, 300, 0, 1, 128, 77, 0]
EDGE_NK = [(264, 1040), (4096, 576), (136, 128)]


@pytest.mark.parametrize("n,k", EDGE_NK)
def test_contiguous_edge_layout(n, k):
    torch = _torch()
    layout = ContiguousLayout.build(EDGE_SIZES, pad_blocks={-1: 1, 3: 1, 4: 2}, tail_rows=ALIGN)
    p = ContiguousProblem(torch, layout, n, k, seed=n + k)
    p.run(validate=True)
    _sync(torch)
    p.check(torch, what=f"contiguous edge n={n} k={k}")


def test_contiguous_last_group_unpadded():
    """M_sum not a multiple of 128: the last group ends at the array's edge."""
    torch = _torch()
    layout = ContiguousLayout.build([200, 0, 45], pad_last=False)
    assert layout.m_sum % ALIGN
    p = ContiguousProblem(torch, layout, 392, 1040, seed=3)
    p.run()
    _sync(torch)
    p.check(torch)


@pytest.mark.parametrize("n,k", EDGE_NK)
def test_group_ends_edge_layout(n, k):
    """group_ends form: the gap rows after each group's end (up to the next 128 boundary) and
    the rows after the last group are never written; empty groups have end == start."""
    torch = _torch()
    layout = ContiguousLayout.build(EDGE_SIZES, tail_rows=200)
    ends = layout.group_ends()
    assert ends[0] == 0 and ends[2] == layout.starts[2] and ends[-1] == layout.starts[-1]
    p = ContiguousProblem(torch, layout, n, k, seed=n * 3 + k)
    p.run("group_ends", validate=True)
    _sync(torch)
    p.check(torch, "group_ends", what=f"group_ends edge n={n} k={k}")


def test_group_ends_repeated_unaligned_end():
    """An empty group whose end repeats the previous (unaligned) end: it owns
    [align(300), 300), i.e. nothing; the next group starts at 384."""
    torch = _torch()
    layout = ContiguousLayout.from_group_ends([300, 300, 384 + 50, 512 + 1], m_sum=640)
    assert layout.sizes == [300, 0, 50, 1] and layout.starts == [0, 384, 384, 512]
    p = ContiguousProblem(torch, layout, 264, 1040, seed=11)
    p.run("group_ends", validate=True)
    _sync(torch)
    p.check(torch, "group_ends")


# (M_max, N, K, masked_m, forced (block_m, block_n, stages) or None)
MASKED_EDGE = [
    (200, 264, 1040, [200, 0, 1, 0, 199, 0, 77, 128, 129], None),
    (200, 264, 1040, [200, 0, 1, 0, 199, 0, 77, 128, 129], (64, 96, 6)),
    (200, 264, 1040, [200, 0, 1, 0, 199, 0, 77, 128, 129], (128, 112, 4)),
    (384, 4096, 576, [384, 0, 255, 256, 1, 0], (256, 128, 3)),
    (1, 264, 128, [0, 1, 1, 0], None),
    (64, 136, 2048, [64, 0, 63, 1], None),
]


@pytest.mark.parametrize("m_max,n,k,masked,forced", MASKED_EDGE)
def test_masked_edge(m_max, n, k, masked, forced):
    """masked_m = 0, 1 and M_max, M_max not a multiple of the block, N and K tails; a full
    group next to an empty one shows a tile store spilling into the next group."""
    import fp8gemm
    torch = _torch()
    cfg = fp8gemm.GemmConfig(*forced, kind="masked") if forced else None
    p = MaskedProblem(torch, len(masked), m_max, n, k, seed=m_max + n, masked=masked)
    p.run(config=cfg, validate=True)
    _sync(torch)
    p.check(torch, tile=cfg.block_m if cfg else WIDEST_TILE, what=f"masked edge {masked} {cfg}")


# ---- every config the heuristic may return ----------------------------------------------------
SWEEP_KINDS = ("contiguous", "contiguous_psum", "masked")
SWEEP_K = 5 * 128 + 48
MAX_CHUNKS = 16


def _kind_configs(kind):
    from fp8gemm.config import candidate_configs
    out = {}
    for c in candidate_configs(kind=kind):
        c = dataclasses.replace(c, stages=min(c.stages, 6))
        out.setdefault(c, None)
    return list(out)


def _sweep_params():
    params = []
    for kind in SWEEP_KINDS:
        try:
            count = len(_kind_configs(kind))
        except Exception:          # the kind is not there yet: one case that reports the error
            count = 1
        chunks = max(1, min(MAX_CHUNKS, count))
        params += [pytest.param(kind, i, chunks, id=f"{kind}-{i}") for i in range(chunks)]
    return params


def _sweep_one(torch, cfg):
    n = 3 * cfg.block_n + 8
    seed = cfg.block_m * 1000 + cfg.block_n + cfg.stages
    if cfg.kind == "masked":
        m_max = 2 * cfg.block_m + 17
        p = MaskedProblem(torch, 3, m_max, n, SWEEP_K, seed=seed, masked=[m_max, cfg.block_m + 5, 0])
        p.run(config=cfg)
        _sync(torch)
        p.check(torch, tile=cfg.block_m, what=cfg.name)
    else:
        form = "indices" if cfg.kind == "contiguous" else "group_ends"
        if form == "indices":      # with an all -1 block between two groups
            layout = ContiguousLayout.build([2 * 128 + 17, 0, 50, 128], pad_blocks={1: 1})
        else:                      # with rows after the last group
            layout = ContiguousLayout.build([2 * 128 + 17, 0, 50, 128], tail_rows=40)
        p = ContiguousProblem(torch, layout, n, SWEEP_K, seed=seed)
        p.run(form, config=cfg)
        _sync(torch)
        p.check(torch, form, what=cfg.name)


@pytest.mark.parametrize("kind,chunk,chunks", _sweep_params())
def test_every_heuristic_config(kind, chunk, chunks):
    """Each config candidate_configs(kind=...) lists (stages capped at 6), forced once on a small
    shape with M, N and K tails; the configs are dealt round-robin into at most 16 cases per kind."""
    torch = _torch()
    cfgs = _kind_configs(kind)[chunk::chunks]
    failures = []
    for cfg in cfgs:
        try:
            _sweep_one(torch, cfg)
        except Exception as e:   # report every failing config of the chunk, not just the first
            failures.append(f"{cfg.name}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)


# ---- the same arithmetic as the dense GEMM -----------------------------------------------------
DENSE_EQ_CONTIGUOUS = [("contiguous", 128, 128, 5), ("contiguous", 128, 112, 4), ("contiguous", 64, 96, 6),
                       ("contiguous_psum", 128, 128, 4)]
DENSE_EQ_MASKED = [(64, 96, 6), (128, 128, 4), (256, 112, 3), (128, 160, 4)]


@pytest.mark.parametrize("kind,bm,bn,stages", DENSE_EQ_CONTIGUOUS)
def test_contiguous_equals_dense_per_group(kind, bm, bn, stages):
    import fp8gemm
    from fp8gemm import GemmConfig
    torch = _torch()
    form = "indices" if kind == "contiguous" else "group_ends"
    layout = ContiguousLayout.build([300, 1, 0, 129, 200])
    p = ContiguousProblem(torch, layout, 264, 1040, seed=bm + bn)
    p.run(form, config=GemmConfig(bm, bn, stages, kind=kind))
    dense_cfg = GemmConfig(bm, bn, stages)
    (bq, sb) = p.rhs
    _sync(torch)
    p.check(torch, form)
    for g, s, e in layout.valid():
        d = torch.empty((e - s, p.n), device="cuda", dtype=torch.bfloat16)
        d.view(torch.int16).fill_(POISON)
        fp8gemm.gemm_fp8_fp8_bf16_nt(p.group_lhs(g), (bq[g], sb[g]), d, config=dense_cfg)
        _sync(torch)
        assert torch.equal(p.out[s:e].view(torch.int16), d.view(torch.int16)), \
            f"group {g} ({e - s} rows) differs from the dense GEMM with {dense_cfg.name}"


@pytest.mark.parametrize("bm,bn,stages", DENSE_EQ_MASKED)
def test_masked_equals_dense_per_group(bm, bn, stages):
    import fp8gemm
    from fp8gemm import GemmConfig
    torch = _torch()
    masked = [300, 1, 0, 129, 200]
    p = MaskedProblem(torch, len(masked), 300, 264, 1040, seed=bm * 7 + bn, masked=masked)
    p.run(config=GemmConfig(bm, bn, stages, kind="masked"))
    dense_cfg = GemmConfig(bm, bn, stages)
    (bq, sb) = p.rhs
    _sync(torch)
    p.check(torch, tile=bm)
    for g, m in enumerate(masked):
        if not m:
            continue
        d = torch.empty((m, p.n), device="cuda", dtype=torch.bfloat16)
        d.view(torch.int16).fill_(POISON)
        fp8gemm.gemm_fp8_fp8_bf16_nt((p.aq[g, :m], p.sa[g, :m]), (bq[g], sb[g]), d, config=dense_cfg)
        _sync(torch)
        assert torch.equal(p.out[g, :m].view(torch.int16), d.view(torch.int16)), \
            f"group {g} ({m} rows) differs from the dense GEMM with {dense_cfg.name}"


# ---- CUDA graphs, streams, plans --------------------------------------------------------------
def test_masked_cuda_graph_replay():
    """Captured once; each replay reads new A contents and a new masked_m from the same buffers."""
    torch = _torch()
    masked0 = [200, 0, 50, 129]
    p = MaskedProblem(torch, 4, 200, 264, 1040, seed=77, masked=masked0)
    expected_m = 100
    p.run(expected_m)                     # compile and plan outside the capture
    _sync(torch)
    p.check(torch)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        p.run(expected_m)
    for i, masked in enumerate([[1, 200, 0, 77], [200, 200, 200, 200], [0, 0, 0, 0], [128, 3, 199, 64]]):
        p.set_a(torch, seed=100 + i)
        p.set_masked(torch, masked)
        p.poison(torch)
        graph.replay()
        _sync(torch)
        p.check(torch, what=f"replay {i} masked_m={masked}")


def test_two_streams_match_serial():
    torch = _torch()
    jobs = [(ContiguousProblem(torch, ContiguousLayout.build([300, 1, 0, 200]), 1024, 1536, seed=41), "indices"),
            (ContiguousProblem(torch, ContiguousLayout.build([129, 0, 256, 70]), 1024, 1536, seed=42), "group_ends"),
            (MaskedProblem(torch, 3, 256, 1024, 1536, seed=43, masked=[256, 0, 100]), None)]

    def launch(p, form):
        if form is None:
            p.run()
        else:
            p.run(form)

    for p, form in jobs:                  # serial, on the current stream
        launch(p, form)
    _sync(torch)
    serial = [p.out.clone() for p, _ in jobs]
    for p, _ in jobs:
        p.poison(torch)
    _sync(torch)
    streams = [torch.cuda.Stream() for _ in jobs]
    for _ in range(3):                    # overlapping launches; each rewrites the same result
        for (p, form), s in zip(jobs, streams):
            with torch.cuda.stream(s):
                launch(p, form)
    for s in streams:
        s.synchronize()
    for (p, form), ref in zip(jobs, serial):
        if form is None:
            p.check(torch)
        else:
            p.check(torch, form)
        assert same_valid_bits(torch, p, p.out, ref), "two streams changed the result"


@pytest.mark.parametrize("form", ["indices", "group_ends"])
def test_contiguous_plan_matches_array_api(form):
    import fp8gemm
    torch = _torch()
    layout = ContiguousLayout.build([300, 1, 0, 129, 200])
    problems = [ContiguousProblem(torch, layout, 264, 1040, seed=s) for s in (5, 6)]
    p0 = problems[0]
    plan = fp8gemm.plan_m_grouped_gemm_contiguous(layout.m_sum, 264, 1040, layout.groups, layout=form,
                                                  sfa_stride=p0.lhs[1].stride(1))
    assert plan.grid >= 1
    stream = torch.cuda.current_stream().cuda_stream
    for p in problems + [p0]:             # new pointers, then the first ones again
        p.poison(torch)
        (aq, sa), (bq, sb) = p.lhs, p.rhs
        plan.launch(aq.data_ptr(), sa.data_ptr(), bq.data_ptr(), sb.data_ptr(), p.out.data_ptr(),
                    p.layout_arg(form).data_ptr(), stream)
        _sync(torch)
        p.check(torch, form, what=f"plan {form}")
        raw = p.out.clone()
        p.poison(torch)
        p.run(form, config=plan.config)
        _sync(torch)
        assert same_valid_bits(torch, p, p.out, raw), "plan.launch and the array API differ"


def test_masked_plan_matches_array_api():
    import fp8gemm
    torch = _torch()
    masked = [200, 0, 1, 129]
    p = MaskedProblem(torch, 4, 200, 264, 1040, seed=8, masked=masked)
    plan = fp8gemm.plan_m_grouped_gemm_masked(200, 264, 1040, 4, p.expected_m)
    (aq, sa), (bq, sb) = p.lhs, p.rhs
    plan.launch(aq.data_ptr(), sa.data_ptr(), bq.data_ptr(), sb.data_ptr(), p.out.data_ptr(),
                p.masked_m.data_ptr(), torch.cuda.current_stream().cuda_stream)
    _sync(torch)
    p.check(torch, tile=plan.config.block_m, what="masked plan")
    raw = p.out.clone()
    p.poison(torch)
    p.run(config=plan.config)
    _sync(torch)
    assert same_valid_bits(torch, p, p.out, raw), "plan.launch and the array API differ"


# ---- validate=True ----------------------------------------------------------------------------
def _bad_contiguous(torch, case):
    layout = ContiguousLayout.build([300, 128, 77])
    p = ContiguousProblem(torch, layout, 264, 1040, seed=21)
    idx = layout.m_indices()
    if case == "m_indices == G":
        _, s, e = layout.valid()[-1]
        idx[s:e] = [layout.groups] * (e - s)
        p.m_indices = int32_on_device(torch, idx)
        return p, "indices"
    if case == "m_indices == -2":
        idx[5] = -2
        p.m_indices = int32_on_device(torch, idx)
        return p, "indices"
    if case == "block mixes two groups":
        s = layout.starts[1]
        idx[s - 28:s] = [1] * 28            # the last rows of group 0's padding claim group 1
        p.m_indices = int32_on_device(torch, idx)
        return p, "indices"
    if case == "group_ends decreasing":
        p.group_ends = int32_on_device(torch, [300, 200, layout.m_sum])
        return p, "group_ends"
    if case == "group_ends[-1] > M_sum":
        ends = layout.group_ends()
        p.group_ends = int32_on_device(torch, ends[:-1] + [layout.m_sum + 1])
        return p, "group_ends"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["m_indices == G", "m_indices == -2", "block mixes two groups",
                                  "group_ends decreasing", "group_ends[-1] > M_sum"])
def test_validate_rejects_bad_contiguous_layout(case):
    torch = _torch()
    p, form = _bad_contiguous(torch, case)
    _sync(torch)
    with pytest.raises(ValueError):
        p.run(form, validate=True)
    _sync(torch)
    assert (p.out.view(torch.int16) == POISON).all(), "out was written before the check failed"


@pytest.mark.parametrize("bad", ["M_max + 1", "-1"])
def test_validate_rejects_bad_masked_m(bad):
    torch = _torch()
    masked = [200, 0, 50, 129]
    p = MaskedProblem(torch, 4, 200, 264, 1040, seed=22, masked=masked)
    p.masked_m.copy_(torch.tensor([200, 0, 201 if bad == "M_max + 1" else -1, 129], dtype=torch.int32))
    _sync(torch)
    with pytest.raises(ValueError):
        p.run(expected_m_of(masked, 200), validate=True)
    _sync(torch)
    assert (p.out.view(torch.int16) == POISON).all(), "out was written before the check failed"
