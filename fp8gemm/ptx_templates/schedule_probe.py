"""A kernel that runs only a layout's tile scheduler and writes down what it yields.

Each CTA's first thread walks the real scheduler emitter (the same PTX the GEMM runs)
and writes one record per tile: (group, m block, n block, row, ghost, multicast valid,
valid rows, first scale K block (k_grouped; else 0)) as u32, at ``out[(cta * max_tiles + i) * 8]``, and its tile count at
``counts[cta]``. Tests compare this with the scheduler's Python ``tiles()``.
"""
from __future__ import annotations

from ..config import GemmConfig
from .builder import Kernel
from .scheduler import for_config

RECORD_WORDS = 8
PARAMS = [("layout", "u64"), ("out", "u64"), ("counts", "u64"), ("m", "u32"), ("n", "u32"),
          ("groups", "u32"), ("max_tiles", "u32")]


def params(cfg: GemmConfig) -> list[tuple[str, str]]:
    """The probe's parameters: the layout's device array, or (k_grouped) its per-group arrays
    after the common ones, filled with each group's K blocks and first scale row."""
    if cfg.kind == "k_grouped":
        return PARAMS + [("group_kb", f"u32[{cfg.groups}]"), ("group_kb_start", f"u32[{cfg.groups}]")]
    return PARAMS


def build(cfg: GemmConfig) -> Kernel:
    sched = for_config(cfg)
    k = Kernel(f"schedule_probe_{cfg.name}", params(cfg), maxntid=32, header_comment=f"tile schedule of {cfg}")
    k.stage("inputs the scheduler reads")
    k.load_param("u64", "layout_ptr", "layout")
    k.load_param("u64", "out_ptr", "out")
    k.load_param("u64", "counts_ptr", "counts")
    k.load_param("u32", "shape_m", "m")
    k.load_param("u32", "shape_n", "n")
    k.load_param("u32", "groups", "groups")
    k.load_param("u32", "max_tiles", "max_tiles")
    sched.emit_cluster_ranks(k, cfg.cluster)
    if cfg.kind == "k_grouped":          # the per-group map addresses are computed, never used
        for op in ("a", "b"):
            k.reg("u64", f"tmap_{op}")
            k(f"mov.u64 %tmap_{op}, 0")
    sched.emit_setup(k)
    p, tid, cta = k.reg("pred", "p_first"), k.reg("u32", "thread_idx"), k.reg("u32", "cta_idx")
    k(f"mov.u32 {tid}, %tid.x")
    k(f"mov.u32 {cta}, %ctaid.x")
    k(f"setp.eq.u32 {p}, {tid}, 0")
    k(f"@!{p} bra.uni L_probe_exit")
    sched.emit_begin(k, "probe")
    count = k.reg("u32", "count")
    k(f"mov.u32 {count}, 0")
    k.stage("one record per tile")
    k.label("L_probe_tile")
    t = sched.emit_next(k, "probe", "L_probe_done")
    vals = [t.group, t.m_blk, t.n_blk, t.row]
    for flag, name in ((t.ghost, "ghost"), (t.mc_valid, "mc_valid")):
        r = k.reg("u32", f"rec_{name}")
        if flag is None:
            k(f"mov.u32 {r}, {0 if name == 'ghost' else 1}")
        else:
            k(f"selp.u32 {r}, 1, 0, {flag}")
        vals.append(r)
    rows = k.reg("u32", "rec_rows")
    k(f"mov.u32 {rows}, {t.rows if t.rows else cfg.block_m}")
    vals += [rows, t.kb_base or "0"]
    room = k.reg("pred", "p_room")
    k(f"setp.lt.u32 {room}, {count}, %max_tiles")
    slot = k.reg("u32", "slot")
    k(f"mad.lo.u32 {slot}, {cta}, %max_tiles, {count}")
    addr = k.reg("u64", "rec_addr")
    k(f"mad.wide.u32 {addr}, {slot}, {4 * RECORD_WORDS}, %out_ptr")
    if t.kb_base is None:
        zero = k.reg("u32", "zero")
        k(f"mov.u32 {zero}, 0")
        vals[-1] = zero
    k(f"@{room} st.global.v4.u32 [{addr}], {{{', '.join(vals[:4])}}}")
    k(f"@{room} st.global.v4.u32 [{addr}+16], {{{', '.join(vals[4:])}}}")
    k(f"add.u32 {count}, {count}, 1")
    sched.emit_advance(k, "probe")
    k("bra.uni L_probe_tile")
    k.label("L_probe_done")
    caddr = k.reg("u64", "count_addr")
    k(f"mul.wide.u32 {caddr}, {cta}, 4")
    k(f"add.u64 {caddr}, {caddr}, %counts_ptr")
    k(f"st.global.u32 [{caddr}], {count}")
    k.label("L_probe_exit")
    if cfg.cluster > 1:
        k("barrier.cluster.arrive.aligned")
        k("barrier.cluster.wait.aligned")
    k("exit")
    return k
