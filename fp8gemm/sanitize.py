"""compute-sanitizer over one small problem per kernel family and variant, as one table.

    python -m fp8gemm.sanitize [--tools memcheck,racecheck,synccheck,initcheck] [--json out.json]
    python -m fp8gemm.sanitize --child [--only NAME]     # the workload alone (what the tools run)

Variants: dense BM 16 / 32 / 64 / 128 / 256, two-scale BN (112, 192), 2-CTA multicast of A and of
B, the debug build; the training variants (fp32 out, fp32 and bf16 with C, wgrad, k-grouped wgrad); contiguous (m_indices, multicast B and A, a padding block, an empty group, a
ghost tile) and its group_ends form; masked (multicast B, BM 256 with multicast A); both
casts. Each tool runs the whole workload once; its reports are attributed to kernels by
name. Every output is also checked against the float64 reference, so a variant that ran
wrong under a tool shows as failed. Host-side reports (cuda-bindings probing the driver
with cuGetProcAddress) are counted apart: they are not kernel errors. Needs torch, a Hopper GPU
and compute-sanitizer.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]       # the checkout, when run from one

TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
N, K, SIZES = 3 * 112, 640, [200, 0, 1, 130]


def variants():
    """(name, what kernel it runs, callable) for the child."""
    from fp8gemm import GemmConfig
    dense = [GemmConfig(64, 64, 4), GemmConfig(128, 128, 4), GemmConfig(256, 128, 3), GemmConfig(128, 112, 4),
             GemmConfig(128, 192, 4), GemmConfig(128, 128, 4, cluster=2), GemmConfig(128, 128, 4, cluster=2,
                                                                                    multicast_on_a=False),
             GemmConfig(128, 128, 4, debug=True)]
    out = [(c.name, lambda c=c: _dense(c)) for c in dense]
    for c, psum in ((GemmConfig(128, 112, 4, kind="contiguous", cluster=2, multicast_on_a=False), False),
                    (GemmConfig(64, 112, 4, kind="contiguous", cluster=2), False),
                    (GemmConfig(128, 192, 4, kind="contiguous"), False),
                    (GemmConfig(128, 112, 4, kind="contiguous_psum", cluster=2, multicast_on_a=False), True)):
        out.append((c.name, lambda c=c, psum=psum: _contiguous(c, psum)))
    for c in (GemmConfig(128, 112, 4, kind="masked", cluster=2, multicast_on_a=False),
              GemmConfig(256, 112, 3, kind="masked", cluster=2)):
        out.append((c.name, lambda c=c: _masked(c)))
    from fp8gemm.config import variant_fields
    out.append((GemmConfig(16, 64, 16).name, lambda: _dense(GemmConfig(16, 64, 16), m=13)))
    out.append((GemmConfig(32, 112, 8).name, lambda: _dense(GemmConfig(32, 112, 8), m=45)))
    for v, bn in (("fp32", 112), ("fp32_c", 128), ("bf16_c", 112)):
        c = GemmConfig(128, bn, 4, **variant_fields(v))
        out.append((c.name, lambda c=c: _dense(c)))
    wg = GemmConfig(128, 144, 4, **variant_fields("wgrad"))
    out.append((wg.name, lambda: _wgrad(wg)))
    kg = GemmConfig(64, 112, 4, **variant_fields("wgrad", "k_grouped", 4))
    out.append((kg.name, lambda: _k_grouped(kg)))
    # the reduce-add epilogue (out += D by TMA in L2, no C load)
    wr = dataclasses.replace(wg, with_c=False, reduce_out=True)
    out.append((wr.name, lambda: _wgrad(wr)))
    wu = GemmConfig(128, 152, 4, **dict(variant_fields("wgrad"), with_c=False, reduce_out=True))
    out.append((wu.name, lambda: _wgrad(wu)))       # BN = 8 (mod 16): unswizzled slabs
    wc = dataclasses.replace(wu, cluster=2, multicast_on_a=False)
    out.append((wc.name, lambda: _wgrad(wc)))       # a 2-CTA pair sharing B and its row scales
    kr = dataclasses.replace(kg, with_c=False, reduce_out=True)
    out.append((kr.name, lambda: _k_grouped(kr)))
    out.append(("fp8gemm_per_token_cast", lambda: _cast("token")))     # kernels fp8gemm_per_*_cast_<src>
    out.append(("fp8gemm_per_block_cast", lambda: _cast("block")))
    return out


# ---- the workload (child) -------------------------------------------------------------------------
def _quantized(torch, fp8gemm, g, rows):
    gen = torch.Generator(device="cuda").manual_seed(11)
    a = torch.randn(rows, K, device="cuda", generator=gen).bfloat16()
    b = torch.randn(g, N, K, device="cuda", generator=gen).bfloat16()
    bq = torch.empty(g, N, K, device="cuda", dtype=torch.float8_e4m3fn)
    sb = torch.empty(g, -(-N // 128), -(-K // 128), device="cuda")
    for i in range(g):
        fp8gemm.per_block_cast_to_fp8(b[i], out=(bq[i], sb[i]))
    return a, (bq, sb)


def _ok(torch, out, lhs, rhs, what):
    from fp8gemm.testing import check, reference
    err, _ = check(torch, out, reference(torch, lhs, rhs))
    assert err <= 2e-3, (what, err)


def _dense(cfg, m=300):
    """Any dense output variant: bf16 or fp32 out, with a random C (or none)."""
    import torch

    import fp8gemm
    from fp8gemm.testing import reference
    a, (bq, sb) = _quantized(torch, fp8gemm, 1, m)
    lhs = fp8gemm.per_token_cast_to_fp8(a)
    dt = getattr(torch, cfg.out_dtype)
    out = torch.full((m, N), float("nan"), device="cuda", dtype=dt)
    c = (torch.randn((m, N), device="cuda") * 10).to(dt) if cfg.with_c else None
    f = fp8gemm.gemm_fp8_fp8_fp32_nt if cfg.out_dtype == "float32" else fp8gemm.gemm_fp8_fp8_bf16_nt
    f(lhs, (bq[0], sb[0]), out, config=cfg, c=c)
    torch.cuda.synchronize()
    if c is None:
        _ok(torch, out, lhs, (bq[0], sb[0]), cfg.name)
    else:
        want = reference(torch, lhs, (bq[0], sb[0])) + c.double()
        err = ((out.double() - want).norm() / want.norm()).item()
        assert err <= 2e-3, (cfg.name, err)


def _wgrad(cfg):
    import torch

    import fp8gemm
    from fp8gemm.testing import reference_wgrad
    m = 300
    gen = torch.Generator(device="cuda").manual_seed(5)
    lhs = fp8gemm.per_token_cast_to_fp8(torch.randn(m, K, device="cuda", generator=gen).bfloat16())
    rhs = fp8gemm.per_token_cast_to_fp8(torch.randn(N, K, device="cuda", generator=gen).bfloat16())
    out = torch.randn(m, N, device="cuda", generator=gen)
    old = out.clone()
    fp8gemm.wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out, config=cfg)
    torch.cuda.synchronize()
    ref = reference_wgrad(torch, lhs, rhs)
    err = ((out.double() - old.double() - ref).norm() / ref.norm()).item()
    assert err <= 1e-3, (cfg.name, err)


def _k_grouped(cfg):
    import torch

    import fp8gemm
    from fp8gemm.testing import k_grouped_inputs, reference_wgrad
    m, n, ks = 136, N, [640, 0, 144, 256]
    (a, sa), (b, sb), qa, qb = k_grouped_inputs(torch, m, n, ks, seed=3)
    out = torch.randn(len(ks), m, n, device="cuda")
    old = out.clone()
    fp8gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt((a, sa), (b, sb), out, ks, config=cfg)
    torch.cuda.synchronize()
    for g, k in enumerate(ks):
        if not k:
            assert torch.equal(out[g], old[g]), (cfg.name, g)
            continue
        ref = reference_wgrad(torch, qa[g], qb[g])
        err = ((out[g].double() - old[g].double() - ref).norm() / ref.norm()).item()
        assert err <= 1e-3, (cfg.name, g, err)


def _contiguous(cfg, psum):
    import torch

    import fp8gemm
    idx, ends = [], []
    for g, s in enumerate(SIZES):
        idx += [g] * s + [-1] * (-(-s // 128) * 128 - s)
        ends.append(len(idx) - (-(-s // 128) * 128 - s))
    idx += [-1] * 128
    a, rhs = _quantized(torch, fp8gemm, len(SIZES), len(idx))
    lhs = fp8gemm.per_token_cast_to_fp8(a)
    out = torch.full((len(idx), N), float("nan"), device="cuda", dtype=torch.bfloat16)
    lay = torch.tensor(ends if psum else idx, dtype=torch.int32, device="cuda")
    kw = {"group_ends": lay} if psum else {"m_indices": lay}
    fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(lhs, rhs, out, config=cfg, validate=True, **kw)
    torch.cuda.synchronize()
    start = 0
    for g, s in enumerate(SIZES):
        if s:
            sl = slice(start, start + s)
            _ok(torch, out[sl], (lhs[0][sl], lhs[1][sl]), (rhs[0][g], rhs[1][g]), (cfg.name, g))
        start += -(-s // 128) * 128


def _masked(cfg):
    import torch

    import fp8gemm
    g, m_max = len(SIZES), 200
    a, rhs = _quantized(torch, fp8gemm, g, g * m_max)
    a = a.view(g, m_max, K)
    kb, s = -(-K // 128), fp8gemm.get_tma_aligned_size(m_max)
    aq = torch.empty(g, m_max, K, device="cuda", dtype=torch.float8_e4m3fn)
    sa = torch.empty(g, kb, s, device="cuda").transpose(1, 2)[:, :m_max]
    for i in range(g):
        fp8gemm.per_token_cast_to_fp8(a[i], out=(aq[i], sa[i]))
    out = torch.full((g, m_max, N), float("nan"), device="cuda", dtype=torch.bfloat16)
    mm = torch.tensor([min(x, m_max) for x in SIZES], dtype=torch.int32, device="cuda")
    fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked((aq, sa), rhs, out, mm, 100, config=cfg, validate=True)
    torch.cuda.synchronize()
    for i, r in enumerate(mm.tolist()):
        if r:
            _ok(torch, out[i, :r], (aq[i, :r], sa[i, :r]), (rhs[0][i], rhs[1][i]), (cfg.name, i))


def _cast(kind):
    import numpy as np
    import torch

    import fp8gemm
    from fp8gemm import reference as ref
    x = torch.randn(333, 1040, device="cuda").bfloat16()
    f = fp8gemm.per_token_cast_to_fp8 if kind == "token" else fp8gemm.per_block_cast_to_fp8
    r = ref.per_token_cast_to_fp8 if kind == "token" else ref.per_block_cast_to_fp8
    q, s = f(x)
    torch.cuda.synchronize()
    rq, rs = r(x.float().cpu().numpy())
    assert np.array_equal(q.view(torch.uint8).cpu().numpy(), rq.view(np.uint8)), kind
    assert np.array_equal(s.cpu().numpy(), rs), kind


def child(only: str | None) -> int:
    failed = 0
    wanted = set(only.split(",")) if only else None
    for name, fn in variants():
        if wanted and name not in wanted:
            continue
        try:
            fn()
            print(f"VARIANT {name}: ok", flush=True)
        except Exception as e:  # noqa: BLE001 - reported in the table
            failed += 1
            print(f"VARIANT {name}: FAILED {type(e).__name__}: {e}", flush=True)
    return 1 if failed else 0


# ---- the table (parent) ---------------------------------------------------------------------------
_KERNEL = re.compile(r"\b(fp8gemm_\w+)")
_NOT_REPORTS = ("ERROR SUMMARY", "RACECHECK SUMMARY", "COMPUTE-SANITIZER", "LEAK SUMMARY")


def _reports(log: str) -> list[list[str]]:
    """The sanitizer's reports: a line '========= Text' starts one, indented '=========     '
    lines continue it."""
    out: list[list[str]] = []
    for line in log.splitlines():
        if not line.startswith("========= "):
            continue
        body = line[len("========= "):]
        if not body.strip():
            continue
        if body.startswith(" "):
            if out:
                out[-1].append(body.strip())
        elif not body.startswith(_NOT_REPORTS):
            out.append([body])
    return out


def _attribute(log: str, names: list[str]) -> tuple[dict, int, int]:
    """(reports per variant, host-side reports, reports naming no known kernel)."""
    per = {n: 0 for n in names}
    host = other = 0
    for rep in _reports(log):
        text = "\n".join(rep)
        if "cuGetProcAddress" in text:
            host += 1
            continue
        m = _KERNEL.search(text)
        k = m.group(1) if m else ""
        prefixes = [n for n in names if k and k.startswith(n)]
        hit = max(prefixes, key=len) if prefixes else None      # the longest name: _mc2a over its base
        if hit:
            per[hit] += 1
        else:
            other += 1
    return per, host, other


def _summary(log: str) -> str:
    m = re.findall(r"(ERROR SUMMARY: \d+ errors?|RACECHECK SUMMARY: [^\n]+)", log)
    return m[-1] if m else "no summary"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", action="store_true", help="run the workload (under a sanitizer)")
    ap.add_argument("--only", help="comma-separated variants to run (default: all)")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--logs", help="folder for the raw sanitizer logs")
    ap.add_argument("--json", help="write the table here")
    ap.add_argument("--timeout", type=int, default=300, help="per tool, seconds")
    args = ap.parse_args(argv)
    import importlib.util
    import shutil
    if importlib.util.find_spec("torch") is None:
        print("fp8gemm.sanitize needs torch and a Hopper GPU: pip install torch", file=sys.stderr)
        return 2
    if args.child:
        return child(args.only)
    if shutil.which("compute-sanitizer") is None:
        print("fp8gemm.sanitize needs compute-sanitizer on PATH (a CUDA toolkit)", file=sys.stderr)
        return 2
    names = [n for n, _ in variants() if not args.only or n in args.only.split(",")]
    tools = [t for t in args.tools.split(",") if t]
    logs = Path(args.logs) if args.logs else None
    if logs:
        logs.mkdir(parents=True, exist_ok=True)
    table, ran = {}, {}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH")) if x)
    for tool in tools:
        cmd = ["compute-sanitizer", "--tool", tool, "--show-backtrace", "no", sys.executable, "-m", "fp8gemm.sanitize",
               "--child"] + (["--only", args.only] if args.only else [])
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
            log, rc = r.stdout + r.stderr, r.returncode
        except subprocess.TimeoutExpired as e:
            log, rc = (e.stdout or b"").decode(errors="replace") + "\nTIMEOUT", -1
        if logs:
            (logs / f"{tool}.log").write_text(log)
        per, host, other = _attribute(log, names)
        outcome = {n: ("ok" if f"VARIANT {n}: ok" in log else "FAILED" if f"VARIANT {n}: FAILED" in log
                       else "not run") for n in names}
        table[tool] = {"errors": per, "host_reports": host, "unattributed": other, "rc": rc,
                       "summary": _summary(log), "outcome": outcome}
        ran[tool] = outcome
    width = max(len(n) for n in names)
    print(f"{'variant':{width}s} " + " ".join(f"{t:>10s}" for t in tools))
    clean = True
    for n in names:
        cells = []
        for t in tools:
            e, o = table[t]["errors"][n], table[t]["outcome"][n]
            cells.append(f"{e:>10d}" if o == "ok" else f"{o:>10s}")
            clean &= e == 0 and o == "ok"
        print(f"{n:{width}s} " + " ".join(cells))
    for key in ("unattributed", "host_reports"):
        print(f"{key:{width}s} " + " ".join(f"{table[t][key]:>10d}" for t in tools))
        if key == "unattributed":
            clean &= all(table[t][key] == 0 for t in tools)
    for t in tools:
        print(f"{t}: {table[t]['summary']} (host-side reports: {table[t]['host_reports']})")
    if args.json:
        Path(args.json).write_text(json.dumps({"tools": table, "variants": names, "clean": clean}, indent=1))
    print("CLEAN" if clean else "NOT CLEAN")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
