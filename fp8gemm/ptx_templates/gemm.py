"""PTX for the FP8 GEMM with fine-grained scaling (sm_90a).

    D[M, N] (bf16) = sum_k  A[M, k] (e4m3) * B[N, k] (e4m3) * sfa[m, k/128] * sfb[n/128, k/128]

Structure (see DESIGN.md section 3):
  * persistent grid; tiles walked in strips of ``STRIP`` N blocks so neighbours share A and B in L2
  * warpgroups 0..W-1 do the math, warpgroup W is the producer (one thread issues TMA)
  * S-stage shared-memory ring, ``full[s]`` (TMA bytes landed) and ``empty[s]`` (math done)
  * per 128-wide K block: 4 x ``wgmma m64nBNk32`` into a temporary accumulator, then the
    promotion ``final += tmp * (sfa[row] * sfb)`` on CUDA cores (two-level accumulation)
  * epilogue: bf16 via ``stmatrix`` into a swizzled tile, TMA store, waited one tile later
  * cluster 2 (optional): the two CTAs of a cluster work on neighbouring tiles that share A
    (same M block) or B (same N block); rank 0 loads the shared operand once and TMA multicasts
    it into both CTAs.  Each CTA's consumers release a stage on both CTAs' ``empty`` barriers,
    so neither producer refills a stage the other CTA is still reading.
"""
from __future__ import annotations

from ..config import BLOCK_K, GemmConfig
from .builder import Kernel

PRODUCER_REGS = 40
MATH_REGS = {1: 240, 2: 232}
STRIP = 16                      # N blocks per raster strip
DEBUG_SPIN_LIMIT = 1 << 26      # try_wait rounds before a debug build reports and traps

PARAMS = [("tmap_a", "tmap"), ("tmap_b", "tmap"), ("tmap_sfa", "tmap"), ("tmap_d", "tmap"),
          ("sfb", "u64"), ("layout", "u64"), ("debug", "u64"),
          ("m", "u32"), ("n", "u32"), ("k", "u32"), ("groups", "u32")]


class GemmGen:
    """Emits one kernel for one ``GemmConfig``."""

    def __init__(self, cfg: GemmConfig):
        self.c = cfg
        threads = cfg.threads
        self.k = Kernel(cfg.name, PARAMS, maxntid=threads, minnctapersm=1,
                        header_comment=f"FP8 GEMM {cfg}")
        self.k.global_decl(".extern .shared .align 1024 .b8 smem[];")
        self.bar_id = 0

    # ---- small helpers -------------------------------------------------------------------
    def const_pred(self):
        k = self.k
        pt, pf = k.reg("pred", "p_true"), k.reg("pred", "p_false")
        k(f"setp.eq.u32 {pt}, 0, 0")
        k(f"setp.ne.u32 {pf}, 0, 0")

    def wait(self, bar_addr: str, parity: str, what: str, bar_index: str) -> None:
        """Spin on ``mbarrier.try_wait.parity``; the debug build gives up after a bound.

        The default .acquire.cta also serves barriers the peer CTA arrives on: .cluster scope
        would put a CCTL.IVALL (L1 invalidate) after every successful wait."""
        k = self.k
        top, done = k.fresh_label(f"wait_{what}"), k.fresh_label(f"waited_{what}")
        p = k.tmp("pred", "p_ready")
        if self.c.debug:
            spins = k.tmp("u32", "spins")
            k(f"mov.u32 {spins}, 0")
        k.label(top)
        k(f"mbarrier.try_wait.parity.shared::cta.b64 {p}, [{bar_addr}], {parity}")
        k(f"@{p} bra.uni {done}")
        if self.c.debug:
            k(f"add.u32 {spins}, {spins}, 1")
            over = k.tmp("pred", "p_over")
            k(f"setp.lt.u32 {over}, {spins}, {DEBUG_SPIN_LIMIT}")
            k(f"@{over} bra.uni {top}")
            code = {"full": 1, "empty": 2}[what]
            self.debug_report(code, bar_index, parity)
        else:
            k(f"bra.uni {top}")
        k.label(done)

    def debug_report(self, code: int, bar_index: str, parity: str) -> None:
        """Write (block, warp, barrier kind, stage, parity) to the debug buffer and trap."""
        k = self.k
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

    def advance(self, stage: str, phase: str) -> None:
        k = self.k
        p = k.tmp("pred", "p_wrap")
        k(f"add.u32 {stage}, {stage}, 1")
        k(f"setp.eq.u32 {p}, {stage}, {self.c.stages}")
        k(f"@{p} mov.u32 {stage}, 0")
        k(f"@{p} xor.b32 {phase}, {phase}, 1")

    def unit_coords(self, unit: str, m_blk: str, n_blk: str, ghost: str) -> None:
        """Work unit -> this CTA's (m block, n block) and whether it is a ghost.

        Units are walked in strips of STRIP n-blocks, n fastest inside a strip, so the tiles
        running at the same time share A rows and B columns in L2.  Without a cluster a unit
        is one tile.  With multicast on A a unit is two N-neighbours (same M block) and this
        CTA takes n = 2u + rank; on B it is two M-neighbours.  When the pair sticks out past
        the last block, rank 1 recomputes rank 0's tile and does not store it (a ghost), so
        both CTAs always run the same number of pipeline stages.
        """
        c, k = self.c, self.k
        strip_w = STRIP // c.cluster if c.cluster > 1 and c.multicast_on_a else STRIP
        per_strip, strip, first, width, inner = (k.tmp("u32", n) for n in
                                                  ("per_strip", "strip", "first_n", "width", "inner"))
        um, un = k.tmp("u32", "unit_m"), k.tmp("u32", "unit_n")
        k(f"mul.lo.u32 {per_strip}, %units_m, {strip_w}")
        k(f"div.u32 {strip}, {unit}, {per_strip}")
        k(f"mul.lo.u32 {first}, {strip}, {strip_w}")
        k(f"sub.u32 {width}, %units_n, {first}")
        k(f"min.u32 {width}, {width}, {strip_w}")
        k(f"rem.u32 {inner}, {unit}, {per_strip}")
        k(f"div.u32 {um}, {inner}, {width}")
        rem = k.tmp("u32", "n_in_strip")
        k(f"rem.u32 {rem}, {inner}, {width}")
        k(f"add.u32 {un}, {first}, {rem}")
        if c.cluster == 1:
            k(f"mov.u32 {m_blk}, {um}")
            k(f"mov.u32 {n_blk}, {un}")
            k(f"setp.ne.u32 {ghost}, 0, 0")
            return
        if c.multicast_on_a:      # same M block, N blocks 2u and 2u + 1
            k(f"mov.u32 {m_blk}, {um}")
            mine, pair_idx, limit = n_blk, un, "%n_blocks"
        else:                     # same N block, M blocks 2u and 2u + 1
            k(f"mov.u32 {n_blk}, {un}")
            mine, pair_idx, limit = m_blk, um, "%m_blocks"
        k(f"mad.lo.u32 {mine}, {pair_idx}, 2, %cta_rank", "this CTA's half of the pair")
        k(f"setp.ge.u32 {ghost}, {mine}, {limit}")
        k(f"@{ghost} sub.u32 {mine}, {mine}, 1", "past the end: redo the peer's tile, no store")

    # ---- the kernel ------------------------------------------------------------------------
    def build(self) -> Kernel:
        c, k = self.c, self.k
        lay = c.smem_layout
        k.stage("setup: parameters, shared-memory map, tile counts")
        self.const_pred()
        for name in ("m", "n", "k", "groups"):
            k.load_param("u32", f"shape_{name}", name)
        k.load_param("u64", "sfb_ptr", "sfb")
        k.load_param("u64", "debug_buf", "debug")
        for t in ("a", "b", "sfa", "d"):
            r = k.reg("u64", f"tmap_{t}")
            k(f"mov.u64 {r}, {k.param('tmap_' + t)}")
            k(f"cvta.param.u64 {r}, {r}")
        base = k.reg("u32", "smem_base")
        k(f"mov.u32 {base}, smem")
        for region in ("d", "a", "b", "sfa", "bar"):
            r = k.reg("u32", f"smem_{region}")
            k(f"add.u32 {r}, {base}, {lay[region]}")
        k.reg("u32", "k_blocks")
        k.reg("u32", "m_blocks")
        k.reg("u32", "n_blocks")
        k.reg("u32", "num_tiles")
        k(f"add.u32 %k_blocks, %shape_k, {BLOCK_K - 1}")
        k(f"shr.u32 %k_blocks, %k_blocks, 7")
        k(f"add.u32 %m_blocks, %shape_m, {c.block_m - 1}")
        k(f"div.u32 %m_blocks, %m_blocks, {c.block_m}")
        k(f"add.u32 %n_blocks, %shape_n, {c.block_n - 1}")
        k(f"div.u32 %n_blocks, %n_blocks, {c.block_n}")
        k.comment("work units: tiles, or tile pairs that share an operand when clustered")
        for r in ("units_m", "units_n", "num_units", "unit_start", "unit_step"):
            k.reg("u32", r)
        k("mov.u32 %units_m, %m_blocks")
        k("mov.u32 %units_n, %n_blocks")
        if c.cluster == 1:
            k("mov.u32 %unit_start, %ctaid.x")
            k("mov.u32 %unit_step, %nctaid.x")
        else:
            pair_dim = "%units_n" if c.multicast_on_a else "%units_m"
            k(f"add.u32 {pair_dim}, {pair_dim}, 1")
            k(f"shr.u32 {pair_dim}, {pair_dim}, 1")
            k("mov.u32 %unit_start, %clusterid.x")
            k("mov.u32 %unit_step, %nclusterid.x")
            k.reg("u32", "cta_rank")
            k("mov.u32 %cta_rank, %cluster_ctarank")
            k.reg("pred", "p_rank0")
            k("setp.eq.u32 %p_rank0, %cta_rank, 0")
        k("mul.lo.u32 %num_units, %units_m, %units_n")
        thread, warp, lane = k.reg("u32", "thread"), k.reg("u32", "warp"), k.reg("u32", "lane")
        k(f"mov.u32 {thread}, %tid.x")
        k(f"shr.u32 {warp}, {thread}, 5")
        k(f"and.b32 {lane}, {thread}, 31")

        k.stage("barrier init (first producer thread), then everyone syncs")
        producer_first = 128 * c.math_warpgroups
        p_init = k.reg("pred", "p_init")
        k(f"setp.eq.u32 {p_init}, {thread}, {producer_first}")
        k(f"@!{p_init} bra.uni L_init_done")
        for t in ("a", "b", "sfa", "d"):
            k(f"prefetch.tensormap [%tmap_{t}]")
        for s in range(c.stages):
            k(f"mbarrier.init.shared::cta.b64 [%smem_bar+{8 * s}], 1", f"full[{s}]: the producer's arrive + TMA bytes")
            k(f"mbarrier.init.shared::cta.b64 [%smem_bar+{8 * (c.stages + s)}], {4 * c.math_warpgroups * c.cluster}",
              f"empty[{s}]: one arrive per math warp" + (" of both CTAs" if c.cluster > 1 else ""))
        k("fence.mbarrier_init.release.cluster")
        k("fence.proxy.async.shared::cta")
        k.label("L_init_done")
        if c.cluster == 1:
            k("bar.sync 0")
        else:
            k.comment("both CTAs' barriers must exist before either CTA signals or multicasts into the other")
            k("barrier.cluster.arrive.release.aligned")
            k("barrier.cluster.wait.acquire.aligned")
            k.reg("u32", "peer_bar")
            k.reg("u32", "peer_rank")
            k("xor.b32 %peer_rank, %cta_rank, 1")
            k("mapa.shared::cluster.u32 %peer_bar, %smem_bar, %peer_rank", "the peer CTA's barrier block")

        p_prod = k.reg("pred", "p_producer")
        k(f"setp.ge.u32 {p_prod}, {thread}, {producer_first}")
        k("@%p_producer bra.uni L_producer")
        self.math()
        self.producer()
        return k

    # ---- producer warpgroup ----------------------------------------------------------------
    def producer(self) -> None:
        c, k = self.c, self.k
        k.stage("PRODUCER warpgroup: give registers away; one thread issues every TMA load")
        k.label("L_producer")
        k(f"setmaxnreg.dec.sync.aligned.u32 {PRODUCER_REGS}")
        p_issuer = k.reg("pred", "p_issuer")
        k(f"setp.eq.u32 {p_issuer}, %thread, {128 * c.math_warpgroups}")
        k("@!%p_issuer bra.uni L_exit")
        stage, phase = k.reg("u32", "pstage"), k.reg("u32", "pphase")
        k(f"mov.u32 {stage}, 0")
        k(f"mov.u32 {phase}, 0")
        tile = k.reg("u32", "punit")
        k(f"mov.u32 {tile}, %unit_start")
        tx_bytes = c.block_m * BLOCK_K + c.block_n * BLOCK_K + c.block_m * 4
        if c.cluster > 1:
            k.reg("b16", "mc_mask")
            k(f"mov.b16 %mc_mask, {(1 << c.cluster) - 1}", "both CTAs of the cluster")
        k.label("L_prod_tile")
        p_done = k.reg("pred", "p_prod_done")
        k(f"setp.ge.u32 {p_done}, {tile}, %num_units")
        k(f"@{p_done} bra.uni L_prod_drain")
        m_blk, n_blk = k.reg("u32", "pm_blk"), k.reg("u32", "pn_blk")
        self.unit_coords(tile, m_blk, n_blk, k.reg("pred", "p_pghost"))
        m0, n0 = k.reg("u32", "prod_m0"), k.reg("u32", "prod_n0")
        k(f"mul.lo.u32 {m0}, {m_blk}, {c.block_m}")
        k(f"mul.lo.u32 {n0}, {n_blk}, {c.block_n}")
        kb = k.reg("u32", "pkb")
        k(f"mov.u32 {kb}, 0")
        k.label("L_prod_k")
        k.comment("wait until the math warps have released this stage")
        full, empty = k.reg("u32", "pfull"), k.reg("u32", "pempty")
        k(f"mad.lo.u32 {full}, {stage}, 8, %smem_bar")
        k(f"add.u32 {empty}, {full}, {8 * c.stages}")
        eparity = k.reg("u32", "peparity")
        k(f"xor.b32 {eparity}, {phase}, 1")
        self.wait(empty, eparity, "empty", stage)
        k(f"mbarrier.arrive.expect_tx.shared::cta.b64 _, [{full}], {tx_bytes}")
        sa, sb, ssf = k.reg("u32", "pdst_a"), k.reg("u32", "pdst_b"), k.reg("u32", "pdst_sfa")
        k(f"mad.lo.u32 {sa}, {stage}, {c.block_m * BLOCK_K}, %smem_a")
        k(f"mad.lo.u32 {sb}, {stage}, {c.block_n * BLOCK_K}, %smem_b")
        sfa_stride = (c.block_m * 4 + 127) // 128 * 128
        k(f"mad.lo.u32 {ssf}, {stage}, {sfa_stride}, %smem_sfa")
        kx = k.reg("u32", "pk_elem")
        k(f"shl.b32 {kx}, {kb}, 7")
        loads = [("a", sa, f"{kx}, {m0}", "A tile: 128 K x BM rows"),
                 ("b", sb, f"{kx}, {n0}", "B tile: 128 K x BN rows"),
                 ("sfa", ssf, f"{m0}, {kb}", "A scales: BM rows of K block kb")]
        shared = () if c.cluster == 1 else (("a", "sfa") if c.multicast_on_a else ("b",))
        op = "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
        for name, dst, coords, what in loads:
            if name in shared:
                k(f"@%p_rank0 {op}.multicast::cluster [{dst}], [%tmap_{name}, {{{coords}}}], [{full}], %mc_mask",
                  what + ", rank 0 multicasts it to both CTAs")
            else:
                k(f"{op} [{dst}], [%tmap_{name}, {{{coords}}}], [{full}]", what)
        self.advance(stage, phase)
        k(f"add.u32 {kb}, {kb}, 1")
        p_more = k.reg("pred", "p_prod_more")
        k(f"setp.lt.u32 {p_more}, {kb}, %k_blocks")
        k(f"@{p_more} bra.uni L_prod_k")
        k(f"add.u32 {tile}, {tile}, %unit_step")
        k("bra.uni L_prod_tile")
        k.label("L_prod_drain")
        k.label("L_exit")
        if c.cluster > 1:
            k.comment("no CTA leaves while its peer may still arrive on its barriers")
            k("barrier.cluster.arrive.release")
            k("barrier.cluster.wait.acquire")
        k("exit")

    # ---- math warpgroups -------------------------------------------------------------------
    def math(self) -> None:
        c, k = self.c, self.k
        bn, waves = c.block_n, c.waves
        nacc = bn // 2
        k.stage("MATH warpgroups: take registers; per tile: K loop (WGMMA + promotion), epilogue")
        k(f"setmaxnreg.inc.sync.aligned.u32 {MATH_REGS[c.math_warpgroups]}")
        wg = k.reg("u32", "wg")
        k("shr.u32 %wg, %thread, 7")
        wwarp = k.reg("u32", "warp_in_wg")
        k("and.b32 %warp_in_wg, %warp, 3")
        row_in_wave = k.reg("u32", "row_in_wave")
        k.comment("accumulator rows of this thread within a 64-row slab: r and r + 8")
        k("shr.u32 %row_in_wave, %lane, 2")
        k("mad.lo.u32 %row_in_wave, %warp_in_wg, 16, %row_in_wave")
        # first tile row of this warpgroup's slab for each wave
        slab = [k.reg("u32", f"slab_row_{w}") for w in range(waves)]
        for w in range(waves):
            k(f"mad.lo.u32 {slab[w]}, %wg, 64, {w * 64 * c.math_warpgroups}")
        p_lane0 = k.reg("pred", "p_lane0")
        k("setp.eq.u32 %p_lane0, %lane, 0")
        store_threads = (bn * 2) // c.d_swizzle if c.d_swizzle else 1
        p_storer = k.reg("pred", "p_storer")
        k(f"setp.lt.u32 %p_storer, %thread, {store_threads}")
        math_threads = 128 * c.math_warpgroups
        stage, phase = k.reg("u32", "stage"), k.reg("u32", "phase")
        k("mov.u32 %stage, 0")
        k("mov.u32 %phase, 0")
        tile = k.reg("u32", "unit")
        k("mov.u32 %unit, %unit_start")
        acc = k.regs("f32", "acc", nacc)
        fin = [k.regs("f32", f"final{w}", nacc) for w in range(waves)]
        two_scales = 128 % bn != 0

        k.label("L_math_tile")
        p_done = k.reg("pred", "p_math_done")
        k("setp.ge.u32 %p_math_done, %unit, %num_units")
        k("@%p_math_done bra.uni L_math_end")
        m_blk, n_blk = k.reg("u32", "m_blk"), k.reg("u32", "n_blk")
        self.unit_coords(tile, m_blk, n_blk, k.reg("pred", "p_ghost"))
        k.comment("B-scale rows for this tile (a tile may straddle two 128-wide N blocks)")
        sfb_row0 = k.reg("u64", "sfb_row0")
        n0 = k.reg("u32", "n0")
        k(f"mul.lo.u32 %n0, {n_blk}, {bn}")
        b_blk = k.reg("u32", "b_blk")
        k("shr.u32 %b_blk, %n0, 7")
        tmp = k.tmp("u32", "t")
        k(f"mul.lo.u32 {tmp}, %b_blk, %k_blocks")
        k(f"mad.wide.u32 %sfb_row0, {tmp}, 4, %sfb_ptr")
        if two_scales:
            # 8-column slices i < former use the first scale block, the rest the next one
            k.reg("u32", "former")
            k("and.b32 %former, %n0, 127")
            k("sub.u32 %former, 128, %former")
            k("shr.u32 %former, %former, 3")
            k(f"min.u32 %former, %former, {bn // 8}")
            sfb_row1 = k.reg("u64", "sfb_row1")
            nb_total = k.tmp("u32", "nbt")
            k(f"add.u32 {nb_total}, %shape_n, 127")
            k(f"shr.u32 {nb_total}, {nb_total}, 7")
            k(f"sub.u32 {nb_total}, {nb_total}, 1")
            b1 = k.tmp("u32", "b1")
            k(f"add.u32 {b1}, %b_blk, 1")
            k(f"min.u32 {b1}, {b1}, {nb_total}", "clamp: past N the second scale is never used")
            k(f"mul.lo.u32 {b1}, {b1}, %k_blocks")
            k(f"mad.wide.u32 %sfb_row1, {b1}, 4, %sfb_ptr")
        for w in range(waves):
            for r in fin[w]:
                k(f"mov.f32 {r}, 0f00000000")
        sb0 = k.reg("f32", "sb0")
        k("ld.global.nc.f32 %sb0, [%sfb_row0]")
        if two_scales:
            k.reg("f32", "sb1")
            k("ld.global.nc.f32 %sb1, [%sfb_row1]")
        kb = k.reg("u32", "kb")
        k("mov.u32 %kb, 0")

        k.label("L_math_k")
        k.comment("prefetch the next K block's B scale(s) while this one computes")
        nxt = k.tmp("u32", "kb_next")
        k(f"add.u32 {nxt}, %kb, 1")
        last = k.tmp("u32", "kb_last")
        k(f"sub.u32 {last}, %k_blocks, 1")
        k(f"min.u32 {nxt}, {nxt}, {last}")
        nb0 = k.reg("f32", "sb0_next")
        addr = k.tmp("u64", "sfb_addr")
        k(f"mad.wide.u32 {addr}, {nxt}, 4, %sfb_row0")
        k(f"ld.global.nc.f32 %sb0_next, [{addr}]")
        if two_scales:
            k.reg("f32", "sb1_next")
            addr1 = k.tmp("u64", "sfb_addr")
            k(f"mad.wide.u32 {addr1}, {nxt}, 4, %sfb_row1")
            k(f"ld.global.nc.f32 %sb1_next, [{addr1}]")
        full = k.reg("u32", "full_bar")
        k("mad.lo.u32 %full_bar, %stage, 8, %smem_bar")
        self.wait("%full_bar", "%phase", "full", "%stage")
        a_st, b_st, sfa_st = k.reg("u32", "a_stage"), k.reg("u32", "b_stage"), k.reg("u32", "sfa_stage")
        k(f"mad.lo.u32 %a_stage, %stage, {c.block_m * BLOCK_K}, %smem_a")
        k(f"mad.lo.u32 %b_stage, %stage, {bn * BLOCK_K}, %smem_b")
        sfa_stride = (c.block_m * 4 + 127) // 128 * 128
        k(f"mad.lo.u32 %sfa_stage, %stage, {sfa_stride}, %smem_sfa")
        # WGMMA descriptors: start address >> 4 in the low word; SBO = 1024 B, 128-byte swizzle
        b_lo = k.reg("u32", "desc_b_lo")
        k("shr.u32 %desc_b_lo, %b_stage, 4")
        for w in range(waves):
            k.stage(f"K block: wave {w} (rows slab_row_{w} + 0..63): WGMMA then promotion")
            sa = [k.reg("f32", f"sa{w}_{h}") for h in range(2)]
            row = k.tmp("u32", "sfa_row")
            k(f"add.u32 {row}, {slab[w]}, %row_in_wave")
            sfa_addr = k.tmp("u32", "sfa_addr")
            k(f"mad.lo.u32 {sfa_addr}, {row}, 4, %sfa_stage")
            k(f"ld.shared.f32 {sa[0]}, [{sfa_addr}]")
            k(f"ld.shared.f32 {sa[1]}, [{sfa_addr}+32]", "row + 8")
            a_lo = k.tmp("u32", "desc_a_lo")
            k(f"mad.lo.u32 {a_lo}, {slab[w]}, {BLOCK_K}, %a_stage")
            k(f"shr.u32 {a_lo}, {a_lo}, 4")
            k("wgmma.fence.sync.aligned")
            acc_list = "{" + ", ".join(acc) + "}"
            for kk in range(BLOCK_K // 32):
                da, db = k.tmp("b64", "desc_a"), k.tmp("b64", "desc_b")
                alo, blo = k.tmp("u32", "dlo"), k.tmp("u32", "dlo")
                k(f"add.u32 {alo}, {a_lo}, {kk * 2}", f"+{kk * 32} bytes along K")
                k(f"add.u32 {blo}, %desc_b_lo, {kk * 2}")
                k(f"mov.b64 {da}, {{{alo}, 0x40000040}}")
                k(f"mov.b64 {db}, {{{blo}, 0x40000040}}")
                scale_d = "%p_false" if kk == 0 else "%p_true"
                k(f"wgmma.mma_async.sync.aligned.m64n{bn}k32.f32.e4m3.e4m3 {acc_list}, {da}, {db}, {scale_d}, 1, 1")
            k("wgmma.commit_group.sync.aligned")
            k("wgmma.wait_group.sync.aligned 0")
            if w == waves - 1:
                k.comment("stage fully read (A/B by WGMMA, A scales above): release it")
                empty = k.tmp("u32", "empty_bar")
                k(f"add.u32 {empty}, %full_bar, {8 * c.stages}")
                k(f"@%p_lane0 mbarrier.arrive.shared::cta.b64 _, [{empty}]")
                if c.cluster > 1:
                    remote = k.tmp("u32", "peer_empty")
                    k(f"mad.lo.u32 {remote}, %stage, 8, %peer_bar")
                    k(f"add.u32 {remote}, {remote}, {8 * c.stages}")
                    # .release.cta, not .cluster: a cluster-scope release is a MEMBAR.ALL.GPU per
                    # arrive (2x slower kernels); the stage's reads are complete here already
                    # (wgmma.wait_group 0, and the A scales were loaded before the WGMMAs)
                    k(f"@%p_lane0 mbarrier.arrive.shared::cluster.b64 _, [{remote}]",
                      "and on the peer's: its producer may multicast into this CTA")
            self.promote(acc, fin[w], sa, two_scales)
        self.advance("%stage", "%phase")
        k("mov.f32 %sb0, %sb0_next")
        if two_scales:
            k("mov.f32 %sb1, %sb1_next")
        k("add.u32 %kb, %kb, 1")
        p_more = k.reg("pred", "p_math_more")
        k("setp.lt.u32 %p_math_more, %kb, %k_blocks")
        k("@%p_math_more bra.uni L_math_k")

        if c.cluster > 1:
            k("@%p_ghost bra.uni L_epilogue_done", "a ghost tile is the peer's: nothing to store")
        self.epilogue(fin, m_blk, n_blk, store_threads, math_threads)
        if c.cluster > 1:
            k.label("L_epilogue_done")
        k("add.u32 %unit, %unit, %unit_step")
        k("bra.uni L_math_tile")
        k.label("L_math_end")
        k.comment("the last TMA stores must finish before the CTA's shared memory goes away")
        k("@%p_storer cp.async.bulk.wait_group 0")
        k("bra.uni L_exit")

    def promote(self, acc, fin, sa, two_scales: bool) -> None:
        """final += acc * (sfa[row] * sfb): the second level of the two-level accumulation.

        When the tile straddles two B-scale blocks, the split point ``former`` (in 8-column
        slices) is one of a few values fixed by BN; each gets its own unrolled FFMA block
        with the scale chosen at generation time, reached by a uniform branch. (A select
        per element doubled the promotion's instruction count: 1.4-1.6x slower tiles.)
        """
        k = self.k
        s = [[k.tmp("f32", "scale") for _ in range(2)] for _ in range(2 if two_scales else 1)]
        for blk in range(len(s)):
            for h in range(2):
                k(f"mul.rn.f32 {s[blk][h]}, {sa[h]}, %sb{blk}")
        nsl = len(acc) // 4

        def ffma_block(former: int) -> None:
            for i in range(nsl):
                blk = 0 if i < former else 1
                for q in range(4):
                    j = 4 * i + q
                    k(f"fma.rn.f32 {fin[j]}, {acc[j]}, {s[blk][q // 2]}, {fin[j]}")

        if not two_scales:
            ffma_block(nsl)
            return
        splits = split_points(self.c.block_n)
        done = k.fresh_label("promoted")
        targets = [k.fresh_label(f"promote_split{v}") for v in splits]
        for v, target in zip(splits[:-1], targets[:-1]):
            p = k.tmp("pred", "p_split")
            k(f"setp.eq.u32 {p}, %former, {v}")
            k(f"@{p} bra.uni {target}")
        # no branch taken: fall through into the last split's block; every block but the
        # final one jumps to the end
        order = [len(splits) - 1] + list(range(len(splits) - 1))
        for pos, idx in enumerate(order):
            k.label(targets[idx])
            v = splits[idx]
            k.comment(f"slices 0..{v - 1} scaled by the first B block, {v}..{nsl - 1} by the second")
            ffma_block(v)
            if pos != len(order) - 1:
                k(f"bra.uni {done}")
        k.label(done)

    def epilogue(self, fin, m_blk: str, n_blk: str, store_threads: int, math_threads: int) -> None:
        c, k = self.c, self.k
        bn, swz = c.block_n, c.d_swizzle
        k.stage("EPILOGUE: bf16 -> stmatrix into the swizzled D tile -> TMA store")
        k.comment("the previous tile's stores must have finished reading the D tile")
        k("@%p_storer cp.async.bulk.wait_group.read 0")
        k(f"bar.sync 1, {math_threads}")
        # stmatrix x4: lanes 8j..8j+7 give the row addresses of matrix j
        mat = k.tmp("u32", "mat")
        k(f"shr.u32 {mat}, %lane, 3")
        mrow = k.tmp("u32", "mrow")
        k(f"and.b32 {mrow}, %lane, 7")
        half = k.tmp("u32", "mhalf")
        k(f"and.b32 {half}, {mat}, 1")
        k(f"mad.lo.u32 {mrow}, {half}, 8, {mrow}")
        k(f"mad.lo.u32 {mrow}, %warp_in_wg, 16, {mrow}")
        pair = k.tmp("u32", "mslice")
        k(f"shr.u32 {pair}, {mat}, 1", "matrices 2, 3 hold the next 8-column slice")
        nsl = bn // 8
        for w, f in enumerate(fin):
            row = k.tmp("u32", "drow")
            k(f"add.u32 {row}, {mrow}, %slab_row_{w}")
            i = 0
            while i < nsl:
                cnt = 2 if i + 1 < nsl else 1
                regs = []
                for s in range(cnt):
                    for h in range(2):
                        r = k.tmp("b32", "bf2")
                        j = 4 * (i + s) + 2 * h
                        k(f"cvt.rn.bf16x2.f32 {r}, {f[j + 1]}, {f[j]}")
                        regs.append(r)
                col = k.tmp("u32", "dcol")
                if cnt == 2:
                    k(f"mad.lo.u32 {col}, {pair}, 8, {8 * i}")
                else:
                    k(f"mov.u32 {col}, {8 * i}")
                addr = self.d_smem_addr(row, col)
                shape = "x4" if cnt == 2 else "x2"
                k(f"stmatrix.sync.aligned.m8n8.{shape}.shared.b16 [{addr}], {{{', '.join(regs)}}}")
                i += cnt
        k("fence.proxy.async.shared::cta", "make the D tile visible to the TMA engine")
        k(f"bar.sync 1, {math_threads}")
        k("@!%p_storer bra.uni L_store_done")
        m0, n0 = k.tmp("u32", "dm0"), k.tmp("u32", "dn0")
        k(f"mul.lo.u32 {m0}, {m_blk}, {c.block_m}")
        k(f"mul.lo.u32 {n0}, {n_blk}, {bn}")
        if swz:
            cols = swz // 2
            src = k.tmp("u32", "dsrc")
            k(f"mad.lo.u32 {src}, %thread, {c.block_m * swz}, %smem_d", "this thread stores one swizzle atom")
            k(f"mad.lo.u32 {n0}, %thread, {cols}, {n0}")
        else:
            src = "%smem_d"
        k(f"cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%tmap_d, {{{n0}, {m0}}}], [{src}]")
        k("cp.async.bulk.commit_group")
        k.label("L_store_done")

    def d_smem_addr(self, row: str, col: str) -> str:
        """Shared address of (row, col) in the D tile, in TMA's swizzled layout."""
        c, k = self.c, self.k
        swz = c.d_swizzle
        addr = k.tmp("u32", "daddr")
        if not swz:
            k(f"mad.lo.u32 {addr}, {row}, {c.block_n * 2}, %smem_d")
            k(f"mad.lo.u32 {addr}, {col}, 2, {addr}")
            return addr
        atom_cols = swz // 2
        atom, inatom = k.tmp("u32", "datom"), k.tmp("u32", "dinatom")
        k(f"div.u32 {atom}, {col}, {atom_cols}")
        k(f"rem.u32 {inatom}, {col}, {atom_cols}")
        k(f"mul.lo.u32 {addr}, {atom}, {c.block_m * swz}")
        k(f"mad.lo.u32 {addr}, {row}, {swz}, {addr}")
        k(f"mad.lo.u32 {addr}, {inatom}, 2, {addr}")
        k(f"add.u32 {addr}, {addr}, %smem_d")
        # TMA swizzle: 16-byte chunk index ^= (address bits 7..) within the swizzle span
        x = k.tmp("u32", "dxor")
        k(f"shr.u32 {x}, {addr}, 7")
        k(f"and.b32 {x}, {x}, {swz // 16 - 1}")
        k(f"shl.b32 {x}, {x}, 4")
        k(f"xor.b32 {addr}, {addr}, {x}")
        return addr


def split_points(block_n: int) -> list[int]:
    """The values ``former`` = slices of a BN tile before the next 128-column scale block
    can take, over every tile position (BN < 128 or not a divisor of 128)."""
    nsl = block_n // 8
    return sorted({min((128 - (j * block_n) % 128) // 8, nsl) for j in range(128)})


def build(cfg: GemmConfig) -> Kernel:
    if cfg.kind != "dense":
        raise NotImplementedError(f"the {cfg.kind} grouped GEMM kernel is not implemented yet")
    return GemmGen(cfg).build()
