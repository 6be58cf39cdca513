"""Layouts for the scheduler tests (CPU and GPU): awkward group sizes, padding, tails."""
import random

from fp8gemm.config import GemmConfig

ALIGN = 128
CLUSTER_MODES = {"": dict(cluster=1), "a": dict(cluster=2, multicast_on_a=True),
                 "b": dict(cluster=2, multicast_on_a=False)}


def config(kind, block_m, block_n, mc):
    return GemmConfig(block_m, block_n, 2, kind=kind, **CLUSTER_MODES[mc])


def contiguous_layout(sizes):
    """m_indices and group_ends for groups of ``sizes`` rows, each padded to ALIGN with -1."""
    idx, ends, row = [], [], 0
    for g, s in enumerate(sizes):
        padded = -(-s // ALIGN) * ALIGN
        idx += [g] * s + [-1] * (padded - s)
        row += padded
        ends.append(row - (padded - s))
    return idx, ends


def layouts(seed=7):
    """(name, kind, m, groups, layout) cases covering empty groups, one-row groups, -1 blocks."""
    rng = random.Random(seed)
    cases = []
    for sizes in ([300, 0, 1, 128, 129, 5], [1], [128 * 5], [0, 0, 700], [rng.randint(0, 600) for _ in range(9)]):
        idx, ends = contiguous_layout(sizes)
        idx += [-1] * 256                       # a whole padding tail, two all -1 blocks
        cases.append((f"contiguous{sizes}", "contiguous", len(idx), len(sizes), idx))
        cases.append((f"psum{sizes}", "contiguous_psum", len(idx), len(sizes), ends))
    for m_max, mm in ((256, [256, 0, 1, 129, 64, 255]), (200, [200, 17, 0]), (4096, [rng.randint(0, 4096) for _ in range(5)]),
                      (64, [64]), (300, [0, 0, 0])):
        cases.append((f"masked{m_max}:{mm}", "masked", m_max, len(mm), mm))
    return cases


def expected_tiles(kind, m, n, groups, layout, block_m, block_n):
    """The set of (group, m block, n block) that must be computed and stored, from the
    layout's definition alone (not from the scheduler)."""
    nb = -(-n // block_n)
    out = set()
    if kind == "contiguous":
        for blk in range(-(-m // block_m)):
            g = layout[blk * block_m]
            if 0 <= g < groups:
                out |= {(g, blk, j) for j in range(nb)}
    elif kind == "masked":
        for g, rows in enumerate(layout[:groups]):
            out |= {(g, i, j) for i in range(-(-min(rows, m) // block_m)) for j in range(nb)}
    else:
        prev = 0
        for g, end in enumerate(layout[:groups]):
            start = -(-prev // ALIGN) * ALIGN
            out |= {(g, i, j) for i in range(-(-max(end - start, 0) // block_m)) for j in range(nb)}
            prev = end
    return out
