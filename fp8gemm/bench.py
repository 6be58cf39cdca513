"""Benchmarks on the GPU. Needs torch (CUDA events, the L2 flush, the cuBLAS baselines).

    python -m fp8gemm.bench quant   [--json PATH]      # quantization bandwidth + compile/load times
    python -m fp8gemm.bench gemm    [--json PATH] ...  # dense GEMM table vs cuBLAS (--decode: M <= 32 too)
    python -m fp8gemm.bench grouped [--json PATH] ...  # m-grouped contiguous / masked tables
    python -m fp8gemm.bench wgrad   [--json PATH] ...  # training: wgrad and k-grouped wgrad tables
    ... --deepgemm DIR                                 # also DeepGEMM (a source tree built in place,
                                                       # see fp8gemm/deepgemm_side.py), interleaved
(``fp8gemm-bench``, or ``python tools/bench.py`` in a checkout.)

Method: CUDA events around each call, a 256 MB
buffer zeroed before each call (L2 flush), a short GPU sleep before each timed call so host
launch cost stays out of the window, median of >= 30 calls after warm-up. Libraries and variants
are interleaved round by round on the same inputs. SM clock, power and temperature
(nvidia-smi) are read before and after each table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]       # the checkout, when run from one (git commit)


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


def gpu_state() -> dict | None:
    """SM clock (MHz), power (W) and temperature (C) from nvidia-smi, or None without it."""
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,power.draw,temperature.gpu",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [x.strip() for x in r.stdout.splitlines() if x.strip()]
    if r.returncode != 0 or not lines:
        return None

    def num(x):
        try:
            return float(x.strip().split()[0])
        except (ValueError, IndexError):
            return None

    parts = lines[0].split(",")
    parts += [""] * (3 - len(parts))
    return {"sm_clock_mhz": num(parts[0]), "power_w": num(parts[1]), "temp_c": num(parts[2]),
            "raw": lines, "time": datetime.datetime.now().isoformat(timespec="seconds")}


def _fmt_state(st: dict | None) -> str:
    if not st:
        return "n/a (no nvidia-smi)"
    return "; ".join(st["raw"])


def _table_state(states: dict, table: str, when: str) -> None:
    st = gpu_state()
    states.setdefault(table, {})[when] = st
    print(f"[{table}] GPU {when}: {_fmt_state(st)}", flush=True)


def _geo(xs):
    xs = [x for x in xs if x]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def _deepgemm_side():
    from . import deepgemm_side
    return deepgemm_side


def _deepgemm_setup(args, jobs: list[dict]):
    """(side module, handle, info) for --deepgemm DIR, after compiling JOBS in parallel; else Nones."""
    if not args.deepgemm:
        return None, None, None
    side = _deepgemm_side()
    cache = args.deepgemm_cache or None
    w = None
    if args.deepgemm_procs > 0:
        print(f"DeepGEMM: compiling {len(jobs)} kernels in {args.deepgemm_procs} processes ...", flush=True)
        w = side.warm(args.deepgemm, jobs, args.deepgemm_procs, cache_dir=cache)
        print(f"DeepGEMM: warm-up {w['seconds']:.1f} s, median {w['median_job_seconds'] or 0:.2f} s per kernel, "
              f"{w['errors']} errors, cache {w['cache_dir']}", flush=True)
        cache = w["cache_dir"]
    h = side.load(args.deepgemm, cache)
    info = {**h.describe(), "warm": w and {k: v for k, v in w.items() if k != "jobs"}}
    print(f"DeepGEMM {h.commit} ({h.version}) from {h.dir}, PDL {h.pdl}", flush=True)
    return side, h, {"info": info, "warm_jobs": (w or {}).get("jobs", {})}


def _add_deepgemm_args(p) -> None:
    p.add_argument("--deepgemm", metavar="DIR",
                   help="also time DeepGEMM from this source tree (its extension built in place beforehand)")
    p.add_argument("--deepgemm-procs", type=int, default=min(16, os.cpu_count() or 8),
                   help="processes that JIT-compile DeepGEMM's kernels before timing (0: compile on first call)")
    p.add_argument("--deepgemm-cache", help="DeepGEMM JIT cache (DG_JIT_CACHE_DIR; default DIR/.jit-cache)")


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
    """Cold compile, warm disk load and module load for each (label, Kernel) pair (in a
    private, empty cache folder)."""
    from . import jit, launcher
    out = []
    with tempfile.TemporaryDirectory() as d:
        for label, k in kernels:
            ptx = k.render()
            jit.clear_memo()
            cold = jit.compile_ptx(ptx, k.name, cache=d)
            jit.clear_memo()
            warm = jit.compile_ptx(ptx, k.name, cache=d)
            t0 = time.perf_counter()
            mod = launcher._drv("cuModuleLoadData", cold.cubin)
            load = time.perf_counter() - t0
            launcher._drv("cuModuleUnload", mod)
            out.append({"kernel": label, "cold_compile_ms": cold.seconds * 1e3,
                        "disk_load_ms": warm.seconds * 1e3, "module_load_ms": load * 1e3,
                        "registers": cold.resources.registers, "spill_bytes": cold.resources.spills})
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
DENSE_NK = ((2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048), (7168, 576))
DENSE_SHAPES = [(m, n, k) for m in (64, 128, 4096) for (n, k) in DENSE_NK]
DECODE_SHAPES = [(m, n, k) for m in (1, 8, 16, 32) for (n, k) in DENSE_NK]
DIFF_LIMIT = 1e-3     # DeepGEMM's own test threshold for FP8 outputs


def _cublas_rowwise_fast(torch, a_bf, b_bf):
    """(callable, note): cuBLAS FP8 with one scale per row of A and of B and fast accumulation
    (no promotion at all) through torch._scaled_mm: the practical ceiling of an FP8 GEMM here,
    timed beside the fine-grained kernels (issue 10's stretch column). None where torch's
    build or the shape (M, N, K multiples of 16) does not allow it."""
    if not hasattr(torch, "_scaled_mm"):
        return None, "unavailable"
    fp8 = torch.float8_e4m3fn
    sa = (a_bf.float().abs().amax(dim=1, keepdim=True) / 448).clamp(min=1e-12)     # [M, 1]
    sb = (b_bf.float().abs().amax(dim=1, keepdim=True) / 448).clamp(min=1e-12)     # [N, 1]
    aq, bq = (a_bf.float() / sa).to(fp8), (b_bf.float() / sb).to(fp8)
    sb_t = sb.t()                                                                   # [1, N]

    def fn():
        return torch._scaled_mm(aq, bq.t(), scale_a=sa, scale_b=sb_t, out_dtype=torch.bfloat16,
                                use_fast_accum=True)
    try:
        fn()
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - an unsupported shape or build is a missing column
        return None, f"rowwise fast-accum unavailable: {str(e).splitlines()[0][:100]}"
    return fn, "rowwise fast-accum (torch._scaled_mm, use_fast_accum=True)"


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
    return plan_for(config=config, sass_pass=(mode, float(fraction)))


def bench_gemm(args) -> dict:
    import torch
    import fp8gemm
    from fp8gemm import GemmConfig
    shapes = list(DENSE_SHAPES)
    if args.shapes:
        shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    if args.decode:
        shapes += [s for s in DECODE_SHAPES if s not in shapes]
    tables = {"dense": [s for s in shapes if s[0] > 32], "decode": [s for s in shapes if s[0] <= 32]}
    side, dg, dg_info = _deepgemm_setup(args, [{"kind": "dense", "m": m, "n": n, "k": k} for (m, n, k) in shapes])
    records = []
    notes = set()
    states: dict = {}
    for table, tshapes in tables.items():
        if not tshapes:
            continue
        _table_state(states, table, "before")
        print(f"{'m':>6} {'n':>6} {'k':>6}  {'config':30s} {'fp8gemm':>8} {'GB/s':>6} {'cuBLAS':>8} {'bf16':>7} "
              f"{'x cuBLAS':>8}" + (f" {'DeepGEMM':>8} {'x DG':>6} {'DG diff':>8}" if dg else "") + "  variants")
        for (m, n, k) in tshapes:
            rec = _gemm_one(args, torch, fp8gemm, GemmConfig, m, n, k, notes, side, dg, dg_info)
            rec["table"] = table
            records.append(rec)
        _table_state(states, table, "after")

    res = {"records": records, "cublas_baseline": sorted(notes),
           "geomean_vs_cublas_blockwise": _geo(r["tflops"] / r["cublas_blockwise_tflops"]
                                               for r in records if r["cublas_blockwise_tflops"]),
           "shapes_with_cublas": sum(1 for r in records if r["cublas_blockwise_tflops"]),
           "gpu_state": states}
    big = [r for r in records if r["m"] >= 4096 and r["cublas_rowwise_fast_tflops"]]
    if big:   # the M=4096 shapes against the no-promotion ceiling
        res["geomean_vs_cublas_rowwise_fast_m4096"] = _geo(r["tflops"] / r["cublas_rowwise_fast_tflops"] for r in big)
    if args.sass_pass and len(args.sass_pass.split(",")) == 2:
        r = [x["tflops_sass_on"] / x["tflops_sass_off"] for x in records]
        res["geomean_sass_on_over_off"] = _geo(r)
        res["worst_sass_on_over_off"] = min(r)
        print(f"SASS pass on/off: geomean {_geo(r):.4f}, worst shape {min(r):.4f}")
    if args.sass_variants and "off" in args.sass_variants:
        for v in args.sass_variants.split(","):
            v = v.strip()
            if v != "off":
                r = [x[f"tflops_pass_{v}"] / x["tflops_pass_off"] for x in records]
                res[f"geomean_pass_{v}_over_off"] = _geo(r)
                print(f"SASS pass {v} / off: geomean {_geo(r):.4f}, min {min(r):.4f}, max {max(r):.4f}")
        res["pass_variants_bit_identical"] = all(x["pass_variants_bit_identical"] for x in records)
        print(f"every variant bit-identical to off: {res['pass_variants_bit_identical']}")
    if args.multicast:
        for v in args.multicast.split(","):
            v = v.strip()
            if v != "off" and "off" in args.multicast:
                r = [x[f"tflops_mc_{v}"] / x["tflops_mc_off"] for x in records]
                res[f"geomean_mc_{v}_over_off"] = _geo(r)
                print(f"multicast {v} / off: geomean {_geo(r):.4f}, min {min(r):.3f}, max {max(r):.3f}")
    print("cuBLAS baseline:", "; ".join(sorted(notes)))
    if res["geomean_vs_cublas_blockwise"]:
        print(f"geomean fp8gemm / cuBLAS blockwise over {res['shapes_with_cublas']} shapes: "
              f"{res['geomean_vs_cublas_blockwise']:.3f}")
    if big:
        print(f"geomean fp8gemm / cuBLAS row-wise fast-accum (no promotion) over the {len(big)} M>=4096 shapes: "
              f"{res['geomean_vs_cublas_rowwise_fast_m4096']:.3f}")
    if dg:
        res.update(_deepgemm_summary(records, tables, dg_info["info"]))
    for table, st in states.items():
        print(f"[{table}] GPU before: {_fmt_state(st.get('before'))} | after: {_fmt_state(st.get('after'))}")
    return res


def _deepgemm_summary(records: list[dict], tables, info: dict) -> dict:
    """Per-table geomean of fp8gemm / DeepGEMM speed, printed and returned for the JSON."""
    geos = {}
    for table in tables:
        rows = [r for r in records if r["table"] == table and r.get("tflops") and r.get("deepgemm_tflops")]
        if rows:
            geos[table] = {"geomean_fp8gemm_over_deepgemm": _geo(r["tflops"] / r["deepgemm_tflops"] for r in rows),
                           "shapes": len(rows),
                           "min": min(r["tflops"] / r["deepgemm_tflops"] for r in rows),
                           "max": max(r["tflops"] / r["deepgemm_tflops"] for r in rows)}
            g = geos[table]
            print(f"geomean fp8gemm / DeepGEMM {info['commit'][:7]} [{table}] over {g['shapes']} shapes: "
                  f"{g['geomean_fp8gemm_over_deepgemm']:.3f} (min {g['min']:.3f}, max {g['max']:.3f})")
    checked = [r for r in records if r.get("deepgemm_diff") is not None]
    agree = all(r["deepgemm_diff"] < DIFF_LIMIT for r in checked)
    print(f"fp8gemm and DeepGEMM outputs agree (calc_diff < {DIFF_LIMIT:g}) on {len(checked)} shapes: {agree}"
          + (f"; worst {max(r['deepgemm_diff'] for r in checked):.2e}" if checked else ""))
    return {"deepgemm": info, "deepgemm_geomeans": geos, "deepgemm_all_agree": agree}


def _gemm_one(args, torch, fp8gemm, GemmConfig, m, n, k, notes, side, dg, dg_info) -> dict:
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
    fast_fn, fast_note = _cublas_rowwise_fast(torch, a_bf, b_bf)
    if fast_fn:
        fns["cublas_fast"] = fast_fn
    out_dg = None
    if dg:
        out_dg = torch.empty_like(out)
        fns["deepgemm"] = side.dense(dg, aq, sa, bq, sb, out_dg)
    times = timed_variants(fns, rounds=args.rounds)
    for name, t in times.items():
        if name in ("cublas", "cublas_fast", "bf16", "deepgemm"):
            continue
        tag = f"_{name}" if name else ""
        rec[f"tflops{tag}"] = flops / t / 1e12
        rec[f"gbps{tag}"] = nbytes / t / 1e9
        rec[f"us{tag}"] = t * 1e6
        if name:
            rec[f"config{tag}"] = plans[name].config.name
    rec["cublas_blockwise_tflops"] = flops / times["cublas"] / 1e12 if "cublas" in times else None
    rec["cublas_note"] = note
    rec["cublas_rowwise_fast_tflops"] = flops / times["cublas_fast"] / 1e12 if "cublas_fast" in times else None
    rec["cublas_rowwise_fast_note"] = fast_note
    rec["bf16_tflops"] = flops / times["bf16"] / 1e12
    rec["host_us_plan_launch"] = host_overhead(fns[""]) * 1e6
    if dg:
        t = times["deepgemm"]
        rec.update(deepgemm_tflops=flops / t / 1e12, deepgemm_gbps=nbytes / t / 1e9, deepgemm_us=t * 1e6,
                   deepgemm_commit=dg.commit,
                   deepgemm_config=dg_info["warm_jobs"].get(side.job_key({"kind": "dense", "m": m, "n": n, "k": k}),
                                                            {}).get("config"))
        out.zero_()
        out_dg.zero_()
        fns[""]()
        fns["deepgemm"]()
        torch.cuda.synchronize()
        rec["deepgemm_diff"] = side.calc_diff(dg, out, out_dg)
        rec["deepgemm_bit_identical"] = torch.equal(out.view(torch.int16), out_dg.view(torch.int16))
        rec["deepgemm_host_us"] = host_overhead(fns["deepgemm"]) * 1e6
    cb = rec["cublas_blockwise_tflops"]
    extra = "  ".join(f"{n_}={rec['tflops_' + n_]:.0f}" for n_ in plans if n_)
    dgcol = ""
    if dg:
        dgcol = (f" {rec['deepgemm_tflops']:8.1f} {rec['tflops'] / rec['deepgemm_tflops']:6.3f} "
                 f"{rec['deepgemm_diff']:8.1e}" + ("" if rec["deepgemm_diff"] < DIFF_LIMIT else " DISAGREE"))
    print(f"{m:6d} {n:6d} {k:6d}  {rec['config'][14:44]:30s} {rec['tflops']:8.1f} {rec['gbps']:6.0f} "
          f"{cb or float('nan'):8.1f} {rec['bf16_tflops']:7.1f} {rec['tflops'] / cb if cb else float('nan'):8.3f}"
          f"{dgcol}  {extra}", flush=True)
    return rec


# ---- m-grouped GEMMs -------------------------------------------------------------------------
# Problem lists and group-size draws as DeepGEMM's tests have them. 'head' is DeepGEMM 54e2261
# (tests/generators.py: enumerate_m_grouped_contiguous / _masked; tests/test_fp8_fp4.py), 'legacy'
# its mid-2025 test (03d0be3 tests/test_core.py), which the 2026-11-30 anchors tables use.
_HEAD_NK = ((6144, 7168), (7168, 3072), (4096, 4096), (4096, 2048))
GROUPED_SETS = {
    "head": {
        "source": "DeepGEMM 54e2261 tests/generators.py + tests/test_fp8_fp4.py (SM90, non-psum layout)",
        "contiguous": [(g, e, n, k) for (g, e) in ((4, 8192), (8, 4096)) for (n, k) in _HEAD_NK],
        "masked": [(g, e, n, k) for (g, e) in ((32, 192), (6, 1024), (32, 20), (6, 20)) for (n, k) in _HEAD_NK],
        "m_max": 4096,
        "contiguous_rule": "m_g = int(expected * U(0.7, 1.3)) with Python random seeded 0 at the start of the "
                           "list; per problem the test draws twice for correctness, then once for its perf "
                           "line: that third draw is used; each group padded to 128 rows (m_indices -1, A rows 0)",
        "masked_m_rule": "masked_m[g] = int(expected * U(0.7, 1.3)), Python random seeded 0 at the start of the "
                         "list, 8 draws per problem timed one after the other (as the test's perf line); "
                         "TFLOPS = sum over draws of 2*valid_m*N*K / sum of times; us = mean time",
    },
    "legacy": {
        "source": "DeepGEMM 03d0be3 tests/test_core.py (the lists in the 2026-11-30 anchors)",
        "contiguous": [(4, 8192, 4096, 7168), (4, 8192, 7168, 2048), (8, 4096, 4096, 7168),
                       (8, 4096, 7168, 2048), (32, 256, 4096, 7168), (32, 256, 7168, 2048)],
        "masked": [(g, e, n, k) for (g, e) in ((1, 1024), (2, 512), (4, 256)) for (n, k) in ((4096, 7168), (7168, 2048))],
        "m_max": 4096,
        "contiguous_rule": "m_g = int(expected * U(0.7, 1.3)), Python random seeded 0 once, one draw per problem "
                           "in list order; each group padded to 128 rows (m_indices -1, A rows 0)",
        "masked_m_rule": "masked_m[g] = int(expected * U(0.7, 1.3)), the same random stream continuing after the "
                         "contiguous list, 10 draws per problem of which the last is timed (as that test did)",
    },
}


def grouped_draws(set_name: str) -> tuple[list, list]:
    """(contiguous group sizes per problem, masked_m draws to time per problem), replaying the
    Python random stream of the chosen DeepGEMM test (its draws depend on nothing else)."""
    s = GROUPED_SETS[set_name]
    rng = random.Random(0)

    def draw(g, e):
        return [int(e * rng.uniform(0.7, 1.3)) for _ in range(g)]

    if set_name == "head":
        contig = []
        for (g, e, _, _) in s["contiguous"]:
            draw(g, e)
            draw(g, e)
            contig.append(draw(g, e))
        rng.seed(0)                     # the test reseeds before its masked list
        masked = [[draw(g, e) for _ in range(8)] for (g, e, _, _) in s["masked"]]
    else:
        contig = [draw(g, e) for (g, e, _, _) in s["contiguous"]]
        masked = [[draw(g, e) for _ in range(10)][-1:] for (g, e, _, _) in s["masked"]]
    return contig, masked


def _diff_parts(pairs) -> float:
    """calc_diff over several (x, y) slices taken together, without concatenating them."""
    num = den = 0.0
    for x, y in pairs:
        xd, yd = x.double(), y.double()
        num += float((xd * yd).sum())
        den += float((xd * xd + yd * yd).sum())
    return 0.0 if den == 0 else 1 - 2 * num / den


def _plan_info(fp8gemm, name: str, args_: tuple, sfa_stride: int) -> tuple:
    """(config name, grid, note) from fp8gemm's grouped planner, if it exists."""
    planner = getattr(fp8gemm, name, None)
    if planner is None:
        return None, None, f"fp8gemm.{name} missing"
    last = None
    for kw in ({"sfa_stride": sfa_stride}, {}):
        try:
            p = planner(*args_, **kw)
            return p.config.name, p.grid, None
        except TypeError as e:
            last = e
    return None, None, f"{name}: {last}"


def bench_grouped(args) -> dict:
    import torch
    import fp8gemm
    s = GROUPED_SETS[args.set]
    kinds = [x.strip() for x in args.kinds.split(",") if x.strip()]
    if not kinds or set(kinds) - {"contiguous", "masked"}:
        raise SystemExit(f"--kinds: expected contiguous and/or masked, got {args.kinds!r}")
    contig_sizes, masked_draws = grouped_draws(args.set)
    if args.masked_draws:
        masked_draws = [d[:args.masked_draws] for d in masked_draws]
    align = fp8gemm.get_m_alignment_for_contiguous_layout()
    m_max = s["m_max"]
    factor = args.expected_m_factor

    def hint(e):
        return max(1, int(e * factor))

    problems = []
    if "contiguous" in kinds:
        for (g, e, n, k), sizes in zip(s["contiguous"], contig_sizes):
            m_sum = sum(-(-x // align) * align for x in sizes)
            problems.append(("contiguous", (g, e, n, k), sizes, m_sum))
    if "masked" in kinds:
        for (g, e, n, k), draws in zip(s["masked"], masked_draws):
            if max(max(d) for d in draws) > m_max:
                raise ValueError(f"masked draw over M_max {m_max}: {draws}")
            problems.append(("masked", (g, e, n, k), draws, m_max))
    jobs = []
    for kind, (g, e, n, k), _, m_ in problems:
        jobs.append({"kind": "contiguous", "groups": g, "m_sum": m_, "n": n, "k": k} if kind == "contiguous" else
                    {"kind": "masked", "groups": g, "m_max": m_, "n": n, "k": k, "expected_m": hint(e)})
    ours = {"contiguous": hasattr(fp8gemm, "m_grouped_gemm_fp8_fp8_bf16_nt_contiguous"),
            "masked": hasattr(fp8gemm, "m_grouped_gemm_fp8_fp8_bf16_nt_masked")}
    if not args.deepgemm and not all(ours[x] for x in kinds):
        raise SystemExit(f"fp8gemm has no grouped API for {[x for x in kinds if not ours[x]]} "
                         "(and no --deepgemm to time alone)")
    side, dg, dg_info = _deepgemm_setup(args, jobs)
    if dg:
        dga = dg.module.get_mk_alignment_for_contiguous_layout()
        if dga != align:
            raise SystemExit(f"DeepGEMM's contiguous alignment is {dga}, fp8gemm's {align}")
    print(f"grouped set '{args.set}': {s['source']}; expected_m hint = int({factor:g} * expected m/group)")
    records, states = [], {}
    for kind in kinds:
        todo = [p for p in problems if p[0] == kind]
        if not todo:
            continue
        _table_state(states, kind, "before")
        print(f"{kind:10s} {'G':>3} {'m/g':>5} {'n':>6} {'k':>6} {'valid_m':>8}  {'config':34s} {'fp8gemm':>8} "
              f"{'GB/s':>6} {'us':>8}" + (f" {'DeepGEMM':>8} {'DG cfg':>22} {'x DG':>6} {'DG diff':>8}" if dg else "")
              + f" {'ref diff':>8}")
        for _, shape, draws, m_ in todo:
            fn = _grouped_contiguous if kind == "contiguous" else _grouped_masked
            rec = fn(args, torch, fp8gemm, shape, draws, m_, hint(shape[1]), ours[kind], side, dg, dg_info)
            rec["table"] = kind
            records.append(rec)
            torch.cuda.empty_cache()
        _table_state(states, kind, "after")
    res = {"records": records, "set": args.set, "set_source": s["source"],
           "contiguous_rule": s["contiguous_rule"], "masked_m_rule": s["masked_m_rule"]
           + (f" (capped at {args.masked_draws} draws)" if args.masked_draws else ""),
           "m_max": m_max, "expected_m_factor": factor, "alignment": align, "gpu_state": states}
    checked = [r for r in records if r.get("ref_diff") is not None]
    res["fp8gemm_all_match_reference"] = all(r["ref_diff"] < DIFF_LIMIT for r in checked) if checked else None
    if checked:
        print(f"fp8gemm vs float reference (valid rows) calc_diff < {DIFF_LIMIT:g} on {len(checked)} problems: "
              f"{res['fp8gemm_all_match_reference']}")
    if dg:
        res.update(_deepgemm_summary(records, kinds, dg_info["info"]))
    for table, st in states.items():
        print(f"[{table}] GPU before: {_fmt_state(st.get('before'))} | after: {_fmt_state(st.get('after'))}")
    return res


def _quantize_b(torch, fp8gemm, b_bf):
    g, n, k = b_bf.shape
    bq = torch.empty(g, n, k, device="cuda", dtype=torch.float8_e4m3fn)
    sb = torch.empty(g, -(-n // 128), -(-k // 128), device="cuda", dtype=torch.float32)
    for i in range(g):
        fp8gemm.per_block_cast_to_fp8(b_bf[i], out=(bq[i], sb[i]))
    return bq, sb


def _grouped_record_times(rec, prefix, ts, ops, nbytes):
    """tflops / gbps / us for one library from per-draw times (sums over draws, as DeepGEMM's test)."""
    tag = f"{prefix}_" if prefix else ""
    rec[f"{tag}tflops"] = sum(ops) / sum(ts) / 1e12
    rec[f"{tag}gbps"] = sum(nbytes) / sum(ts) / 1e9
    rec[f"{tag}us"] = sum(ts) / len(ts) * 1e6


def _forced_configs(fp8gemm, args, kind):
    """(tag, GemmConfig) for each --configs entry 'BMxBNxSTAGES[:a|:b]' (a/b: 2-CTA multicast)."""
    out = []
    for spec in [x.strip() for x in (getattr(args, "configs", None) or "").split(",") if x.strip()]:
        shape, _, mc = spec.partition(":")
        bm, bn, st = (int(x) for x in shape.split("x"))
        if kind != "masked" and bm > 128:
            continue
        cfg = fp8gemm.GemmConfig(bm, bn, st, cluster=2 if mc else 1, multicast_on_a=mc != "b", kind=kind)
        out.append((f"cfg_{spec.replace(':', '_')}", cfg))
    return out


def _print_grouped(kind, rec, dg):
    cfg = (rec.get("config") or "-")[-34:]
    ours = f"{rec['tflops']:8.1f} {rec['gbps']:6.0f} {rec['us']:8.1f}" if rec.get("tflops") else \
        f"{'-':>8} {'-':>6} {'-':>8}"
    line = (f"{kind:10s} {rec['groups']:3d} {rec['expected_m_per_group']:5d} {rec['n']:6d} {rec['k']:6d} "
            f"{rec['valid_m']:8.0f}  {cfg:34s} {ours}")
    if dg:
        ratio = rec["tflops"] / rec["deepgemm_tflops"] if rec.get("tflops") else float("nan")
        d = rec.get("deepgemm_diff")
        line += (f" {rec['deepgemm_tflops']:8.1f} {(rec.get('deepgemm_config') or '-')[-22:]:>22} {ratio:6.3f} "
                 f"{d if d is not None else float('nan'):8.1e}")
        if d is not None and d >= DIFF_LIMIT:
            line += " DISAGREE"
    r = rec.get("ref_diff")
    line += f" {r if r is not None else float('nan'):8.1e}"
    line += "".join(f"  {x[:-7]}={rec[x]:.0f}" for x in rec if x.startswith("cfg_") and x.endswith("_tflops"))
    print(line, flush=True)


def _rerun_zeroed(torch, fns, out, out_dg) -> None:
    """Zero each library's output and run it once more, for the correctness checks after timing."""
    for name, o in (("", out), ("deepgemm", out_dg)):
        if name in fns:
            o.zero_()
            fns[name]()
    torch.cuda.synchronize()


def _grouped_contiguous(args, torch, fp8gemm, shape, sizes, m_sum, _hint, have_ours, side, dg, dg_info) -> dict:
    g, e, n, k = shape
    align = fp8gemm.get_m_alignment_for_contiguous_layout()
    kb, nb = -(-k // 128), -(-n // 128)
    gen = torch.Generator(device="cuda").manual_seed(g * 1000003 + e + n + k)
    a_bf = torch.randn(m_sum, k, device="cuda", generator=gen).to(torch.bfloat16)
    b_bf = torch.randn(g, n, k, device="cuda", generator=gen).to(torch.bfloat16)
    idx, segs, start = [], [], 0
    for i, mg in enumerate(sizes):
        padded = -(-mg // align) * align
        idx += [i] * mg + [-1] * (padded - mg)
        segs.append((i, start, mg))
        a_bf[start + mg:start + padded] = 0
        start += padded
    m_indices = torch.tensor(idx, dtype=torch.int32, device="cuda")
    aq, sa = fp8gemm.per_token_cast_to_fp8(a_bf)
    bq, sb = _quantize_b(torch, fp8gemm, b_bf)
    out = torch.empty(m_sum, n, device="cuda", dtype=torch.bfloat16)
    valid_m = sum(sizes)
    ops = 2 * valid_m * n * k
    nbytes = valid_m * k + g * n * k + 4 * (valid_m * kb + g * nb * kb) + 2 * valid_m * n
    rec = {"kind": "contiguous", "groups": g, "expected_m_per_group": e, "n": n, "k": k, "group_m": sizes,
           "valid_m": valid_m, "m_sum": m_sum}
    rec["config"], rec["grid"], note = _plan_info(fp8gemm, "plan_m_grouped_gemm_contiguous", (m_sum, n, k, g),
                                                  sa.stride(1))
    if note:
        rec["config_note"] = note
    fns = {}
    if have_ours:
        fns[""] = lambda: fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((aq, sa), (bq, sb), out, m_indices)
        for tag, cfg in _forced_configs(fp8gemm, args, "contiguous"):
            fns[tag] = (lambda cfg=cfg: fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(
                (aq, sa), (bq, sb), out, m_indices, config=cfg))
    out_dg = None
    if dg:
        out_dg = torch.empty_like(out)
        fns["deepgemm"] = side.contiguous(dg, aq, sa, bq, sb, out_dg, m_indices)
    times = timed_variants(fns, rounds=args.rounds)
    if have_ours:
        _grouped_record_times(rec, "", [times[""]], [ops], [nbytes])
        for tag in [x for x in fns if x.startswith("cfg_")]:
            _grouped_record_times(rec, tag, [times[tag]], [ops], [nbytes])
    if dg:
        _grouped_record_times(rec, "deepgemm", [times["deepgemm"]], [ops], [nbytes])
        rec["deepgemm_commit"] = dg.commit
        rec["deepgemm_config"] = dg_info["warm_jobs"].get(side.job_key(
            {"kind": "contiguous", "groups": g, "m_sum": m_sum, "n": n, "k": k}), {}).get("config")
    # correctness on the rows that belong to a group (padding rows are excluded)
    _rerun_zeroed(torch, fns, out, out_dg)
    if not args.no_reference:
        for name, o in (("", out), ("deepgemm", out_dg)):
            if name in fns:
                parts = ((o[s0:s0 + mg], (a_bf[s0:s0 + mg].float() @ b_bf[i].float().t()))
                         for (i, s0, mg) in segs if mg)
                rec["ref_diff" if not name else "deepgemm_ref_diff"] = _diff_parts(parts)
    for name in fns:
        rec["host_us" if not name else f"{name}_host_us"] = host_overhead(fns[name]) * 1e6
    if have_ours and dg:
        valid = m_indices >= 0
        rec["deepgemm_diff"] = side.calc_diff(dg, out[valid], out_dg[valid])
        rec["deepgemm_bit_identical"] = torch.equal(out[valid].view(torch.int16), out_dg[valid].view(torch.int16))
    _print_grouped("contiguous", rec, dg)
    return rec


def _grouped_masked(args, torch, fp8gemm, shape, draws, m_max, hint, have_ours, side, dg, dg_info) -> dict:
    g, e, n, k = shape
    kb, nb = -(-k // 128), -(-n // 128)
    s = fp8gemm.get_tma_aligned_size(m_max)
    gen = torch.Generator(device="cuda").manual_seed(g * 1000003 + e + n + k + 1)
    a_bf = torch.randn(g, m_max, k, device="cuda", generator=gen).to(torch.bfloat16)
    b_bf = torch.randn(g, n, k, device="cuda", generator=gen).to(torch.bfloat16)
    aq = torch.empty(g, m_max, k, device="cuda", dtype=torch.float8_e4m3fn)
    sa = torch.empty(g, kb, s, device="cuda", dtype=torch.float32).transpose(1, 2)[:, :m_max, :]
    for i in range(g):
        fp8gemm.per_token_cast_to_fp8(a_bf[i], out=(aq[i], sa[i]))
    bq, sb = _quantize_b(torch, fp8gemm, b_bf)
    out = torch.empty(g, m_max, n, device="cuda", dtype=torch.bfloat16)
    masked_m = torch.zeros(g, device="cuda", dtype=torch.int32)
    rec = {"kind": "masked", "groups": g, "expected_m_per_group": e, "expected_m": hint, "n": n, "k": k,
           "m_max": m_max}
    rec["config"], rec["grid"], note = _plan_info(fp8gemm, "plan_m_grouped_gemm_masked", (m_max, n, k, g, hint), s)
    if note:
        rec["config_note"] = note
    fns = {}
    if have_ours:
        fns[""] = lambda: fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked((aq, sa), (bq, sb), out, masked_m, hint)
        for tag, cfg in _forced_configs(fp8gemm, args, "masked"):
            fns[tag] = (lambda cfg=cfg: fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked(
                (aq, sa), (bq, sb), out, masked_m, hint, config=cfg))
    out_dg = None
    if dg:
        out_dg = torch.empty_like(out)
        fns["deepgemm"] = side.masked(dg, aq, sa, bq, sb, out_dg, masked_m, hint)
    per = {name: [] for name in fns}
    ops, nbytes, draw_recs = [], [], []
    ref_parts = {"": [0.0, 0.0], "deepgemm": [0.0, 0.0]}
    dg_diffs, bit_same = [], True
    for mm in draws:
        masked_m.copy_(torch.tensor(mm, dtype=torch.int32))
        valid_m = sum(mm)
        ops.append(2 * valid_m * n * k)
        nbytes.append(valid_m * k + g * n * k + 4 * (valid_m * kb + g * nb * kb) + 2 * valid_m * n)
        times = timed_variants(fns, rounds=args.rounds)
        for name, t in times.items():
            per[name].append(t)
        draw_recs.append({"masked_m": mm, "valid_m": valid_m, **{(f"{nm}_us" if nm else "us"): t * 1e6
                                                                   for nm, t in times.items()}})
        # correctness on rows < masked_m[g] (the rest is undefined)
        _rerun_zeroed(torch, fns, out, out_dg)
        if not args.no_reference:
            for name, o in (("", out), ("deepgemm", out_dg)):
                if name in fns:
                    for i, mg in enumerate(mm):
                        if mg:
                            x = o[i, :mg].double()
                            y = (a_bf[i, :mg].float() @ b_bf[i].float().t()).double()
                            ref_parts[name][0] += float((x * y).sum())
                            ref_parts[name][1] += float((x * x + y * y).sum())
        if have_ours and dg:
            xs = torch.cat([out[i, :mg] for i, mg in enumerate(mm)])
            ys = torch.cat([out_dg[i, :mg] for i, mg in enumerate(mm)])
            dg_diffs.append(side.calc_diff(dg, xs, ys))
            bit_same = bit_same and torch.equal(xs.view(torch.int16), ys.view(torch.int16))
    rec["valid_m"] = sum(d["valid_m"] for d in draw_recs) / len(draw_recs)
    rec["valid_m_total"] = sum(d["valid_m"] for d in draw_recs)
    rec["draws"] = draw_recs
    if have_ours:
        _grouped_record_times(rec, "", per[""], ops, nbytes)
        for tag in [x for x in fns if x.startswith("cfg_")]:
            _grouped_record_times(rec, tag, per[tag], ops, nbytes)
    if dg:
        _grouped_record_times(rec, "deepgemm", per["deepgemm"], ops, nbytes)
        rec["deepgemm_commit"] = dg.commit
        rec["deepgemm_config"] = dg_info["warm_jobs"].get(side.job_key(
            {"kind": "masked", "groups": g, "m_max": m_max, "n": n, "k": k, "expected_m": hint}), {}).get("config")
    if not args.no_reference:
        for name, key in (("", "ref_diff"), ("deepgemm", "deepgemm_ref_diff")):
            num, den = ref_parts[name]
            if name in fns:
                rec[key] = 0.0 if den == 0 else 1 - 2 * num / den
    for name in fns:     # with the last draw's masked_m
        rec["host_us" if not name else f"{name}_host_us"] = host_overhead(fns[name]) * 1e6
    if dg_diffs:
        rec["deepgemm_diff"] = max(dg_diffs)
        rec["deepgemm_bit_identical"] = bit_same
    _print_grouped("masked", rec, dg)
    return rec

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fp8gemm-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    pg.add_argument("--decode", action="store_true",
                    help="also the 28 decode shapes: M in 1, 8, 16, 32 x the 7 (N, K) pairs")
    _add_deepgemm_args(pg)
    pm = sub.add_parser("grouped", help="m-grouped contiguous and masked GEMMs (DeepGEMM's test lists)")
    pm.add_argument("--json", help="write results here")
    pm.add_argument("--set", choices=sorted(GROUPED_SETS), default="head",
                    help="problem lists and group-size draws: 'head' = DeepGEMM 54e2261's tests (default), "
                         "'legacy' = its 03d0be3 tests (the lists of the 2026-11-30 anchors)")
    pm.add_argument("--kinds", default="contiguous,masked", help="comma-separated: contiguous, masked")
    pm.add_argument("--expected-m-factor", type=float, default=1.2,
                    help="masked expected_m hint = int(factor * expected m per group), the same for both "
                         "libraries (DeepGEMM 54e2261's test passes 1.2)")
    pm.add_argument("--masked-draws", type=int, default=0,
                    help="time at most this many masked_m draws per problem (default: all the set's rule times)")
    pm.add_argument("--no-reference", action="store_true",
                    help="skip the float reference check of the valid rows")
    pm.add_argument("--rounds", type=int, default=5, help="interleaved rounds of 10 timed calls per variant")
    pm.add_argument("--configs", help="also time these forced configs, e.g. 128x160x4:b,128x128x5 "
                    "(BMxBNxSTAGES, :a/:b = 2-CTA cluster sharing A/B)")
    _add_deepgemm_args(pm)
    pw = sub.add_parser("wgrad", help="training GEMMs: wgrad and k-grouped wgrad (DeepGEMM's test lists)")
    pw.add_argument("--json", help="write results here")
    pw.add_argument("--tables", default="wgrad,k_grouped", help="comma-separated: wgrad, k_grouped")
    pw.add_argument("--rounds", type=int, default=5, help="interleaved rounds of 10 timed calls per variant")
    _add_deepgemm_args(pw)
    args = p.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("fp8gemm-bench needs torch (CUDA events, the L2 flush, cuBLAS baselines): pip install torch",
              file=sys.stderr)
        return 2
    if args.what == "wgrad":
        from .bench_training import bench_wgrad
        res = bench_wgrad(args)
    else:
        res = {"quant": bench_quant, "gemm": bench_gemm, "grouped": bench_grouped}[args.what](args)
    res = {"device": device_name(), "commit": git_commit(),
           "date": datetime.date.today().isoformat(), "benchmark": args.what, **res}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
