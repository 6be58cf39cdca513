"""Benchmark of the training GEMMs (``fp8gemm-bench wgrad``): the wgrad GEMM on DeepGEMM's wgrad
list and the k-grouped wgrad GEMM on its k-grouped list, each timed interleaved with DeepGEMM
(``--deepgemm DIR``: its SM90 "1D1D" kernels, ``fp8_gemm_nt`` with recipe (1, 1, 128) and
c = d, and ``k_grouped_fp8_gemm_nt_contiguous``) on the same inputs, every output checked
against the float64 reference of the quantized inputs."""
from __future__ import annotations

import random

from .bench import _deepgemm_setup, _fmt_state, _geo, _table_state, host_overhead, timed_variants

# DeepGEMM 03d0be3 tests/test_core.py: wgrad K x (M, N); k-grouped (G, base K) x (M, N), each
# group's K = base +- 128 (or base), the last one making the sum G * base
WGRAD_SHAPES = [(m, n, k) for k in (4096, 8192) for (m, n) in ((7168, 2112), (1536, 24576), (512, 32768),
                                                                 (16384, 7168), (7168, 4096), (2048, 7168))]
K_GROUPED = [(g, base, m, n) for (g, base) in ((4, 4096), (4, 8192), (8, 4096)) for (m, n) in ((7168, 4096),
                                                                                                 (2048, 7168))]
SOURCE = "DeepGEMM 03d0be3 tests/test_core.py (test_wgrad_gemm, test_k_grouped_wgrad_gemm lists)"


def k_grouped_ks(groups: int, base: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    ks = [base + rng.choice((-128, 0, 128)) for _ in range(groups - 1)]
    return ks + [groups * base - sum(ks)]


def _rel(torch, new, old, ref) -> float:
    return ((new.double() - old.double() - ref).norm() / ref.norm()).item()


def _wgrad_one(args, torch, fp8gemm, m, n, k, side, dg) -> dict:
    from .testing import reference_wgrad
    g = torch.Generator(device="cuda").manual_seed(m + n + k)
    a = torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16)
    b = torch.randn(n, k, device="cuda", generator=g).to(torch.bfloat16)
    (aq, sa), (bq, sb) = fp8gemm.per_token_cast_to_fp8(a), fp8gemm.per_token_cast_to_fp8(b)
    out0 = torch.randn(m, n, device="cuda", generator=g)
    out = out0.clone()
    plan = fp8gemm.plan_wgrad_gemm(m, n, k, sfa_stride=sa.stride(1), sfb_stride=sb.stride(1))
    stream = torch.cuda.current_stream().cuda_stream
    ptrs = (aq.data_ptr(), sa.data_ptr(), bq.data_ptr(), sb.data_ptr(), out.data_ptr())
    fns = {"": lambda: plan.launch(*ptrs, stream)}
    out_dg = None
    if dg:
        out_dg = out0.clone()
        fns["deepgemm"] = side.wgrad(dg, aq, sa, bq, sb, out_dg)
    times = timed_variants(fns, rounds=args.rounds)
    flops, kb = 2 * m * n * k, -(-k // 128)
    nbytes = m * k + n * k + 4 * kb * (m + n) + 8 * m * n
    rec = {"kind": "wgrad", "m": m, "n": n, "k": k, "config": plan.config.name, "grid": plan.grid,
           "tflops": flops / times[""] / 1e12, "gbps": nbytes / times[""] / 1e9, "us": times[""] * 1e6,
           "host_us_plan_launch": host_overhead(fns[""]) * 1e6}
    ref = reference_wgrad(torch, (aq, sa), (bq, sb))
    out.copy_(out0)
    fns[""]()
    if dg:
        out_dg.copy_(out0)
        fns["deepgemm"]()
    torch.cuda.synchronize()
    rec["rel_error"] = _rel(torch, out, out0, ref)
    if dg:
        t = times["deepgemm"]
        rec.update(deepgemm_tflops=flops / t / 1e12, deepgemm_us=t * 1e6, deepgemm_commit=dg.commit,
                   deepgemm_rel_error=_rel(torch, out_dg, out0, ref),
                   deepgemm_diff=side.calc_diff(dg, out - out0, out_dg - out0))
    _print(rec, dg, f"{m:6d} {n:6d} {k:6d}")
    return rec


def _k_grouped_one(args, torch, fp8gemm, groups, base, m, n, side, dg) -> dict:
    from .testing import k_grouped_inputs, reference_wgrad
    ks = k_grouped_ks(groups, base, seed=groups * base + m)
    (a, sa), (b, sb), qa, qb = k_grouped_inputs(torch, m, n, ks, seed=groups + base + m + n)
    gen = torch.Generator(device="cuda").manual_seed(7)
    out0 = torch.randn(groups, m, n, device="cuda", generator=gen)
    out = out0.clone()
    plan = fp8gemm.plan_k_grouped_wgrad_gemm(m, n, groups, expected_k=base)
    stream = torch.cuda.current_stream().cuda_stream
    ptrs = (a.data_ptr(), sa.data_ptr(), b.data_ptr(), sb.data_ptr(), out.data_ptr())
    fns = {"": lambda: plan.launch(*ptrs, ks, stream)}
    out_dg = None
    if dg:
        out_dg = out0.clone()
        fns["deepgemm"] = side.k_grouped_wgrad(dg, a, sa, b, sb, out_dg, ks)
    times = timed_variants(fns, rounds=args.rounds)
    flops, kb = 2 * m * n * sum(ks), sum(-(-x // 128) for x in ks)
    nbytes = (m + n) * sum(ks) + 4 * kb * (m + n) + 8 * groups * m * n
    rec = {"kind": "k_grouped_wgrad", "groups": groups, "base_k": base, "ks": ks, "m": m, "n": n,
           "config": plan.config.name, "grid": plan.grid, "tflops": flops / times[""] / 1e12,
           "gbps": nbytes / times[""] / 1e9, "us": times[""] * 1e6, "host_us_plan_launch": host_overhead(fns[""]) * 1e6}
    out.copy_(out0)
    fns[""]()
    if dg:
        out_dg.copy_(out0)
        fns["deepgemm"]()
    torch.cuda.synchronize()
    errs, dg_errs = [], []
    for gi in range(groups):
        ref = reference_wgrad(torch, qa[gi], qb[gi])
        errs.append(_rel(torch, out[gi], out0[gi], ref))
        if dg:
            dg_errs.append(_rel(torch, out_dg[gi], out0[gi], ref))
    rec["rel_error"] = max(errs)
    if dg:
        t = times["deepgemm"]
        rec.update(deepgemm_tflops=flops / t / 1e12, deepgemm_us=t * 1e6, deepgemm_commit=dg.commit,
                   deepgemm_rel_error=max(dg_errs), deepgemm_diff=side.calc_diff(dg, out - out0, out_dg - out0))
    _print(rec, dg, f"G={groups} {m:6d} {n:6d} K~{base:5d}")
    return rec


def _print(rec, dg, head: str) -> None:
    line = f"{head}  {rec['config'][8:48]:40s} {rec['tflops']:8.1f} {rec['us']:9.1f} us  err {rec['rel_error']:.1e}"
    if dg:
        line += (f"  DeepGEMM {rec['deepgemm_tflops']:8.1f}  x DG {rec['tflops'] / rec['deepgemm_tflops']:6.3f}"
                 f"  DG err {rec['deepgemm_rel_error']:.1e}")
    print(line, flush=True)


def bench_wgrad(args) -> dict:
    import torch
    import fp8gemm
    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    jobs = []
    if "wgrad" in tables:
        jobs += [{"kind": "wgrad", "m": m, "n": n, "k": k} for (m, n, k) in WGRAD_SHAPES]
    if "k_grouped" in tables:
        jobs += [{"kind": "k_grouped_wgrad", "m": m, "n": n, "k": g * base,
                  "ks": k_grouped_ks(g, base, seed=g * base + m)} for (g, base, m, n) in K_GROUPED]
    side, dg, dg_info = _deepgemm_setup(args, jobs)
    records, states = [], {}
    if "wgrad" in tables:
        _table_state(states, "wgrad", "before")
        for (m, n, k) in WGRAD_SHAPES:
            records.append(_wgrad_one(args, torch, fp8gemm, m, n, k, side, dg))
            torch.cuda.empty_cache()
        _table_state(states, "wgrad", "after")
    if "k_grouped" in tables:
        _table_state(states, "k_grouped_wgrad", "before")
        for (g, base, m, n) in K_GROUPED:
            records.append(_k_grouped_one(args, torch, fp8gemm, g, base, m, n, side, dg))
            torch.cuda.empty_cache()
        _table_state(states, "k_grouped_wgrad", "after")
    res = {"records": records, "source": SOURCE, "gpu_state": states,
           "max_rel_error": max(r["rel_error"] for r in records)}
    if dg:
        res["deepgemm"] = dg_info["info"]
        res["deepgemm_geomeans"] = {}
        for kind in ("wgrad", "k_grouped_wgrad"):
            rows = [r for r in records if r["kind"] == kind]
            if rows:
                ratios = [r["tflops"] / r["deepgemm_tflops"] for r in rows]
                res["deepgemm_geomeans"][kind] = {"geomean_fp8gemm_over_deepgemm": _geo(ratios),
                                                  "min": min(ratios), "max": max(ratios), "shapes": len(rows)}
                print(f"geomean fp8gemm / DeepGEMM {dg.commit[:7]} [{kind}] over {len(rows)} shapes: "
                      f"{_geo(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
    print(f"worst error vs float64 (out - out_before vs the product): {res['max_rel_error']:.2e}")
    for table, st in states.items():
        print(f"[{table}] GPU before: {_fmt_state(st.get('before'))} | after: {_fmt_state(st.get('after'))}")
    return res
