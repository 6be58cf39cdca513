"""Emitters for the PTX idioms the GEMM kernels repeat.

Each takes the ``Kernel`` being built and the registers it works on, and declares its own
temporaries with ``k.tmp`` / ``k.fresh_label`` (numbered per hint), so two emitters never
share a register or a label by accident. The forms chosen here are the ones measured fast:
see the notes on scopes in ``wait`` and ``arrive_remote``.
"""
from __future__ import annotations

from typing import Sequence

from .builder import Kernel

DEBUG_SPIN_LIMIT = 1 << 26      # try_wait rounds before a debug build reports and traps
DEBUG_CODES = {"full": 1, "empty": 2, "c": 3}

TMA_LOAD = "cp.async.bulk.tensor.{rank}d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
TMA_STORE = "cp.async.bulk.tensor.{rank}d.global.shared::cta.bulk_group"
TMA_REDUCE_ADD = "cp.reduce.async.bulk.tensor.{rank}d.global.shared::cta.add.tile.bulk_group"


# ---- mbarriers -----------------------------------------------------------------------------
def wait(k: Kernel, bar: str, parity: str, what: str, bar_index: str, debug: bool) -> None:
    """Spin on ``mbarrier.try_wait.parity``; a debug build gives up after a bound, reports
    (block, warp, barrier kind, stage, parity) and traps.

    The default .acquire.cta also serves barriers the peer CTA arrives on: .cluster scope
    would put a CCTL.IVALL (L1 invalidate) after every successful wait."""
    top, done = k.fresh_label(f"wait_{what}"), k.fresh_label(f"waited_{what}")
    p = k.tmp("pred", "p_ready")
    if debug:
        spins = k.tmp("u32", "spins")
        k(f"mov.u32 {spins}, 0")
    k.label(top)
    k(f"mbarrier.try_wait.parity.shared::cta.b64 {p}, [{bar}], {parity}")
    k(f"@{p} bra.uni {done}")
    if debug:
        k(f"add.u32 {spins}, {spins}, 1")
        over = k.tmp("pred", "p_over")
        k(f"setp.lt.u32 {over}, {spins}, {DEBUG_SPIN_LIMIT}")
        k(f"@{over} bra.uni {top}")
        debug_report(k, DEBUG_CODES[what], bar_index, parity)
    else:
        k(f"bra.uni {top}")
    k.label(done)


def debug_report(k: Kernel, code: int, bar_index: str, parity: str) -> None:
    """Write (block, warp, barrier kind, stage, parity) to the debug buffer and trap."""
    buf = k.reg("u64", "debug_buf")
    blk, wid = k.tmp("u32", "dbg"), k.tmp("u32", "dbg")
    k(f"mov.u32 {blk}, %ctaid.x")
    k(f"mov.u32 {wid}, %tid.x")
    k(f"shr.u32 {wid}, {wid}, 5")
    p = k.tmp("pred", "p_dbg")
    k(f"setp.ne.u64 {p}, {buf}, 0")
    ok = k.tmp("u32", "dbg")
    k(f"@{p} atom.global.cas.b32 {ok}, [{buf}], 0, 1")
    k(f"@{p} st.global.v4.u32 [{buf}+16], {{{blk}, {wid}, {code}, {bar_index}}}")
    k(f"@{p} st.global.u32 [{buf}+32], {parity}")
    k("membar.sys")
    k("trap")


def arrive(k: Kernel, bar: str, pred: str | None = None) -> None:
    guard = f"@{pred} " if pred else ""
    k(f"{guard}mbarrier.arrive.shared::cta.b64 _, [{bar}]")


def arrive_remote(k: Kernel, bar: str, pred: str | None = None, comment: str | None = None) -> None:
    """Arrive on a barrier of another CTA of the cluster (``bar`` from ``mapa``).

    Default .release.cta, not .cluster: a cluster-scope release is a MEMBAR.ALL.GPU per
    arrive (2x slower kernels); callers arrive only after the stage's reads completed."""
    guard = f"@{pred} " if pred else ""
    k(f"{guard}mbarrier.arrive.shared::cluster.b64 _, [{bar}]", comment)


def arrive_expect_tx(k: Kernel, bar: str, nbytes: int) -> None:
    k(f"mbarrier.arrive.expect_tx.shared::cta.b64 _, [{bar}], {nbytes}")


def advance_ring(k: Kernel, stage: str, phase: str, stages: int) -> None:
    """stage += 1; on wrapping to 0 the phase flips."""
    p = k.tmp("pred", "p_wrap")
    k(f"add.u32 {stage}, {stage}, 1")
    k(f"setp.eq.u32 {p}, {stage}, {stages}")
    k(f"@{p} mov.u32 {stage}, 0")
    k(f"@{p} xor.b32 {phase}, {phase}, 1")


# ---- TMA -----------------------------------------------------------------------------------
def tma_load(k: Kernel, tmap: str, dst: str, coords: Sequence[str], bar: str, *, pred: str | None = None,
             multicast_mask: str | None = None, comment: str | None = None) -> None:
    """A tiled bulk tensor load completing on ``bar``; with ``multicast_mask`` the same box
    lands at ``dst`` in every CTA of the mask and signals each one's ``bar``."""
    guard = f"@{pred} " if pred else ""
    op = TMA_LOAD.format(rank=len(coords))
    co = ", ".join(coords)
    if multicast_mask:
        k(f"{guard}{op}.multicast::cluster [{dst}], [{tmap}, {{{co}}}], [{bar}], {multicast_mask}", comment)
    else:
        k(f"{guard}{op} [{dst}], [{tmap}, {{{co}}}], [{bar}]", comment)


def tma_store(k: Kernel, tmap: str, src: str, coords: Sequence[str], reduce_add: bool = False) -> None:
    """Store a shared-memory box by TMA; ``reduce_add``: add it onto global memory instead
    (element-wise in L2, the box's bounds clipped like a store's)."""
    op = TMA_REDUCE_ADD if reduce_add else TMA_STORE
    k(f"{op.format(rank=len(coords))} [{tmap}, {{{', '.join(coords)}}}], [{src}]")


# ---- WGMMA and stmatrix ------------------------------------------------------------------------
SMEM_DESC_HI_128B = "0x40000040"   # SBO = 1024 B (8 rows x 128 B), LBO unused, 128-byte swizzle


def wgmma_desc(k: Kernel, addr_lo: str, offset16: int = 0) -> str:
    """A K-major, 128B-swizzled shared-memory matrix descriptor: ``addr_lo`` is the start
    address >> 4; ``offset16`` moves it along K in 16-byte units."""
    lo, d = k.tmp("u32", "dlo"), k.tmp("b64", "desc")
    k(f"add.u32 {lo}, {addr_lo}, {offset16}", f"+{offset16 * 16} bytes along K" if offset16 else None)
    k(f"mov.b64 {d}, {{{lo}, {SMEM_DESC_HI_128B}}}")
    return d


def ldmatrix(k: Kernel, addr: str, regs: Sequence[str]) -> None:
    """``ldmatrix`` of 2 or 4 8x8 b16 matrices: the inverse of ``stmatrix`` at the same addresses
    (each lane gets back the fragment it would have stored)."""
    shape = {2: "x2", 4: "x4"}[len(regs)]
    k(f"ldmatrix.sync.aligned.m8n8.{shape}.shared.b16 {{{', '.join(regs)}}}, [{addr}]")


def stmatrix(k: Kernel, addr: str, regs: Sequence[str]) -> None:
    """``stmatrix`` of 2 or 4 8x8 b16 matrices (one 32-bit register each per lane)."""
    shape = {2: "x2", 4: "x4"}[len(regs)]
    k(f"stmatrix.sync.aligned.m8n8.{shape}.shared.b16 [{addr}], {{{', '.join(regs)}}}")
