"""PTX for the FP8 GEMM with fine-grained scaling (sm_90a).

    D[M, N] (bf16) = sum_k  A[M, k] (e4m3) * B[N, k] (e4m3) * sfa[m, k/128] * sfb[n/128, k/128]

Structure (see DESIGN.md section 3):
  * persistent grid; which tile comes next is the layout's scheduler (scheduler.py: dense,
    contiguous, contiguous_psum, masked), which also says how its operands are mapped (spec)
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
from . import emit
from .builder import Kernel
from .scheduler import STRIP, for_config  # noqa: F401  (STRIP: re-exported for tools)
from .spec import KernelSpec, Param

PRODUCER_REGS = 40
# D = C + A.B: C is loaded into the D tile after this many K blocks of the tile (or after its
# last, if fewer): by then the previous tile's TMA stores have read the D tile, so the storing
# threads' wait for that costs nothing.
C_LOAD_AFTER_K_BLOCKS = 2
MATH_REGS = {1: 240, 2: 232}


def _sfa_stage_bytes(cfg: GemmConfig) -> int:
    return (cfg.block_m * 4 + 127) // 128 * 128


def _sfb_stage_bytes(cfg: GemmConfig) -> int:
    return (cfg.block_n * 4 + 127) // 128 * 128


class GemmGen:
    """Emits one kernel for one ``GemmConfig``; ``spec`` is its host contract."""

    def __init__(self, cfg: GemmConfig):
        self.c = cfg
        self.sched = for_config(cfg)
        self.spec = self._make_spec()
        self.k = Kernel(cfg.name, [(p.name, p.ptx_type(cfg.groups)) for p in self.spec.params], maxntid=cfg.threads,
                        minnctapersm=1, header_comment=f"FP8 GEMM {cfg}")
        self.k.global_decl(".extern .shared .align 1024 .b8 smem[];")

    def _make_spec(self) -> KernelSpec:
        c, sched = self.c, self.sched
        maps = sched.tensor_maps()
        params = [Param(t.param, "tmap", f"tensor map of {t.array}" + (", one per group" if t.per_group else ""),
                        per_group=t.per_group) for t in maps]
        if c.b_scales == "block":
            params.append(Param("sfb", "u64", "B scales: f32 [G, ceil(N/128), ceil(K/128)] row-major",
                                array="b_scales"))
        params.append(Param("debug", "u64", "debug builds: where a stuck wait reports (0: none)", array="debug"))
        params += [p for p in sched.params() if p.type == "u64"]
        params += [Param(x, "u32", f"problem {x.upper() if x != 'groups' else 'groups'}", value=x)
                   for x in ("m", "n", "k", "groups")]
        params += [p for p in sched.params() if p.type == "u32"]
        return KernelSpec(
            name=c.name, kind=c.kind, params=tuple(params), tensor_maps=tuple(maps),
            threads=c.threads, smem_bytes=c.smem_bytes, cluster=(c.cluster, 1, 1),
            block={"block_m": c.block_m, "block_n": c.block_n, "block_k": BLOCK_K, "stages": c.stages,
                   "math_warpgroups": c.math_warpgroups},
            expect_tx_bytes=sum(t.stage_bytes for t in maps),
            grid="persistent: min(SMs // cluster, units) clusters, capped by the clusters that can be resident",
            units=sched.units_expr())

    # ---- the kernel ------------------------------------------------------------------------
    def build(self) -> Kernel:
        c, k = self.c, self.k
        lay = c.smem_layout
        k.stage("setup: parameters, shared-memory map, tile counts")
        pt, pf = k.reg("pred", "p_true"), k.reg("pred", "p_false")
        k(f"setp.eq.u32 {pt}, 0, 0")
        k(f"setp.ne.u32 {pf}, 0, 0")
        for name in ("m", "n", "k"):
            k.load_param("u32", f"shape_{name}", name)
        k.load_param("u32", "groups", "groups")
        if c.b_scales == "block":
            k.load_param("u64", "sfb_ptr", "sfb")
        k.load_param("u64", "debug_buf", "debug")
        for p in self.spec.params:
            if p.name == "layout":
                k.load_param("u64", "layout_ptr", "layout")
            elif p.name == "d":
                k.load_param("u64", "d_ptr", "d")
            elif p.name == "d_stride":
                k.load_param("u32", "d_stride", "d_stride")
        for t in self.spec.tensor_maps:
            r = k.reg("u64", t.param)
            k(f"mov.u64 {r}, {k.param(t.param)}", "per group: the first of the array" if t.per_group else None)
            k(f"cvta.param.u64 {r}, {r}")
        base = k.reg("u32", "smem_base")
        k(f"mov.u32 {base}, smem")
        for region in ("d", "a", "b", "sfa") + (("sfb",) if c.b_scales == "row" else ()) + ("bar",):
            r = k.reg("u32", f"smem_{region}")
            k(f"add.u32 {r}, {base}, {lay[region]}")
        k.reg("u32", "k_blocks")
        k(f"add.u32 %k_blocks, %shape_k, {BLOCK_K - 1}")
        k(f"shr.u32 %k_blocks, %k_blocks, 7")
        self.sched.emit_cluster_ranks(k, c.cluster)
        k.comment(f"work units ({self.sched.kind} layout): tiles, or tile pairs that share an operand when clustered")
        self.sched.emit_setup(k)
        thread, warp, lane = k.reg("u32", "thread"), k.reg("u32", "warp"), k.reg("u32", "lane")
        k(f"mov.u32 {thread}, %tid.x")
        k(f"shr.u32 {warp}, {thread}, 5")
        k(f"and.b32 {lane}, {thread}, 31")

        k.stage("barrier init (first producer thread), then everyone syncs")
        producer_first = 128 * c.math_warpgroups
        p_init = k.reg("pred", "p_init")
        k(f"setp.eq.u32 {p_init}, {thread}, {producer_first}")
        k(f"@!{p_init} bra.uni L_init_done")
        for t in self.spec.tensor_maps:
            if not t.per_group:
                k(f"prefetch.tensormap [%{t.param}]")
        for s in range(c.stages):
            k(f"mbarrier.init.shared::cta.b64 [%smem_bar+{8 * s}], 1", f"full[{s}]: the producer's arrive + TMA bytes")
            k(f"mbarrier.init.shared::cta.b64 [%smem_bar+{8 * (c.stages + s)}], {4 * c.math_warpgroups * c.cluster}",
              f"empty[{s}]: one arrive per math warp" + (" of both CTAs" if c.cluster > 1 else ""))
        if c.with_c:
            k(f"mbarrier.init.shared::cta.b64 [%smem_bar+{16 * c.stages}], {c.d_store_threads}",
              "c_full: each storing thread's box of C landed")
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
            k("mapa.shared::cluster.u32 %peer_bar, %smem_bar, %peer_rank", "the peer CTA's barrier block")

        p_prod = k.reg("pred", "p_producer")
        k(f"setp.ge.u32 {p_prod}, {thread}, {producer_first}")
        k("@%p_producer bra.uni L_producer")
        self.math()
        self.producer()
        return k

    # ---- producer warpgroup ----------------------------------------------------------------
    def producer(self) -> None:
        c, k, sched = self.c, self.k, self.sched
        k.stage("PRODUCER warpgroup: give registers away; one thread issues every TMA load")
        k.label("L_producer")
        k(f"setmaxnreg.dec.sync.aligned.u32 {PRODUCER_REGS}")
        p_issuer = k.reg("pred", "p_issuer")
        k(f"setp.eq.u32 {p_issuer}, %thread, {128 * c.math_warpgroups}")
        k("@!%p_issuer bra.uni L_exit")
        stage, phase = k.reg("u32", "pstage"), k.reg("u32", "pphase")
        k(f"mov.u32 {stage}, 0")
        k(f"mov.u32 {phase}, 0")
        sched.emit_begin(k, "prod")
        if c.cluster > 1:
            k.reg("b16", "mc_mask")
            k(f"mov.b16 %mc_mask, {(1 << c.cluster) - 1}", "both CTAs of the cluster")
        k.label("L_prod_tile")
        tile = sched.emit_next(k, "prod", "L_prod_drain")
        # what the pair shares comes with its scales: A with its rows' scales, B with per-row
        # B scales where it has them (128x128 B scales are read from global memory by the math)
        shared = () if c.cluster == 1 else (("a", "sfa") if c.multicast_on_a
                                            else ("b", "sfb") if c.b_scales == "row" else ("b",))
        if tile.mc_valid is not None and shared:
            k.reg("pred", "p_mc_issue")
            k(f"and.pred %p_mc_issue, %p_rank0, {tile.mc_valid}", "rank 0 multicasts when the pair shares it")
        kb = k.reg("u32", "pkb")
        k(f"mov.u32 {kb}, 0")
        k.label("L_prod_k")
        k.comment("wait until the math warps have released this stage")
        full, empty = k.reg("u32", "pfull"), k.reg("u32", "pempty")
        k(f"mad.lo.u32 {full}, {stage}, 8, %smem_bar")
        k(f"add.u32 {empty}, {full}, {8 * c.stages}")
        eparity = k.reg("u32", "peparity")
        k(f"xor.b32 {eparity}, {phase}, 1")
        emit.wait(k, empty, eparity, "empty", stage, c.debug)
        emit.arrive_expect_tx(k, full, self.spec.expect_tx_bytes)
        sa, sb, ssf = k.reg("u32", "pdst_a"), k.reg("u32", "pdst_b"), k.reg("u32", "pdst_sfa")
        k(f"mad.lo.u32 {sa}, {stage}, {c.block_m * BLOCK_K}, %smem_a")
        k(f"mad.lo.u32 {sb}, {stage}, {c.block_n * BLOCK_K}, %smem_b")
        k(f"mad.lo.u32 {ssf}, {stage}, {_sfa_stage_bytes(c)}, %smem_sfa")
        kx = k.reg("u32", "pk_elem")
        k(f"shl.b32 {kx}, {kb}, 7")
        kb_scale = kb
        if tile.kb_base is not None:
            kb_scale = k.reg("u32", "pkb_scale")
            k(f"add.u32 {kb_scale}, {kb}, {tile.kb_base}", "the scales' K block: the group's first + kb")
        loads = [("a", sa, sched.a_coords(tile, kx), "A tile: 128 K x BM rows"),
                 ("b", sb, sched.b_coords(tile, kx), "B tile: 128 K x BN rows"),
                 ("sfa", ssf, sched.sfa_coords(tile, kb_scale), "A scales: BM rows of K block kb")]
        if c.b_scales == "row":
            ssfb = k.reg("u32", "pdst_sfb")
            k(f"mad.lo.u32 {ssfb}, {stage}, {_sfb_stage_bytes(c)}, %smem_sfb")
            loads.append(("sfb", ssfb, sched.sfb_coords(tile, kb_scale), "B scales: BN columns of K block kb"))
        for name, dst, coords, what in loads:
            tmap = tile.tmaps.get(name, f"%tmap_{name}")
            if name not in shared:
                emit.tma_load(k, tmap, dst, coords, full, comment=what)
            elif tile.mc_valid is None:
                emit.tma_load(k, tmap, dst, coords, full, pred="%p_rank0", multicast_mask="%mc_mask",
                              comment=what + ", rank 0 multicasts it to both CTAs")
            else:
                emit.tma_load(k, tmap, dst, coords, full, pred="%p_mc_issue", multicast_mask="%mc_mask",
                              comment=what + ", rank 0 multicasts it to both CTAs")
                emit.tma_load(k, tmap, dst, coords, full, pred=f"!{tile.mc_valid}",
                              comment="the pair's blocks differ here: each CTA loads its own")
        emit.advance_ring(k, stage, phase, c.stages)
        k(f"add.u32 {kb}, {kb}, 1")
        p_more = k.reg("pred", "p_prod_more")
        k(f"setp.lt.u32 {p_more}, {kb}, {tile.k_blocks}")
        k(f"@{p_more} bra.uni L_prod_k")
        sched.emit_advance(k, "prod")
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
        c, k, sched = self.c, self.k, self.sched
        bn, waves = c.block_n, c.waves
        nacc = bn // 2
        k.stage("MATH warpgroups: take registers; per tile: K loop (WGMMA + promotion), epilogue")
        k(f"setmaxnreg.inc.sync.aligned.u32 {MATH_REGS[c.math_warpgroups]}")
        k.reg("u32", "wg")
        k("shr.u32 %wg, %thread, 7")
        k("shfl.sync.idx.b32 %wg, %wg, 0, 31, -1", "provably warp-uniform: WGMMA descriptors stay in uniform registers")
        k.reg("u32", "warp_in_wg")
        k("and.b32 %warp_in_wg, %warp, 3")
        k.reg("u32", "row_in_wave")
        k.comment("accumulator rows of this thread within a 64-row slab: r and r + 8")
        k("shr.u32 %row_in_wave, %lane, 2")
        k("mad.lo.u32 %row_in_wave, %warp_in_wg, 16, %row_in_wave")
        sfa_row = "%row_in_wave"
        if c.valid_warps < 4:
            k.comment(f"a {c.block_m}-row tile: warps {c.valid_warps}..3 compute rows that were never loaded; "
                      "they read some valid row's A scale (never used) and store nothing")
            sfa_row = k.reg("u32", "sfa_row_in_wave")
            k(f"and.b32 {sfa_row}, %row_in_wave, {c.block_m - 1}")
            k.reg("pred", "p_valid_warp")
            k(f"setp.lt.u32 %p_valid_warp, %warp_in_wg, {c.valid_warps}")
        # first tile row of this warpgroup's slab for each wave
        slab = [k.reg("u32", f"slab_row_{w}") for w in range(waves)]
        for w in range(waves):
            k(f"mad.lo.u32 {slab[w]}, %wg, 64, {w * 64 * c.math_warpgroups}")
        k.reg("pred", "p_lane0")
        k("setp.eq.u32 %p_lane0, %lane, 0")
        store_threads = c.d_store_threads
        k.reg("pred", "p_storer")
        if self.wg_stores:
            k.comment("each warpgroup stores its own slab: its first threads store, and its stores "
                      "synchronise on named barrier 2 + wg")
            k.reg("u32", "thread_in_wg")
            k("and.b32 %thread_in_wg, %thread, 127")
            k(f"setp.lt.u32 %p_storer, %thread_in_wg, {store_threads}")
            k.reg("u32", "store_bar")
            k("add.u32 %store_bar, %wg, 2")
        else:
            k(f"setp.lt.u32 %p_storer, %thread, {store_threads}")
        math_threads = 128 * c.math_warpgroups
        k.reg("u32", "stage")
        k.reg("u32", "phase")
        k("mov.u32 %stage, 0")
        k("mov.u32 %phase, 0")
        sched.emit_begin(k, "math")
        acc = k.regs("f32", "acc", nacc)
        fin = [k.regs("f32", f"final{w}", nacc) for w in range(waves)]
        two_scales = 128 % bn != 0 and c.b_scales == "block"

        if c.with_c:
            k.reg("u32", "c_phase")
            k("mov.u32 %c_phase, 0")
            k.reg("u32", "c_full")
            k(f"add.u32 %c_full, %smem_bar, {16 * c.stages}")
            k.reg("u32", "c_box_bytes")
            k(f"min.u32 %c_box_bytes, %shape_m, {c.block_m}", "the boxes of C and D: at most M rows")
            atom_bytes = c.d_swizzle or c.block_n * c.out_bytes
            k(f"mul.lo.u32 %c_box_bytes, %c_box_bytes, {atom_bytes}")
        if c.b_scales == "row":
            k.reg("u32", "sfb_col_off")
            k("and.b32 %sfb_col_off, %lane, 3")
            k("shl.b32 %sfb_col_off, %sfb_col_off, 3", "this thread's 2 columns of each 8-column slice, in bytes")
        k.label("L_math_tile")
        tile = sched.emit_next(k, "math", "L_math_end")
        if c.with_c:
            k.reg("u32", "c_issue_kb")
            k(f"sub.u32 %c_issue_kb, {tile.k_blocks}, 1")
            k(f"min.u32 %c_issue_kb, %c_issue_kb, {C_LOAD_AFTER_K_BLOCKS}",
              "load C a few K blocks in: the previous tile's stores have read the D tile by then")
        if c.b_scales == "block":
            self.tile_b_scales(tile, two_scales)
        for w in range(waves):
            for r in fin[w]:
                k(f"mov.f32 {r}, 0f00000000")
        if c.b_scales == "block":
            k.reg("f32", "sb0")
            k("ld.global.nc.f32 %sb0, [%sfb_row0]")
            if two_scales:
                k.reg("f32", "sb1")
                k("ld.global.nc.f32 %sb1, [%sfb_row1]")
        k.reg("u32", "kb")
        k("mov.u32 %kb, 0")
        self.k_loop(tile, acc, fin, slab, sfa_row, two_scales)
        self.tile_end(tile, fin, store_threads, math_threads)

    def tile_b_scales(self, tile, two_scales: bool) -> None:
        """128x128 B scales: the tile's row(s) of them, read from global memory one K block ahead."""
        c, k, sched = self.c, self.k, self.sched
        bn = c.block_n
        k.comment("B-scale rows for this tile (a tile may straddle two 128-wide N blocks); "
                  "%sfb_row0/1 then step along K with the prefetch")
        k.reg("u64", "sfb_row0")
        b_blk = sched.emit_sfb_row(k, tile)
        tmp = k.tmp("u32", "t")
        k(f"mul.lo.u32 {tmp}, {b_blk}, %k_blocks")
        k(f"mad.wide.u32 %sfb_row0, {tmp}, 4, %sfb_ptr")
        if two_scales:
            # 8-column slices i < former use the first scale block, the rest the next one
            k.reg("u32", "former")
            k(f"and.b32 %former, {tile.n0}, 127")
            k("sub.u32 %former, 128, %former")
            k("shr.u32 %former, %former, 3")
            k(f"min.u32 %former, %former, {bn // 8}")
            k.reg("u64", "sfb_row1")
            more = k.tmp("pred", "p_second_scale")
            k.comment("the next 128-column scale row, only where the tile reaches into it and N does")
            nxt_col = k.tmp("u32", "next_col")
            k(f"and.b32 {nxt_col}, {tile.n0}, -128")
            k(f"add.u32 {nxt_col}, {nxt_col}, 128")
            k(f"setp.lt.u32 {more}, {nxt_col}, %shape_n")
            step = k.tmp("u32", "row1_step")
            k(f"selp.u32 {step}, %k_blocks, 0, {more}", "else: reread the first row (never used)")
            k(f"mad.wide.u32 %sfb_row1, {step}, 4, %sfb_row0")

    def k_loop(self, tile, acc, fin, slab, sfa_row: str, two_scales: bool) -> None:
        c, k = self.c, self.k
        bn, waves = c.block_n, c.waves
        k.label("L_math_k")
        k.reg("u32", "full_bar")
        k("mad.lo.u32 %full_bar, %stage, 8, %smem_bar")
        emit.wait(k, "%full_bar", "%phase", "full", "%stage", c.debug)
        if c.cluster > 1:
            k.reg("u32", "peer_empty")
            k("mad.lo.u32 %peer_empty, %stage, 8, %peer_bar", "the peer's empty barrier of this stage")
            k(f"add.u32 %peer_empty, %peer_empty, {8 * c.stages}")
        for r in ("a_stage", "b_stage", "sfa_stage"):
            k.reg("u32", r)
        k(f"mad.lo.u32 %a_stage, %stage, {c.block_m * BLOCK_K}, %smem_a")
        k(f"mad.lo.u32 %b_stage, %stage, {bn * BLOCK_K}, %smem_b")
        k(f"mad.lo.u32 %sfa_stage, %stage, {_sfa_stage_bytes(c)}, %smem_sfa")
        # WGMMA descriptors: start address >> 4 in the low word
        k.reg("u32", "desc_b_lo")
        k("shr.u32 %desc_b_lo, %b_stage, 4")
        col_scales = None
        if c.b_scales == "row":
            k.reg("u32", "sfb_stage")
            k(f"mad.lo.u32 %sfb_stage, %stage, {_sfb_stage_bytes(c)}, %smem_sfb")
            k("add.u32 %sfb_stage, %sfb_stage, %sfb_col_off")
        for w in range(waves):
            k.stage(f"K block: wave {w} (rows slab_row_{w} + 0..63): WGMMA then promotion")
            sa = [k.reg("f32", f"sa{w}_{h}") for h in range(2)]
            row = k.tmp("u32", "sfa_row")
            k(f"add.u32 {row}, {slab[w]}, {sfa_row}")
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
                da = emit.wgmma_desc(k, a_lo, kk * 2)
                db = emit.wgmma_desc(k, "%desc_b_lo", kk * 2)
                scale_d = "%p_false" if kk == 0 else "%p_true"
                k(f"wgmma.mma_async.sync.aligned.m64n{bn}k32.f32.e4m3.e4m3 {acc_list}, {da}, {db}, {scale_d}, 1, 1")
            k("wgmma.commit_group.sync.aligned")
            if c.b_scales == "block":
                scales = self.scale_products(sa, two_scales, prefetch=w == waves - 1)
            elif col_scales is None:
                col_scales = self.column_scales()
            k("wgmma.wait_group.sync.aligned 0")
            if w == waves - 1:
                k.comment("stage fully read (A/B by WGMMA, A scales above): release it")
                empty = k.tmp("u32", "empty_bar")
                k(f"add.u32 {empty}, %full_bar, {8 * c.stages}")
                emit.arrive(k, empty, "%p_lane0")
                if c.cluster > 1:
                    # the stage's reads are complete here already (wgmma.wait_group 0, and the
                    # A scales were loaded before the WGMMAs)
                    emit.arrive_remote(k, "%peer_empty", "%p_lane0",
                                       "and on the peer's: its producer may multicast into this CTA")
            if c.b_scales == "block":
                self.promote(acc, fin[w], scales, two_scales)
            else:
                self.promote_per_column(acc, fin[w], sa, col_scales)
        if c.with_c:
            p = k.reg("pred", "p_load_c")
            k("setp.eq.u32 %p_load_c, %kb, %c_issue_kb")
            k("@!%p_load_c bra.uni L_c_issued")
            self.load_c(tile)
        emit.advance_ring(k, "%stage", "%phase", c.stages)
        k("add.u32 %kb, %kb, 1")
        k.reg("pred", "p_math_more")
        k(f"setp.lt.u32 %p_math_more, %kb, {tile.k_blocks}")
        k("@%p_math_more bra.uni L_math_k")

    def tile_end(self, tile, fin, store_threads: int, math_threads: int) -> None:
        c, k, sched = self.c, self.k, self.sched

        if tile.ghost is not None:
            k(f"@{tile.ghost} bra.uni L_epilogue_done", "a ghost tile is the peer's: nothing to store")
        if tile.rows is not None:
            clip = k.reg("pred", "p_clip")
            k(f"setp.lt.u32 {clip}, {tile.rows}, {c.block_m}")
            k(f"@{clip} bra.uni L_store_clipped", "the group ends inside this block")
        self.epilogue(fin, tile, store_threads, math_threads)
        if tile.rows is not None:
            k("bra.uni L_epilogue_done")
            self.clipped_store(fin, tile)
        if tile.ghost is not None or tile.rows is not None:
            k.label("L_epilogue_done")
        sched.emit_advance(k, "math")
        k("bra.uni L_math_tile")
        k.label("L_math_end")
        k.comment("the last TMA stores must finish before the CTA's shared memory goes away")
        k("@%p_storer cp.async.bulk.wait_group 0")
        k("bra.uni L_exit")

    def prefetch_sfb(self, two_scales: bool) -> None:
        """Load the next K block's B scale(s) into %sb0/%sb1, a whole K block ahead of use.

        Emitted right after the last read of this block's scales: the load then overwrites
        them (ptxas cannot hoist it above those reads), and no other global load shares its
        scoreboard when the next block's scale products wait for it. (Issued at the top of
        the loop, the prefetch shared a scoreboard with the scales in use, so every K block
        waited out a fresh global load before its promotion.)"""
        k = self.k
        nxt, more = k.tmp("u32", "kb_next"), k.tmp("pred", "p_next_scale")
        k(f"add.u32 {nxt}, %kb, 1")
        k(f"setp.lt.u32 {more}, {nxt}, %k_blocks", "none past the row's end")
        for blk in range(2 if two_scales else 1):
            k(f"add.u64 %sfb_row{blk}, %sfb_row{blk}, 4")
            k(f"@{more} ld.global.nc.f32 %sb{blk}, [%sfb_row{blk}]")

    def scale_products(self, sa, two_scales: bool, prefetch: bool) -> list[list[str]]:
        """sfa[row] * sfb for this thread's two rows (and both B-scale blocks when the tile
        straddles two), then, after the last use of this block's B scales, the next block's
        prefetch. Emitted while the WGMMAs run, so neither waits behind them."""
        k = self.k
        s = [[k.tmp("f32", "scale") for _ in range(2)] for _ in range(2 if two_scales else 1)]
        for blk in range(len(s)):
            for h in range(2):
                k(f"mul.rn.f32 {s[blk][h]}, {sa[h]}, %sb{blk}")
        if prefetch:
            self.prefetch_sfb(two_scales)
        return s

    def promote(self, acc, fin, s, two_scales: bool) -> None:
        """final += acc * s (s from ``scale_products``): the second level of the two-level accumulation.

        When the tile straddles two B-scale blocks, the split point ``former`` (in 8-column
        slices) is one of a few values fixed by BN; each gets its own unrolled FFMA block
        with the scale chosen at generation time, reached by a uniform branch. (A select
        per element doubled the promotion's instruction count: 1.4-1.6x slower tiles.)
        """
        k = self.k
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

    def column_scales(self) -> list[tuple[str, str]]:
        """Per-row B scales: this thread's two columns of every 8-column slice for this K block,
        from the stage's TMA-loaded row of BN scales. Read while the WGMMAs run, and before the
        stage is released."""
        k = self.k
        regs = []
        for i in range(self.c.block_n // 8):
            lo, hi = k.reg("f32", f"sbc{i}_0"), k.reg("f32", f"sbc{i}_1")
            k(f"ld.shared.v2.f32 {{{lo}, {hi}}}, [%sfb_stage+{32 * i}]")
            regs.append((lo, hi))
        return regs

    def promote_per_column(self, acc, fin, sa, col_scales) -> None:
        """final += acc * (sfa[row] * sfb[col]): with 1x128 scales on both operands every
        element has its own scale product (one FMUL and one FFMA each)."""
        k = self.k
        for i, pair in enumerate(col_scales):
            for q in range(4):
                j = 4 * i + q
                p = k.tmp("f32", "sab")
                k(f"mul.rn.f32 {p}, {sa[q // 2]}, {pair[q % 2]}")
                k(f"fma.rn.f32 {fin[j]}, {acc[j]}, {p}, {fin[j]}")

    def load_c(self, tile) -> None:
        """D = C + A.B: each storing thread loads its swizzle atom of C into the D tile, once
        its own previous store has finished reading that atom; the load runs under the K loop
        and completes on ``c_full``."""
        c, k = self.c, self.k
        k.comment("C: each storing thread's atom of the tile, into the D tile (its last store has read it)")
        k("@!%p_storer bra L_c_issued", "divergent: only the storing lanes")
        k("cp.async.bulk.wait_group.read 0")
        k("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%c_full], %c_box_bytes")
        dst, n0 = self._atom_of_thread(tile)
        emit.tma_load(k, "%tmap_c", dst, self.sched.d_coords(tile, n0), "%c_full",
                      comment="C atom -> D tile")
        k.label("L_c_issued")

    @property
    def wg_stores(self) -> bool:
        """Each math warpgroup stores its own 64-row slab of D (``GemmConfig.d_store_rows``)."""
        return self.c.d_store_rows < self.c.block_m

    def _store_box(self, tile) -> tuple[str, list[str]]:
        """(shared address, global coordinates) of the D box this storing thread moves."""
        src, n0 = self._atom_of_thread(tile)
        coords = self.sched.d_coords(tile, n0)
        if self.wg_stores:
            k = self.k
            row = k.tmp("u32", "slab_g_row")
            k(f"add.u32 {row}, {coords[1]}, %slab_row_0", "this warpgroup's slab of the tile")
            coords = [coords[0], row, *coords[2:]]
        return src, coords

    def _atom_of_thread(self, tile) -> tuple[str, str]:
        """(shared address, first column) of the output atom this storing thread moves (with
        warpgroup stores: of its warpgroup's slab)."""
        c, k = self.c, self.k
        swz = c.d_swizzle
        if self.wg_stores:
            base = k.tmp("u32", "dslab")
            k(f"mad.lo.u32 {base}, %slab_row_0, {swz or c.block_n * c.out_bytes}, %smem_d",
              "the slab's first row (in every atom)")
            if not swz:
                return base, tile.n0
            src, n0 = k.tmp("u32", "dsrc"), k.tmp("u32", "dn0")
            k(f"mad.lo.u32 {src}, %thread_in_wg, {c.block_m * swz}, {base}", "this thread stores one swizzle atom")
            k(f"mad.lo.u32 {n0}, %thread_in_wg, {swz // c.out_bytes}, {tile.n0}")
            return src, n0
        if not swz:
            return "%smem_d", tile.n0
        src, n0 = k.tmp("u32", "dsrc"), k.tmp("u32", "dn0")
        k(f"mad.lo.u32 {src}, %thread, {c.block_m * swz}, %smem_d", "this thread stores one swizzle atom")
        k(f"mad.lo.u32 {n0}, %thread, {swz // c.out_bytes}, {tile.n0}")
        return src, n0

    def epilogue(self, fin, tile, store_threads: int, math_threads: int) -> None:
        c, k = self.c, self.k
        swz = c.d_swizzle
        if c.out_dtype == "bfloat16":
            k.stage("EPILOGUE: bf16 -> stmatrix into the swizzled D tile -> TMA store"
                    + (" (C added from the tile first)" if c.with_c else ""))
        else:
            k.stage(f"EPILOGUE: fp32 pairs into the {'swizzled ' if swz else ''}D tile -> "
                    + ("each warpgroup's slab by its own " if self.wg_stores else "") + "TMA "
                    + ("reduce-add onto out (D += A.B in L2; no C is loaded)" if c.reduce_out else "store")
                    + (" (C added from the tile first)" if c.with_c else ""))
        if c.with_c:
            k.comment("wait for the tile of C: it sits where D goes, and its load was issued only after "
                      "the previous tile's stores had read the D tile")
            emit.wait(k, "%c_full", "%c_phase", "c", "0", c.debug)
            k("xor.b32 %c_phase, %c_phase, 1")
        elif self.wg_stores:
            k.comment("the previous tile's stores of this warpgroup's slab must have read it")
            k("@%p_storer cp.async.bulk.wait_group.read 0")
            k("bar.sync %store_bar, 128")
        else:
            k.comment("the previous tile's stores must have finished reading the D tile")
            k("@%p_storer cp.async.bulk.wait_group.read 0")
            k(f"bar.sync 1, {math_threads}")
        if c.valid_warps < 4:
            k("@!%p_valid_warp bra.uni L_stmatrix_done", "rows past the tile: nothing to store")
        if c.out_dtype == "bfloat16":
            self.tile_to_smem_bf16(fin)
        else:
            self.tile_to_smem_f32(fin)
        if c.valid_warps < 4:
            k.label("L_stmatrix_done")
        k("fence.proxy.async.shared::cta", "make the D tile visible to the TMA engine")
        k("bar.sync %store_bar, 128" if self.wg_stores else f"bar.sync 1, {math_threads}")
        k("@!%p_storer bra.uni L_store_done")
        src, coords = self._store_box(tile)
        emit.tma_store(k, "%tmap_d", src, coords, reduce_add=c.reduce_out)
        k("cp.async.bulk.commit_group")
        k.label("L_store_done")

    def tile_to_smem_bf16(self, fin) -> None:
        """bf16 pairs through stmatrix x4 (with C: ldmatrix x4 of the same places first, added)."""
        c, k = self.c, self.k
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
        nsl = c.block_n // 8
        for w, f in enumerate(fin):
            row = k.tmp("u32", "drow")
            k(f"add.u32 {row}, {mrow}, %slab_row_{w}")
            i = 0
            while i < nsl:
                cnt = 2 if i + 1 < nsl else 1
                col = None
                if c.with_c:
                    col = self._stmatrix_col(pair, i, cnt)
                    addr = self.d_smem_addr(row, col)
                    self._add_c_bf16(f, i, cnt, addr)
                regs = []
                for s in range(cnt):
                    for h in range(2):
                        r = k.tmp("b32", "bf2")
                        j = 4 * (i + s) + 2 * h
                        k(f"cvt.rn.bf16x2.f32 {r}, {f[j + 1]}, {f[j]}")
                        regs.append(r)
                if col is None:
                    col = self._stmatrix_col(pair, i, cnt)
                    addr = self.d_smem_addr(row, col)
                emit.stmatrix(k, addr, regs)
                i += cnt

    def _stmatrix_col(self, pair: str, i: int, cnt: int) -> str:
        k = self.k
        col = k.tmp("u32", "dcol")
        if cnt == 2:
            k(f"mad.lo.u32 {col}, {pair}, 8, {8 * i}")
        else:
            k(f"mov.u32 {col}, {8 * i}")
        return col

    def _add_c_bf16(self, f, i: int, cnt: int, addr: str) -> None:
        """f[slices i, i + cnt) += C from the tile: ldmatrix returns the stmatrix fragment layout."""
        k = self.k
        regs = [k.tmp("b32", "cbf2") for _ in range(2 * cnt)]
        emit.ldmatrix(k, addr, regs)
        for s in range(cnt):
            for h in range(2):
                j = 4 * (i + s) + 2 * h
                lo, hi = k.tmp("b16", "c_lo"), k.tmp("b16", "c_hi")
                k(f"mov.b32 {{{lo}, {hi}}}, {regs[2 * s + h]}")
                for half, dst in ((lo, f[j]), (hi, f[j + 1])):
                    x = k.tmp("f32", "cval")
                    k(f"cvt.f32.bf16 {x}, {half}")
                    k(f"add.rn.f32 {dst}, {dst}, {x}")

    def tile_to_smem_f32(self, fin) -> None:
        """fp32 pairs with st.shared.v2 at each thread's own fragment places (with C: ld.shared.v2
        of the same places first, added): rows r, r + 8, columns 8i + 2 (lane % 4) + 0, 1."""
        c, k = self.c, self.k
        c0 = k.tmp("u32", "dcol0")
        k(f"and.b32 {c0}, %lane, 3")
        k(f"shl.b32 {c0}, {c0}, 1")
        for w, f in enumerate(fin):
            for h in range(2):
                row = k.tmp("u32", "drow")
                k(f"add.u32 {row}, %slab_row_{w}, %row_in_wave")
                if h:
                    k(f"add.u32 {row}, {row}, 8")
                for i in range(c.block_n // 8):
                    col = k.tmp("u32", "dcol")
                    k(f"add.u32 {col}, {c0}, {8 * i}")
                    addr = self.d_smem_addr(row, col)
                    j = 4 * i + 2 * h
                    if c.with_c:
                        x, y = k.tmp("f32", "cval"), k.tmp("f32", "cval")
                        k(f"ld.shared.v2.f32 {{{x}, {y}}}, [{addr}]")
                        k(f"add.rn.f32 {f[j]}, {f[j]}, {x}")
                        k(f"add.rn.f32 {f[j + 1]}, {f[j + 1]}, {y}")
                    k(f"st.shared.v2.f32 [{addr}], {{{f[j]}, {f[j + 1]}}}")

    def clipped_store(self, fin, tile) -> None:
        """Store only the block's first ``tile.rows`` rows, straight from the registers (the
        TMA store clips only at the array's edge). Used where a group ends inside a block."""
        c, k = self.c, self.k
        k.stage("EPILOGUE (clipped): rows < tile.rows only, bf16 pairs from registers")
        k.label("L_store_clipped")
        cols_left = k.tmp("u32", "cols_left")
        k(f"sub.u32 {cols_left}, %shape_n, {tile.n0}")
        col = k.tmp("u32", "ccol")
        k("and.b32 %s, %%lane, 3" % col)
        k(f"shl.b32 {col}, {col}, 1", "this thread's first column in each 8-column slice")
        base = k.tmp("u64", "crow_base")
        for w, f in enumerate(fin):
            for h in range(2):
                r = k.tmp("u32", "crow")
                k(f"add.u32 {r}, %slab_row_{w}, %row_in_wave")
                if h:
                    k(f"add.u32 {r}, {r}, 8")
                p_row = k.tmp("pred", "p_crow")
                k(f"setp.lt.u32 {p_row}, {r}, {tile.rows}")
                g = k.tmp("u32", "cg_row")
                k(f"add.u32 {g}, {r}, {tile.row}")
                k(f"mul.wide.u32 {base}, {g}, %d_stride")
                elem = k.tmp("u32", "celem")
                k(f"add.u32 {elem}, {tile.n0}, {col}")
                off = k.tmp("u64", "coff")
                k(f"cvt.u64.u32 {off}, {elem}")
                k(f"add.u64 {base}, {base}, {off}")
                k(f"mad.lo.u64 {base}, {base}, 2, %d_ptr")
                for i in range(c.block_n // 8):
                    p, ci = k.tmp("pred", "p_cst"), k.tmp("u32", "ccol_i")
                    k(f"add.u32 {ci}, {col}, {8 * i}")
                    k(f"setp.lt.and.u32 {p}, {ci}, {cols_left}, {p_row}")
                    v = k.tmp("b32", "cbf2")
                    j = 4 * i + 2 * h
                    k(f"cvt.rn.bf16x2.f32 {v}, {f[j + 1]}, {f[j]}")
                    k(f"@{p} st.global.b32 [{base}+{16 * i}], {v}")

    def d_smem_addr(self, row: str, col: str) -> str:
        """Shared address of (row, col) in the D tile, in TMA's swizzled layout."""
        c, k = self.c, self.k
        swz = c.d_swizzle
        addr = k.tmp("u32", "daddr")
        elt = c.out_bytes
        if not swz:
            k(f"mad.lo.u32 {addr}, {row}, {c.block_n * elt}, %smem_d")
            k(f"mad.lo.u32 {addr}, {col}, {elt}, {addr}")
            return addr
        atom_cols = swz // elt
        atom, inatom = k.tmp("u32", "datom"), k.tmp("u32", "dinatom")
        k(f"div.u32 {atom}, {col}, {atom_cols}")
        k(f"rem.u32 {inatom}, {col}, {atom_cols}")
        k(f"mul.lo.u32 {addr}, {atom}, {c.block_m * swz}")
        k(f"mad.lo.u32 {addr}, {row}, {swz}, {addr}")
        k(f"mad.lo.u32 {addr}, {inatom}, {elt}, {addr}")
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
    """The kernel for ``cfg`` (any layout kind: dense, contiguous, contiguous_psum, masked)."""
    return GemmGen(cfg).build()


def spec(cfg: GemmConfig) -> KernelSpec:
    """The host contract of ``build(cfg)``, without generating the PTX."""
    return GemmGen(cfg).spec
