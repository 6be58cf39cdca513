"""On the GPU: one plan (or the array API, or a cast) launched from 8 host threads at once,
each with its own inputs, outputs and stream, gives every thread its own right answer; a
kernel that faults is reported as a KernelFault naming the kernel (in a child process, since
the fault ruins the CUDA context)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from gemm_util import POISON

pytestmark = pytest.mark.gpu
THREADS, LAUNCHES = 8, 50
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _inputs(torch, m, n, k, seed):
    import fp8gemm
    g = torch.Generator(device="cuda").manual_seed(seed)
    a = torch.randn((m, k), device="cuda", generator=g).to(torch.bfloat16)
    b = torch.randn((n, k), device="cuda", generator=g).to(torch.bfloat16)
    return fp8gemm.per_token_cast_to_fp8(a), fp8gemm.per_block_cast_to_fp8(b)


def _run_threads(torch, work):
    """work(t, stream) -> list of (got, expected) tensors; all threads start together."""
    barrier, results, errors = threading.Barrier(THREADS), {}, []

    def body(t):
        try:
            stream = torch.cuda.Stream()
            barrier.wait()
            results[t] = work(t, stream)
            stream.synchronize()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((t, e))

    threads = [threading.Thread(target=body, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    torch.cuda.synchronize()
    def same(g, e):                  # bit for bit, any dtype or layout
        return torch.equal(g.contiguous().view(torch.uint8), e.contiguous().view(torch.uint8))
    bad = {t: sum(not same(g, e) for g, e in pairs) for t, pairs in results.items()}
    assert all(v == 0 for v in bad.values()), f"wrong results per thread (of {LAUNCHES}): {bad}"


@pytest.mark.parametrize("m,n,k", [(256, 512, 512), (64, 2112, 1024)])
def test_one_plan_from_many_threads(torch, m, n, k):
    import fp8gemm
    plan = fp8gemm.plan_gemm(m, n, k)
    inputs = [_inputs(torch, m, n, k, seed=t) for t in range(THREADS)]
    expected = []
    for (aq, sa), (bq, sb) in inputs:                       # serial answers first
        out = torch.empty((m, n), device="cuda", dtype=torch.bfloat16)
        fp8gemm.gemm_fp8_fp8_bf16_nt((aq, sa), (bq, sb), out)
        expected.append(out)
    torch.cuda.synchronize()

    def work(t, stream):
        (aq, sa), (bq, sb) = inputs[t]
        outs = [torch.empty((m, n), device="cuda", dtype=torch.bfloat16) for _ in range(LAUNCHES)]
        with torch.cuda.stream(stream):
            for o in outs:
                o.view(torch.int16).fill_(POISON)
        for o in outs:
            plan.launch(aq.data_ptr(), sa.data_ptr(), bq.data_ptr(), sb.data_ptr(), o.data_ptr(), stream.cuda_stream)
        return [(o, expected[t]) for o in outs]

    _run_threads(torch, work)


def test_array_api_and_grouped_from_many_threads(torch):
    import fp8gemm
    m, n, k, g = 256, 256, 512, 2
    inputs = [_inputs(torch, m, n, k, seed=100 + t) for t in range(THREADS)]
    bq = torch.stack([inputs[0][1][0]] * g)
    sb = torch.stack([inputs[0][1][1]] * g)
    idx = torch.tensor([0] * 128 + [1] * 128, dtype=torch.int32, device="cuda")
    expected = []
    for (aq, sa), (bqt, sbt) in inputs:
        d = torch.empty((m, n), device="cuda", dtype=torch.bfloat16)
        fp8gemm.gemm_fp8_fp8_bf16_nt((aq, sa), (bqt, sbt), d)
        c = torch.empty((m, n), device="cuda", dtype=torch.bfloat16)
        fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((aq, sa), (bq, sb), c, idx)
        expected.append((d, c))
    torch.cuda.synchronize()

    def work(t, stream):
        (aq, sa), (bqt, sbt) = inputs[t]
        pairs = []
        for _ in range(LAUNCHES // 2):
            d = torch.empty((m, n), device="cuda", dtype=torch.bfloat16)
            c = torch.empty((m, n), device="cuda", dtype=torch.bfloat16)
            fp8gemm.gemm_fp8_fp8_bf16_nt((aq, sa), (bqt, sbt), d, stream=stream)
            fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((aq, sa), (bq, sb), c, idx, stream=stream)
            pairs += [(d, expected[t][0]), (c, expected[t][1])]
        return pairs

    _run_threads(torch, work)


def test_casts_from_many_threads(torch):
    import fp8gemm
    xs = [torch.randn((192, 640), device="cuda").to(torch.bfloat16) * (t + 1) for t in range(THREADS)]
    expected = [(fp8gemm.per_token_cast_to_fp8(x), fp8gemm.per_block_cast_to_fp8(x)) for x in xs]
    torch.cuda.synchronize()

    def work(t, stream):
        pairs = []
        for _ in range(LAUNCHES // 2):
            (q1, s1), (q2, s2) = (fp8gemm.per_token_cast_to_fp8(xs[t], stream=stream),
                                  fp8gemm.per_block_cast_to_fp8(xs[t], stream=stream))
            (e1, f1), (e2, f2) = expected[t]
            pairs += [(q1, e1), (s1, f1), (q2, e2), (s2, f2)]
        return pairs

    _run_threads(torch, work)


_FAULT_CHILD = textwrap.dedent('''
    import os, sys
    import fp8gemm
    from fp8gemm import launcher
    plan = fp8gemm.plan_gemm(256, 256, 256)
    ok = launcher.DeviceBuffer(1 << 20)
    bogus = 1 << 47                      # no memory there
    try:
        plan.launch(bogus, ok.ptr, bogus, ok.ptr, bogus, 0)
        launcher.synchronize()           # where the fault shows when launches are not checked
        print("NO FAULT")
    except fp8gemm.KernelFault as e:
        print("KernelFault:", e)
''')


@pytest.mark.parametrize("checked", [False, True])
def test_kernel_fault_is_a_python_exception_naming_the_kernel(checked):
    env = dict(os.environ, PYTHONPATH=str(ROOT), FP8GEMM_CHECK_LAUNCHES="1" if checked else "0")
    r = subprocess.run([sys.executable, "-c", _FAULT_CHILD], capture_output=True, text=True, env=env, timeout=120)
    out = r.stdout + r.stderr
    assert "KernelFault:" in out, out
    assert "fp8gemm_dense_" in out and "m=256" in out and "unusable" in out, out
    if checked:
        assert "FP8GEMM_CHECK_LAUNCHES" in out, out
