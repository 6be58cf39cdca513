"""GEMM kernel configurations and the heuristic that picks one for a problem shape.

A ``GemmConfig`` fixes everything the PTX template needs (block sizes, stages, cluster,
layout kind); M, N and K are runtime arguments, so one compiled kernel serves every shape
that picks the same config.
"""
from __future__ import annotations

import dataclasses
import functools
import os

SMEM_LIMIT = 232448          # 227 KiB of shared memory per CTA on sm_90
STATIC_SMEM = 1024           # ptxas emits a 1 KiB .nv.shared section for the 1024-aligned extern
BLOCK_K = 128
BLOCK_MS = (16, 32, 64, 128, 256)
# Tiles of 16 or 32 valid rows (small M): the WGMMA still computes 64 rows, of which only the
# first BM are loaded, promoted and stored; a smaller A box means less TMA work and shared
# memory per stage where most of a 64-row box would be zero fill.
SMALL_BLOCK_MS = (16, 32)
WGMMA_M = 64
def _two_scale_blocks_at_most(bn: int) -> bool:
    """A BN-wide tile at any multiple of BN touches at most two 128-wide B-scale blocks."""
    import math
    return bn <= 128 + math.gcd(bn, 128)


BLOCK_NS = tuple(bn for bn in range(16, 257, 8) if _two_scale_blocks_at_most(bn))
KINDS = ("dense", "contiguous", "contiguous_psum", "masked", "k_grouped")
OUT_DTYPES = ("bfloat16", "float32")
B_SCALES = ("block", "row")      # 128x128 blocks of B (the inference GEMMs) or 1x128 per row of B (wgrad)
ROW_SCALE_BLOCK_NS = tuple(range(16, 257, 8))   # per-column B scales: no 128-column alignment rule
# Kernel parameter space: 4352 bytes before PTX ISA 8.1, 32764 from it; a k-grouped kernel
# passes two tensor maps (128 B each) and two u32 per group.
MAX_K_GROUPS = 120
CONTIGUOUS_KINDS = ("contiguous", "contiguous_psum")   # blocks must not straddle a 128-row group start

_num_sms: int | None = None
_on_num_sms_change: list = []      # callbacks that drop what was planned for the old count


def set_num_sms(n: int | None) -> None:
    """Cap the SMs the persistent GEMM grids use, on every device (``None``: no cap). Plans the
    array-level API cached are dropped, so the next call plans for the new count; plans a
    caller holds (``plan_gemm``, ...) keep the grid they were made with."""
    if n is not None:
        from .launcher import device_count, sm_count
        total = max(sm_count(d) for d in range(max(1, device_count())))
        if isinstance(n, bool) or not (isinstance(n, int) and 0 < n <= total):
            raise ValueError(f"set_num_sms: n must be an int in [1, {total}] or None, got {n!r}")
    global _num_sms
    _num_sms = n
    _select.cache_clear()
    for drop in _on_num_sms_change:
        drop()


def get_num_sms(device: int = 0) -> int:
    """SMs the grids on ``device`` use: its SM count, capped by ``set_num_sms``."""
    from .launcher import sm_count
    total = sm_count(device)
    return total if _num_sms is None else min(_num_sms, total)


@dataclasses.dataclass(frozen=True, repr=False)
class GemmConfig:
    block_m: int
    block_n: int
    stages: int
    cluster: int = 1                 # 1 or 2 CTAs sharing loads by TMA multicast
    multicast_on_a: bool = True      # with cluster 2: share A (same M block) or B (same N block)
    kind: str = "dense"
    debug: bool = False              # bounded mbarrier waits that report and trap
    out_dtype: str = "bfloat16"      # D's element type: bf16 (the inference GEMMs) or fp32 (training)
    with_c: bool = False             # D = C + A.B: the tile of C (D's dtype) is loaded by TMA, added, stored
    b_scales: str = "block"          # "block": 128x128 blocks of B; "row": 1x128 per row of B (wgrad)
    reduce_out: bool = False         # D += A.B by a TMA reduce-add store onto out (fp32; no C input to load)
    groups: int = 0                  # k_grouped only: the groups, fixed at compile time (parameter arrays)

    def __post_init__(self):
        if self.block_m not in BLOCK_MS:
            raise ValueError(f"block_m must be one of {BLOCK_MS}, got {self.block_m}")
        if self.out_dtype not in OUT_DTYPES:
            raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {self.out_dtype!r}")
        if self.b_scales not in B_SCALES:
            raise ValueError(f"b_scales must be one of {B_SCALES}, got {self.b_scales!r}")
        if self.training and (self.kind not in ("dense", "k_grouped")
                              or (self.cluster > 1 and self.kind != "dense")):
            raise ValueError("FP32 output, a C input and per-row B scales are for the dense layout (with or "
                             "without a cluster) and the k_grouped layout (without)")
        if self.reduce_out and (self.out_dtype != "float32" or self.with_c or self.b_scales != "row"
                                or self.block_m in SMALL_BLOCK_MS):
            raise ValueError("reduce_out (out += A.B by a TMA reduce-add, C being out) is for the weight-gradient "
                             "kernels: FP32 output, per-row B scales, no separate C, tiles of 64 rows or more")
        if self.out_dtype == "float32" and self.block_m > 128:
            raise ValueError("an FP32 output tile has at most 128 rows (its shared-memory tile doubles)")
        if self.kind == "k_grouped":
            if not (self.out_dtype == "float32" and (self.with_c or self.reduce_out) and self.b_scales == "row"):
                raise ValueError("the k_grouped layout accumulates FP32 (out_dtype float32, with_c or reduce_out) "
                                 "with per-row B scales")
            if not (isinstance(self.groups, int) and 1 <= self.groups <= MAX_K_GROUPS):
                raise ValueError(f"groups must be in [1, {MAX_K_GROUPS}] for the k_grouped layout, got {self.groups!r}")
        elif self.groups:
            raise ValueError("groups is a compile-time value of the k_grouped layout only")
        if self.b_scales == "row":
            if self.block_n not in ROW_SCALE_BLOCK_NS:
                raise ValueError(f"block_n must be a multiple of 8 in [16, 256], got {self.block_n}")
        elif self.block_n not in BLOCK_NS:
            raise ValueError(f"block_n must be a multiple of 8 in [16, 256] whose tiles touch at most two "
                             f"128-wide B-scale blocks (BN <= 128 + gcd(BN, 128)), got {self.block_n}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        if self.kind in CONTIGUOUS_KINDS and self.block_m > 128:
            raise ValueError(f"block_m must be 64 or 128 for the {self.kind} layout "
                             "(groups start at multiples of 128 rows)")
        if self.cluster not in (1, 2):
            raise ValueError("cluster must be 1 or 2")
        if self.stages < 1:
            raise ValueError("stages must be >= 1")
        if self.block_m in SMALL_BLOCK_MS and (self.kind != "dense" or self.cluster > 1):
            raise ValueError(f"block_m {self.block_m} (a tile of fewer than 64 valid rows) is for the dense "
                             "layout without a cluster")
        if self.block_m > 128 and self.block_n > 128:
            raise ValueError("block_m > 128 and block_n > 128 together do not fit the registers")
        if self.smem_bytes + STATIC_SMEM > SMEM_LIMIT:
            raise ValueError(f"{self} needs {self.smem_bytes} bytes of shared memory (> {SMEM_LIMIT})")

    def __repr__(self) -> str:
        # the inference fields always, the training fields where they differ from bf16 / no C
        names = ["block_m", "block_n", "stages", "cluster", "multicast_on_a", "kind", "debug"]
        names += [f for f, default in (("out_dtype", "bfloat16"), ("with_c", False), ("b_scales", "block"),
                                       ("reduce_out", False), ("groups", 0)) if getattr(self, f) != default]
        return "GemmConfig(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in names) + ")"

    # ---- derived sizes -----------------------------------------------------------------
    @property
    def math_warpgroups(self) -> int:
        return 1 if self.block_m <= WGMMA_M else 2

    @property
    def threads(self) -> int:
        return 128 * (self.math_warpgroups + 1)

    @property
    def waves(self) -> int:
        """64-row WGMMA slabs each math warpgroup handles per tile."""
        return max(1, self.block_m // (WGMMA_M * self.math_warpgroups))

    @property
    def valid_warps(self) -> int:
        """Warps of a math warpgroup whose 16 accumulator rows are rows of the tile (4 unless
        the tile has fewer than 64 rows: the others compute rows nothing loaded, never stored)."""
        return min(4, self.block_m // 16)

    @property
    def training(self) -> bool:
        """Any of the training GEMMs' features (FP32 out, a C input, per-row B scales)."""
        return self.out_dtype != "bfloat16" or self.with_c or self.b_scales != "block" or self.reduce_out

    @property
    def out_bytes(self) -> int:
        return 4 if self.out_dtype == "float32" else 2

    @property
    def d_swizzle(self) -> int:
        """TMA swizzle of the output tile: the widest of 128/64/32 B dividing a row; none for
        the reduce-add epilogue's FP32 rows of BN = 8 (mod 16) columns, whose pitch (an odd
        multiple of 32 bytes) already spreads a warp's fragment writes over all 32 banks, so
        that one TMA op moves a warpgroup's whole slab instead of BN / 8 boxes of 32 B rows."""
        if self.reduce_out and self.block_n % 16 == 8:
            return 0
        for s in (128, 64, 32):
            if (self.block_n * self.out_bytes) % s == 0:
                return s
        return 0

    @property
    def d_store_rows(self) -> int:
        """Rows of one D store box: the whole tile, or with the reduce-add epilogue one
        warpgroup's 64-row slab (each math warpgroup stores its own rows as soon as they are
        in shared memory, synchronising only its own 128 threads)."""
        return WGMMA_M if self.reduce_out else self.block_m

    @property
    def d_store_threads(self) -> int:
        """Threads (per storing group: the tile, or each warpgroup with ``d_store_rows`` 64)
        that each TMA-store one swizzle atom (``d_store_rows`` rows x swizzle bytes)."""
        swz = self.d_swizzle
        return self.block_n * self.out_bytes // swz if swz else 1

    @property
    def smem_layout(self) -> dict[str, int]:
        """Byte offsets of each shared-memory region (base is 1024-byte aligned)."""
        def up(x, a):
            return (x + a - 1) // a * a
        off = {}
        cur = 0
        off["d"] = cur
        cur += up(self.block_m * self.block_n * self.out_bytes, 1024)
        off["a"] = cur
        cur += self.stages * self.block_m * BLOCK_K
        off["b"] = cur
        cur += self.stages * self.block_n * BLOCK_K
        off["sfa"] = cur
        cur += self.stages * up(self.block_m * 4, 128)
        if self.b_scales == "row":
            off["sfb"] = cur             # per-column B scales of each stage's K block, by TMA
            cur += self.stages * up(self.block_n * 4, 128)
        off["bar"] = cur
        cur += self.stages * 16          # full[S] then empty[S], 8 bytes each
        if self.with_c:
            cur += 16                    # c_full: the tile of C landed (8 bytes, kept 16-aligned)
        # a tile of fewer than 64 rows: the WGMMA reads 64 rows from each A stage, past its box
        # into what follows (garbage rows, never stored); that read must stay inside the block
        cur = max(cur, off["a"] + (self.stages - 1) * self.block_m * BLOCK_K + WGMMA_M * BLOCK_K)
        off["end"] = cur
        return off

    def units(self, m: int, n: int, groups: int = 1) -> int:
        """Work units the persistent grid walks: tiles, or tile pairs sharing a multicast operand."""
        mb, nb = ceil_div(m, self.block_m), ceil_div(n, self.block_n)
        if self.cluster > 1:
            if self.multicast_on_a:
                nb = ceil_div(nb, self.cluster)
            else:
                mb = ceil_div(mb, self.cluster)
        return mb * nb * groups

    def grid(self, m: int, n: int, num_sms: int, groups: int = 1) -> int:
        """CTAs to launch: one per SM at most, whole clusters, no idle cluster."""
        clusters = min(num_sms // self.cluster, self.units(m, n, groups))
        return max(1, clusters) * self.cluster

    @property
    def smem_bytes(self) -> int:
        return self.smem_layout["end"]

    @property
    def multicast_tag(self) -> str:
        """'' without a cluster, else 'a' or 'b': the operand shared by TMA multicast."""
        return "" if self.cluster == 1 else ("a" if self.multicast_on_a else "b")

    @property
    def name(self) -> str:
        mc = f"_mc{self.cluster}{self.multicast_tag}" if self.cluster > 1 else ""
        dbg = "_debug" if self.debug else ""
        train = (("_f32" if self.out_dtype == "float32" else "") + ("_c" if self.with_c else "")
                 + ("_red" if self.reduce_out else "")
                 + ("_sfbrow" if self.b_scales == "row" else "") + (f"_g{self.groups}" if self.groups else ""))
        return f"fp8gemm_{self.kind}_bm{self.block_m}_bn{self.block_n}_s{self.stages}{mc}{train}{dbg}"


def block_ms_for(kind: str) -> tuple[int, ...]:
    """Block M values a layout allows: contiguous blocks must not cross a group start."""
    if kind != "dense":
        return tuple(bm for bm in BLOCK_MS if bm not in SMALL_BLOCK_MS and (bm <= 128 or kind not in CONTIGUOUS_KINDS))
    return BLOCK_MS


def heuristic_block_ms(kind: str, m: int | None = None) -> tuple[int, ...]:
    """Block M values the heuristic tries. Grouped layouts stop at 128 rows (measured: a
    256-row masked tile ran 0.68x DeepGEMM where 128x192 ran 1.33x, benchmarks/NOTES.md).
    Dense problems of M <= 32 rows take the smallest tile of 16 or 32 rows that holds them:
    forced on the H200 (explore-small), 16/32-row tiles beat the 64-row ones the model
    picked on all six decode shapes tried (+6 to +50 %), the 64-row A box being mostly
    zero fill that costs TMA and shared-memory time every K block."""
    if kind == "dense":
        if m is not None and m <= max(SMALL_BLOCK_MS):
            return (min(bm for bm in SMALL_BLOCK_MS if bm >= m),)
        return tuple(bm for bm in BLOCK_MS if bm not in SMALL_BLOCK_MS)
    return tuple(bm for bm in block_ms_for(kind) if bm <= 128)


# Stage caps: 16/32-row tiles have small stages, and a decode GEMM streams B from DRAM, so
# they keep up to 16 K blocks in flight (DeepGEMM HEAD runs up to 16 stages there too).
STAGE_CAP = 8
SMALL_TILE_STAGE_CAP = 16


def stage_cap(block_m: int) -> int:
    return SMALL_TILE_STAGE_CAP if block_m in SMALL_BLOCK_MS else STAGE_CAP


def max_stages(block_m: int, block_n: int, k: int | None = None, cap: int | None = None, **variant) -> int:
    """The most stages that fit shared memory (and no more than there are K blocks); ``variant``:
    the other ``GemmConfig`` fields that change shared memory (kind, out_dtype, with_c, ...)."""
    best = 0
    for s in range(1, (cap or stage_cap(block_m)) + 1):
        try:
            GemmConfig(block_m, block_n, s, **variant)
        except ValueError:
            break
        best = s
    if k is not None:
        best = min(best, max(1, -(-k // BLOCK_K)))
    return best


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# Cost model, in SM clock cycles per 128-wide K block of one tile:
#   tensor cores: 64x8x32 e4m3 WGMMA atoms at 4096 FMA/clk/SM -> BM*BN/32 cycles, derated for
#     one math warpgroup (its promotion FFMAs cannot hide behind a second warpgroup's WGMMA);
#   operand traffic: (BM + BN) * 128 bytes at ~64 bytes/clk/SM of L2 bandwidth.
# A tile costs max of the two per K block plus its epilogue; the busiest SM runs
# ceil(tiles / SMs) tiles.
L2_BYTES_PER_CLK = 64.0
MMA_EFFICIENCY = {64: 0.65, 128: 0.85, 256: 0.92}   # keyed by WGMMA rows per tile
MAX_BLOCK_N = {16: 192, 32: 192, 64: 192, 128: 160, 256: 128}   # accumulator + promoted registers must fit
MAX_BLOCK_N_GROUPED = {64: 192, 128: 192}      # 128x192 measured best on both grouped tables
MAX_BLOCK_N_CLUSTER = {16: 0, 32: 0, 64: 160, 128: 160, 256: 128}   # 16/32: no cluster   # 64x192 spills with the cluster bookkeeping


TWO_SCALE_PENALTY = 1.15     # BN not dividing 128: a select per promoted element (measured slower)
GROUPED_TWO_SCALE_PENALTY = 1.0   # grouped tables, after the split-promotion rework: no measurable cost
# Grouped shapes stream every group's own B (and masked groups' own A) through L2 once per
# tile row, with no single B to keep hot: on H200 their tiles ran as if operand-load bound
# (128x192 beat 128x128 by 10-15 % per FLOP, grouped_variants3), which ~40 B/clk/SM models.
L2_BYTES_PER_CLK_GROUPED = 40.0


def tile_cycles(bm: int, bn: int, k: int, two_scale_penalty: float = TWO_SCALE_PENALTY,
                l2_bytes_per_clk: float = L2_BYTES_PER_CLK, dram_per_k_block: float = 0.0) -> float:
    kb = ceil_div(k, BLOCK_K)
    rows = max(bm, WGMMA_M)              # a 16/32-row tile still runs 64-row WGMMAs
    mma = rows * bn / 32 / MMA_EFFICIENCY[rows]
    if 128 % bn:
        mma *= two_scale_penalty
    load = (bm + bn) * BLOCK_K / l2_bytes_per_clk
    if 128 % bn:
        # a memory-bound two-scale tile is slower too (16x7168x16384: BN=64 x 112 tiles beat
        # BN=56 x 128 by 13 %, explore-decode-2112): charge its K block, not just the MMA
        dram_per_k_block *= two_scale_penalty
    epilogue = bm * bn * 2 / l2_bytes_per_clk + 200
    return kb * max(mma, load, dram_per_k_block) + epilogue


# Memory-bound problems (few rows: B is read once from DRAM, and no MMA work hides it). The
# term is charged to the 16/32-row tiles only, where it was fitted: the 64/128-row picks of
# M = 64/128 keep their measured ratios until forced configs there say otherwise. The
# busiest SM's unique bytes per K block (B shared by the M tiles through L2, A by the N tiles)
# arrive at its share of DRAM bandwidth, and no faster than one SM draws. Fitted to the H200's
# forced decode configs (benchmarks/NOTES.md, explore-small): BN=16 x 132 tiles beats BN=32 x 66
# at N=2112 (each SM at its 1/132 share), BN=32 x 128 beats BN=64 x 64 at N=4096 (64 tiles would
# need 34 B/clk per SM), BN=64 x 112 beats BN=32 x 224 at N=7168 (two waves).
DRAM_BYTES_PER_CLK = 2160.0          # the H200's copy ceiling, 4.28 TB/s, at 1.98 GHz
DRAM_BYTES_PER_CLK_PER_SM = 24.0


def dram_cycles(bm: int, bn: int, m: int, n: int, num_sms: int) -> float:
    """Cycles per K block of one tile while DRAM feeds every active SM."""
    mt, nt = ceil_div(m, bm), ceil_div(n, bn)
    rate = min(DRAM_BYTES_PER_CLK_PER_SM, DRAM_BYTES_PER_CLK / min(mt * nt, num_sms))
    return BLOCK_K * (bn / mt + min(bm, m) / nt) / rate


# Training variants: an FP32 tile doubles the epilogue's bytes, a C input adds as many again
# (read); per-row B scales cost an FMUL per promoted element on top of the FFMA.
ROW_SCALE_PENALTY = 1.1
# ... and a fixed cost per K block of a tile (its column scales' loads and the promotion's
# bookkeeping), which wide tiles amortise: forced on the H100 (explore-wgrad), 128x160 beat the
# model's 128x104/128x128 picks by 12-20 % at 16384x7168x4096 and 2048x7168x8192.
ROW_SCALE_K_BLOCK_CYCLES = 400


def _select_variant(m: int, n: int, k: int, groups: int, kind: str, num_sms: int,
                    variant: str) -> tuple[GemmConfig, int]:
    fields = heuristic_fields(variant, kind, groups if kind == "k_grouped" else 0)
    row = fields.get("b_scales") == "row"
    elt = 4 if fields.get("out_dtype") == "float32" else 2
    epilogue_bytes = elt * (2 if fields.get("with_c") or fields.get("reduce_out") else 1)
    best = None
    for bm, max_bn in TRAINING_MAX_BLOCK_N[variant].items():
        for bn in variant_block_ns(fields):
            if bn > max_bn:
                continue
            stages = max_stages(bm, bn, k, **fields)
            if stages < min(3, ceil_div(k, BLOCK_K)):
                continue
            cfg = GemmConfig(bm, bn, stages, **fields)
            waves = ceil_div(cfg.units(m, n, groups), num_sms)
            cost = tile_cycles(bm, bn, k, 1.0 if row else TWO_SCALE_PENALTY, L2_BYTES_PER_CLK)
            cost += bm * bn * (epilogue_bytes - 2) / L2_BYTES_PER_CLK
            if row:
                cost *= ROW_SCALE_PENALTY
                cost += ceil_div(k, BLOCK_K) * ROW_SCALE_K_BLOCK_CYCLES
            score = (waves * cost, -bm * bn)
            if best is None or score < best[0]:
                best = (score, cfg)
    cfg = best[1]
    return cfg, cfg.grid(m, n, num_sms, groups)


@functools.lru_cache(maxsize=4096)
def _select(m: int, n: int, k: int, groups: int, kind: str, num_sms: int,
            variant: str = "bf16") -> tuple[GemmConfig, int]:
    if variant != "bf16" or kind == "k_grouped":
        return _select_variant(m, n, k, groups, kind, num_sms, "wgrad" if kind == "k_grouped" else variant)
    grouped = kind != "dense"
    max_bn = MAX_BLOCK_N_GROUPED if grouped else MAX_BLOCK_N
    penalty = GROUPED_TWO_SCALE_PENALTY if grouped else TWO_SCALE_PENALTY
    l2 = L2_BYTES_PER_CLK_GROUPED if grouped else L2_BYTES_PER_CLK
    best = None
    for bm in heuristic_block_ms(kind, m):
        if bm == 256 and m <= 128:
            continue
        for bn in BLOCK_NS:
            if bn > max_bn[bm]:
                continue
            stages = max_stages(bm, bn, k)
            if stages < min(3, ceil_div(k, BLOCK_K)):
                continue
            for mc in multicast_options(kind, m, bm, bn, num_sms):
                cfg = GemmConfig(bm, bn, stages, cluster=2 if mc else 1, multicast_on_a=mc != "b", kind=kind)
                clusters = num_sms // cfg.cluster
                waves = ceil_div(cfg.units(m, n, groups), clusters)
                dram = dram_cycles(bm, bn, m, n, num_sms) if bm in SMALL_BLOCK_MS else 0.0
                cost = waves * tile_cycles(bm, bn, k, penalty, l2, dram) * (MULTICAST_GAIN if mc else 1.0)
                score = (cost, -bm * bn, mc != "")
                if best is None or score < best[0]:
                    best = (score, cfg)
    cfg = best[1]
    return cfg, cfg.grid(m, n, num_sms, groups)


# Multicast, measured on the H100 (benchmarks/NOTES.md, 2026-11-23): sharing A between two
# 128-row CTAs with BN dividing 128 ran 1-3% faster; at BM = 256, with two-scale BN, or
# sharing B it was level or slower. So the heuristic offers only that case, credited 2%.
MULTICAST_GAIN = 0.98
MULTICAST_MIN_M = 512


def multicast_options(kind: str, m: int, bm: int, bn: int, num_sms: int) -> tuple[str, ...]:
    """'' (no cluster) and, where measured to pay, 'a' (2-CTA cluster sharing A)."""
    if kind != "dense" or num_sms % 2 or m < MULTICAST_MIN_M or bm != 128 or 128 % bn:
        return ("",)    # grouped: every multicast variant measured slower than none on H200
    return ("", "a")


# The GEMMs' output variants: which GemmConfig fields each public function sets.
VARIANTS = {
    "bf16": {},                                                        # gemm_fp8_fp8_bf16_nt
    "bf16_c": dict(with_c=True),                                       # ... with c=: D = C + A.B
    "fp32": dict(out_dtype="float32"),                                 # gemm_fp8_fp8_fp32_nt
    "fp32_c": dict(out_dtype="float32", with_c=True),                  # ... with c=
    "wgrad": dict(out_dtype="float32", with_c=True, b_scales="row"),   # out += A.B^T, 1x128 scales both
}
# Block N limits of the training variants (accumulator, promoted values and, with per-row B
# scales, the column scales of a K block must fit the registers; checked by the compile tests).
TRAINING_MAX_BLOCK_N = {"bf16_c": {64: 192, 128: 160, 256: 128}, "fp32": {64: 192, 128: 192},
                        "fp32_c": {64: 192, 128: 192}, "wgrad": {64: 168, 128: 160}}
K_GROUPED_DEFAULT_GROUPS = 4


# The weight-gradient kernels the heuristic picks: out += D by a TMA reduce-add in L2 (no C
# load), each warpgroup storing its own slab, on tiles of BN = 8 (mod 16) whose FP32 rows need
# no swizzle (GemmConfig.d_swizzle). Forced on the H100 (explore-wgrad, 2026-12-07): 128x152
# this way beat the C-loading 128x152/128x160 picks by 6-11 % on all four shapes, while a
# swizzled reduce-add tile (128x112, 64-byte atoms) lost 9-12 % to its C-loading twin.
WGRAD_HEURISTIC_FIELDS = dict(with_c=False, reduce_out=True)


def heuristic_fields(variant: str, kind: str = "dense", groups: int = 0) -> dict:
    """GemmConfig keyword arguments of the configs the heuristic picks for a variant: the
    variant's (``variant_fields``), with wgrad's epilogue as a reduce-add."""
    fields = variant_fields(variant, kind, groups)
    return fields | WGRAD_HEURISTIC_FIELDS if variant == "wgrad" else fields


def variant_block_ns(fields: dict) -> tuple[int, ...]:
    """Block N candidates for configs of these fields: per-row B scales allow any multiple of
    8; a reduce-add tile takes BN = 16 or BN = 8 (mod 16) (unswizzled, bank-conflict-free rows)."""
    if fields.get("reduce_out"):
        return tuple(bn for bn in ROW_SCALE_BLOCK_NS if bn == 16 or bn % 16 == 8)
    return ROW_SCALE_BLOCK_NS if fields.get("b_scales") == "row" else BLOCK_NS


def variant_fields(variant: str, kind: str = "dense", groups: int = 0) -> dict:
    """GemmConfig keyword arguments of an output variant (k_grouped: with its group count)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    fields = dict(VARIANTS[variant], kind=kind)
    if kind == "k_grouped":
        fields["groups"] = groups or K_GROUPED_DEFAULT_GROUPS
    return fields


def variant_of(cfg: GemmConfig) -> str:
    """The name in ``VARIANTS`` of a config's output variant."""
    # a reduce-add kernel computes what the C-loading one does with C = out (wgrad's contract)
    fields = {"out_dtype": cfg.out_dtype, "with_c": cfg.with_c or cfg.reduce_out, "b_scales": cfg.b_scales}
    defaults = {"out_dtype": "bfloat16", "with_c": False, "b_scales": "block"}
    for name, want in VARIANTS.items():
        if fields == defaults | want:
            return name
    raise ValueError(f"{cfg} is no output variant of {sorted(VARIANTS)}")


def variant_configs(variant: str, k: int = 1 << 14, kind: str = "dense", groups: int = 0,
                    heuristic: bool = True) -> list[GemmConfig]:
    """Every config the heuristic can return for a training variant (no cluster, BM <= 128 for
    FP32 out, BN up to the variant's register limit); ``heuristic=False``: with the variant's
    own fields instead (``variant_fields``: wgrad's C-loading kernels, run only when forced)."""
    fields = (heuristic_fields if heuristic else variant_fields)(variant, kind, groups)
    out = []
    for bm, max_bn in TRAINING_MAX_BLOCK_N[variant].items():
        for bn in variant_block_ns(fields):
            if bn <= max_bn:
                s = max_stages(bm, bn, k, **fields)
                if s:
                    out.append(GemmConfig(bm, bn, s, **fields))
    return out


def candidate_configs(k: int = 1 << 14, kind: str = "dense") -> list[GemmConfig]:
    """Every config the heuristic can return (for compile tests and forced-config GPU tests)."""
    if kind == "k_grouped":
        return variant_configs("wgrad", k, kind)
    out = []
    max_bn = MAX_BLOCK_N if kind == "dense" else {bm: max(MAX_BLOCK_N[bm], MAX_BLOCK_N_GROUPED.get(bm, 0))
                                                  for bm in MAX_BLOCK_N}
    for bm in block_ms_for(kind):
        for bn in BLOCK_NS:
            if bn <= max_bn[bm]:
                s = max_stages(bm, bn, k)
                if s:
                    for mc in ("", "a", "b"):
                        if mc and bn > MAX_BLOCK_N_CLUSTER[bm]:
                            continue
                        out.append(GemmConfig(bm, bn, s, cluster=2 if mc else 1, multicast_on_a=mc != "b",
                                              kind=kind))
    return out


def select_config(m: int, n: int, k: int, groups: int = 1, kind: str = "dense",
                  num_sms: int | None = None, device: int = 0, variant: str = "bf16") -> tuple[GemmConfig, int]:
    """(config, grid size) for a problem on ``device`` (or for ``num_sms`` SMs); ``variant``
    names the output variant (``VARIANTS``; k_grouped is always "wgrad", with ``k`` the mean
    K of its groups); ``FP8GEMM_PRINT_CONFIGS=1`` prints each choice."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    sms = num_sms or get_num_sms(device)
    cfg, grid = _select(m, n, k, groups, kind, sms, variant)
    if os.environ.get("FP8GEMM_PRINT_CONFIGS", "0") not in ("", "0"):
        print(f"fp8gemm: {kind} m={m} n={n} k={k} groups={groups} -> BM={cfg.block_m} BN={cfg.block_n} "
              f"stages={cfg.stages} cluster={cfg.cluster}{cfg.multicast_tag} grid={grid} smem={cfg.smem_bytes}",
              flush=True)
    return cfg, grid
