"""The exported bundle through the C runtime on the GPU (built here as a shared library and
called with ctypes): dense (bf16 and the training variants fp32, fp32_c, bf16_c, wgrad),
contiguous, masked and k-grouped wgrad results bit-identical to the Python path, and calls from
8 threads at once."""
from __future__ import annotations

import ctypes
import shutil
import subprocess
import threading

import pytest

from test_export_cpu import INCLUDE

pytestmark = pytest.mark.gpu
CC = shutil.which("cc") or shutil.which("gcc")


class Status(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("message", ctypes.c_char * 512)]


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _k_grouped_problems():
    from fp8gemm.config import MAX_K_GROUPS
    return [(5, 256, 384, 256), (MAX_K_GROUPS + 3, 64, 128, 192)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, torch):
    if CC is None or INCLUDE is None:
        pytest.skip("needs a C compiler and a cuda.h")
    import fp8gemm
    folder = tmp_path_factory.mktemp("bundle")
    man = fp8gemm.export(folder, gemm=[(512, 640, 300)], contiguous=[(3, 384, 512, 150)], masked=[(4, 256, 768, 90)],
                         k_grouped=_k_grouped_problems(), casts=["bfloat16", "float32"],
                         variants=("bf16", "fp32", "fp32_c", "bf16_c", "wgrad"))
    return folder, man


@pytest.fixture(scope="module")
def rt(exported, torch):
    folder, _ = exported
    lib = folder / "libfp8gemm_rt.so"
    r = subprocess.run([CC, "-std=c99", "-O2", "-shared", "-fPIC", f"-I{INCLUDE}", str(folder / "runtime" / "fp8gemm_rt.c"),
                        "-ldl", "-lpthread", "-o", str(lib)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    so = ctypes.CDLL(str(lib))
    i64, ptr = ctypes.c_int64, ctypes.c_uint64
    so.fp8gemm_bundle_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(Status)]
    so.fp8gemm_gemm.argtypes = [ctypes.c_void_p, i64, i64, i64, ptr, i64, ptr, i64, ptr, i64, ptr, ptr, i64,
                                ctypes.c_void_p, ctypes.POINTER(Status)]
    so.fp8gemm_gemm_variant.argtypes = [ctypes.c_void_p, ctypes.c_char_p, i64, i64, i64, ptr, i64, ptr, i64, ptr, i64,
                                        ptr, i64, ptr, i64, ptr, i64, ctypes.c_void_p, ctypes.POINTER(Status)]
    so.fp8gemm_m_grouped_contiguous.argtypes = [ctypes.c_void_p, i64, i64, i64, i64, ptr, i64, ptr, i64, ptr, i64, i64,
                                                ptr, ptr, i64, ptr, ctypes.c_int, ctypes.c_void_p,
                                                ctypes.POINTER(Status)]
    so.fp8gemm_m_grouped_masked.argtypes = [ctypes.c_void_p, i64, i64, i64, i64, ptr, i64, i64, ptr, i64, i64, ptr,
                                            i64, i64, ptr, ptr, i64, i64, ptr, ctypes.c_void_p, ctypes.POINTER(Status)]
    so.fp8gemm_k_grouped_wgrad.argtypes = [ctypes.c_void_p, i64, i64, i64, ctypes.POINTER(i64), ptr, ptr, i64, ptr, ptr,
                                           i64, ptr, i64, i64, ctypes.c_void_p, ctypes.POINTER(Status)]
    for name in ("fp8gemm_per_token_cast", "fp8gemm_per_block_cast"):
        getattr(so, name).argtypes = [ctypes.c_void_p, i64, i64, ctypes.c_int, ptr, i64, ptr, i64, ptr, i64,
                                      ctypes.c_void_p, ctypes.POINTER(Status)]
    torch.zeros(1, device="cuda")          # make the primary context current in this thread
    handle, st = ctypes.c_void_p(), Status()
    rc = so.fp8gemm_bundle_load(str(folder).encode(), ctypes.byref(handle), ctypes.byref(st))
    assert rc == 0, st.message.decode()
    return so, handle


def _check(rc, st):
    assert rc == 0, st.message.decode()


def _quant(torch, m, n, k, seed, groups=None):
    import fp8gemm
    g = torch.Generator(device="cuda").manual_seed(seed)
    a = torch.randn((m, k), device="cuda", generator=g).to(torch.bfloat16)
    aq, sa = fp8gemm.per_token_cast_to_fp8(a)
    if groups is None:
        bq, sb = fp8gemm.per_block_cast_to_fp8(torch.randn((n, k), device="cuda", generator=g).to(torch.bfloat16))
    else:
        bq = torch.empty((groups, n, k), device="cuda", dtype=torch.float8_e4m3fn)
        sb = torch.empty((groups, -(-n // 128), -(-k // 128)), device="cuda")
        for i in range(groups):
            fp8gemm.per_block_cast_to_fp8(torch.randn((n, k), device="cuda", generator=g).to(torch.bfloat16),
                                          out=(bq[i], sb[i]))
    return aq, sa, bq, sb


@pytest.mark.parametrize("m", [1, 64, 129, 300, 700])
def test_dense_bit_identical_to_python(torch, rt, m):
    import fp8gemm
    so, h = rt
    n, k = 512, 640
    aq, sa, bq, sb = _quant(torch, m, n, k, seed=m)
    want = torch.empty((m, n), device="cuda", dtype=torch.bfloat16)
    fp8gemm.gemm_fp8_fp8_bf16_nt((aq, sa), (bq, sb), want)
    got = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    st = Status()
    _check(so.fp8gemm_gemm(h, m, n, k, aq.data_ptr(), 0, sa.data_ptr(), sa.stride(1) if sa.shape[1] > 1 else 0,
                           bq.data_ptr(), 0, sb.data_ptr(), got.data_ptr(), 0,
                           torch.cuda.current_stream().cuda_stream, ctypes.byref(st)), st)
    torch.cuda.synchronize()
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))


@pytest.mark.parametrize("m", [1, 129, 300])
@pytest.mark.parametrize("variant", ["fp32", "fp32_c", "bf16_c", "wgrad"])
def test_variants_bit_identical_to_python(torch, rt, variant, m):
    """fp8gemm_gemm_variant against gemm_fp8_fp8_fp32_nt / the c= forms / wgrad_gemm_fp8_fp8_fp32_nt
    on the same inputs: C a separate buffer for the c= forms, D pre-filled (and read as C) for wgrad."""
    import fp8gemm
    so, h = rt
    n, k = 512, 640
    g = torch.Generator(device="cuda").manual_seed(1000 + m)
    aq, sa, bq, sb = _quant(torch, m, n, k, seed=m + 17)
    if variant == "wgrad":        # 1x128 scales per row of B, MN-major like A's
        bq, sb = fp8gemm.per_token_cast_to_fp8(torch.randn((n, k), device="cuda", generator=g).to(torch.bfloat16))
    dtype = torch.bfloat16 if variant == "bf16_c" else torch.float32
    bits = torch.int16 if dtype == torch.bfloat16 else torch.int32
    init = torch.randn((m, n), device="cuda", generator=g).to(dtype)
    c = torch.randn((m, n), device="cuda", generator=g).to(dtype) if variant in ("fp32_c", "bf16_c") else None
    if variant == "wgrad":
        want = init.clone()
        fp8gemm.wgrad_gemm_fp8_fp8_fp32_nt((aq, sa), (bq, sb), want)
        got = init.clone()
    else:
        want = torch.empty((m, n), device="cuda", dtype=dtype)
        python = fp8gemm.gemm_fp8_fp8_bf16_nt if variant == "bf16_c" else fp8gemm.gemm_fp8_fp8_fp32_nt
        python((aq, sa), (bq, sb), want, c=c)
        got = torch.full((m, n), float("nan"), device="cuda", dtype=dtype)
    kb = sa.shape[1]
    sfa = sa.stride(1) if kb > 1 else 0
    sfb = (sb.stride(1) if kb > 1 else 0) if variant == "wgrad" else 0
    st = Status()
    _check(so.fp8gemm_gemm_variant(h, variant.encode(), m, n, k, aq.data_ptr(), 0, sa.data_ptr(), sfa,
                                   bq.data_ptr(), 0, sb.data_ptr(), sfb, got.data_ptr(), 0,
                                   0 if c is None else c.data_ptr(), 0,
                                   torch.cuda.current_stream().cuda_stream, ctypes.byref(st)), st)
    torch.cuda.synchronize()
    assert torch.equal(got.view(bits), want.view(bits))


def test_variant_bad_arguments_are_error_codes(torch, rt):
    so, h = rt
    st = Status()
    call = lambda variant, c=0, sfb=0, n=512: so.fp8gemm_gemm_variant(  # noqa: E731
        h, variant, 64, n, 640, 256, 0, 256, 0, 256, 0, 256, sfb, 256, 0, c, 0, None, ctypes.byref(st))
    assert call(b"fp16") == 1 and b"variant 'fp16'" in st.message and b"wgrad" in st.message
    assert call(None) == 1 and b"variant is NULL" in st.message
    assert call(b"wgrad", c=4096) == 1 and b"c: wgrad accumulates into out" in st.message
    assert call(b"fp32", c=4096) == 1 and b"c: the fp32 variant reads no C" in st.message
    assert call(b"fp32_c", sfb=512) == 1 and b"sfb_stride" in st.message
    assert call(b"wgrad", sfb=500) == 1 and b"sfb_stride = 500 is smaller than 512" in st.message
    assert call(b"fp32", n=1024) == 2 and b"no gemm_fp32 kernel" in st.message


def test_grouped_bit_identical_to_python(torch, rt):
    import fp8gemm
    so, h = rt
    st = Status()
    stream = torch.cuda.current_stream().cuda_stream
    # contiguous: 3 groups of 130, 0, 90 rows (padded to 128)
    n, k, g = 384, 512, 3
    idx = [0] * 130 + [-1] * 126 + [2] * 90 + [-1] * 38
    aq, sa, bq, sb = _quant(torch, len(idx), n, k, seed=7, groups=g)
    mi = torch.tensor(idx, dtype=torch.int32, device="cuda")
    want = torch.zeros((len(idx), n), device="cuda", dtype=torch.bfloat16)
    got = torch.zeros_like(want)
    fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((aq, sa), (bq, sb), want, mi)
    _check(so.fp8gemm_m_grouped_contiguous(h, len(idx), n, k, g, aq.data_ptr(), 0, sa.data_ptr(), sa.stride(1),
                                           bq.data_ptr(), 0, 0, sb.data_ptr(), got.data_ptr(), 0, mi.data_ptr(), 0,
                                           stream, ctypes.byref(st)), st)
    torch.cuda.synchronize()
    valid = mi >= 0
    assert torch.equal(got[valid].view(torch.int16), want[valid].view(torch.int16))
    # masked: 4 groups, M_max 200
    n, k, g, m_max = 256, 768, 4, 200
    _, _, bq2, sb2 = _quant(torch, 1, n, k, seed=8, groups=g)
    kb, s = -(-k // 128), fp8gemm.get_tma_aligned_size(m_max)
    a_bf = torch.randn((g, m_max, k), device="cuda").to(torch.bfloat16)
    aq3 = torch.empty((g, m_max, k), device="cuda", dtype=torch.float8_e4m3fn)
    sa3 = torch.empty((g, kb, s), device="cuda").transpose(1, 2)[:, :m_max]
    for i in range(g):
        fp8gemm.per_token_cast_to_fp8(a_bf[i], out=(aq3[i], sa3[i]))
    mm = torch.tensor([0, 1, 200, 77], dtype=torch.int32, device="cuda")
    want = torch.zeros((g, m_max, n), device="cuda", dtype=torch.bfloat16)
    got = torch.zeros_like(want)
    fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked((aq3, sa3), (bq2, sb2), want, mm, 90)
    _check(so.fp8gemm_m_grouped_masked(h, m_max, n, k, g, aq3.data_ptr(), 0, 0, sa3.data_ptr(), s, kb * s,
                                       bq2.data_ptr(), 0, 0, sb2.data_ptr(), got.data_ptr(), 0, 0, mm.data_ptr(),
                                       stream, ctypes.byref(st)), st)
    torch.cuda.synchronize()
    for i, r in enumerate(mm.tolist()):
        assert torch.equal(got[i, :r].view(torch.int16), want[i, :r].view(torch.int16)), i


@pytest.mark.parametrize("case", ["groups5", "chunked"])
def test_k_grouped_bit_identical_to_python(torch, rt, exported, monkeypatch, case):
    """fp8gemm_k_grouped_wgrad against k_grouped_wgrad_gemm_fp8_fp8_fp32_nt on the same random data
    (empty groups, K tails, out pre-filled and padded): the Python API plans with the bundle's
    kernels standing in for its heuristic's picks (which follow the data's mean K), so both run the
    same kernels; "chunked" has more groups than one launch takes. A second call into another out
    (the cached maps, out's address replaced) gives the same; every K 0 leaves out as it was."""
    import random

    import fp8gemm
    from fp8gemm import wgrad
    from fp8gemm.config import GemmConfig
    from fp8gemm.plan import default_grid
    from fp8gemm.testing import k_grouped_inputs
    so, h = rt
    _, man = exported
    groups, m, n, _ = _k_grouped_problems()[case == "chunked"]
    picks = {(p["m"], p["n"], size): GemmConfig(**man["kernels"][idx]["config"])
             for p in man["problems"] if p["op"] == "k_grouped_wgrad" for size, idx in p["chunks"]}
    monkeypatch.setattr(wgrad, "_plans", {})
    monkeypatch.setattr(wgrad, "select_config", lambda m_, n_, k_, g_, **kw: (
        picks[(m_, n_, g_)], default_grid(picks[(m_, n_, g_)], m_, n_, g_, None, kw.get("device", 0))))
    rng = random.Random(groups)
    ks = [256, 0, 144, 16, 400] if case == "groups5" else \
        [rng.choice([0, 16, 128, 144, 272, 1040]) for _ in range(groups)]
    (a, sa), (b, sb), _, _ = k_grouped_inputs(torch, m, n, ks, seed=groups)
    g = torch.Generator(device="cuda").manual_seed(5)
    init = torch.randn((groups, m, n + 8), device="cuda", generator=g)[:, :, :n]
    want = init.clone()
    fp8gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt((a, sa), (b, sb), want, ks)
    stream = torch.cuda.current_stream().cuda_stream
    st = Status()
    outs = [init.clone(), init.clone()]
    for got in outs:
        _check(so.fp8gemm_k_grouped_wgrad(h, m, n, groups, (ctypes.c_int64 * groups)(*ks), a.data_ptr(), sa.data_ptr(),
                                          sa.stride(0), b.data_ptr(), sb.data_ptr(), sb.stride(0), got.data_ptr(),
                                          got.stride(1), got.stride(0), stream, ctypes.byref(st)), st)
    zero = init.clone()
    _check(so.fp8gemm_k_grouped_wgrad(h, m, n, groups, (ctypes.c_int64 * groups)(*([0] * groups)), 0, 0, 0, 0, 0, 0,
                                      zero.data_ptr(), zero.stride(1), zero.stride(0), stream, ctypes.byref(st)), st)
    torch.cuda.synchronize()
    assert 0 in ks and any(k % 128 for k in ks)
    for got in outs:
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    for i, k in enumerate(ks):
        if k == 0:
            assert torch.equal(outs[0][i].view(torch.int32), init[i].view(torch.int32)), i
    assert torch.equal(zero.view(torch.int32), init.view(torch.int32))


def test_bad_arguments_and_missing_kernels_are_error_codes(torch, rt):
    so, h = rt
    st = Status()
    rc = so.fp8gemm_gemm(h, 64, 500, 640, 256, 0, 256, 0, 256, 0, 256, 256, 0, None, ctypes.byref(st))
    assert rc == 1 and b"multiple of 8" in st.message
    rc = so.fp8gemm_gemm(h, 64, 1024, 640, 256, 0, 256, 0, 256, 0, 256, 256, 0, None, ctypes.byref(st))
    assert rc == 2 and b"no gemm kernel" in st.message


def test_eight_threads_at_once(torch, rt):
    import fp8gemm
    so, h = rt
    m, n, k = 256, 512, 640
    inputs = [_quant(torch, m, n, k, seed=100 + t) for t in range(8)]
    wants = []
    for aq, sa, bq, sb in inputs:
        w = torch.empty((m, n), device="cuda", dtype=torch.bfloat16)
        fp8gemm.gemm_fp8_fp8_bf16_nt((aq, sa), (bq, sb), w)
        wants.append(w)
    torch.cuda.synchronize()
    bad, barrier = [], threading.Barrier(8)

    def body(t):
        aq, sa, bq, sb = inputs[t]
        stream = torch.cuda.Stream()
        outs = [torch.empty((m, n), device="cuda", dtype=torch.bfloat16) for _ in range(20)]
        st = Status()
        barrier.wait()
        for o in outs:
            rc = so.fp8gemm_gemm(h, m, n, k, aq.data_ptr(), 0, sa.data_ptr(), sa.stride(1), bq.data_ptr(), 0,
                                 sb.data_ptr(), o.data_ptr(), 0, stream.cuda_stream, ctypes.byref(st))
            if rc:
                bad.append((t, st.message))
        stream.synchronize()
        bad.extend((t, i) for i, o in enumerate(outs) if not torch.equal(o.view(torch.int16),
                                                                        wants[t].view(torch.int16)))

    threads = [threading.Thread(target=body, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not bad, bad[:5]


def test_c_example_builds_and_passes(tmp_path):
    """examples/c: export its bundle, build with its Makefile, run it (no Python at run time)."""
    import os
    import sys
    from test_export_cpu import ROOT
    if CC is None or INCLUDE is None or shutil.which("make") is None:
        pytest.skip("needs cc, make and a cuda.h")
    work = tmp_path / "c"
    shutil.copytree(ROOT / "examples" / "c", work)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(["make", f"CUDA_HOME={INCLUDE.parent}", f"PYTHON={sys.executable}", "run"], cwd=work,
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "all ok" in r.stdout and "MISMATCH" not in r.stdout, r.stdout


@pytest.mark.parametrize("src", ["bfloat16", "float32"])
def test_casts_bit_identical_to_python(torch, rt, src):
    import fp8gemm
    so, h = rt
    m, k = 333, 1040
    x = (torch.randn((m, k), device="cuda") * 3).to(getattr(torch, src))
    f32 = int(src == "float32")
    st = Status()
    stream = torch.cuda.current_stream().cuda_stream
    q_want, s_want = fp8gemm.per_token_cast_to_fp8(x)
    q = torch.empty_like(q_want)
    s = torch.empty_like(s_want)             # same MN-major strides
    _check(so.fp8gemm_per_token_cast(h, m, k, f32, x.data_ptr(), 0, q.data_ptr(), 0, s.data_ptr(), s.stride(1),
                                     stream, ctypes.byref(st)), st)
    qb_want, sb_want = fp8gemm.per_block_cast_to_fp8(x)
    qb, sbk = torch.empty_like(qb_want), torch.empty_like(sb_want)
    _check(so.fp8gemm_per_block_cast(h, m, k, f32, x.data_ptr(), 0, qb.data_ptr(), 0, sbk.data_ptr(), 0,
                                     stream, ctypes.byref(st)), st)
    torch.cuda.synchronize()
    assert torch.equal(q.view(torch.uint8), q_want.view(torch.uint8)) and torch.equal(s, s_want)
    assert torch.equal(qb.view(torch.uint8), qb_want.view(torch.uint8)) and torch.equal(sbk, sb_want)
