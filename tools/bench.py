#!/usr/bin/env python3
"""Benchmarks on the GPU (needs torch for events, the L2 flush and the cuBLAS baselines).

    python tools/bench.py quant  [--json PATH]      # quantization bandwidth + compile/load times
    python tools/bench.py gemm   [--json PATH] ...  # dense GEMM table vs cuBLAS

Method (as in shared/reference/h100-anchors.md): CUDA events around each call, a 256 MB
buffer zeroed before each call (L2 flush), a short GPU sleep before each timed call so host
launch cost stays out of the window, median of >= 30 calls after warm-up.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(fn, iters: int = 50, warmup: int = 5, flush: bool = True) -> float:
    """Median seconds of ``fn()`` on the current stream."""
    import torch
    buf = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if flush:
            buf.zero_()
        torch.cuda._sleep(20_000)  # keep the host ahead so launch cost stays out of the window
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        times.append((a, b))
    torch.cuda.synchronize()
    return statistics.median(x.elapsed_time(y) for x, y in times) * 1e-3


def host_overhead(fn, iters: int = 200) -> float:
    """Median host seconds per call (launch queued, not waited for)."""
    import torch
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    return statistics.median(ts)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def device_name() -> str:
    import torch
    return torch.cuda.get_device_name()


def compile_times(kernels) -> list[dict]:
    """Cold compile, warm disk load and module load for each (label, Kernel) pair."""
    from fp8gemm import jit, launcher
    out = []
    old = os.environ.get("FP8GEMM_CACHE_DIR")
    with tempfile.TemporaryDirectory() as d:
        os.environ["FP8GEMM_CACHE_DIR"] = d
        try:
            for label, k in kernels:
                ptx = k.render()
                jit.clear_memo()
                cold = jit.compile_ptx(ptx, k.name)
                jit.clear_memo()
                warm = jit.compile_ptx(ptx, k.name)
                t0 = time.perf_counter()
                mod = launcher._drv("cuModuleLoadData", cold.cubin)
                load = time.perf_counter() - t0
                launcher._drv("cuModuleUnload", mod)
                out.append({"kernel": label, "cold_compile_ms": cold.seconds * 1e3,
                            "disk_load_ms": warm.seconds * 1e3, "module_load_ms": load * 1e3,
                            "registers": cold.resources.registers, "spill_bytes": cold.resources.spills})
        finally:
            if old is None:
                os.environ.pop("FP8GEMM_CACHE_DIR", None)
            else:
                os.environ["FP8GEMM_CACHE_DIR"] = old
    return out


# ---- quantization ------------------------------------------------------------------------
def bench_quant(args) -> dict:
    import torch
    import fp8gemm
    from fp8gemm.ptx_templates import quant as qt
    from fp8gemm.reference import ceil_div
    records = []
    for (m, k) in [(4096, 7168), (16384, 7168), (128, 7168), (7168, 2048)]:
        for src in (torch.bfloat16, torch.float32):
            x = torch.randn(m, k, device="cuda", dtype=src)
            q, s = fp8gemm.per_token_cast_to_fp8(x)
            qb, sb = fp8gemm.per_block_cast_to_fp8(x)
            for kind, fn, scale_bytes in (
                    ("per_token", lambda: fp8gemm.per_token_cast_to_fp8(x, out=(q, s)), m * ceil_div(k, 128) * 4),
                    ("per_block", lambda: fp8gemm.per_block_cast_to_fp8(x, out=(qb, sb)),
                     ceil_div(m, 128) * ceil_div(k, 128) * 4)):
                t = timed(fn)
                nbytes = x.numel() * x.element_size() + m * k + scale_bytes
                rec = {"kind": kind, "src": str(src).replace("torch.", ""), "m": m, "k": k, "us": t * 1e6,
                       "gbps": nbytes / t / 1e9, "host_us": host_overhead(fn) * 1e6}
                records.append(rec)
                print(f"{kind:9s} {rec['src']:8s} [{m:5d},{k:5d}]  {rec['us']:8.1f} us  "
                      f"{rec['gbps']:7.0f} GB/s  host {rec['host_us']:.1f} us", flush=True)
    # the copy ceiling on this card, measured in the same process
    big = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(big)
    tc = timed(lambda: dst.copy_(big), iters=20)
    ceiling = 2 * big.numel() / tc / 1e9
    print(f"device-to-device copy ceiling: {ceiling:.0f} GB/s (read + write)")
    comp = compile_times([(f"{f.__name__}({s})", f(s)) for f in (qt.per_token_kernel, qt.per_block_kernel)
                          for s in ("bf16", "f32")])
    for c in comp:
        print(f"{c['kernel']:28s} cold {c['cold_compile_ms']:7.1f} ms  disk {c['disk_load_ms']:6.2f} ms  "
              f"module {c['module_load_ms']:6.2f} ms")
    return {"records": records, "copy_ceiling_gbps": ceiling, "compile": comp}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    pq = sub.add_parser("quant", help="quantization bandwidth and compile times")
    pq.add_argument("--json", help="write results here")
    args = p.parse_args(argv)
    res = {"quant": bench_quant}[args.what](args)
    res = {"device": device_name(), "commit": git_commit(),
           "date": datetime.date.today().isoformat(), "benchmark": args.what, **res}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
