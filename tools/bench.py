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


def timed_variants(fns: dict, rounds: int = 5, iters: int = 10, warmup: int = 3) -> dict:
    """Median seconds per variant, the variants interleaved round by round so clock and
    thermal drift hit them alike. Each call runs after an L2 flush (a 256 MB buffer zeroed)
    and a short GPU sleep, so host launch cost stays out of the event window."""
    import torch
    buf = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    events = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(iters):
                buf.zero_()
                torch.cuda._sleep(20_000)
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                events[name].append((a, b))
    torch.cuda.synchronize()
    return {name: statistics.median(x.elapsed_time(y) for x, y in ev) * 1e-3 for name, ev in events.items()}


def timed(fn, iters: int = 50, warmup: int = 5) -> float:
    """Median seconds of ``fn()`` on the current stream."""
    return timed_variants({"fn": fn}, rounds=1, iters=iters, warmup=warmup)["fn"]


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
    """(callable, note): cuBLAS FP8 with 1x128 / 128x128 block scales through torch.

    cuBLAS wants B's scales as a (K blocks, N blocks) view padded along K to 4 blocks. Where it
    rejects K (not a multiple of 128), A and B are zero-padded along K: same scales, same
    answer, and the FLOPs credited stay those of the unpadded problem.
    """
    F = torch.nn.functional
    if not hasattr(F, "scaled_mm") or not hasattr(F, "ScalingType"):
        return None, "unavailable"
    ST = F.ScalingType
    ref = (a_bf.float() @ b_bf.float().t()).double()

    def attempt(aq, bq, kpad_note):
        m, k = aq.shape
        kb = -(-k // 128)
        kb4 = -(-kb // 4) * 4
        sa_mn = sa.contiguous().t().contiguous().t()            # [M, kb], stride (1, M)
        sb_pad = torch.zeros(sb.shape[0], kb4, device="cuda")
        sb_pad[:, :kb] = sb
        last = "no layout tried"
        for sb_try in (sb_pad[:, :kb].t(), sb_pad.t(), sb_pad, sb.t()):
            fn = (lambda sb_try=sb_try: F.scaled_mm(aq, bq.t(), sa_mn, ST.BlockWise1x128, sb_try,
                                                    ST.BlockWise128x128, output_dtype=torch.bfloat16))
            try:
                x = fn().double()
                torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001 - try the next layout
                last = str(e).splitlines()[0][:120]
                continue
            diff = (1 - 2 * (x * ref).sum() / (x * x + ref * ref).sum()).item()
            if diff < 1e-2:
                return fn, f"blockwise{kpad_note} (scale_b {tuple(sb_try.shape)} strides {sb_try.stride()})"
            last = f"wrong answer (diff {diff:.2e})"
        return None, last

    fn, note = attempt(aq, bq, "")
    if fn is None and aq.shape[1] % 128:
        k = aq.shape[1]
        kp = -(-k // 128) * 128
        ap = torch.zeros(aq.shape[0], kp, device="cuda", dtype=aq.dtype)
        bp = torch.zeros(bq.shape[0], kp, device="cuda", dtype=bq.dtype)
        ap[:, :k], bp[:, :k] = aq, bq
        fn, note2 = attempt(ap, bp, f" on K zero-padded {k}->{kp}")
        note = note2 if fn else f"{note}; padded: {note2}"
    return fn, note


def _plan_with_pass_variant(plan_for, config, variant: str):
    """A plan whose cubin went through the SASS pass variant 'off' or 'mode:fraction'."""
    if variant == "off":
        return plan_for(config=config, sass_pass=False)
    mode, fraction = variant.split(":")
    saved = {k: os.environ.get(k) for k in ("FP8GEMM_FFMA_INTERLEAVE_MODE", "FP8GEMM_FFMA_INTERLEAVE_FRACTION")}
    os.environ["FP8GEMM_FFMA_INTERLEAVE_MODE"] = mode
    os.environ["FP8GEMM_FFMA_INTERLEAVE_FRACTION"] = fraction
    try:
        return plan_for(config=config, sass_pass=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def bench_gemm(args) -> dict:
    import math
    import torch
    import fp8gemm
    from fp8gemm import GemmConfig
    shapes = DENSE_SHAPES
    if args.shapes:
        shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    records = []
    notes = set()
    print(f"{'m':>6} {'n':>6} {'k':>6}  {'config':30s} {'fp8gemm':>8} {'GB/s':>6} {'cuBLAS':>8} {'bf16':>7} "
          f"{'x cuBLAS':>8}  variants")
    for (m, n, k) in shapes:
        g = torch.Generator(device="cuda").manual_seed(m + n + k)
        a_bf = torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16)
        b_bf = torch.randn(n, k, device="cuda", generator=g).to(torch.bfloat16)
        aq, sa = fp8gemm.per_token_cast_to_fp8(a_bf)
        bq, sb = fp8gemm.per_block_cast_to_fp8(b_bf)
        out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        ptrs = (aq.data_ptr(), sa.data_ptr(), bq.data_ptr(), sb.data_ptr(), out.data_ptr())
        stream = torch.cuda.current_stream().cuda_stream
        flops = 2 * m * n * k
        nbytes = m * k + n * k + 2 * m * n + 4 * (sa.numel() + sb.numel())
        rec = {"kind": "dense", "m": m, "n": n, "k": k, "groups": 1}

        def plan_for(**kw):
            return fp8gemm.plan_gemm(m, n, k, sfa_stride=sa.stride(1), **kw)

        plan = plan_for()
        rec["config"], rec["grid"] = plan.config.name, plan.grid
        plans = {"": plan}
        if args.sass_pass:
            for v in args.sass_pass.split(","):
                plans[f"sass_{v}"] = plan_for(config=plan.config, sass_pass=v.strip() == "on")
        if args.sass_variants:
            for v in args.sass_variants.split(","):
                plans[f"pass_{v}"] = _plan_with_pass_variant(plan_for, plan.config, v.strip())
        if args.multicast:
            base = plan.config
            for v in args.multicast.split(","):
                v = v.strip()
                cfg = GemmConfig(base.block_m, base.block_n, base.stages, cluster=1 if v == "off" else 2,
                                 multicast_on_a=v != "b")
                plans[f"mc_{v}"] = plan_for(config=cfg)
        fns = {name: (lambda p=p: p.launch(*ptrs, stream)) for name, p in plans.items()}
        if args.sass_variants:   # every variant must compute exactly what the unpatched kernel does
            outs = {}
            for name in [x for x in plans if x.startswith("pass_")]:
                out.view(torch.int16).fill_(0x7FC1)
                fns[name]()
                torch.cuda.synchronize()
                outs[name] = out.clone()
            first = next(iter(outs.values()))
            rec["pass_variants_bit_identical"] = all(torch.equal(first.view(torch.int16), o.view(torch.int16))
                                                     for o in outs.values())
        cb_fn, note = _cublas_blockwise(torch, a_bf, b_bf, aq, sa, bq, sb)
        notes.add(note)
        if cb_fn:
            fns["cublas"] = cb_fn
        fns["bf16"] = lambda: a_bf @ b_bf.t()
        times = timed_variants(fns, rounds=args.rounds)
        for name, t in times.items():
            if name in ("cublas", "bf16"):
                continue
            tag = f"_{name}" if name else ""
            rec[f"tflops{tag}"] = flops / t / 1e12
            rec[f"gbps{tag}"] = nbytes / t / 1e9
            rec[f"us{tag}"] = t * 1e6
            if name:
                rec[f"config{tag}"] = plans[name].config.name
        rec["cublas_blockwise_tflops"] = flops / times["cublas"] / 1e12 if "cublas" in times else None
        rec["cublas_note"] = note
        rec["bf16_tflops"] = flops / times["bf16"] / 1e12
        rec["host_us_plan_launch"] = host_overhead(fns[""]) * 1e6
        records.append(rec)
        cb = rec["cublas_blockwise_tflops"]
        extra = "  ".join(f"{n_}={rec['tflops_' + n_]:.0f}" for n_ in plans if n_)
        print(f"{m:6d} {n:6d} {k:6d}  {rec['config'][14:44]:30s} {rec['tflops']:8.1f} {rec['gbps']:6.0f} "
              f"{cb or float('nan'):8.1f} {rec['bf16_tflops']:7.1f} {rec['tflops'] / cb if cb else float('nan'):8.3f}"
              f"  {extra}", flush=True)

    def geo(xs):
        xs = list(xs)
        return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None

    res = {"records": records, "cublas_baseline": sorted(notes),
           "geomean_vs_cublas_blockwise": geo(r["tflops"] / r["cublas_blockwise_tflops"]
                                              for r in records if r["cublas_blockwise_tflops"]),
           "shapes_with_cublas": sum(1 for r in records if r["cublas_blockwise_tflops"])}
    if args.sass_pass and len(args.sass_pass.split(",")) == 2:
        r = [x["tflops_sass_on"] / x["tflops_sass_off"] for x in records]
        res["geomean_sass_on_over_off"] = geo(r)
        res["worst_sass_on_over_off"] = min(r)
        print(f"SASS pass on/off: geomean {geo(r):.4f}, worst shape {min(r):.4f}")
    if args.sass_variants and "off" in args.sass_variants:
        for v in args.sass_variants.split(","):
            v = v.strip()
            if v != "off":
                r = [x[f"tflops_pass_{v}"] / x["tflops_pass_off"] for x in records]
                res[f"geomean_pass_{v}_over_off"] = geo(r)
                print(f"SASS pass {v} / off: geomean {geo(r):.4f}, min {min(r):.4f}, max {max(r):.4f}")
        res["pass_variants_bit_identical"] = all(x["pass_variants_bit_identical"] for x in records)
        print(f"every variant bit-identical to off: {res['pass_variants_bit_identical']}")
    if args.multicast:
        for v in args.multicast.split(","):
            v = v.strip()
            if v != "off" and "off" in args.multicast:
                r = [x[f"tflops_mc_{v}"] / x["tflops_mc_off"] for x in records]
                res[f"geomean_mc_{v}_over_off"] = geo(r)
                print(f"multicast {v} / off: geomean {geo(r):.4f}, min {min(r):.3f}, max {max(r):.3f}")
    print("cuBLAS baseline:", "; ".join(sorted(notes)))
    if res["geomean_vs_cublas_blockwise"]:
        print(f"geomean fp8gemm / cuBLAS blockwise over {res['shapes_with_cublas']} shapes: "
              f"{res['geomean_vs_cublas_blockwise']:.3f}")
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
    pg.add_argument("--sass-variants", help="e.g. 'off,anchor:0.5625,anchor:1,yield_only:0.5625,alternate:1'")
    pg.add_argument("--multicast", help="'off,a,b': also time the chosen tile with each cluster mode")
    pg.add_argument("--rounds", type=int, default=5, help="interleaved rounds of 10 timed calls per variant")
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
