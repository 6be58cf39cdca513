#!/usr/bin/env python3
"""Time several tile configs (and cluster modes) on the same shapes, interleaved, to tune the
heuristic:

    python tools/explore_configs.py --shapes 4096x7168x16384 --tiles 128x128,256x128 --multicast off,a,b
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fp8gemm.bench import timed_variants  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", required=True, help="comma-separated MxNxK")
    p.add_argument("--tiles", required=True,
                   help="comma-separated BMxBN or BMxBNxSTAGES (stages default: the most that fit, at most 8)")
    p.add_argument("--multicast", default="off", help="cluster modes to try: off,a,b")
    p.add_argument("--variant", default="bf16",
                   help="output variant (fp8gemm.config.VARIANTS): bf16, bf16_c, fp32, fp32_c, wgrad")
    p.add_argument("--reduce-out", choices=("off", "only", "both"), default="off",
                   help="wgrad: the reduce-add epilogue (out += D by TMA, no C load) instead of or beside "
                        "the C-loading one, per tile")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", help="write the table here")
    args = p.parse_args(argv)
    import torch
    import fp8gemm
    from fp8gemm.config import VARIANTS, GemmConfig, max_stages
    fields = VARIANTS[args.variant]
    out_dtype = torch.float32 if fields.get("out_dtype") == "float32" else torch.bfloat16
    rows = []
    for shape in args.shapes.split(","):
        m, n, k = (int(x) for x in shape.split("x"))
        a = torch.randn(m, k, device="cuda").to(torch.bfloat16)
        b = torch.randn(n, k, device="cuda").to(torch.bfloat16)
        row_scales = fields.get("b_scales") == "row"     # wgrad: 1x128 scales per row of B too
        (aq, sa) = fp8gemm.per_token_cast_to_fp8(a)
        (bq, sb) = fp8gemm.per_token_cast_to_fp8(b) if row_scales else fp8gemm.per_block_cast_to_fp8(b)
        out = torch.randn(m, n, device="cuda").to(out_dtype)
        ptrs = (aq.data_ptr(), sa.data_ptr(), bq.data_ptr(), sb.data_ptr(), out.data_ptr())
        stream = torch.cuda.current_stream().cuda_stream
        strides = dict(sfa_stride=sa.stride(1), **({"sfb_stride": sb.stride(1)} if row_scales else {}))
        fns = {}
        heur = fp8gemm.plan_gemm(m, n, k, variant=args.variant, **strides)
        fns["heuristic:" + heur.config.name] = lambda p=heur: p.launch(*ptrs, stream)
        for tile in args.tiles.split(","):
            bm, bn, *st = (int(x) for x in tile.split("x"))
            epilogues = {"off": [{}], "only": [dict(with_c=False, reduce_out=True)],
                         "both": [{}, dict(with_c=False, reduce_out=True)]}[args.reduce_out]
            for extra in epilogues:
                f = dict(fields, **extra)
                stages = st[0] if st else max_stages(bm, bn, k, **f)
                for mc in args.multicast.split(","):
                    try:
                        cfg = GemmConfig(bm, bn, stages, cluster=1 if mc == "off" else 2,
                                         multicast_on_a=mc != "b", **f)
                    except ValueError as e:
                        print(f"skip {tile} {mc}: {e}")
                        continue
                    plan = fp8gemm.plan_gemm(m, n, k, config=cfg, **strides)
                    fns[cfg.name] = lambda p=plan: p.launch(*ptrs, stream)
        times = timed_variants(fns, rounds=args.rounds)
        best = min(times.values())
        for name, t in sorted(times.items(), key=lambda x: x[1]):
            tf = 2 * m * n * k / t / 1e12
            rows.append({"m": m, "n": n, "k": k, "config": name, "tflops": tf, "us": t * 1e6})
            print(f"{m:6d} {n:6d} {k:6d}  {name:48s} {tf:8.1f} TFLOPS  {t / best:6.3f}x best", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
