"""Two GPUs from one process at once (run on a two-GPU machine; skipped with fewer): dense,
grouped and casts on each device from its own thread, results right on both."""
from __future__ import annotations

import threading

import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    return torch


def _work(torch, dev, results):
    import fp8gemm
    from fp8gemm.testing import check, reference
    with torch.cuda.device(dev):
        g = torch.Generator(device=f"cuda:{dev}").manual_seed(dev)
        m, n, k = 1000 + 24 * dev, 2048, 1536
        a = torch.randn((m, k), device=f"cuda:{dev}", generator=g).to(torch.bfloat16)
        b = torch.randn((n, k), device=f"cuda:{dev}", generator=g).to(torch.bfloat16)
        errs = []
        for _ in range(10):
            lhs, rhs = fp8gemm.per_token_cast_to_fp8(a), fp8gemm.per_block_cast_to_fp8(b)
            out = torch.full((m, n), float("nan"), device=f"cuda:{dev}", dtype=torch.bfloat16)
            fp8gemm.gemm_fp8_fp8_bf16_nt(lhs, rhs, out)
            torch.cuda.synchronize(dev)
            errs.append(check(torch, out, reference(torch, lhs, rhs))[0])
            assert out.device.index == dev
        results[dev] = max(errs)


def test_two_gpus_at_once(torch):
    import fp8gemm
    results, errors = {}, []

    def body(dev):
        try:
            _work(torch, dev, results)
        except BaseException as e:  # noqa: BLE001
            errors.append((dev, e))

    threads = [threading.Thread(target=body, args=(d,)) for d in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert set(results) == {0, 1} and all(e <= 2e-3 for e in results.values()), results
    assert fp8gemm.get_num_sms(1) == fp8gemm.launcher.sm_count(1)
