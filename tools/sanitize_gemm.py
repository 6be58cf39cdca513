#!/usr/bin/env python3
"""Small GEMMs for compute-sanitizer (one shape per BM): run as
   compute-sanitizer --tool memcheck|racecheck|synccheck python3 tools/sanitize_gemm.py"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import torch  # noqa: E402

import fp8gemm  # noqa: E402
from fp8gemm import GemmConfig  # noqa: E402
from gemm_util import check, make_inputs, reference  # noqa: E402

CASES = ((100, 264, 640, GemmConfig(64, 88, 4)), (300, 512, 1024, GemmConfig(128, 112, 4)),
         (520, 256, 512, GemmConfig(256, 128, 3)),
         # 2-CTA clusters with TMA multicast, with a ghost tile (odd pair count) each
         (200, 3 * 112, 1024, GemmConfig(128, 112, 4, cluster=2)),
         (300, 256, 640, GemmConfig(128, 128, 4, cluster=2, multicast_on_a=False)),
         (600, 384, 512, GemmConfig(256, 128, 3, cluster=2, multicast_on_a=False)))
for m, n, k, cfg in CASES:
    lhs, rhs, out, unq = make_inputs(torch, m, n, k, seed=7)
    fp8gemm.gemm_fp8_fp8_bf16_nt(lhs, rhs, out, config=cfg)
    torch.cuda.synchronize()
    err, diff = check(torch, out, reference(torch, lhs, rhs), unq)
    print(f"{cfg.name}: err {err:.2e} diff {diff:.2e}")
    assert err <= 2e-3
