#!/usr/bin/env python3
"""A/B the dense GEMM of this tree against another copy of the package, in one process.

    python tools/ab_dense.py --old DIR [--json PATH]

DIR holds an older ``fp8gemm`` package renamed ``fp8gemm_old`` (e.g. extracted with
``git archive <commit> fp8gemm``; the package uses relative imports only, so a renamed copy
imports side by side with this one). Both run the config each one's heuristic picks on the
same quantized inputs, interleaved (fp8gemm.bench's timed_variants); outputs are compared
bit for bit. Used to show that a restructuring left the dense kernel's results and speed alone.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", required=True, help="folder holding the fp8gemm_old package")
    p.add_argument("--json", help="write results here")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    import torch
    import fp8gemm
    from fp8gemm.bench import DENSE_SHAPES, git_commit, timed_variants
    sys.path.insert(0, str(Path(args.old).resolve()))
    old = importlib.import_module("fp8gemm_old")
    records = []
    print(f"{'m':>6} {'n':>6} {'k':>6}  {'new config':34s} {'new':>8} {'old':>8} {'new/old':>8} bit-identical")
    for (m, n, k) in DENSE_SHAPES:
        g = torch.Generator(device="cuda").manual_seed(m + n + k)
        a = torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16)
        b = torch.randn(n, k, device="cuda", generator=g).to(torch.bfloat16)
        aq, sa = fp8gemm.per_token_cast_to_fp8(a)
        bq, sb = fp8gemm.per_block_cast_to_fp8(b)
        outs = {x: torch.empty(m, n, device="cuda", dtype=torch.bfloat16) for x in ("new", "old")}
        stream = torch.cuda.current_stream().cuda_stream
        plans = {"new": fp8gemm.plan_gemm(m, n, k, sfa_stride=sa.stride(1)),
                 "old": old.plan_gemm(m, n, k, sfa_stride=sa.stride(1))}
        fns = {x: (lambda p=plans[x], o=outs[x]: p.launch(aq.data_ptr(), sa.data_ptr(), bq.data_ptr(),
                                                           sb.data_ptr(), o.data_ptr(), stream)) for x in plans}
        for x, o in outs.items():
            o.view(torch.int16).fill_(0x7FC1)
            fns[x]()
        torch.cuda.synchronize()
        same = torch.equal(outs["new"].view(torch.int16), outs["old"].view(torch.int16))
        t = timed_variants(fns, rounds=args.rounds)
        flops = 2 * m * n * k
        rec = {"m": m, "n": n, "k": k, "config_new": plans["new"].config.name, "config_old": plans["old"].config.name,
               "tflops_new": flops / t["new"] / 1e12, "tflops_old": flops / t["old"] / 1e12,
               "bit_identical": same}
        records.append(rec)
        print(f"{m:6d} {n:6d} {k:6d}  {rec['config_new'][8:42]:34s} {rec['tflops_new']:8.1f} {rec['tflops_old']:8.1f} "
              f"{rec['tflops_new'] / rec['tflops_old']:8.3f} {same}", flush=True)
    geo = math.exp(sum(math.log(r["tflops_new"] / r["tflops_old"]) for r in records) / len(records))
    print(f"geomean new/old {geo:.4f}; all bit-identical: {all(r['bit_identical'] for r in records)}")
    res = {"device": torch.cuda.get_device_name(), "commit": git_commit(), "date": datetime.date.today().isoformat(),
           "benchmark": "ab_dense", "old": str(args.old), "records": records, "geomean_new_over_old": geo,
           "all_bit_identical": all(r["bit_identical"] for r in records)}
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
