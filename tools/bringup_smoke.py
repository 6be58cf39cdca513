#!/usr/bin/env python3
"""Bring-up check of the newest kernel families: one small problem each, in a debug build
(a stuck mbarrier wait traps and reports instead of hanging), against the float64 reference.
Run before the full GPU suite on a new kernel; exits 1 on the first failure.

    FP8GEMM_DEBUG=1 python tools/bringup_smoke.py
"""
from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import torch

    import fp8gemm
    from fp8gemm import GemmConfig
    from fp8gemm.config import variant_fields
    from fp8gemm.testing import k_grouped_inputs, reference, reference_wgrad

    def dense_inputs(m, n, k, rows_b=False):
        a = torch.randn(m, k, device="cuda").bfloat16()
        b = torch.randn(n, k, device="cuda").bfloat16()
        cast_b = fp8gemm.per_token_cast_to_fp8 if rows_b else fp8gemm.per_block_cast_to_fp8
        return fp8gemm.per_token_cast_to_fp8(a), cast_b(b)

    def rel(x, want):
        assert torch.isfinite(x).all(), "NaN/Inf (unwritten element?)"
        return ((x.double() - want).norm() / want.norm()).item()

    def small_tile(bm):
        lhs, rhs = dense_inputs(bm - 3, 200, 640)
        out = torch.full((bm - 3, 200), float("nan"), device="cuda", dtype=torch.bfloat16)
        fp8gemm.gemm_fp8_fp8_bf16_nt(lhs, rhs, out, config=GemmConfig(bm, 64, 6))
        torch.cuda.synchronize()
        return rel(out, reference(torch, lhs, rhs))

    def fp32(with_c):
        lhs, rhs = dense_inputs(200, 264, 640)
        out = torch.full((200, 264), float("nan"), device="cuda")
        c = torch.randn(200, 264, device="cuda") if with_c else None
        fp8gemm.gemm_fp8_fp8_fp32_nt(lhs, rhs, out, c=c,
                                     config=GemmConfig(128, 128, 4, **variant_fields("fp32_c" if with_c else "fp32")))
        torch.cuda.synchronize()
        return rel(out, reference(torch, lhs, rhs) + (c.double() if with_c else 0))

    def bf16_c():
        lhs, rhs = dense_inputs(200, 264, 640)
        c = torch.randn(200, 264, device="cuda").bfloat16()
        out = torch.full((200, 264), float("nan"), device="cuda", dtype=torch.bfloat16)
        fp8gemm.gemm_fp8_fp8_bf16_nt(lhs, rhs, out, c=c, config=GemmConfig(128, 128, 4, with_c=True))
        torch.cuda.synchronize()
        return rel(out, reference(torch, lhs, rhs) + c.double())

    def wgrad():
        lhs, rhs = dense_inputs(200, 264, 640, rows_b=True)
        out = torch.randn(200, 264, device="cuda")
        old = out.clone()
        fp8gemm.wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out, config=GemmConfig(128, 128, 4, **variant_fields("wgrad")))
        torch.cuda.synchronize()
        return rel(out - old, reference_wgrad(torch, lhs, rhs))

    def k_grouped():
        ks = [256, 0, 144]
        (a, sa), (b, sb), qa, qb = k_grouped_inputs(torch, 136, 264, ks, seed=1)
        out = torch.randn(3, 136, 264, device="cuda")
        old = out.clone()
        fp8gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt((a, sa), (b, sb), out, ks,
                                                     config=GemmConfig(128, 128, 4, **variant_fields("wgrad", "k_grouped", 3)))
        torch.cuda.synchronize()
        assert torch.equal(out[1], old[1]), "the empty group's slice changed"
        return max(rel(out[g] - old[g], reference_wgrad(torch, qa[g], qb[g])) for g in (0, 2))

    checks = [("bm16", lambda: small_tile(16)), ("bm32", lambda: small_tile(32)), ("fp32", lambda: fp32(False)),
              ("fp32_c", lambda: fp32(True)), ("bf16_c", bf16_c), ("wgrad", wgrad), ("k_grouped", k_grouped)]
    bad = 0
    for name, fn in checks:
        t0 = time.perf_counter()
        try:
            err = fn()
            ok = err < 2e-3
            print(f"{name:10s} rel error {err:.2e} {'ok' if ok else 'WRONG'} ({time.perf_counter() - t0:.1f} s)",
                  flush=True)
            bad += not ok
        except Exception as e:  # noqa: BLE001 - report and go on to the next family
            bad += 1
            print(f"{name:10s} FAILED {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
            if "KernelFault" in type(e).__name__ or "illegal" in str(e).lower() or "trap" in str(e).lower():
                print("the CUDA context is gone: stopping", flush=True)
                return 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
