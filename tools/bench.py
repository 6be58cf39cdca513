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
    if os.environ.get("FP8GEMM_COMMIT"):
        return os.environ["FP8GEMM_COMMIT"]
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


# ---- dense GEMM ----------------------------------------------------------------------------
DENSE_SHAPES = [(m, n, k) for m in (64, 128, 4096)
                for (n, k) in ((2112, 7168), (24576, 1536), (32768, 512), (7168, 16384),
                               (4096, 7168), (7168, 2048), (7168, 576))]


def _cublas_blockwise(torch, a_bf, b_bf, aq, sa, bq, sb):
    """A callable running cuBLAS FP8 with 1x128 / 128x128 block scales, or None if unsupported."""
    F = torch.nn.functional
    if not hasattr(F, "scaled_mm") or not hasattr(F, "ScalingType"):
        return None, "unavailable"
    m, k = aq.shape
    n = bq.shape[0]
    kb = -(-k // 128)
    kb4 = -(-kb // 4) * 4
    sa_mn = sa.contiguous().t().contiguous().t()                # [M, kb], stride (1, M)
    sb_pad = torch.zeros(sb.shape[0], kb4, device="cuda")
    sb_pad[:, :kb] = sb
    ST = F.ScalingType
    attempts = [(sa_mn, sb_pad[:, :kb].t()), (sa_mn, sb_pad), (sa_mn, sb_pad.t().contiguous().t()), (sa_mn, sb), (sa_mn, sb.t())]
    ref = (a_bf.float() @ b_bf.float().t())
    for sa_try, sb_try in attempts:
        try:
            fn = (lambda sa_try=sa_try, sb_try=sb_try: F.scaled_mm(
                aq, bq.t(), sa_try, ST.BlockWise1x128, sb_try, ST.BlockWise128x128,
                output_dtype=torch.bfloat16))
            out = fn()
            torch.cuda.synchronize()
            x, y = out.double(), ref.double()
            diff = (1 - 2 * (x * y).sum() / (x * x + y * y).sum()).item()
            if diff < 1e-2:
                return fn, f"blockwise (scale_b {tuple(sb_try.shape)} strides {sb_try.stride()})"
        except Exception as e:  # noqa: BLE001 - try the next layout
            last = str(e).splitlines()[0][:120]
    return None, f"failed: {last}"


def bench_gemm(args) -> dict:
    import torch
    import fp8gemm
    shapes = DENSE_SHAPES
    if args.shapes:
        shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    passes = [p.strip() == "on" for p in args.sass_pass.split(",")] if args.sass_pass else [None]
    records = []
    baseline_note = None
    print(f"{'m':>6} {'n':>6} {'k':>6}  {'config':34s} {'fp8gemm':>8} {'GB/s':>6} {'cuBLAS':>8} {'bf16':>7} {'x cuBLAS':>8}")
    for (m, n, k) in shapes:
        g = torch.Generator(device="cuda").manual_seed(m + n + k)
        a_bf = torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16)
        b_bf = torch.randn(n, k, device="cuda", generator=g).to(torch.bfloat16)
        aq, sa = fp8gemm.per_token_cast_to_fp8(a_bf)
        bq, sb = fp8gemm.per_block_cast_to_fp8(b_bf)
        out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        rec = {"kind": "dense", "m": m, "n": n, "k": k, "groups": 1}
        for sp in passes:
            plan = fp8gemm.plan_gemm(m, n, k, sfa_stride=sa.stride(1), sass_pass=sp)
            ptrs = (aq.data_ptr(), sa.data_ptr(), bq.data_ptr(), sb.data_ptr(), out.data_ptr())
            stream = torch.cuda.current_stream().cuda_stream
            t = timed(lambda: plan.launch(*ptrs, stream))
            flops = 2 * m * n * k
            nbytes = m * k + n * k + 2 * m * n + 4 * (sa.numel() + sb.numel())
            tag = "" if sp is None else ("_sass_on" if sp else "_sass_off")
            rec.update({f"tflops{tag}": flops / t / 1e12, f"gbps{tag}": nbytes / t / 1e9, f"us{tag}": t * 1e6})
            rec["config"] = plan.config.name
            rec["grid"] = plan.grid
        rec["host_us_plan_launch"] = host_overhead(lambda: plan.launch(*ptrs, stream)) * 1e6
        rec["host_us_api"] = host_overhead(lambda: fp8gemm.gemm_fp8_fp8_bf16_nt((aq, sa), (bq, sb), out)) * 1e6
        fn, note = _cublas_blockwise(torch, a_bf, b_bf, aq, sa, bq, sb)
        baseline_note = baseline_note or note
        rec["cublas_blockwise_tflops"] = 2 * m * n * k / timed(fn) / 1e12 if fn else None
        rec["bf16_tflops"] = 2 * m * n * k / timed(lambda: a_bf @ b_bf.t()) / 1e12
        records.append(rec)
        main_t = rec.get("tflops", rec.get("tflops_sass_off"))
        cb = rec["cublas_blockwise_tflops"]
        print(f"{m:6d} {n:6d} {k:6d}  {rec['config'][8:42]:34s} {main_t:8.1f} {rec.get('gbps', rec.get('gbps_sass_off')):6.0f} "
              f"{cb or float('nan'):8.1f} {rec['bf16_tflops']:7.1f} {main_t / cb if cb else float('nan'):8.3f}", flush=True)
    import math
    ratios = [r.get("tflops", r.get("tflops_sass_off")) / r["cublas_blockwise_tflops"]
              for r in records if r["cublas_blockwise_tflops"]]
    geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios)) if ratios else None
    res = {"records": records, "cublas_baseline": baseline_note, "geomean_vs_cublas_blockwise": geo}
    if len(passes) == 2:
        r = [x["tflops_sass_on"] / x["tflops_sass_off"] for x in records]
        res["geomean_sass_on_over_off"] = math.exp(sum(math.log(x) for x in r) / len(r))
        print(f"SASS pass on/off geomean: {res['geomean_sass_on_over_off']:.4f}")
    print(f"cuBLAS baseline: {baseline_note}")
    if geo:
        print(f"geomean fp8gemm / cuBLAS blockwise over {len(ratios)} shapes: {geo:.3f}")
    comp = compile_times([(plan.config.name, __import__("fp8gemm.ptx_templates.gemm", fromlist=["build"]).build(plan.config))])
    res["compile"] = comp
    print(f"compile {comp[0]['kernel']}: cold {comp[0]['cold_compile_ms']:.0f} ms, disk {comp[0]['disk_load_ms']:.2f} ms, "
          f"module load {comp[0]['module_load_ms']:.2f} ms")
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    pq = sub.add_parser("quant", help="quantization bandwidth and compile times")
    pq.add_argument("--json", help="write results here")
    pg = sub.add_parser("gemm", help="dense GEMM vs cuBLAS")
    pg.add_argument("--json", help="write results here")
    pg.add_argument("--shapes", help="comma-separated MxNxK list (default: DeepGEMM's 21 dense shapes)")
    pg.add_argument("--sass-pass", help="'on,off' to time the SASS pass both ways on the same PTX")
    args = p.parse_args(argv)
    res = {"quant": bench_quant, "gemm": bench_gemm}[args.what](args)
    res = {"device": device_name(), "commit": git_commit(),
           "date": datetime.date.today().isoformat(), "benchmark": args.what, **res}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
