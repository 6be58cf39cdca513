#!/usr/bin/env python3
"""Run the GEMM on a few shapes (debug build first), print error and time. For bring-up."""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import torch  # noqa: E402

import fp8gemm  # noqa: E402
from fp8gemm.config import GemmConfig  # noqa: E402
from gemm_util import check, make_inputs, reference  # noqa: E402


def run(m, n, k, cfg=None, debug=False):
    lhs, rhs, out, unq = make_inputs(torch, m, n, k, seed=m + n + k)
    plan = fp8gemm.plan_gemm(m, n, k, config=cfg, debug=debug, sfa_stride=lhs[1].stride(1) if lhs[1].shape[1] > 1 else None)
    plan.launch(lhs[0].data_ptr(), lhs[1].data_ptr(), rhs[0].data_ptr(), rhs[1].data_ptr(), out.data_ptr(),
                torch.cuda.current_stream().cuda_stream)
    try:
        torch.cuda.synchronize()
    except Exception as e:
        print("FAILED", m, n, k, plan, e, "debug:", plan.debug_info())
        raise
    err, diff = check(torch, out, reference(torch, lhs, rhs), unq)
    t = 0.0
    if m * n * k > 1e9:
        for _ in range(3):
            plan.launch(lhs[0].data_ptr(), lhs[1].data_ptr(), rhs[0].data_ptr(), rhs[1].data_ptr(), out.data_ptr(), 0)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            plan.launch(lhs[0].data_ptr(), lhs[1].data_ptr(), rhs[0].data_ptr(), rhs[1].data_ptr(), out.data_ptr(), 0)
        torch.cuda.synchronize()
        t = (time.perf_counter() - t0) / 20
    tf = 2 * m * n * k / t / 1e12 if t else 0
    print(f"{m:6d} {n:6d} {k:6d} {plan.config.name:40s} grid={plan.grid:4d} err={err:.2e} diff={diff:.2e} "
          f"{tf:7.1f} TFLOPS", flush=True)
    return err


if __name__ == "__main__":
    run(128, 128, 128, GemmConfig(128, 128, 4), debug=True)
    run(64, 16, 256, GemmConfig(64, 16, 4), debug=True)
    run(256, 256, 512, GemmConfig(256, 128, 3), debug=True)
    run(1000, 520, 576, GemmConfig(128, 112, 4), debug=True)
    # 2-CTA clusters with multicast: one small shape per operand, debug build first
    run(128, 3 * 128, 256, GemmConfig(128, 128, 4, cluster=2), debug=True)
    run(3 * 128, 128, 256, GemmConfig(128, 128, 4, cluster=2, multicast_on_a=False), debug=True)
    run(1000, 1000, 1000 // 16 * 16, GemmConfig(64, 96, 6, cluster=2), debug=True)
    run(1000, 1000, 1000 // 16 * 16, GemmConfig(256, 112, 3, cluster=2, multicast_on_a=False), debug=True)
    run(4096, 7168, 16384, GemmConfig(128, 128, 5, cluster=2))
    run(4096, 7168, 16384, GemmConfig(256, 128, 3, cluster=2, multicast_on_a=False))
    run(4096, 7168, 16384, GemmConfig(256, 128, 3, cluster=2))
    run(7, 2120, 7168)
    run(4096, 7168, 16384)
    run(4096, 2112, 7168)
    run(128, 7168, 2048)
