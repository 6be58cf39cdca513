#!/usr/bin/env python3
"""Host time per call of the array-level GEMM API and of a plan launch (torch tensors)."""
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

import fp8gemm  # noqa: E402

m, n, k = 128, 7168, 2048
a = torch.randn(m, k, device="cuda").to(torch.bfloat16)
b = torch.randn(n, k, device="cuda").to(torch.bfloat16)
aq, sa = fp8gemm.per_token_cast_to_fp8(a)
bq, sb = fp8gemm.per_block_cast_to_fp8(b)
out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
plan = fp8gemm.plan_gemm(m, n, k, sfa_stride=sa.stride(1))
ptrs = (aq.data_ptr(), sa.data_ptr(), bq.data_ptr(), sb.data_ptr(), out.data_ptr(), 0)
for name, fn in (("api", lambda: fp8gemm.gemm_fp8_fp8_bf16_nt((aq, sa), (bq, sb), out)),
                 ("plan.launch", lambda: plan.launch(*ptrs)),
                 ("per_token_cast", lambda: fp8gemm.per_token_cast_to_fp8(a, out=(aq, sa)))):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(300):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
        if len(ts) % 50 == 0:
            torch.cuda.synchronize()
    print(f"{name:16s} host median {statistics.median(ts) * 1e6:6.1f} us")
