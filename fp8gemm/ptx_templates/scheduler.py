"""Persistent tile schedulers: which output tile a CTA computes next, for each layout.

One class per memory layout of the problem, all behind one interface that the producer
and the math warpgroups both use:

* ``tensor_maps()`` / ``params()``: how the layout's operands are described to the kernel
  (2-D maps for row-concatenated arrays, 3-D ``[G, rows, cols]`` maps for per-group
  arrays, so a group's tail never reads or writes its neighbour's rows);
* ``emit_setup`` once per CTA, ``emit_begin`` once per role, then ``emit_next`` per tile:
  it either fills a ``Tile`` of registers (group, group-local blocks, the coordinates of
  every operand, ghost / multicast flags) or branches out when the CTA has no work left;
  ``emit_advance`` moves to the next work unit. A tile's coordinates are computed here
  and nowhere else;
* ``tiles()``: the same sequence in plain Python, the reference the tests compare the
  PTX against.

Work units are tiles or, with a 2-CTA cluster, pairs of tiles that share the multicast
operand: on A the pair is two N neighbours of one M block, on B two M neighbours of one
N block. When a pair sticks out past the last block, rank 1 recomputes rank 0's tile and
does not store it (a ghost), so both CTAs always run the same number of pipeline stages.
Units are walked in strips of ``STRIP`` N blocks so that tiles running at the same time
share A rows and B columns in L2.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from ..config import BLOCK_K, GemmConfig
from .builder import Kernel
from .spec import Param, TensorMap

STRIP = 16                      # N blocks per raster strip
CONTIGUOUS_ALIGNMENT = 128      # rows: every group of the contiguous layout starts at a multiple
NO_GROUP = 0xFFFFFFFF


@dataclasses.dataclass
class Tile:
    """Registers describing the tile a role works on (names in the generated PTX)."""
    group: str               # u32 group index (0 for dense)
    m_blk: str               # group-local M block
    n_blk: str
    m0: str                  # group-local first row
    n0: str                  # first column
    row: str                 # row coordinate of A / A-scales / D in their maps
    ghost: str | None        # pred: recompute the peer's tile, store nothing (None: never)
    mc_valid: str | None     # pred: the pair shares its multicast operand (None: always)
    rows: str | None = None  # u32 valid rows of this block when stores must clip (psum)
    k_blocks: str = "%k_blocks"   # u32 K blocks of this tile (k_grouped: its group's)
    kb_base: str | None = None    # u32 the tile's first K block in the scale arrays (k_grouped)
    tmaps: dict = dataclasses.field(default_factory=dict)   # operand -> its tensor map's address


@dataclasses.dataclass(frozen=True)
class TileRecord:
    """One tile in ``tiles()``: what the kernel computes, in plain numbers."""
    group: int
    m_blk: int
    n_blk: int
    row: int                 # first row in A/D (global for 2-D layouts, group-local for masked)
    ghost: bool
    mc_valid: bool
    rows: int                # valid rows of the block (BM where nothing clips)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


class Scheduler:
    kind = "?"
    layout_param: str | None = None      # the device array the layout reads, if any

    def __init__(self, cfg: GemmConfig):
        self.c = cfg
        self.pair_on_n = cfg.cluster > 1 and cfg.multicast_on_a
        self.pair_on_m = cfg.cluster > 1 and not cfg.multicast_on_a
        self.strip = STRIP // cfg.cluster if self.pair_on_n else STRIP

    # ---- host-side description --------------------------------------------------------------
    def params(self) -> list[Param]:
        return []

    groups_multiply_units = False          # masked: every group has its own M range

    def units_expr(self) -> str:
        """Work units of a problem, as a spec expression over m, n, groups, block_m, block_n:
        what the persistent grid is sized by (an upper bound where rows are device data)."""
        mu, nu = "ceil_div(m, block_m)", "ceil_div(n, block_n)"
        if self.pair_on_m:
            mu = f"ceil_div({mu}, 2)"
        if self.pair_on_n:
            nu = f"ceil_div({nu}, 2)"
        return f"{mu} * {nu}" + (" * groups" if self.groups_multiply_units else "")

    def tensor_maps(self) -> list[TensorMap]:
        c = self.c
        a, b = self.operand_maps()
        sfa = self.sfa_map()
        maps = [a, b, sfa]
        if c.b_scales == "row":
            maps.append(self.sfb_map())
        maps.append(self.out_map("tmap_d", "out", "out"))
        if c.with_c:
            maps.append(self.out_map("tmap_c", "c", "c"))
        return maps

    def operand_maps(self) -> tuple[TensorMap, TensorMap]:
        """A and B: 128 K x rows boxes, 128-byte swizzle (the WGMMA's K-major layout)."""
        c = self.c
        a_bytes, b_bytes = c.block_m * BLOCK_K, c.block_n * BLOCK_K
        if self.a_is_grouped:
            a = TensorMap("tmap_a", "a", "uint8", ("k", "m", "groups"), ("a_stride", "a_group_stride"),
                          (BLOCK_K, c.block_m, 1), 128, a_bytes)
        else:
            a = TensorMap("tmap_a", "a", "uint8", ("k", "m"), ("a_stride",), (BLOCK_K, c.block_m), 128, a_bytes)
        if self.b_is_grouped:
            b = TensorMap("tmap_b", "b", "uint8", ("k", "n", "groups"), ("b_stride", "b_group_stride"),
                          (BLOCK_K, c.block_n, 1), 128, b_bytes)
        else:
            b = TensorMap("tmap_b", "b", "uint8", ("k", "n"), ("b_stride",), (BLOCK_K, c.block_n), 128, b_bytes)
        return a, b

    def sfa_map(self) -> TensorMap:
        """A's scales, MN-major: a box of BM rows of one K block."""
        c = self.c
        if self.a_is_grouped:
            return TensorMap("tmap_sfa", "a_scales", "float32", ("m", "kb", "groups"),
                             ("sfa_stride * 4", "sfa_group_stride * 4"), (c.block_m, 1, 1), 0, c.block_m * 4)
        return TensorMap("tmap_sfa", "a_scales", "float32", ("m", "kb"), ("sfa_stride * 4",),
                         (c.block_m, 1), 0, c.block_m * 4)

    def sfb_map(self) -> TensorMap:
        """Per-row B scales (1x128, MN-major like A's): a box of BN columns of one K block."""
        c = self.c
        return TensorMap("tmap_sfb", "b_scales", "float32", ("n", "kb"), ("sfb_stride * 4",),
                         (c.block_n, 1), 0, c.block_n * 4)

    def out_map(self, param: str, array: str, stride: str) -> TensorMap:
        """D (or C, which has D's layout): boxes of one swizzle atom (the whole row without a
        swizzle) by ``d_store_rows`` rows, at most M (a box taller than the array would not
        clip small-M stores)."""
        c = self.c
        swz, elt = c.d_swizzle, c.out_bytes
        box_n = swz // elt if swz else c.block_n
        rows = "min(block_m, m)" if c.d_store_rows == c.block_m else f"min({c.d_store_rows}, m)"
        if self.a_is_grouped or self.out_is_grouped:
            return TensorMap(param, array, c.out_dtype, ("n", "m", "groups"),
                             (f"{stride}_stride * {elt}", f"{stride}_group_stride * {elt}"),
                             (box_n, rows, 1), swz)
        return TensorMap(param, array, c.out_dtype, ("n", "m"), (f"{stride}_stride * {elt}",),
                         (box_n, rows), swz)

    out_is_grouped = False   # D is [G, M, N] while A is not (k_grouped)

    a_is_grouped = False     # A, its scales and D are [G, rows, cols] (3-D maps)
    b_is_grouped = True      # B is [G, N, K]

    # ---- PTX: shared setup -------------------------------------------------------------------
    @staticmethod
    def emit_cluster_ranks(k: Kernel, cluster: int) -> None:
        """%cta_rank, %peer_rank and %p_rank0, which the pair logic reads (clusters only)."""
        if cluster == 1:
            return
        for r in ("cta_rank", "peer_rank"):
            k.reg("u32", r)
        k("mov.u32 %cta_rank, %cluster_ctarank")
        k("xor.b32 %peer_rank, %cta_rank, 1")
        k.reg("pred", "p_rank0")
        k("setp.eq.u32 %p_rank0, %cta_rank, 0")

    def emit_setup(self, k: Kernel) -> None:
        """Counts every role uses; needs %shape_m/n, %groups and (clustered) %cta_rank."""
        c = self.c
        k.reg("u32", "n_blocks")
        k(f"add.u32 %n_blocks, %shape_n, {c.block_n - 1}")
        k(f"div.u32 %n_blocks, %n_blocks, {c.block_n}")
        k.reg("u32", "units_n")
        if self.pair_on_n:
            k("add.u32 %units_n, %n_blocks, 1")
            k("shr.u32 %units_n, %units_n, 1")
        else:
            k("mov.u32 %units_n, %n_blocks")
        k.reg("u32", "unit_start")
        k.reg("u32", "unit_step")
        if c.cluster == 1:
            k("mov.u32 %unit_start, %ctaid.x")
            k("mov.u32 %unit_step, %nctaid.x")
        else:
            k("mov.u32 %unit_start, %clusterid.x")
            k("mov.u32 %unit_step, %nclusterid.x")
        if self.b_is_grouped:
            k.reg("u32", "n_scale_blocks")
            k("add.u32 %n_scale_blocks, %shape_n, 127")
            k("shr.u32 %n_scale_blocks, %n_scale_blocks, 7")

    def _emit_whole_m_counts(self, k: Kernel) -> None:
        """M blocks and units of a layout that is one M range (dense, contiguous)."""
        c = self.c
        for r in ("m_blocks", "units_m", "num_units"):
            k.reg("u32", r)
        k(f"add.u32 %m_blocks, %shape_m, {c.block_m - 1}")
        k(f"div.u32 %m_blocks, %m_blocks, {c.block_m}")
        if self.pair_on_m:
            k("add.u32 %units_m, %m_blocks, 1")
            k("shr.u32 %units_m, %units_m, 1")
        else:
            k("mov.u32 %units_m, %m_blocks")
        k("mul.lo.u32 %num_units, %units_m, %units_n")

    def emit_begin(self, k: Kernel, role: str) -> None:
        k.reg("u32", f"{role}_unit")
        k(f"mov.u32 %{role}_unit, %unit_start")

    def emit_advance(self, k: Kernel, role: str) -> None:
        k(f"add.u32 %{role}_unit, %{role}_unit, %unit_step")

    def emit_next(self, k: Kernel, role: str, done: str) -> Tile:
        raise NotImplementedError

    # ---- PTX: operand coordinates --------------------------------------------------------------
    def a_coords(self, t: Tile, k_elem: str) -> list[str]:
        return [k_elem, t.m0, t.group] if self.a_is_grouped else [k_elem, t.row]

    def sfa_coords(self, t: Tile, kb: str) -> list[str]:
        return [t.m0, kb, t.group] if self.a_is_grouped else [t.row, kb]

    def sfb_coords(self, t: Tile, kb: str) -> list[str]:
        """Per-row B scales (``b_scales == "row"``): BN columns of K block kb."""
        return [t.n0, kb]

    def b_coords(self, t: Tile, k_elem: str) -> list[str]:
        return [k_elem, t.n0, t.group] if self.b_is_grouped else [k_elem, t.n0]

    def d_coords(self, t: Tile, col: str) -> list[str]:
        return [col, t.m0, t.group] if self.a_is_grouped or self.out_is_grouped else [col, t.row]

    def emit_sfb_row(self, k: Kernel, t: Tile) -> str:
        """Index of the tile's first row of B scales in the [G * ceil(N/128), K blocks] array."""
        r = k.tmp("u32", "sfb_row")
        k(f"shr.u32 {r}, {t.n0}, 7")
        if self.b_is_grouped:
            k(f"mad.lo.u32 {r}, {t.group}, %n_scale_blocks, {r}")
        return r

    # ---- PTX pieces ---------------------------------------------------------------------------
    def _rasterize(self, k: Kernel, unit: str, units_m: str) -> tuple[str, str]:
        """Unit index inside one group -> (unit m, unit n): strips of ``strip`` n units, n fastest."""
        w = self.strip
        per_strip, strip, first, width, inner = (k.tmp("u32", n) for n in
                                                  ("per_strip", "strip", "first_n", "width", "inner"))
        um, un = k.tmp("u32", "unit_m"), k.tmp("u32", "unit_n")
        k(f"mul.lo.u32 {per_strip}, {units_m}, {w}")
        k(f"div.u32 {strip}, {unit}, {per_strip}")
        k(f"mul.lo.u32 {first}, {strip}, {w}")
        k(f"sub.u32 {width}, %units_n, {first}")
        k(f"min.u32 {width}, {width}, {w}")
        k(f"rem.u32 {inner}, {unit}, {per_strip}")
        k(f"div.u32 {um}, {inner}, {width}")
        rem = k.tmp("u32", "n_in_strip")
        k(f"rem.u32 {rem}, {inner}, {width}")
        k(f"add.u32 {un}, {first}, {rem}")
        return um, un

    def _tile_regs(self, k: Kernel, role: str) -> Tile:
        c = self.c
        t = Tile(group=k.reg("u32", f"{role}_group"), m_blk=k.reg("u32", f"{role}_m_blk"),
                 n_blk=k.reg("u32", f"{role}_n_blk"), m0=k.reg("u32", f"{role}_m0"),
                 n0=k.reg("u32", f"{role}_n0"), row=k.reg("u32", f"{role}_row"),
                 ghost=k.reg("pred", f"{role}_ghost") if c.cluster > 1 else None, mc_valid=None)
        return t

    def _expand_pair(self, k: Kernel, t: Tile, um: str, un: str, m_limit: str) -> None:
        """Unit (um, un) -> this CTA's blocks; a rank past the end becomes a ghost."""
        if self.c.cluster == 1:
            k(f"mov.u32 {t.m_blk}, {um}")
            k(f"mov.u32 {t.n_blk}, {un}")
            return
        if self.pair_on_n:        # same M block, N blocks 2u and 2u + 1
            k(f"mov.u32 {t.m_blk}, {um}")
            mine, pair_idx, limit = t.n_blk, un, "%n_blocks"
        else:                     # same N block, M blocks 2u and 2u + 1
            k(f"mov.u32 {t.n_blk}, {un}")
            mine, pair_idx, limit = t.m_blk, um, m_limit
        k(f"mad.lo.u32 {mine}, {pair_idx}, 2, %cta_rank", "this CTA's half of the pair")
        k(f"setp.ge.u32 {t.ghost}, {mine}, {limit}")
        k(f"@{t.ghost} sub.u32 {mine}, {mine}, 1", "past the end: redo the peer's tile, no store")

    def _finish(self, k: Kernel, t: Tile, row_base: str | None = None) -> None:
        c = self.c
        k(f"mul.lo.u32 {t.m0}, {t.m_blk}, {c.block_m}")
        k(f"mul.lo.u32 {t.n0}, {t.n_blk}, {c.block_n}")
        if row_base is None:
            k(f"mov.u32 {t.row}, {t.m0}")
        else:
            k(f"add.u32 {t.row}, {row_base}, {t.m0}")

    # ---- Python reference ----------------------------------------------------------------------
    def _units_of(self, m_blocks: int, n_blocks: int) -> tuple[int, int]:
        um = _ceil(m_blocks, 2) if self.pair_on_m else m_blocks
        un = _ceil(n_blocks, 2) if self.pair_on_n else n_blocks
        return um, un

    def _raster(self, u: int, units_m: int, units_n: int) -> tuple[int, int]:
        strip, inner = divmod(u, units_m * self.strip)
        first = strip * self.strip
        width = min(units_n - first, self.strip)
        return inner // width, first + inner % width

    def _pair(self, rank: int, um: int, un: int, m_blocks: int, n_blocks: int) -> tuple[int, int, bool]:
        if self.c.cluster == 1:
            return um, un, False
        if self.pair_on_n:
            mine = 2 * un + rank
            return um, mine - (mine >= n_blocks), mine >= n_blocks
        mine = 2 * um + rank
        return mine - (mine >= m_blocks), un, mine >= m_blocks

    def _ctas(self, grid: int):
        """(cta, rank, first unit, unit step) for each CTA of the grid."""
        cl = self.c.cluster
        for cta in range(grid):
            yield cta, cta % cl, cta // cl, grid // cl

    def tiles(self, grid: int, m: int, n: int, groups: int = 1, layout: Sequence[int] | None = None
              ) -> dict[int, list[TileRecord]]:
        """cta -> the tiles it computes, in order, as the kernel walks them."""
        raise NotImplementedError


class Dense(Scheduler):
    """One problem: M x N in BM x BN tiles."""
    kind = "dense"
    b_is_grouped = False

    def emit_setup(self, k: Kernel) -> None:
        super().emit_setup(k)
        self._emit_whole_m_counts(k)

    def emit_next(self, k: Kernel, role: str, done: str) -> Tile:
        unit = f"%{role}_unit"
        p = k.tmp("pred", "p_no_work")
        k(f"setp.ge.u32 {p}, {unit}, %num_units")
        k(f"@{p} bra.uni {done}")
        t = self._tile_regs(k, role)
        um, un = self._rasterize(k, unit, "%units_m")
        self._expand_pair(k, t, um, un, "%m_blocks")
        k(f"mov.u32 {t.group}, 0")
        self._finish(k, t)
        return t

    def emit_sfb_row(self, k: Kernel, t: Tile) -> str:
        r = k.tmp("u32", "sfb_row")
        k(f"shr.u32 {r}, {t.n0}, 7")
        return r

    def tiles(self, grid, m, n, groups=1, layout=None):
        c = self.c
        mb, nb = _ceil(m, c.block_m), _ceil(n, c.block_n)
        um, un = self._units_of(mb, nb)
        out = {}
        for cta, rank, start, step in self._ctas(grid):
            out[cta] = []
            for u in range(start, um * un, step):
                a, b = self._raster(u, um, un)
                mi, ni, ghost = self._pair(rank, a, b, mb, nb)
                out[cta].append(TileRecord(0, mi, ni, mi * c.block_m, ghost, True, c.block_m))
        return out


class Contiguous(Scheduler):
    """Grouped along M, rows of all groups concatenated: A [M_sum, K], D [M_sum, N], B [G, N, K].

    ``m_indices[row]`` names each row's group (-1: padding); every group starts at a
    multiple of ``CONTIGUOUS_ALIGNMENT`` rows, so a BM-row block (BM dividing it) holds one
    group's rows and maybe trailing padding, and the group of a block is that of its first
    row. A block whose first row has no group (-1, or any index >= G) is skipped: not loaded,
    not computed, not stored. With B multicast the pair is two M blocks: when one of them is
    skipped its CTA becomes a ghost of the other; when both have groups but different ones,
    the pair loads B separately (``mc_valid`` false).
    """
    kind = "contiguous"
    layout_param = "m_indices"

    def params(self) -> list[Param]:
        return [Param("layout", "u64", "m_indices: int32 [M_sum], each row's group or -1", array="m_indices")]

    def emit_setup(self, k: Kernel) -> None:
        super().emit_setup(k)
        self._emit_whole_m_counts(k)

    def _group_of(self, k: Kernel, blk: str) -> str:
        g, addr = k.tmp("u32", "blk_group"), k.tmp("u64", "idx_addr")
        row = k.tmp("u32", "blk_row")
        k(f"mul.lo.u32 {row}, {blk}, {self.c.block_m}")
        k(f"mad.wide.u32 {addr}, {row}, 4, %layout_ptr")
        k(f"ld.global.nc.u32 {g}, [{addr}]")
        return g

    def emit_next(self, k: Kernel, role: str, done: str) -> Tile:
        unit = f"%{role}_unit"
        top, found = k.fresh_label(f"{role}_next"), k.fresh_label(f"{role}_found")
        t = self._tile_regs(k, role)
        k.label(top)
        p = k.tmp("pred", "p_no_work")
        k(f"setp.ge.u32 {p}, {unit}, %num_units")
        k(f"@{p} bra.uni {done}")
        um, un = self._rasterize(k, unit, "%units_m")
        skip = k.tmp("pred", "p_skip")
        if not self.pair_on_m:
            self._expand_pair(k, t, um, un, "%m_blocks")
            k(f"mov.u32 {t.group}, {self._group_of(k, t.m_blk)}")
            k(f"setp.ge.u32 {skip}, {t.group}, %groups", "padding block (-1) or a bad index: no work")
        else:
            self._pair_on_m_groups(k, role, t, um, un, skip)
        k(f"@!{skip} bra.uni {found}")
        self.emit_advance(k, role)
        k(f"bra.uni {top}")
        k.label(found)
        self._finish(k, t)
        return t

    def _pair_on_m_groups(self, k: Kernel, role: str, t: Tile, um: str, un: str, skip: str) -> None:
        """B multicast: blocks 2u and 2u + 1 of one N block, each with its own group."""
        t.mc_valid = k.reg("pred", f"{role}_mc_valid")
        k(f"mov.u32 {t.n_blk}, {un}")
        b0 = k.tmp("u32", "pair_blk")
        k(f"shl.b32 {b0}, {um}, 1")
        g0 = self._group_of(k, b0)
        g1, b1 = k.tmp("u32", "blk_group"), k.tmp("u32", "pair_blk")
        k(f"add.u32 {b1}, {b0}, 1")
        k(f"mov.u32 {g1}, {NO_GROUP}")
        has1, no_second = k.tmp("pred", "p_has1"), k.fresh_label("no_second_block")
        k(f"setp.lt.u32 {has1}, {b1}, %m_blocks")
        k(f"@!{has1} bra.uni {no_second}")
        k(f"mov.u32 {g1}, {self._group_of(k, b1)}")
        k.label(no_second)
        none0 = k.tmp("pred", "p_none")
        k(f"setp.ge.u32 {none0}, {g0}, %groups")
        k(f"setp.ge.u32 {skip}, {g1}, %groups")
        k(f"setp.eq.u32 {t.mc_valid}, {g0}, {g1}")
        k(f"or.pred {t.mc_valid}, {t.mc_valid}, {skip}", "one block idle: its CTA ghosts the other")
        k(f"or.pred {t.mc_valid}, {t.mc_valid}, {none0}")
        k(f"and.pred {skip}, {skip}, {none0}", "both blocks idle: nothing to do")
        k(f"selp.u32 {t.group}, {g0}, {g1}, %p_rank0")
        k(f"add.u32 {t.m_blk}, {b0}, %cta_rank", "this CTA's half of the pair")
        k(f"setp.ge.u32 {t.ghost}, {t.group}, %groups")
        k(f"@{t.ghost} add.u32 {t.m_blk}, {b0}, %peer_rank", "idle block: redo the peer's tile, no store")
        k(f"@{t.ghost} selp.u32 {t.group}, {g1}, {g0}, %p_rank0")

    def tiles(self, grid, m, n, groups=1, layout=None):
        c = self.c
        idx = list(layout)
        mb, nb = _ceil(m, c.block_m), _ceil(n, c.block_n)
        um, un = self._units_of(mb, nb)

        def group(blk):
            g = idx[blk * c.block_m] if blk < mb else -1
            return g if 0 <= g < groups else None

        out = {}
        for cta, rank, start, step in self._ctas(grid):
            out[cta] = []
            for u in range(start, um * un, step):
                a, b = self._raster(u, um, un)
                if not self.pair_on_m:
                    mi, ni, ghost = self._pair(rank, a, b, mb, nb)
                    g = group(mi)
                    if g is not None:
                        out[cta].append(TileRecord(g, mi, ni, mi * c.block_m, ghost, True, c.block_m))
                    continue
                g0, g1 = group(2 * a), group(2 * a + 1)
                if g0 is None and g1 is None:
                    continue
                mine = (g0, g1)[rank]
                ghost = mine is None
                blk = 2 * a + (rank ^ ghost)
                g = (g0, g1)[rank ^ ghost]
                out[cta].append(TileRecord(g, blk, b, blk * c.block_m, ghost,
                                           g0 is None or g1 is None or g0 == g1, c.block_m))
        return out


class Segmented(Scheduler):
    """Groups walked one after another, each with its own row count read on the device.

    The unit walk keeps the current group and the first unit of it; since a CTA's units only
    grow, it moves forward through the groups, reading each group's size once.
    """

    def emit_begin(self, k: Kernel, role: str) -> None:
        super().emit_begin(k, role)
        for r in ("seg", "seg_first", "seg_end", "seg_units_m", "seg_m_blocks", "seg_row0"):
            k.reg("u32", f"{role}_{r}")
        k(f"mov.u32 %{role}_seg, {NO_GROUP}", "before group 0")
        k(f"mov.u32 %{role}_seg_end, 0")
        self._begin_extra(k, role)

    def _begin_extra(self, k: Kernel, role: str) -> None:
        pass

    def _emit_segment_rows(self, k: Kernel, role: str) -> str:
        """Rows of group %{role}_seg (u32 register); may also set %{role}_seg_row0."""
        raise NotImplementedError

    def emit_next(self, k: Kernel, role: str, done: str) -> Tile:
        c = self.c
        r = {x: f"%{role}_{x}" for x in ("unit", "seg", "seg_first", "seg_end", "seg_units_m",
                                         "seg_m_blocks", "seg_row0")}
        seek, found = k.fresh_label(f"{role}_seek"), k.fresh_label(f"{role}_in_group")
        k.label(seek)
        p = k.tmp("pred", "p_in_group")
        k(f"setp.lt.u32 {p}, {r['unit']}, {r['seg_end']}")
        k(f"@{p} bra.uni {found}")
        k(f"add.u32 {r['seg']}, {r['seg']}, 1", "the unit lies past this group: next group")
        pd = k.tmp("pred", "p_no_work")
        k(f"setp.ge.u32 {pd}, {r['seg']}, %groups")
        k(f"@{pd} bra.uni {done}")
        k(f"mov.u32 {r['seg_first']}, {r['seg_end']}")
        rows = self._emit_segment_rows(k, role)
        k(f"add.u32 {r['seg_m_blocks']}, {rows}, {c.block_m - 1}")
        k(f"div.u32 {r['seg_m_blocks']}, {r['seg_m_blocks']}, {c.block_m}")
        if self.pair_on_m:
            k(f"add.u32 {r['seg_units_m']}, {r['seg_m_blocks']}, 1")
            k(f"shr.u32 {r['seg_units_m']}, {r['seg_units_m']}, 1")
        else:
            k(f"mov.u32 {r['seg_units_m']}, {r['seg_m_blocks']}")
        k(f"mad.lo.u32 {r['seg_end']}, {r['seg_units_m']}, %units_n, {r['seg_first']}")
        k(f"bra.uni {seek}")
        k.label(found)
        t = self._tile_regs(k, role)
        u = k.tmp("u32", "unit_in_group")
        k(f"sub.u32 {u}, {r['unit']}, {r['seg_first']}")
        um, un = self._rasterize(k, u, r["seg_units_m"])
        self._expand_pair(k, t, um, un, r["seg_m_blocks"])
        k(f"mov.u32 {t.group}, {r['seg']}")
        self._finish(k, t, self._row_base(role))
        return t

    def _row_base(self, role: str) -> str | None:
        return None

    def _stored_rows(self, left: int) -> int:
        """Rows a block stores, given the group's rows from its first one on."""
        return self.c.block_m            # whole tiles: the per-group maps clip at M_max

    def _group_rows(self, groups: int, m: int, layout: Sequence[int]) -> list[tuple[int, int]]:
        """(first row, rows) of each group, as the kernel reads them."""
        raise NotImplementedError

    def tiles(self, grid, m, n, groups=1, layout=None):
        c = self.c
        nb = _ceil(n, c.block_n)
        segs = []
        first = 0
        for g, (row0, rows) in enumerate(self._group_rows(groups, m, layout)):
            mb = _ceil(rows, c.block_m)
            um, un = self._units_of(mb, nb)
            segs.append((g, row0, rows, mb, um, un, first))
            first += um * un
        out = {}
        for cta, rank, start, step in self._ctas(grid):
            out[cta] = []
            u = start
            for g, row0, rows, mb, um, un, first in segs:
                while u < first + um * un:
                    a, b = self._raster(u - first, um, un)
                    mi, ni, ghost = self._pair(rank, a, b, mb, nb)
                    out[cta].append(TileRecord(g, mi, ni, row0 + mi * c.block_m, ghost, True,
                                               self._stored_rows(rows - mi * c.block_m)))
                    u += step
        return out


class Masked(Segmented):
    """A [G, M_max, K], D [G, M_max, N]: group g computes its first ``masked_m[g]`` rows.

    ``masked_m`` lives on the device and is read only here, so one launch serves any row
    counts (a CUDA graph can replay it after they change). Counts are clamped to M_max;
    tiles wholly past a group's count are neither computed nor stored. The per-group maps
    are 3-D, so a partial tile never touches the next group's rows.
    """
    kind = "masked"
    layout_param = "masked_m"
    a_is_grouped = True
    groups_multiply_units = True

    def params(self) -> list[Param]:
        return [Param("layout", "u64", "masked_m: int32 [G], rows to compute per group", array="masked_m")]

    def _emit_segment_rows(self, k: Kernel, role: str) -> str:
        rows, addr = k.tmp("u32", "group_rows"), k.tmp("u64", "mm_addr")
        k(f"mad.wide.u32 {addr}, %{role}_seg, 4, %layout_ptr")
        k(f"ld.global.nc.u32 {rows}, [{addr}]")
        k(f"min.u32 {rows}, {rows}, %shape_m", "never past M_max (a negative count reads as huge)")
        return rows

    def _group_rows(self, groups, m, layout):
        return [(0, min(int(x) & 0xFFFFFFFF, m)) for x in list(layout)[:groups]]


class GroupEnds(Segmented):
    """The contiguous layout given by group ends instead of per-row indices (DeepGEMM's
    "psum" layout): group g owns rows [align(ends[g-1], 128), ends[g]) of A [M_sum, K] and
    D [M_sum, N]; rows between groups belong to none and are never written, so a block that
    ends inside a group stores only its valid rows (``Tile.rows``)."""
    kind = "contiguous_psum"
    layout_param = "group_ends"

    def params(self) -> list[Param]:
        return [Param("layout", "u64", "group_ends: int32 [G], the row after each group's last",
                      array="group_ends"),
                Param("d", "u64", "D's address, for stores that clip to a group's last row", array="out"),
                Param("d_stride", "u32", "D's row stride in elements", value="out_stride")]

    def _begin_extra(self, k: Kernel, role: str) -> None:
        k.reg("u32", f"{role}_prev_end")
        k(f"mov.u32 %{role}_prev_end, 0")

    def _emit_segment_rows(self, k: Kernel, role: str) -> str:
        end, addr, rows = k.tmp("u32", "group_end"), k.tmp("u64", "end_addr"), k.tmp("u32", "group_rows")
        k(f"mad.wide.u32 {addr}, %{role}_seg, 4, %layout_ptr")
        k(f"ld.global.nc.u32 {end}, [{addr}]")
        k(f"min.s32 {end}, {end}, %shape_m", "clamp to [0, M_sum]")
        k(f"max.s32 {end}, {end}, 0")
        a = CONTIGUOUS_ALIGNMENT
        k(f"add.u32 %{role}_seg_row0, %{role}_prev_end, {a - 1}", f"the group starts at a multiple of {a}")
        k(f"and.b32 %{role}_seg_row0, %{role}_seg_row0, {-a & 0xFFFFFFFF}")
        k(f"sub.s32 {rows}, {end}, %{role}_seg_row0")
        k(f"max.s32 {rows}, {rows}, 0")
        k(f"mov.u32 %{role}_prev_end, {end}")
        return rows

    def _row_base(self, role: str) -> str:
        return f"%{role}_seg_row0"

    def _stored_rows(self, left: int) -> int:
        return min(self.c.block_m, left)   # rows past the group's end are another group's or none

    def emit_next(self, k: Kernel, role: str, done: str) -> Tile:
        t = super().emit_next(k, role, done)
        t.rows = k.reg("u32", f"{role}_rows")
        k(f"sub.u32 {t.rows}, %{role}_prev_end, {t.row}", "rows left in the group from this block")
        k(f"min.u32 {t.rows}, {t.rows}, {self.c.block_m}")
        return t

    def _group_rows(self, groups, m, layout):
        out, prev = [], 0
        a = CONTIGUOUS_ALIGNMENT
        for x in list(layout)[:groups]:
            end = max(min(int(x), m), 0)
            row0 = _ceil(prev, a) * a
            out.append((row0, max(end - row0, 0)))
            prev = end
        return out


class KGrouped(Scheduler):
    """Grouped along K (the weight gradients of a layer of experts): group g multiplies
    A_g [M, k_g] by B_g [N, k_g]^T into its own slice of D [G, M, N].

    Every group has the same M x N tiles, so unit u is tile u % T of group u // T (T tiles a
    group). The groups' A and B lie back to back in flat arrays, each with row stride k_g, so
    each group has its own two tensor maps: arrays of G maps among the parameters, encoded at
    launch from the groups' K (``per_group``), as are each group's K blocks and its first row
    in the stacked MN-major scales. A group with no K block is skipped: its slice of D is
    neither read nor written.
    """
    kind = "k_grouped"
    layout_param = None
    b_is_grouped = False
    out_is_grouped = True
    groups_multiply_units = True

    def params(self) -> list[Param]:
        return [Param("group_kb", "u32", "K blocks of each group", value="ceil_div(k_g, 128)", per_group=True),
                Param("group_kb_start", "u32", "K blocks before each group: its first row of the scales",
                      value="kb_start_g", per_group=True)]

    def operand_maps(self) -> tuple[TensorMap, TensorMap]:
        c = self.c
        a = TensorMap("tmap_a", "a", "uint8", ("k_g", "m"), ("k_g",), (BLOCK_K, c.block_m), 128,
                      c.block_m * BLOCK_K, per_group=True, offset="m * k_start_g")
        b = TensorMap("tmap_b", "b", "uint8", ("k_g", "n"), ("k_g",), (BLOCK_K, c.block_n), 128,
                      c.block_n * BLOCK_K, per_group=True, offset="n * k_start_g")
        return a, b

    def sfa_map(self) -> TensorMap:
        c = self.c
        return TensorMap("tmap_sfa", "a_scales", "float32", ("m", "kb_total"), ("sfa_stride * 4",),
                         (c.block_m, 1), 0, c.block_m * 4)

    def sfb_map(self) -> TensorMap:
        c = self.c
        return TensorMap("tmap_sfb", "b_scales", "float32", ("n", "kb_total"), ("sfb_stride * 4",),
                         (c.block_n, 1), 0, c.block_n * 4)

    def emit_setup(self, k: Kernel) -> None:
        super().emit_setup(k)
        self._emit_whole_m_counts(k)
        k.reg("u32", "tiles_per_group")
        k("mov.u32 %tiles_per_group, %num_units")
        k("mul.lo.u32 %num_units, %num_units, %groups")
        for name in ("group_kb", "group_kb_start"):
            k.reg("u64", f"{name}_addr")
            k(f"mov.u64 %{name}_addr, {k.param(name)}", "an array in parameter space, read at run-time indices")

    def emit_next(self, k: Kernel, role: str, done: str) -> Tile:
        unit = f"%{role}_unit"
        top, found = k.fresh_label(f"{role}_next"), k.fresh_label(f"{role}_found")
        t = self._tile_regs(k, role)
        t.k_blocks, t.kb_base = k.reg("u32", f"{role}_kb_count"), k.reg("u32", f"{role}_kb_base")
        k.label(top)
        p = k.tmp("pred", "p_no_work")
        k(f"setp.ge.u32 {p}, {unit}, %num_units")
        k(f"@{p} bra.uni {done}")
        k(f"div.u32 {t.group}, {unit}, %tiles_per_group")
        addr = k.tmp("u64", "group_param")
        k(f"mad.wide.u32 {addr}, {t.group}, 4, %group_kb_addr")
        k(f"ld.param.u32 {t.k_blocks}, [{addr}]")
        empty = k.tmp("pred", "p_empty_group")
        k(f"setp.ne.u32 {empty}, {t.k_blocks}, 0")
        k(f"@{empty} bra.uni {found}")
        self.emit_advance(k, role)
        k(f"bra.uni {top}", "a group with K = 0: its slice stays as it was")
        k.label(found)
        local = k.tmp("u32", "unit_in_group")
        k(f"mul.lo.u32 {local}, {t.group}, %tiles_per_group")
        k(f"sub.u32 {local}, {unit}, {local}")
        um, un = self._rasterize(k, local, "%units_m")
        self._expand_pair(k, t, um, un, "%m_blocks")
        self._finish(k, t)
        k(f"mad.wide.u32 {addr}, {t.group}, 4, %group_kb_start_addr")
        k(f"ld.param.u32 {t.kb_base}, [{addr}]")
        for op in ("a", "b"):
            r = k.reg("u64", f"{role}_tmap_{op}")
            k(f"mad.wide.u32 {r}, {t.group}, 128, %tmap_{op}", f"group's map of {op.upper()}")
            t.tmaps[op] = r
        return t

    def tiles(self, grid, m, n, groups=1, layout=None):
        """``layout``: the groups' K."""
        c = self.c
        mb, nb = _ceil(m, c.block_m), _ceil(n, c.block_n)
        per_group = mb * nb
        ks = list(layout)[:groups]
        out = {}
        for cta, rank, start, step in self._ctas(grid):
            out[cta] = []
            for u in range(start, per_group * groups, step):
                g, local = divmod(u, per_group)
                if _ceil(ks[g], BLOCK_K) == 0:
                    continue
                a, b = self._raster(local, mb, nb)
                out[cta].append(TileRecord(g, a, b, a * c.block_m, False, True, c.block_m))
        return out


SCHEDULERS = {cls.kind: cls for cls in (Dense, Contiguous, Masked, GroupEnds, KGrouped)}


def for_config(cfg: GemmConfig) -> Scheduler:
    return SCHEDULERS[cfg.kind](cfg)
