"""PTX for the two FP8 quantization kernels.

per-token (1x128 groups):  x[M, K] (bf16|f32) -> q[M, K] e4m3, s[kb][s_stride] f32 (MN-major)
per-block (128x128 blocks): x[N, K] (bf16|f32) -> q[N, K] e4m3, s[ceil(N/128)][kb] f32

Both are memory bound: every lane moves 16-byte vectors and issues all of its loads before
the first use. Numerics (matched bit for bit by ``fp8gemm.reference``):
    amax  = max(max|x| over the group, 1e-4)
    q     = e4m3_rn_satfinite(x * (448 / amax))        (f32 ops, round to nearest)
    scale = amax / 448
"""
from __future__ import annotations

from .builder import Kernel
from .spec import KernelSpec, Param

E4M3_MAX = 448.0
AMAX_FLOOR = 1e-4
THREADS = 256          # 8 warps per CTA
TOKEN_UNROLL = 4       # 16-byte loads in flight per lane in the per-token kernel

ITEMSIZE = {"bf16": 2, "f32": 4}


def _f32_hex(x: float) -> str:
    import struct
    return "0f%08X" % struct.unpack("<I", struct.pack("<f", x))[0]


def _unpack_to_f32(k: Kernel, words: list[str], src: str) -> list[str]:
    """Turn a 16-byte vector (4 x b32) into f32 registers (8 from bf16, 4 from f32)."""
    vals = []
    for w in words:
        if src == "f32":
            f = k.tmp("f32", "x")
            k(f"mov.b32 {f}, {w}")
            vals.append(f)
        else:  # bf16 pair: element 2i in the low half, 2i+1 in the high half
            lo_b, hi_b = k.tmp("b32", "xb"), k.tmp("b32", "xb")
            k(f"shl.b32 {lo_b}, {w}, 16")
            k(f"and.b32 {hi_b}, {w}, 0xFFFF0000")
            lo, hi = k.tmp("f32", "x"), k.tmp("f32", "x")
            k(f"mov.b32 {lo}, {lo_b}")
            k(f"mov.b32 {hi}, {hi_b}")
            vals += [lo, hi]
    return vals


def _abs_max(k: Kernel, vals: list[str], into: str) -> None:
    for v in vals:
        a = k.tmp("f32", "abs")
        k(f"abs.f32 {a}, {v}")
        k(f"max.f32 {into}, {into}, {a}")


def _butterfly_max(k: Kernel, val: str, offsets: list[int]) -> None:
    for off in offsets:
        o = k.tmp("f32", "shfl")
        k(f"shfl.sync.bfly.b32 {o}, {val}, {off}, 0x1f, 0xffffffff")
        k(f"max.f32 {val}, {val}, {o}")


def _scale_from_amax(k: Kernel, amax: str, inv: str, scale: str) -> None:
    k(f"max.f32 {amax}, {amax}, {_f32_hex(AMAX_FLOOR)}", "amax = max(amax, 1e-4)")
    k(f"div.rn.f32 {inv}, {_f32_hex(E4M3_MAX)}, {amax}", "inv = 448 / amax")
    k(f"div.rn.f32 {scale}, {amax}, {_f32_hex(E4M3_MAX)}", "scale = amax / 448")


def _quantize_pack(k: Kernel, vals: list[str], inv: str) -> list[str]:
    """x * inv -> e4m3, packed little-endian into b32 words (4 values each)."""
    ys = []
    for v in vals:
        y = k.tmp("f32", "y")
        k(f"mul.rn.f32 {y}, {v}, {inv}")
        ys.append(y)
    halves = []
    for i in range(0, len(ys), 2):
        h = k.tmp("b16", "q2")
        # the first source lands in the upper byte
        k(f"cvt.rn.satfinite.e4m3x2.f32 {h}, {ys[i + 1]}, {ys[i]}")
        halves.append(h)
    words = []
    for i in range(0, len(halves), 2):
        w = k.tmp("b32", "q4")
        k(f"mov.b32 {w}, {{{halves[i]}, {halves[i + 1]}}}")
        words.append(w)
    return words


def _store_words(k: Kernel, pred: str, addr: str, words: list[str]) -> None:
    if len(words) == 1:
        k(f"@{pred} st.global.b32 [{addr}], {words[0]}")
    else:
        k(f"@{pred} st.global.v{len(words)}.b32 [{addr}], {{{', '.join(words)}}}")


# (name, type, where the value comes from): arrays by launch argument, sizes as expressions
_PARAMS = (("x", "u64", "array:x"), ("q", "u64", "array:q"), ("s", "u64", "array:scales"),
           ("rows", "u32", "m"), ("cols", "u32", "k"),
           ("x_stride", "u64", "x_stride"),        # elements between rows of x
           ("q_stride", "u64", "q_stride"),        # bytes (= e4m3 elements) between rows of q
           ("s_stride", "u32", "s_stride"))        # per-token: floats between scale columns; per-block: per row


def _common_params() -> list[tuple[str, str]]:
    return [(n, t) for n, t, _ in _PARAMS]


def cast_spec(kind: str, src: str) -> KernelSpec:
    """The host contract of a cast kernel (``kind`` "token" or "block", ``src`` "bf16"/"f32"):
    parameters with their sources, and the grid over named values (m rows, k columns)."""
    params = tuple(Param(n, t, f"{n} of the cast", array=w[6:]) if w.startswith("array:")
                   else Param(n, t, f"{n} of the cast", value=w) for n, t, w in _PARAMS)
    if kind == "token":
        chunk = TOKEN_UNROLL * 32 * (16 // ITEMSIZE[src])       # columns one warp covers
        grid = (f"ceil_div(k, {chunk})", f"ceil_div(m, {THREADS // 32})", 1)
        name = f"fp8gemm_per_token_cast_{src}"
    elif kind == "block":
        grid = ("ceil_div(k, 128)", "ceil_div(m, 128)", 1)        # one CTA per 128x128 block
        name = f"fp8gemm_per_block_cast_{src}"
    else:
        raise ValueError(f"cast kind must be 'token' or 'block', got {kind!r}")
    return KernelSpec(name=name, kind=f"per_{kind}_cast", params=params, tensor_maps=(), threads=THREADS,
                      smem_bytes=0, cluster=(1, 1, 1), block={}, expect_tx_bytes=0,
                      grid="grid_dims over m (rows) and k (columns)", grid_dims=grid)


def per_token_kernel(src: str) -> Kernel:
    """One warp per (row, chunk of TOKEN_UNROLL*32*E columns); grid = (chunks, ceil(M/8))."""
    isz = ITEMSIZE[src]
    elems = 16 // isz                 # elements per lane per 16-byte load
    lanes_per_group = 128 // elems    # 16 (bf16) or 32 (f32)
    cols_per_iter = 32 * elems
    k = Kernel(f"fp8gemm_per_token_cast_{src}", _common_params(), maxntid=THREADS,
               header_comment=f"per-token (1x128) cast {src} -> e4m3, MN-major scales")
    k.stage("parameters and this warp's row / column chunk")
    x = k.load_param("u64", "x_base", "x")
    q = k.load_param("u64", "q_base", "q")
    s = k.load_param("u64", "s_base", "s")
    rows = k.load_param("u32", "rows", "rows")
    cols = k.load_param("u32", "cols", "cols")
    xs = k.load_param("u64", "x_stride", "x_stride")       # elements
    qs = k.load_param("u64", "q_stride", "q_stride")       # bytes
    ss = k.load_param("u32", "s_stride", "s_stride")       # floats between scale columns
    tid, lane, warp, row = (k.reg("u32", n) for n in ("thread", "lane", "warp", "row"))
    k(f"mov.u32 {tid}, %tid.x")
    k(f"and.b32 {lane}, {tid}, 31")
    k(f"shr.u32 {warp}, {tid}, 5")
    k(f"mov.u32 {row}, %ctaid.y")
    k(f"mad.lo.u32 {row}, {row}, {THREADS // 32}, {warp}")
    p_row = k.reg("pred", "p_row_out")
    k(f"setp.ge.u32 {p_row}, {row}, {rows}")
    k(f"@{p_row} bra.uni L_done", "warp-uniform: rows past M do nothing")
    col0 = k.reg("u32", "col0")
    k(f"mov.u32 {col0}, %ctaid.x")
    k(f"mul.lo.u32 {col0}, {col0}, {TOKEN_UNROLL * cols_per_iter}")
    lane_col = k.reg("u32", "lane_col")
    k(f"mad.lo.u32 {lane_col}, {lane}, {elems}, {col0}")
    row64 = k.reg("u64", "row64")
    k(f"cvt.u64.u32 {row64}, {row}")
    xrow, qrow = k.reg("u64", "x_row"), k.reg("u64", "q_row")
    k(f"mul.lo.u64 {xrow}, {row64}, {xs}")
    k(f"mad.lo.u64 {xrow}, {xrow}, {isz}, {x}")
    k(f"mad.lo.u64 {qrow}, {row64}, {qs}, {q}")

    k.stage(f"load: {TOKEN_UNROLL} x 16 bytes per lane, all issued before use")
    preds, colregs, data = [], [], []
    for u in range(TOKEN_UNROLL):
        c = k.reg("u32", f"col_{u}")
        k(f"add.u32 {c}, {lane_col}, {u * cols_per_iter}")
        p = k.reg("pred", f"p_in_{u}")
        k(f"setp.lt.u32 {p}, {c}, {cols}")
        addr = k.tmp("u64", "addr")
        c64 = k.tmp("u64", "c64")
        k(f"cvt.u64.u32 {c64}, {c}")
        k(f"mad.lo.u64 {addr}, {c64}, {isz}, {xrow}")
        words = k.regs("b32", f"v{u}", 4)
        k(f"mov.b32 {words[0]}, 0")
        for w in words[1:]:
            k(f"mov.b32 {w}, 0")
        k(f"@{p} ld.global.nc.L1::no_allocate.v4.b32 {{{', '.join(words)}}}, [{addr}]")
        preds.append(p)
        colregs.append(c)
        data.append(words)

    group_offsets = [o for o in (16, 8, 4, 2, 1) if o < lanes_per_group]
    for u in range(TOKEN_UNROLL):
        k.stage(f"group amax, scale, quantize, store (iteration {u})")
        vals = _unpack_to_f32(k, data[u], src)
        amax = k.reg("f32", f"amax_{u}")
        k(f"mov.f32 {amax}, 0f00000000")
        _abs_max(k, vals, amax)
        _butterfly_max(k, amax, group_offsets)
        inv, scale = k.reg("f32", f"inv_{u}"), k.reg("f32", f"scale_{u}")
        _scale_from_amax(k, amax, inv, scale)
        words = _quantize_pack(k, vals, inv)
        qaddr = k.tmp("u64", "qaddr")
        c64 = k.tmp("u64", "c64")
        k(f"cvt.u64.u32 {c64}, {colregs[u]}")
        k(f"add.u64 {qaddr}, {qrow}, {c64}")
        _store_words(k, preds[u], qaddr, words)
        # the first lane of each group writes its scale at s[group * s_stride + row]
        first = k.tmp("pred", "p_first")
        lane_in_group = k.tmp("u32", "lig")
        k(f"and.b32 {lane_in_group}, {lane}, {lanes_per_group - 1}")
        k(f"setp.eq.and.u32 {first}, {lane_in_group}, 0, {preds[u]}")
        grp = k.tmp("u32", "grp")
        k(f"shr.u32 {grp}, {colregs[u]}, 7")
        sidx = k.tmp("u32", "sidx")
        k(f"mad.lo.u32 {sidx}, {grp}, {ss}, {row}")
        saddr = k.tmp("u64", "saddr")
        k(f"mad.wide.u32 {saddr}, {sidx}, 4, {s}")
        k(f"@{first} st.global.f32 [{saddr}], {scale}")
    k.label("L_done")
    k("ret")
    return k


BLOCK_ROWS_PER_WARP = 16


def per_block_kernel(src: str) -> Kernel:
    """One CTA per 128x128 block; grid = (ceil(K/128), ceil(N/128))."""
    isz = ITEMSIZE[src]
    elems = 16 // isz
    lanes_per_row = 128 // elems          # 16 (bf16) or 32 (f32)
    rows_per_load = 32 // lanes_per_row   # 2 or 1
    loads = BLOCK_ROWS_PER_WARP // rows_per_load
    k = Kernel(f"fp8gemm_per_block_cast_{src}", _common_params(), maxntid=THREADS,
               header_comment=f"per-block (128x128) cast {src} -> e4m3")
    k.global_decl(".shared .align 16 .f32 warp_amax[8];")
    k.stage("parameters and this lane's rows / column")
    x = k.load_param("u64", "x_base", "x")
    q = k.load_param("u64", "q_base", "q")
    s = k.load_param("u64", "s_base", "s")
    rows = k.load_param("u32", "rows", "rows")
    cols = k.load_param("u32", "cols", "cols")
    xs = k.load_param("u64", "x_stride", "x_stride")
    qs = k.load_param("u64", "q_stride", "q_stride")
    ss = k.load_param("u32", "s_stride", "s_stride")      # floats per row of scales
    tid, lane, warp = (k.reg("u32", n) for n in ("thread", "lane", "warp"))
    k(f"mov.u32 {tid}, %tid.x")
    k(f"and.b32 {lane}, {tid}, 31")
    k(f"shr.u32 {warp}, {tid}, 5")
    kblk, nblk = k.reg("u32", "kblk"), k.reg("u32", "nblk")
    k(f"mov.u32 {kblk}, %ctaid.x")
    k(f"mov.u32 {nblk}, %ctaid.y")
    col = k.reg("u32", "col")
    sub = k.reg("u32", "lane_in_row")
    k(f"and.b32 {sub}, {lane}, {lanes_per_row - 1}")
    k(f"shl.b32 {col}, {kblk}, 7")
    k(f"mad.lo.u32 {col}, {sub}, {elems}, {col}")
    p_col = k.reg("pred", "p_col")
    k(f"setp.lt.u32 {p_col}, {col}, {cols}")
    row0 = k.reg("u32", "row0")
    k(f"shl.b32 {row0}, {nblk}, 7")
    k(f"mad.lo.u32 {row0}, {warp}, {BLOCK_ROWS_PER_WARP}, {row0}")
    if rows_per_load == 2:
        half = k.reg("u32", "half")
        k(f"shr.u32 {half}, {lane}, 4")
        k(f"add.u32 {row0}, {row0}, {half}")
    col64 = k.reg("u64", "col64")
    k(f"cvt.u64.u32 {col64}, {col}")

    k.stage(f"load: {loads} x 16 bytes per lane, all issued before use")
    preds, qaddrs, data = [], [], []
    for i in range(loads):
        r = k.reg("u32", f"r_{i}")
        k(f"add.u32 {r}, {row0}, {i * rows_per_load}")
        p = k.reg("pred", f"p_in_{i}")
        k(f"setp.lt.and.u32 {p}, {r}, {rows}, {p_col}")
        r64 = k.tmp("u64", "r64")
        k(f"cvt.u64.u32 {r64}, {r}")
        xa = k.tmp("u64", "xaddr")
        k(f"mad.lo.u64 {xa}, {r64}, {xs}, {col64}")
        k(f"mad.lo.u64 {xa}, {xa}, {isz}, {x}")
        qa = k.reg("u64", f"qaddr_{i}")
        k(f"mad.lo.u64 {qa}, {r64}, {qs}, {col64}")
        k(f"add.u64 {qa}, {qa}, {q}")
        words = k.regs("b32", f"v{i}", 4)
        for w in words:
            k(f"mov.b32 {w}, 0")
        k(f"@{p} ld.global.nc.L1::no_allocate.v4.b32 {{{', '.join(words)}}}, [{xa}]")
        preds.append(p)
        qaddrs.append(qa)
        data.append(words)

    k.stage("block amax: lane -> warp (shuffle) -> CTA (shared memory)")
    amax = k.reg("f32", "amax")
    k(f"mov.f32 {amax}, 0f00000000")
    vals = []
    for i in range(loads):
        v = _unpack_to_f32(k, data[i], src)
        vals.append(v)
        _abs_max(k, v, amax)
    _butterfly_max(k, amax, [16, 8, 4, 2, 1])
    p_lane0 = k.reg("pred", "p_lane0")
    k(f"setp.eq.u32 {p_lane0}, {lane}, 0")
    wslot = k.reg("u32", "wslot")
    k(f"mov.u32 {wslot}, warp_amax")
    k(f"mad.lo.u32 {wslot}, {warp}, 4, {wslot}")
    k(f"@{p_lane0} st.shared.f32 [{wslot}], {amax}")
    k("bar.sync 0")
    base = k.reg("u32", "amax_base")
    k(f"mov.u32 {base}, warp_amax")
    for w in range(THREADS // 32):
        o = k.tmp("f32", "wmax")
        k(f"ld.shared.f32 {o}, [{base}+{4 * w}]")
        k(f"max.f32 {amax}, {amax}, {o}")
    inv, scale = k.reg("f32", "inv"), k.reg("f32", "scale")
    _scale_from_amax(k, amax, inv, scale)
    p_t0 = k.reg("pred", "p_t0")
    k(f"setp.eq.u32 {p_t0}, {tid}, 0")
    sidx = k.reg("u32", "sidx")
    k(f"mad.lo.u32 {sidx}, {nblk}, {ss}, {kblk}")
    saddr = k.reg("u64", "saddr")
    k(f"mad.wide.u32 {saddr}, {sidx}, 4, {s}")
    k(f"@{p_t0} st.global.f32 [{saddr}], {scale}")

    k.stage("quantize and store")
    for i in range(loads):
        words = _quantize_pack(k, vals[i], inv)
        _store_words(k, preds[i], qaddrs[i], words)
    k("ret")
    return k
