"""Randomised correctness fuzzer for every kernel family, against float64 references.

    python -m fp8gemm.fuzz --seed 1 --budget-s 300 --json fuzz.json        # run for 5 minutes
    python -m fp8gemm.fuzz --resume fuzz.json --budget-s 300                # continue where it stopped
    python -m fp8gemm.fuzz --seed 1 --only 417                              # replay problem 417

Problem ``i`` of seed ``s`` is drawn from its own generator (``random.Random(f"{s}:{i}")``), so
it is replayed exactly by ``--seed s --only i``; a failure prints that line. Families: dense,
contiguous (m_indices and group_ends forms), masked, the two casts, and the training GEMMs:
fp32 (FP32 out), fp32_c and bf16_c (D = C + A.B with a separate C or C = out, accumulating),
wgrad (out += A.B^T, 1x128 scales on B's rows) and k_grouped (out[g] += A_g.B_g^T, each group
its own K, up to ~130 groups so that the 120-group chunking is crossed). Each problem draws:

- sizes from edge-heavy lists (1, 2, 7, block +- 1, ...), sometimes >= 16k rows or K = 16k;
- row strides with padding, views that start inside larger buffers (a guard band of poison
  around every output, checked after the run), scale arrays with padded strides;
- half the time a config forced from the candidate list (multicast A/B, two-scale BN, ...);
- input distributions: normal, heavy-tailed, tiny, one huge outlier per row, all-zero rows;
- grouped metadata edges: empty and one-row groups, all -1 blocks, masked_m 0 / 1 / M_max;
- training: C of unit, matched or large magnitude (its own strides and offset, or out itself,
  pre-filled); k_grouped group K from 0, 16, 128, 128 +- 16, ..., padded rows between groups.

GEMM outputs are checked against the float64 product of the dequantized inputs, element by
element: |out - ref| <= 2^-8 |ref| + 2^-7 (|A| |B|^T) (bf16 rounding plus the FP8 tensor-core
accumulation; a zero row must come out exactly zero), and normwise on pieces of 4096+
elements (<= 2e-3; 4e-3 for heavy-tailed and outlier inputs); all finite, and poison intact wherever
nothing may be written. The families with C (or accumulating into out) are checked on the product
part, out - C_before against A.B, with the output's rounding taken of |C| + |ref| (2^-23 for an
FP32 out instead of bf16's 2^-8); a separate C must come back unchanged, a k_grouped group with
K = 0 bit for bit as it was.
Casts are checked bit for bit against fp8gemm.reference. Needs torch and a Hopper GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]       # the checkout, when run from one

FAMILIES = {"dense": 4, "contiguous": 3, "masked": 3, "cast_token": 1, "cast_block": 1,
            "fp32": 2, "fp32_c": 1, "bf16_c": 1, "wgrad": 2, "k_grouped": 2}
TRAINING = ("fp32", "fp32_c", "bf16_c", "wgrad")      # dense layout, the training output variants
DENSE_LIKE = ("dense",) + TRAINING
POISON = 0x7FC1                 # a bf16 NaN (filled twice: 0x7FC17FC1, an FP32 NaN too)
EDGE_M = [1, 2, 3, 7, 8, 15, 16, 63, 64, 65, 127, 128, 129, 191, 192, 255, 256, 257, 383, 511, 513]
EDGE_N = [8, 16, 24, 56, 64, 120, 128, 136, 160, 184, 192, 200, 248, 256, 264, 384, 2112]
EDGE_K = [16, 32, 48, 112, 128, 144, 240, 256, 272, 512, 576, 1008, 1024]
DISTS = ["normal", "normal", "heavy", "tiny", "outlier", "zero_rows"]
MAX_WORK = 1 << 33              # M*N*K cap per problem (keeps one problem well under a second)
MAX_CAST = 1 << 25              # M*K cap for the casts (their reference runs in NumPy)
EDGE_KG = [0, 0, 16, 112, 128, 144, 256, 1024, 4096]    # k_grouped: a group's K (multiples of 16)
C_SCALES = ["unit", "matched", "matched", "large"]      # C's magnitude: 1, the product's rms, 64x it


# ---- drawing problems ---------------------------------------------------------------------------
def _dim(rng, edges, step, hi, huge=None):
    r = rng.random()
    if huge and r < 0.04:
        return huge + step * rng.randint(0, 8)
    if r < 0.6:
        return rng.choice(edges)
    return step * rng.randint(1, hi // step)


def draw(seed: int, index: int) -> dict:
    """Problem ``index`` of ``seed``: a JSON-able description (everything the run needs)."""
    rng = random.Random(f"{seed}:{index}")
    fam = rng.choices(list(FAMILIES), weights=list(FAMILIES.values()))[0]
    p = {"index": index, "family": fam, "seed": seed}
    if fam.startswith("cast"):
        p["m"] = _dim(rng, EDGE_M, 1, 3000, huge=16384)
        p["k"] = _dim(rng, EDGE_K + [176, 336], 16, 8192)      # the casts' rule: K % 16 == 0
        p["src"] = rng.choice(["bfloat16", "float32"])
        p["dist"] = rng.choice(DISTS)
        return p
    if fam == "k_grouped":
        return _draw_k_grouped(rng, p)
    n = _dim(rng, EDGE_N, 8, 4096)
    k = _dim(rng, EDGE_K, 16, 8192, huge=16384)
    p.update(n=n, k=k, dist=rng.choice(DISTS), force=rng.random() < 0.5)
    pad = rng.random() < 0.35
    p["a_pad"] = 16 * rng.randint(1, 4) if pad else 0
    p["out_pad"] = 8 * rng.randint(1, 4) if pad else 0
    p["row_offset"] = rng.randint(1, 3) if rng.random() < 0.3 else 0      # view starts inside a buffer
    p["sfa_pad"] = 4 * rng.randint(1, 3) if rng.random() < 0.3 else 0
    if fam in DENSE_LIKE:
        p["m"] = _dim(rng, EDGE_M, 1, 4096, huge=16384)
        if fam in ("fp32_c", "bf16_c"):
            p["c_form"] = rng.choice(["separate", "out"])
            if p["c_form"] == "separate":
                p["c_pad"] = 8 * rng.randint(0, 4)
                p["c_offset"] = rng.randint(0, 3)
        if fam in ("fp32_c", "bf16_c", "wgrad"):
            p["c_scale"] = rng.choice(C_SCALES)
    elif fam == "contiguous":
        g = rng.choice([1, 1, 2, 3, 4, 8, 9])
        sizes = [rng.choice([0, 1, 127, 128, 129, rng.randint(1, 700)]) for _ in range(g)]
        p["groups"], p["sizes"] = g, sizes
        p["form"] = rng.choice(["indices", "indices", "group_ends"])
        if p["form"] == "indices":
            p["pad_blocks"] = {str(rng.randint(-1, g - 1)): rng.randint(1, 2)} if rng.random() < 0.4 else {}
        else:
            p["pad_blocks"] = {}
    else:
        g = rng.choice([1, 2, 3, 4, 8])
        m_max = rng.choice([1, 7, 64, 65, 128, 129, 200, 256, 300, 513, 1000])
        masked = [rng.choice([0, 1, m_max, rng.randint(0, m_max)]) for _ in range(g)]
        p.update(groups=g, m_max=m_max, masked=masked, expected=max(1, rng.randint(1, m_max)))
    return p


def _draw_k_grouped(rng, p):
    """G groups sharing M and N (multiples of 8), each with its own K; out [G, M, N] padded."""
    from fp8gemm.config import MAX_K_GROUPS
    g = rng.randint(1, 8) if rng.random() < 0.93 else rng.choice([MAX_K_GROUPS - 1, MAX_K_GROUPS,
                                                                   MAX_K_GROUPS + 1, rng.randint(100, 130)])

    def one_k():
        r = rng.random()
        if r < 0.6:
            return rng.choice(EDGE_KG)
        if r < 0.9:
            return 16 * rng.randint(1, 256)
        return 16 * rng.randint(1, 8) + 128 * rng.randint(0, 24)
    ks = [one_k() for _ in range(g)]
    m, n = _dim(rng, EDGE_N, 8, 4096), _dim(rng, EDGE_N, 8, 4096)
    while m * n * max(1, sum(ks)) > MAX_WORK:        # keep the problem (and its reference) small
        if m >= n:
            m = max(8, m // 16 * 8)
        else:
            n = max(8, n // 16 * 8)
        if m == n == 8:
            break
    pad = rng.random() < 0.35
    p.update(groups=g, ks=ks, m=m, n=n, dist="normal",
             force=rng.random() < 0.5 and g <= MAX_K_GROUPS,     # one config holds one group count
             out_pad=8 * rng.randint(1, 4) if pad else 0,
             group_pad_rows=rng.choice([0, 0, 1, 8]) if pad else 0)
    return p


def _m_of(p) -> int:
    if p["family"] in DENSE_LIKE or p["family"] == "k_grouped":
        return p["m"]
    if p["family"] == "contiguous":
        return max(1, _layout(p).m_sum // max(1, p["groups"]))
    return p["m_max"]


def _layout(p):
    from fp8gemm.testing import ContiguousLayout
    return ContiguousLayout.build(p["sizes"], pad_blocks={int(g): c for g, c in p["pad_blocks"].items()})


# ---- inputs -------------------------------------------------------------------------------------
def _values(torch, shape, dist, gen):
    x = torch.randn(shape, device="cuda", generator=gen)
    if dist == "heavy":
        x = x / torch.rand(shape, device="cuda", generator=gen).clamp_min(1e-3) ** 0.7
    elif dist == "tiny":
        x = x * 1e-6
    elif dist == "outlier":
        rows = x.reshape(-1, shape[-1])
        cols = torch.randint(0, shape[-1], (rows.shape[0],), device="cuda", generator=gen)
        rows[torch.arange(rows.shape[0], device="cuda"), cols] *= 1e4
    elif dist == "zero_rows":
        rows = x.reshape(-1, shape[-1])
        rows[torch.rand(rows.shape[0], device="cuda", generator=gen) < 0.3] = 0
    return x.to(torch.bfloat16)


def _guarded(torch, rows, cols, pad, offset, dtype, fill):
    """A [rows, cols] view inside a larger poisoned buffer: ``offset`` rows before, ``pad``
    extra columns, one spare row after. Returns (view, buffer)."""
    buf = torch.empty((rows + offset + 1, cols + pad), device="cuda", dtype=dtype)
    buf.view(torch.int16 if dtype in (torch.bfloat16, torch.float32) else torch.uint8).fill_(fill)
    return buf[offset:offset + rows, :cols], buf


def _quant_a(torch, fp8gemm, a_bf, p):
    """A [M, K] (or [G, M, K]) quantized into (optionally) padded, offset buffers."""
    *lead, m, k = a_bf.shape
    kb = -(-k // 128)
    s_rows = fp8gemm.get_tma_aligned_size(m) + p["sfa_pad"]
    off = p["row_offset"] * 4
    if not lead:
        q, _ = _guarded(torch, m, k, p["a_pad"], p["row_offset"], torch.float8_e4m3fn, 0)
        sbuf = torch.empty((kb, s_rows + off), device="cuda")
        s = sbuf[:, off:off + m].t()
        fp8gemm.per_token_cast_to_fp8(a_bf, out=(q, s))
        return q, s
    g = lead[0]
    qbuf = torch.zeros((g, m, k + p["a_pad"]), device="cuda", dtype=torch.float8_e4m3fn)
    q = qbuf[:, :, :k]
    sbuf = torch.empty((g, kb, s_rows), device="cuda")
    s = sbuf.transpose(1, 2)[:, :m, :]
    for i in range(g):
        fp8gemm.per_token_cast_to_fp8(a_bf[i], out=(q[i], s[i]))
    return q, s


def _quant_b(torch, fp8gemm, b_bf):
    """B [N, K] or [G, N, K] per-block quantized (contiguous arrays)."""
    if b_bf.dim() == 2:
        return fp8gemm.per_block_cast_to_fp8(b_bf)
    g, n, k = b_bf.shape
    bq = torch.empty((g, n, k), device="cuda", dtype=torch.float8_e4m3fn)
    sb = torch.empty((g, -(-n // 128), -(-k // 128)), device="cuda")
    for i in range(g):
        fp8gemm.per_block_cast_to_fp8(b_bf[i], out=(bq[i], sb[i]))
    return bq, sb


POOL = 12                       # forced configs per kind and seed (compiled up front, in parallel)


def forced_pool(seed: int, kind: str) -> list:
    """The configs problems of this seed may force for ``kind``: a seeded sample of the
    candidate list (multicast, two-scale BN and every BM among them). ``kind`` is a layout
    (dense, contiguous, contiguous_psum, masked, k_grouped: ``candidate_configs``) or a training
    output variant of the dense layout (fp32, fp32_c, bf16_c, wgrad: ``variant_configs``).
    k_grouped configs carry a placeholder group count (``_forced`` sets the problem's)."""
    from fp8gemm.config import VARIANTS, candidate_configs, variant_configs
    cands = variant_configs(kind, 1 << 14) if kind in VARIANTS else candidate_configs(1 << 14, kind)
    return random.Random(f"{seed}:pool:{kind}").sample(cands, min(POOL, len(cands)))


def precompile(seed: int) -> float:
    """Compile every pooled config in parallel threads (ptxas runs as a subprocess)."""
    from concurrent.futures import ThreadPoolExecutor

    from fp8gemm import jit
    from fp8gemm.ptx_templates import gemm as template
    # k_grouped kernels are compiled per group count (a compile-time value): on first use instead
    kinds = ("dense", "contiguous", "contiguous_psum", "masked") + TRAINING
    cfgs = [c for kind in kinds for c in forced_pool(seed, kind)]
    t0 = time.time()

    def one(cfg):
        kern = template.build(cfg)
        jit.compile_ptx(kern.render(), kern.name)
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 4)) as ex:
        list(ex.map(one, cfgs))
    return time.time() - t0


def _forced(fp8gemm, rng, kind, seed, groups=0):
    cfg = rng.choice(forced_pool(seed, kind))
    if kind == "k_grouped":
        import dataclasses
        cfg = dataclasses.replace(cfg, groups=groups)
    return cfg


# ---- checks -------------------------------------------------------------------------------------
def _reference(torch, aq, sa, bq, sb):
    """(float64 product of the dequantized inputs, the same product of their absolute values)."""
    m, k = aq.shape
    n = bq.shape[0]
    ad = aq.double() * sa.double().repeat_interleave(128, dim=1)[:, :k]
    bd = bq.double() * sb.double().repeat_interleave(128, dim=0)[:n].repeat_interleave(128, dim=1)[:, :k]
    return ad @ bd.t(), ad.abs() @ bd.abs().t()


def _abs_fp8(torch, q):
    """|q| of e4m3 data (the sign bit cleared), still e4m3."""
    return (q.view(torch.uint8) & 0x7F).view(q.dtype)


def _reference_wgrad(torch, lhs, rhs):
    """(A . B^T, |A| . |B|^T) in float64 with 1x128 scales on both operands
    (fp8gemm.testing.reference_wgrad; scales are positive, so |q| gives the magnitudes)."""
    from fp8gemm.testing import reference_wgrad
    (aq, sa), (bq, sb) = lhs, rhs
    return (reference_wgrad(torch, (aq, sa), (bq, sb)),
            reference_wgrad(torch, (_abs_fp8(torch, aq), sa), (_abs_fp8(torch, bq), sb)))


# Element bound: bf16 rounding of the result (2^-8 relative) plus the accumulation. The FP8
# tensor core keeps ~14 bits of its running sum (DeepSeek-V3 report, 3.3.2) and the kernel
# promotes to FP32 every 128 of K, so each of up to 128 additions may lose 2^-14 of the
# chunk's magnitude: at most 2^-7 of sum |a||b|. (Measured on the H200, seed 2: up to 2^-8.2
# where one or two products dominate a dot product: heavy-tailed and outlier inputs.)
ROUND, ACCUM = 2.0 ** -8, 2.0 ** -7
# Normwise, where truncation errors average out: 2e-3 as the test suite; inputs whose dot
# products are dominated by a few terms (heavy, outlier) do not average: 4e-3.
NORMWISE = {"heavy": 4e-3, "outlier": 4e-3}
# An FP32 output: its rounding (2^-24 relative, twice: the scaled partial sums and C + A.B)
# in place of bf16's; the accumulation term is the same.
ROUND_FP32 = 2.0 ** -23


def _check_rows(torch, out, refs, what, dist="normal", c=None, rnd=ROUND):
    """out against refs = (A.B, |A||B|); with ``c`` (C before the call: a separate C, or out's
    own values when accumulating) the product part out - c is checked, the output's rounding
    ``rnd`` taken of |c| + |A.B| (the kernel rounds C + A.B once)."""
    ref, mag = refs
    o = out.double()
    if not torch.isfinite(o).all():
        bad = (~torch.isfinite(o)).nonzero()[:3].tolist()
        raise AssertionError(f"{what}: non-finite (unwritten or overflow) at {bad}")
    cd = None if c is None else c.double()
    prod = o if cd is None else o - cd
    size = ref.abs() if cd is None else ref.abs() + cd.abs()
    excess = (prod - ref).abs() - (rnd * size + ACCUM * mag)
    if (excess > 0).any():
        i, j = divmod(int(excess.argmax()), ref.shape[1])
        c_txt = "" if cd is None else f" - C {cd[i, j].item():.6g}"
        raise AssertionError(f"{what}: element ({i}, {j}) = {o[i, j].item():.6g}{c_txt}, reference "
                             f"{ref[i, j].item():.6g} (bound {rnd * size[i, j].item() + ACCUM * mag[i, j].item():.3g})")
    den = ref.norm().item()
    err = (prod - ref).norm().item() / den if den else 0.0
    if o.numel() >= 4096 and den:
        limit = NORMWISE.get(dist, 2e-3)
        if cd is not None:          # C's share of the output's rounding
            limit += rnd * cd.norm().item() / den
        if err > limit:
            raise AssertionError(f"{what}: normwise relative error {err:.3e} > {limit:.3e}")
    return err


def _check_poison(torch, view, what):
    bad = (view.contiguous().view(torch.int16) != POISON).sum().item()
    if bad:
        raise AssertionError(f"{what}: {bad} elements written where nothing may be written")


def _outside(torch, buf, view_rows, offset, cols):
    """The guard band of a 2-D buffer around its view: rows before/after and padding columns."""
    parts = [buf[:offset], buf[offset + view_rows:], buf[offset:offset + view_rows, cols:]]
    return [x for x in parts if x.numel()]


# ---- running one problem --------------------------------------------------------------------------
def config_kind(p: dict) -> str:
    """The forced-config pool a GEMM problem draws from: its layout, or its training variant."""
    fam = p["family"]
    if fam in ("dense", "masked", "k_grouped") or fam in TRAINING:
        return fam
    return "contiguous" if p["form"] == "indices" else "contiguous_psum"


def forced_config(p: dict):
    """Problem ``p``'s forced config (None: the heuristic's), from its own generator."""
    if not p.get("force"):
        return None
    rng = random.Random(f"{p['seed']}:{p['index']}:run")
    return _forced(None, rng, config_kind(p), p["seed"], p.get("groups", 0))


def run(torch, p: dict) -> dict:
    import fp8gemm
    gen = torch.Generator(device="cuda").manual_seed(hash((p["seed"], p["index"])) & 0x7FFFFFFF)
    fam = p["family"]
    if fam.startswith("cast"):
        return _run_cast(torch, fp8gemm, p, gen)
    cfg = forced_config(p)
    p["config"] = cfg.name if cfg else "heuristic"
    if fam == "k_grouped":
        return _run_k_grouped(torch, fp8gemm, p, cfg)
    n, k = p["n"], p["k"]
    m = _m_of(p)
    if m * n * k > MAX_WORK and fam in DENSE_LIKE:
        p["m"] = m = max(1, MAX_WORK // (n * k))
    if fam == "dense":
        return _run_dense(torch, fp8gemm, p, gen, cfg)
    if fam in TRAINING:
        return _run_training(torch, fp8gemm, p, gen, cfg)
    if fam == "contiguous":
        return _run_contiguous(torch, fp8gemm, p, gen, cfg)
    return _run_masked(torch, fp8gemm, p, gen, cfg)


def _run_dense(torch, fp8gemm, p, gen, cfg):
    m, n, k = p["m"], p["n"], p["k"]
    a_bf = _values(torch, (m, k), p["dist"], gen)
    b_bf = _values(torch, (n, k), p["dist"], gen)
    aq, sa = _quant_a(torch, fp8gemm, a_bf, p)
    bq, sb = _quant_b(torch, fp8gemm, b_bf)
    out, buf = _guarded(torch, m, n, p["out_pad"], p["row_offset"], torch.bfloat16, POISON)
    fp8gemm.gemm_fp8_fp8_bf16_nt((aq, sa), (bq, sb), out, config=cfg)
    torch.cuda.synchronize()
    err = _check_rows(torch, out, _reference(torch, aq, sa, bq, sb), "dense", p["dist"])
    for part in _outside(torch, buf, m, p["row_offset"], n):
        _check_poison(torch, part, "dense guard band")
    return {"err": err}


def _c_values(torch, shape, ref, scale, gen):
    """Random fp32 values for C (or an accumulated out): unit normal, or the product's rms
    ("matched"), or 64x that ("large": the product is a small part of the result)."""
    x = torch.randn(shape, device="cuda", generator=gen)
    if scale == "unit":
        return x
    rms = ref.pow(2).mean().sqrt().item() or 1.0
    return x * (rms * (64.0 if scale == "large" else 1.0))


def _run_training(torch, fp8gemm, p, gen, cfg):
    """fp32 / fp32_c / bf16_c / wgrad on the dense layout: out (and a separate C) in poisoned
    buffers; out pre-filled with C's values when it is C (c=out, and always for wgrad)."""
    fam = p["family"]
    m, n, k = p["m"], p["n"], p["k"]
    a_bf = _values(torch, (m, k), p["dist"], gen)
    b_bf = _values(torch, (n, k), p["dist"], gen)
    aq, sa = _quant_a(torch, fp8gemm, a_bf, p)
    if fam == "wgrad":
        bq, sb = fp8gemm.per_token_cast_to_fp8(b_bf)          # 1x128 per row of B, MN-major [N, kb]
        refs = _reference_wgrad(torch, (aq, sa), (bq, sb))
    else:
        bq, sb = _quant_b(torch, fp8gemm, b_bf)
        refs = _reference(torch, aq, sa, bq, sb)
    dtype = torch.bfloat16 if fam == "bf16_c" else torch.float32
    out, buf = _guarded(torch, m, n, p["out_pad"], p["row_offset"], dtype, POISON)
    c = c_before = c_buf = None
    if fam != "fp32":
        vals = _c_values(torch, (m, n), refs[0], p["c_scale"], gen).to(dtype)
        if fam == "wgrad" or p["c_form"] == "out":
            c = out
        else:
            c, c_buf = _guarded(torch, m, n, p["c_pad"], p["c_offset"], dtype, POISON)
        c.copy_(vals)
        c_before = c.clone()
    lhs, rhs = (aq, sa), (bq, sb)
    if fam == "fp32":
        fp8gemm.gemm_fp8_fp8_fp32_nt(lhs, rhs, out, config=cfg)
    elif fam == "fp32_c":
        fp8gemm.gemm_fp8_fp8_fp32_nt(lhs, rhs, out, config=cfg, c=c)
    elif fam == "bf16_c":
        fp8gemm.gemm_fp8_fp8_bf16_nt(lhs, rhs, out, config=cfg, c=c)
    else:
        fp8gemm.wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out, config=cfg)
    torch.cuda.synchronize()
    what = fam + ("" if fam in ("fp32", "wgrad") else f" (c={'out' if c is out else 'separate'})")
    err = _check_rows(torch, out, refs, what, p["dist"], c=c_before,
                      rnd=ROUND if dtype == torch.bfloat16 else ROUND_FP32)
    if c_buf is not None:
        if not torch.equal(c.view(torch.int16), c_before.view(torch.int16)):
            raise AssertionError(f"{what}: C was written (it is read only)")
        for part in _outside(torch, c_buf, m, p["c_offset"], n):
            _check_poison(torch, part, f"{fam} C guard band")
    for part in _outside(torch, buf, m, p["row_offset"], n):
        _check_poison(torch, part, f"{fam} guard band")
    return {"err": err}


def _run_k_grouped(torch, fp8gemm, p, cfg):
    """out[g] += A_g . B_g^T (fp8gemm.testing.k_grouped_inputs: the flat layout and each group's
    quantized pair); out [G, M, N] inside a poisoned buffer with a guard group before and after,
    padded rows and columns, its view pre-filled with random values."""
    from fp8gemm.testing import k_grouped_inputs
    g, m, n, ks = p["groups"], p["m"], p["n"], p["ks"]
    seed = hash((p["seed"], p["index"])) & 0x7FFFFFFF
    (a, sa), (b, sb), qa, qb = k_grouped_inputs(torch, m, n, ks, seed)
    buf = torch.empty((g + 2, m + p["group_pad_rows"], n + p["out_pad"]), device="cuda")
    buf.view(torch.int16).fill_(POISON)
    out = buf[1:g + 1, :m, :n]
    gen = torch.Generator(device="cuda").manual_seed(seed + 1)
    out.copy_(torch.randn((g, m, n), device="cuda", generator=gen) * 16.0)
    before = out.clone()
    fp8gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt((a, sa), (b, sb), out, ks, config=cfg)
    torch.cuda.synchronize()
    worst = 0.0
    for gi, k in enumerate(ks):
        if k == 0:
            if not torch.equal(out[gi].view(torch.int32), before[gi].view(torch.int32)):
                raise AssertionError(f"k_grouped group {gi} has K = 0 and was written")
            continue
        refs = _reference_wgrad(torch, qa[gi], qb[gi])
        worst = max(worst, _check_rows(torch, out[gi], refs, f"k_grouped group {gi} (K = {k})", c=before[gi],
                                       rnd=ROUND_FP32))
    _check_poison(torch, buf[0], "k_grouped guard group before")
    _check_poison(torch, buf[g + 1], "k_grouped guard group after")
    if p["group_pad_rows"]:
        _check_poison(torch, buf[1:g + 1, m:], "k_grouped padding rows")
    if p["out_pad"]:
        _check_poison(torch, buf[1:g + 1, :m, n:], "k_grouped padding columns")
    return {"err": worst}


def _run_contiguous(torch, fp8gemm, p, gen, cfg):
    n, k, g = p["n"], p["k"], p["groups"]
    lay = _layout(p)
    if lay.m_sum == 0 or not lay.valid():
        return {"skipped": "no rows"}
    a_bf = _values(torch, (lay.m_sum, k), p["dist"], gen)
    b_bf = _values(torch, (g, n, k), p["dist"], gen)
    aq, sa = _quant_a(torch, fp8gemm, a_bf, p)
    bq, sb = _quant_b(torch, fp8gemm, b_bf)
    out, buf = _guarded(torch, lay.m_sum, n, p["out_pad"], p["row_offset"], torch.bfloat16, POISON)
    if p["form"] == "indices":
        meta = torch.tensor(lay.m_indices(), dtype=torch.int32, device="cuda")
        fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((aq, sa), (bq, sb), out, meta, config=cfg,
                                                          validate=True)
    else:
        ends = torch.tensor(lay.group_ends(), dtype=torch.int32, device="cuda")
        fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((aq, sa), (bq, sb), out, group_ends=ends,
                                                          config=cfg, validate=True)
    torch.cuda.synchronize()
    worst = 0.0
    for gi, s, e in lay.valid():
        ref = _reference(torch, aq[s:e], sa[s:e], bq[gi], sb[gi])
        worst = max(worst, _check_rows(torch, out[s:e], ref, f"contiguous group {gi} rows [{s}, {e})", p["dist"]))
    for s, e in lay.unwritten(p["form"]):
        _check_poison(torch, out[s:e], f"contiguous rows [{s}, {e}) ({p['form']})")
    for part in _outside(torch, buf, lay.m_sum, p["row_offset"], n):
        _check_poison(torch, part, "contiguous guard band")
    return {"err": worst}


def _run_masked(torch, fp8gemm, p, gen, cfg):
    n, k, g, m_max = p["n"], p["k"], p["groups"], p["m_max"]
    a_bf = _values(torch, (g, m_max, k), p["dist"], gen)
    b_bf = _values(torch, (g, n, k), p["dist"], gen)
    aq, sa = _quant_a(torch, fp8gemm, a_bf, p)
    bq, sb = _quant_b(torch, fp8gemm, b_bf)
    obuf = torch.empty((g, m_max, n + p["out_pad"]), device="cuda", dtype=torch.bfloat16)
    obuf.view(torch.int16).fill_(POISON)
    out = obuf[:, :, :n]
    masked = torch.tensor(p["masked"], dtype=torch.int32, device="cuda")
    fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked((aq, sa), (bq, sb), out, masked, p["expected"], config=cfg,
                                                  validate=True)
    torch.cuda.synchronize()
    worst, tile = 0.0, (cfg.block_m if cfg else 256)
    for gi, mm in enumerate(p["masked"]):
        if mm:
            ref = _reference(torch, aq[gi, :mm], sa[gi, :mm], bq[gi], sb[gi])
            worst = max(worst, _check_rows(torch, out[gi, :mm], ref, f"masked group {gi} rows [0, {mm})",
                                           p["dist"]))
        lo = -(-mm // tile) * tile
        if lo < m_max:
            _check_poison(torch, out[gi, lo:], f"masked group {gi} rows [{lo}, {m_max}) (masked_m {mm})")
    if p["out_pad"]:
        _check_poison(torch, obuf[:, :, n:], "masked guard columns")
    return {"err": worst}


def _run_cast(torch, fp8gemm, p, gen):
    import numpy as np
    from fp8gemm import reference as refq
    m, k = p["m"], p["k"]
    if m * k > MAX_CAST:
        p["m"] = m = max(1, MAX_CAST // k)
    x = _values(torch, (m, k), p["dist"], gen).to(getattr(torch, p["src"]))
    if p["family"] == "cast_token":
        q, s = fp8gemm.per_token_cast_to_fp8(x)
        rq, rs = refq.per_token_cast_to_fp8(x.float().cpu().numpy())
    else:
        q, s = fp8gemm.per_block_cast_to_fp8(x)
        rq, rs = refq.per_block_cast_to_fp8(x.float().cpu().numpy())
    torch.cuda.synchronize()
    if not np.array_equal(q.view(torch.uint8).cpu().numpy(), rq.view(np.uint8)):
        raise AssertionError(f"{p['family']}: quantized values differ from the reference")
    if not np.array_equal(s.cpu().numpy().view(np.uint32), rs.view(np.uint32)):
        raise AssertionError(f"{p['family']}: scales differ from the reference")
    return {"err": 0.0}


# ---- driver -------------------------------------------------------------------------------------
def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip() or os.environ.get("FP8GEMM_COMMIT", "unknown")
    except OSError:
        return os.environ.get("FP8GEMM_COMMIT", "unknown")


def reproducer(seed: int, index: int) -> str:
    return f"python -m fp8gemm.fuzz --seed {seed} --only {index}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=60.0, help="stop starting new problems after this")
    ap.add_argument("--max-problems", type=int, default=None)
    ap.add_argument("--only", type=int, help="run just this problem index (a reproducer)")
    ap.add_argument("--json", help="write the summary here (also the state --resume reads)")
    ap.add_argument("--resume", help="continue a previous run from its JSON summary")
    ap.add_argument("--families", help=f"comma-separated subset of {','.join(FAMILIES)} "
                                       "(fp32, fp32_c, bf16_c, wgrad and k_grouped: the training GEMMs)")
    args = ap.parse_args(argv)
    if args.families:
        unknown = set(args.families.split(",")) - set(FAMILIES)
        if unknown:
            ap.error(f"--families: unknown {','.join(sorted(unknown))}; choose from {','.join(FAMILIES)}")
    try:
        import torch
    except ImportError:
        print("fp8gemm.fuzz needs torch and a Hopper GPU: pip install torch", file=sys.stderr)
        return 2
    state = {"seed": args.seed, "commit": _commit(), "next_index": 0, "problems": 0, "failures": [],
             "per_family": {f: {"run": 0, "failed": 0, "skipped": 0} for f in FAMILIES}, "seconds": 0.0}
    if args.resume:
        state = json.loads(Path(args.resume).read_text())
        state["commit"] = _commit()
        for f in FAMILIES:          # a summary from before a family was added
            state["per_family"].setdefault(f, {"run": 0, "failed": 0, "skipped": 0})
    families = set(args.families.split(",")) if args.families else set(FAMILIES)
    seed = state["seed"]
    if args.only is not None:
        p = draw(seed, args.only)
        print(json.dumps(p))
        print(json.dumps(run(torch, p)))
        return 0
    state["precompile_s"] = round(precompile(seed), 1)
    t0 = time.time()
    i = state["next_index"]
    done = 0
    while time.time() - t0 < args.budget_s and (args.max_problems is None or done < args.max_problems):
        p = draw(seed, i)
        i += 1
        if p["family"] not in families:
            continue
        fam = state["per_family"][p["family"]]
        try:
            r = run(torch, p)
            if "skipped" in r:
                fam["skipped"] += 1
            else:
                fam["run"] += 1
        except Exception as e:  # noqa: BLE001 - every failure is recorded and reported
            fam["run"] += 1
            fam["failed"] += 1
            line = reproducer(seed, p["index"])
            msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            state["failures"].append({"index": p["index"], "family": p["family"], "error": msg,
                                      "problem": p, "reproducer": line})
            print(f"FAIL {line}  # {p['family']} {msg}", flush=True)
            if os.environ.get("FUZZ_TRACEBACK"):
                traceback.print_exc()
            if isinstance(e, fp8gemm_fault()):
                print("the CUDA context is gone after a kernel fault: stopping", flush=True)
                break
        done += 1
    state["next_index"] = i
    state["problems"] = sum(f["run"] for f in state["per_family"].values())
    state["seconds"] = state.get("seconds", 0.0) + time.time() - t0
    state["device"] = torch.cuda.get_device_name(0)
    state["date"] = time.strftime("%Y-%m-%d")
    if args.json:
        Path(args.json).write_text(json.dumps(state, indent=1))
    fam_line = ", ".join(f"{f} {v['run']}" + (f" ({v['failed']} failed)" if v["failed"] else "")
                         for f, v in state["per_family"].items())
    print(f"fuzz seed {seed}: {state['problems']} problems ({fam_line}); failures {len(state['failures'])}; "
          f"next index {i}; {state['seconds']:.0f} s")
    return 1 if state["failures"] else 0


def fp8gemm_fault():
    import fp8gemm
    return fp8gemm.KernelFault


if __name__ == "__main__":
    sys.exit(main())
