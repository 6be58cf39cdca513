"""Shared helpers for the grouped GEMM GPU tests: layouts, seeded inputs, per-group checks.

Layouts are plain Python (no torch needed to build or inspect them); the problems build
their inputs on the GPU with torch and our own quantization kernels. The float64 reference
of each group is ``gemm_util.reference`` of that group's slices (computed on the GPU).
"""
from gemm_util import POISON, check, reference

from fp8gemm.testing import ALIGN, WIDEST_TILE, ContiguousLayout, align, deepgemm_sizes, expected_m_of  # noqa: F401


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
