"""Verification helpers shared by the test suite and the tools (fuzz, sanitize, smoke):
the float64 reference of a quantized GEMM, the output check, and the contiguous grouped
layout as plain Python. torch is passed in, never imported here."""
from __future__ import annotations

import dataclasses
import random

POISON = 0x7FC1  # a bf16 NaN: any element the kernel fails to write shows up


def reference(torch, lhs, rhs):
    """float64 D of the dequantized inputs (computed on the GPU in float64)."""
    (aq, sa), (bq, sb) = lhs, rhs
    m, k = aq.shape
    n = bq.shape[0]
    ad = aq.double() * sa.double().repeat_interleave(128, dim=1)[:, :k]
    bd = bq.double() * sb.double().repeat_interleave(128, dim=0)[:n].repeat_interleave(128, dim=1)[:, :k]
    return ad @ bd.t()


def reference_wgrad(torch, lhs, rhs):
    """float64 A . B^T with 1x128 scales on both operands (scales [rows, ceil(K/128)])."""
    (aq, sa), (bq, sb) = lhs, rhs
    k = aq.shape[1]
    ad = aq.double() * sa.double().repeat_interleave(128, dim=1)[:, :k]
    bd = bq.double() * sb.double().repeat_interleave(128, dim=1)[:, :k]
    return ad @ bd.t()


def k_grouped_inputs(torch, m, n, ks, seed):
    """The k-grouped layout from fresh random data: (a_flat, a_scales [sum kb, M]),
    (b_flat, b_scales [sum kb, N]) and the per-group quantized pairs for references."""
    import fp8gemm
    g = torch.Generator(device="cuda").manual_seed(seed)
    qa, qb = [], []
    for k in ks:
        a = torch.randn((m, max(k, 16)), device="cuda", generator=g).to(torch.bfloat16)[:, :k]
        b = torch.randn((n, max(k, 16)), device="cuda", generator=g).to(torch.bfloat16)[:, :k]
        qa.append(fp8gemm.per_token_cast_to_fp8(a.contiguous()) if k else None)
        qb.append(fp8gemm.per_token_cast_to_fp8(b.contiguous()) if k else None)
    e4m3 = torch.float8_e4m3fn

    def flat(qs, rows):
        parts = [q.reshape(-1) for q, _ in (x for x in qs if x)]
        data = torch.cat(parts) if parts else torch.empty(0, device="cuda", dtype=e4m3)
        sparts = [s.t()[:, :rows] for _, s in (x for x in qs if x)]
        scales = torch.cat(sparts).contiguous() if sparts else torch.empty((0, rows), device="cuda")
        return data.contiguous(), scales
    return flat(qa, m), flat(qb, n), qa, qb


def check(torch, out, ref, unquantized=None):
    """(normwise relative error, DeepGEMM diff); asserts every element written and finite."""
    o = out.double()
    assert torch.isfinite(o).all(), "NaN/Inf in the output (unwritten element or overflow)"
    if out.numel() < 4096:
        target = ref.to(torch.bfloat16).double()  # small outputs: compare with the rounded answer
    else:
        target = ref
    den = target.norm().item()
    err = (o - target).norm().item() / den if den else o.norm().item()
    diff = None
    if unquantized is not None:
        a_bf, b_bf = unquantized
        x = (a_bf.double() @ b_bf.double().t())
        diff = (1 - 2 * (o * x).sum() / (o * o + x * x).sum()).item()
    return err, diff


# ---- contiguous grouped layouts ------------------------------------------------------------
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
