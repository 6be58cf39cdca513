"""Shared helpers for the grouped GEMM GPU tests: layouts, seeded inputs, per-group checks.

Layouts are plain Python (no torch needed to build or inspect them); the problems build
their inputs on the GPU with torch and our own quantization kernels. The float64 reference
of each group is ``gemm_util.reference`` of that group's slices (computed on the GPU).
"""
import dataclasses
import random

from gemm_util import POISON, check, reference

ALIGN = 128          # fp8gemm.get_m_alignment_for_contiguous_layout()
WIDEST_TILE = 256    # the largest block_m: rows past it are unwritten whatever the config


def align(x, a=ALIGN):
    return -(-x // a) * a


def deepgemm_sizes(groups, expected, seed):
    """DeepGEMM's per-group row counts: int(expected * U(0.7, 1.3)), seeded."""
    rng = random.Random(seed)
    return [int(expected * rng.uniform(0.7, 1.3)) for _ in range(groups)]


def expected_m_of(masked, m_max):
    """DeepGEMM's hint: the mean of masked_m plus one, capped at M_max (and at least 1)."""
    return max(1, min(int(sum(masked) / len(masked)) + 1, m_max))


def _ranges(rows):
    """Sorted row indices -> [(start, stop)] runs."""
    out = []
    for r in rows:
        if out and out[-1][1] == r:
            out[-1][1] = r + 1
        else:
            out.append([r, r + 1])
    return [tuple(x) for x in out]


# ---- contiguous layouts ---------------------------------------------------------------------
@dataclasses.dataclass
class ContiguousLayout:
    """Group g owns rows [starts[g], starts[g] + sizes[g]) of the [m_sum, ...] arrays.

    ``ends`` is set when the layout was given as group ends (it may then hold an end that is
    below its group's start: an empty group after an unaligned end)."""
    starts: list
    sizes: list
    m_sum: int
    ends: list = None

    @classmethod
    def build(cls, sizes, pad_blocks=None, tail_rows=0, pad_last=True):
        """Groups in order, each padded with -1 rows to a multiple of 128.

        ``pad_blocks`` {g: count} inserts ``count`` all -1 blocks of 128 rows after group g
        (g = -1: before group 0); ``pad_last=False`` leaves the last group unpadded (M_sum
        not a multiple of 128); ``tail_rows`` appends -1 rows at the end."""
        pad_blocks = pad_blocks or {}
        cur = ALIGN * pad_blocks.get(-1, 0)
        starts = []
        for g, m in enumerate(sizes):
            starts.append(cur)
            cur += m
            if pad_last or g < len(sizes) - 1:
                cur = align(cur)
            cur += ALIGN * pad_blocks.get(g, 0)
        return cls(starts, list(sizes), cur + tail_rows)

    @classmethod
    def from_group_ends(cls, ends, m_sum):
        """The group_ends form: group g owns [align(ends[g-1]), ends[g]) (group 0 starts at 0)."""
        starts, prev = [], 0
        for e in ends:
            starts.append(align(prev))
            prev = e
        sizes = [max(0, e - s) for s, e in zip(starts, ends)]
        return cls(starts, sizes, m_sum, list(ends))

    @property
    def groups(self):
        return len(self.sizes)

    def m_indices(self):
        idx = [-1] * self.m_sum
        for g, (s, m) in enumerate(zip(self.starts, self.sizes)):
            assert s % ALIGN == 0, "test bug: a group of the m_indices form starts off a 128-row boundary"
            idx[s:s + m] = [g] * m
        return idx

    def group_ends(self):
        if self.ends is not None:
            return list(self.ends)
        ends, prev = [], 0
        for s, m in zip(self.starts, self.sizes):
            if s != align(prev):
                raise ValueError("test bug: this layout has -1 blocks between groups, which the "
                                 "group_ends form cannot express")
            prev = s + m
            ends.append(prev)
        return ends

    def valid(self):
        """[(group, start, stop)] of the groups with rows."""
        return [(g, s, s + m) for g, (s, m) in enumerate(zip(self.starts, self.sizes)) if m]

    def unwritten(self, form):
        """Row runs the kernel must not write: all -1 blocks of 128 rows (m_indices form), or
        every row outside the groups (group_ends form)."""
        if form == "indices":
            idx, rows = self.m_indices(), []
            for b in range(0, self.m_sum, ALIGN):
                blk = idx[b:b + ALIGN]
                if all(v == -1 for v in blk):
                    rows.extend(range(b, b + len(blk)))
            return _ranges(rows)
        owned = [False] * self.m_sum
        for _, s, e in self.valid():
            owned[s:e] = [True] * (e - s)
        return _ranges([r for r, o in enumerate(owned) if not o])


# ---- inputs ---------------------------------------------------------------------------------
def _gen(torch, seed):
    return torch.Generator(device="cuda").manual_seed(seed)


def make_b(torch, groups, n, k, gen):
    """(bq e4m3 [G, N, K], sb f32 [G, ceil(N/128), ceil(K/128)]), b_bf16 [G, N, K]."""
    import fp8gemm
    b_bf = torch.randn((groups, n, k), device="cuda", generator=gen).to(torch.bfloat16)
    bq = torch.empty((groups, n, k), device="cuda", dtype=torch.float8_e4m3fn)
    sb = torch.empty((groups, fp8gemm.ceil_div(n, 128), fp8gemm.ceil_div(k, 128)), device="cuda",
                     dtype=torch.float32)
    for g in range(groups):
        fp8gemm.per_block_cast_to_fp8(b_bf[g], out=(bq[g], sb[g]))
    return (bq, sb), b_bf


def poison(torch, out):
    out.view(torch.int16).fill_(POISON)


def int32_on_device(torch, values):
    return torch.tensor(list(values), dtype=torch.int32, device="cuda")


def check_grouped(torch, pieces, unwritten, what=""):
    """Every valid-row slice against its float64 reference (normwise relative error <= 2e-3,
    every element written and finite), DeepGEMM's diff over all valid rows together (< 1e-3;
    only from 4096 elements on: on a few hundred it reaches 9e-4 by chance), and the poison
    intact in every view of ``unwritten``. Returns (worst error, diff or None)."""
    worst, sxy, sden, count = 0.0, 0.0, 0.0, 0
    for label, o, lhs, rhs, (a_bf, b_bf) in pieces:
        err, _ = check(torch, o, reference(torch, lhs, rhs))
        assert err <= 2e-3, f"{what} {label}: normwise relative error {err:.3e}"
        worst = max(worst, err)
        od = o.double()
        x = a_bf.double() @ b_bf.double().t()
        sxy += (od * x).sum().item()
        sden += (od * od + x * x).sum().item()
        count += o.numel()
    diff = None
    if count >= 4096 and sden:
        diff = 1 - 2 * sxy / sden
        assert diff < 1e-3, f"{what}: DeepGEMM diff {diff:.3e} over {count} valid elements"
    for label, view in unwritten:
        bad = (view.view(torch.int16) != POISON).sum().item()
        assert bad == 0, f"{what} {label}: {bad} elements written where nothing may be written"
    return worst, diff


class ContiguousProblem:
    """Inputs of one contiguous grouped GEMM for ``layout`` on the GPU (seeded), out poisoned."""

    def __init__(self, torch, layout, n, k, seed):
        import fp8gemm
        self.layout, self.n, self.k = layout, n, k
        gen = _gen(torch, seed)
        self.a_bf = torch.randn((layout.m_sum, k), device="cuda", generator=gen).to(torch.bfloat16)
        self.lhs = fp8gemm.per_token_cast_to_fp8(self.a_bf)
        self.rhs, self.b_bf = make_b(torch, layout.groups, n, k, gen)
        self.out = torch.empty((layout.m_sum, n), device="cuda", dtype=torch.bfloat16)
        poison(torch, self.out)
        self.m_indices = int32_on_device(torch, layout.m_indices())
        try:
            self.group_ends = int32_on_device(torch, layout.group_ends())
        except ValueError:
            self.group_ends = None

    @property
    def groups(self):
        return self.layout.groups

    def poison(self, torch):
        poison(torch, self.out)

    def layout_arg(self, form):
        return self.m_indices if form == "indices" else self.group_ends

    def run(self, form="indices", **kw):
        import fp8gemm
        if form == "indices":
            fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(self.lhs, self.rhs, self.out, self.m_indices, **kw)
        else:
            assert self.group_ends is not None
            fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(self.lhs, self.rhs, self.out,
                                                             group_ends=self.group_ends, **kw)

    def group_lhs(self, g):
        _, s, e = next(v for v in self.layout.valid() if v[0] == g)
        return self.lhs[0][s:e], self.lhs[1][s:e]

    def valid_views(self, out=None):
        out = self.out if out is None else out
        return [(g, out[s:e]) for g, s, e in self.layout.valid()]

    def pieces(self):
        (aq, sa), (bq, sb) = self.lhs, self.rhs
        return [(f"group {g} rows [{s}, {e})", self.out[s:e], (aq[s:e], sa[s:e]), (bq[g], sb[g]),
                 (self.a_bf[s:e], self.b_bf[g])) for g, s, e in self.layout.valid()]

    def unwritten_views(self, form):
        return [(f"rows [{s}, {e})", self.out[s:e]) for s, e in self.layout.unwritten(form)]

    def check(self, torch, form="indices", what=""):
        return check_grouped(torch, self.pieces(), self.unwritten_views(form), what or f"contiguous/{form}")


class MaskedProblem:
    """Inputs of one masked grouped GEMM on the GPU (seeded), out poisoned.

    A scales are MN-major per group: [G, M_max, kb] with strides (kb*s, 1, s),
    s = get_tma_aligned_size(M_max); ``masked_m`` is an int32 device array."""

    def __init__(self, torch, groups, m_max, n, k, seed, masked=None):
        import fp8gemm
        self.groups, self.m_max, self.n, self.k = groups, m_max, n, k
        kb, s = fp8gemm.ceil_div(k, 128), fp8gemm.get_tma_aligned_size(m_max)
        self.aq = torch.empty((groups, m_max, k), device="cuda", dtype=torch.float8_e4m3fn)
        self.sa = torch.empty((groups, kb, s), device="cuda", dtype=torch.float32).transpose(1, 2)[:, :m_max, :]
        assert self.sa.stride() == (kb * s, 1, s)
        gen = _gen(torch, seed)
        self.rhs, self.b_bf = make_b(torch, groups, n, k, gen)
        self.set_a(torch, seed + 1)
        self.lhs = (self.aq, self.sa)
        self.out = torch.empty((groups, m_max, n), device="cuda", dtype=torch.bfloat16)
        poison(torch, self.out)
        self.masked_m = torch.zeros(groups, dtype=torch.int32, device="cuda")
        self.masked = [0] * groups
        self.set_masked(torch, masked if masked is not None else [m_max] * groups)

    def set_a(self, torch, seed):
        """New A contents, quantized into the same device buffers."""
        import fp8gemm
        self.a_bf = torch.randn((self.groups, self.m_max, self.k), device="cuda",
                                generator=_gen(torch, seed)).to(torch.bfloat16)
        for g in range(self.groups):
            fp8gemm.per_token_cast_to_fp8(self.a_bf[g], out=(self.aq[g], self.sa[g]))

    def set_masked(self, torch, masked):
        assert len(masked) == self.groups and all(0 <= m <= self.m_max for m in masked)
        self.masked = list(masked)
        self.masked_m.copy_(torch.tensor(self.masked, dtype=torch.int32))
        self.expected_m = expected_m_of(self.masked, self.m_max)

    def poison(self, torch):
        poison(torch, self.out)

    def run(self, expected_m=None, **kw):
        import fp8gemm
        fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked(self.lhs, self.rhs, self.out, self.masked_m,
                                                      expected_m or self.expected_m, **kw)

    def valid_views(self, out=None):
        out = self.out if out is None else out
        return [(g, out[g, :m]) for g, m in enumerate(self.masked) if m]

    def pieces(self):
        (bq, sb) = self.rhs
        return [(f"group {g} rows [0, {m})", self.out[g, :m], (self.aq[g, :m], self.sa[g, :m]), (bq[g], sb[g]),
                 (self.a_bf[g, :m], self.b_bf[g])) for g, m in enumerate(self.masked) if m]

    def unwritten_views(self, tile=WIDEST_TILE):
        """Rows of tiles wholly past masked_m[g] (``tile`` = the config's block_m; the default
        256 is right for any config)."""
        out = []
        for g, m in enumerate(self.masked):
            lo = align(m, tile)
            if lo < self.m_max:
                out.append((f"group {g} rows [{lo}, {self.m_max}) (masked_m {m})", self.out[g, lo:]))
        return out

    def check(self, torch, tile=WIDEST_TILE, what=""):
        return check_grouped(torch, self.pieces(), self.unwritten_views(tile), what or "masked")


def same_valid_bits(torch, problem, a, b):
    """True when two outputs of ``problem`` agree bit for bit on every valid row."""
    for (g, x), (_, y) in zip(problem.valid_views(a), problem.valid_views(b)):
        if not torch.equal(x.view(torch.int16), y.view(torch.int16)):
            return False
    return True
