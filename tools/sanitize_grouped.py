#!/usr/bin/env python3
"""Small grouped GEMMs for compute-sanitizer, one per layout, clustered ones included (with a
padding block, an empty group, a ghost tile and a group that ends inside a block):
   compute-sanitizer --tool memcheck|racecheck|synccheck python3 tools/sanitize_grouped.py"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import torch  # noqa: E402

import fp8gemm  # noqa: E402
from fp8gemm import GemmConfig  # noqa: E402
from gemm_util import check, reference  # noqa: E402

N, K, SIZES = 3 * 112, 640, [200, 0, 1, 130]


def quantized(g, rows):
    gen = torch.Generator(device="cuda").manual_seed(11)
    a = torch.randn(rows, K, device="cuda", generator=gen).bfloat16()
    b = torch.randn(g, N, K, device="cuda", generator=gen).bfloat16()
    bq = torch.empty(g, N, K, device="cuda", dtype=torch.float8_e4m3fn)
    sb = torch.empty(g, -(-N // 128), -(-K // 128), device="cuda")
    for i in range(g):
        fp8gemm.per_block_cast_to_fp8(b[i], out=(bq[i], sb[i]))
    return a, (bq, sb)


def contiguous(cfg, psum):
    idx, ends = [], []
    for g, s in enumerate(SIZES):
        idx += [g] * s + [-1] * (-(-s // 128) * 128 - s)
        ends.append(len(idx) - (-(-s // 128) * 128 - s))
    idx += [-1] * 128
    a, rhs = quantized(len(SIZES), len(idx))
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
            err, _ = check(torch, out[sl], reference(torch, (lhs[0][sl], lhs[1][sl]), (rhs[0][g], rhs[1][g])))
            assert err <= 2e-3, (cfg.name, g, err)
        start += -(-s // 128) * 128
    print(f"{cfg.name}: ok")


def masked(cfg):
    g, m_max = len(SIZES), 200
    a, rhs = quantized(g, g * m_max)
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
            err, _ = check(torch, out[i, :r], reference(torch, (aq[i, :r], sa[i, :r]), (rhs[0][i], rhs[1][i])))
            assert err <= 2e-3, (cfg.name, i, err)
    print(f"{cfg.name}: ok")


contiguous(GemmConfig(128, 112, 4, kind="contiguous", cluster=2, multicast_on_a=False), psum=False)
contiguous(GemmConfig(64, 112, 4, kind="contiguous", cluster=2), psum=False)
contiguous(GemmConfig(128, 112, 4, kind="contiguous_psum", cluster=2, multicast_on_a=False), psum=True)
masked(GemmConfig(128, 112, 4, kind="masked", cluster=2, multicast_on_a=False))
masked(GemmConfig(256, 112, 3, kind="masked", cluster=2))
