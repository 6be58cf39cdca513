"""CUDA graphs: dense, contiguous (both forms), masked and both casts captured once under
torch.cuda.graph and replayed with new data written into the same buffers; and a dense GEMM
plus a cast captured with the raw driver API (cuStreamBeginCapture, no torch on the launch
path), replayed with new inputs. What a graph fixes: the pointers, shapes and config; what may
change between replays: the contents of the buffers (for masked, masked_m and so the rows)."""
from __future__ import annotations

import pytest

from fp8gemm.testing import ContiguousLayout, check, reference

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _fill(torch, t, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    t.copy_(torch.randn(t.shape, device="cuda", generator=g).to(t.dtype))


def _capture(torch, fn):
    fn()                                   # compile, plan and allocate outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def test_dense_and_casts_replay_with_new_data(torch):
    import fp8gemm
    m, n, k = 300, 1024, 1536
    a = torch.empty((m, k), device="cuda", dtype=torch.bfloat16)
    b = torch.empty((n, k), device="cuda", dtype=torch.bfloat16)
    _fill(torch, a, 1), _fill(torch, b, 2)
    aq, sa = fp8gemm.per_token_cast_to_fp8(a)
    bq, sb = fp8gemm.per_block_cast_to_fp8(b)
    out = torch.empty((m, n), device="cuda", dtype=torch.bfloat16)

    def step():
        fp8gemm.per_token_cast_to_fp8(a, out=(aq, sa))
        fp8gemm.per_block_cast_to_fp8(b, out=(bq, sb))
        fp8gemm.gemm_fp8_fp8_bf16_nt((aq, sa), (bq, sb), out)

    graph = _capture(torch, step)
    for i in range(3):
        _fill(torch, a, 10 + i), _fill(torch, b, 20 + i)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        want_a, want_b = fp8gemm.per_token_cast_to_fp8(a), fp8gemm.per_block_cast_to_fp8(b)
        assert torch.equal(aq.view(torch.uint8), want_a[0].view(torch.uint8)) and torch.equal(sa, want_a[1])
        assert torch.equal(bq.view(torch.uint8), want_b[0].view(torch.uint8)) and torch.equal(sb, want_b[1])
        err, _ = check(torch, out, reference(torch, (aq, sa), (bq, sb)))
        assert err <= 2e-3, (i, err)


@pytest.mark.parametrize("form", ["indices", "group_ends"])
def test_contiguous_replays_with_new_data(torch, form):
    import fp8gemm
    n, k = 512, 1024
    lay = ContiguousLayout.build([200, 0, 90])
    a = torch.empty((lay.m_sum, k), device="cuda", dtype=torch.bfloat16)
    bf = torch.empty((lay.groups, n, k), device="cuda", dtype=torch.bfloat16)
    aq = torch.empty((lay.m_sum, k), device="cuda", dtype=torch.float8_e4m3fn)
    sa = fp8gemm.per_token_cast_to_fp8(torch.zeros((lay.m_sum, k), device="cuda"))[1]
    bq = torch.empty((lay.groups, n, k), device="cuda", dtype=torch.float8_e4m3fn)
    sb = torch.empty((lay.groups, n // 128, k // 128), device="cuda")
    meta = torch.tensor(lay.m_indices() if form == "indices" else lay.group_ends(), dtype=torch.int32,
                        device="cuda")
    out = torch.empty((lay.m_sum, n), device="cuda", dtype=torch.bfloat16)
    kw = {"m_indices": meta} if form == "indices" else {"group_ends": meta}

    def step():
        fp8gemm.per_token_cast_to_fp8(a, out=(aq, sa))
        for g in range(lay.groups):
            fp8gemm.per_block_cast_to_fp8(bf[g], out=(bq[g], sb[g]))
        fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((aq, sa), (bq, sb), out, **kw)

    _fill(torch, a, 3), _fill(torch, bf, 4)
    graph = _capture(torch, step)
    for i in range(2):
        _fill(torch, a, 30 + i), _fill(torch, bf, 40 + i)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        for g, s, e in lay.valid():
            err, _ = check(torch, out[s:e], reference(torch, (aq[s:e], sa[s:e]), (bq[g], sb[g])))
            assert err <= 2e-3, (i, g, err)


def test_raw_driver_stream_capture(torch):
    """No torch on the launch path: a plan and the casts captured into a driver-API graph on a
    stream of our own, instantiated, and launched twice with new inputs in the same buffers."""
    import fp8gemm
    from fp8gemm import launcher
    d = launcher._d
    m, n, k = 256, 512, 1024
    a = torch.empty((m, k), device="cuda", dtype=torch.bfloat16)
    b = torch.empty((n, k), device="cuda", dtype=torch.bfloat16)
    _fill(torch, a, 5), _fill(torch, b, 6)
    aq, sa = fp8gemm.per_token_cast_to_fp8(a)
    bq, sb = fp8gemm.per_block_cast_to_fp8(b)
    out = torch.empty((m, n), device="cuda", dtype=torch.bfloat16)
    plan = fp8gemm.plan_gemm(m, n, k, sfa_stride=sa.stride(1))
    stream = launcher._drv("cuStreamCreate", 1)            # CU_STREAM_NON_BLOCKING
    h = int(stream)

    def step():
        fp8gemm.per_token_cast_to_fp8(a, out=(aq, sa), stream=h)
        fp8gemm.per_block_cast_to_fp8(b, out=(bq, sb), stream=h)
        plan.launch(aq.data_ptr(), sa.data_ptr(), bq.data_ptr(), sb.data_ptr(), out.data_ptr(), h)

    step()
    launcher.stream_synchronize(h)
    launcher._drv("cuStreamBeginCapture", stream, d.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
    step()
    graph = launcher._drv("cuStreamEndCapture", stream)
    exe = launcher._drv("cuGraphInstantiate", graph, 0)
    for i in range(2):
        _fill(torch, a, 50 + i), _fill(torch, b, 60 + i)
        out.fill_(float("nan"))
        torch.cuda.synchronize()
        launcher._drv("cuGraphLaunch", exe, stream)
        launcher.stream_synchronize(h)
        err, _ = check(torch, out, reference(torch, fp8gemm.per_token_cast_to_fp8(a), fp8gemm.per_block_cast_to_fp8(b)))
        assert err <= 2e-3, (i, err)
    launcher._drv("cuGraphExecDestroy", exe)
    launcher._drv("cuGraphDestroy", graph)
    launcher._drv("cuStreamDestroy", stream)
