"""Host-side validation of the grouped GEMMs and their plans (no GPU needed).

Every mistake visible on the host (shapes, dtypes, layouts, group counts, strides, alignment)
raises TypeError/ValueError naming the argument before any device query or launch, so fake
pointers are enough. The well-formed base arguments reach the driver (NoDriverError here).
"""
import numpy as np
import pytest

import fp8gemm
from fp8gemm import DeviceArray

G, M, N, K = 4, 256, 512, 1024          # contiguous: M = M_sum; masked: M = M_max
KB, NB = K // 128, N // 128
S = fp8gemm.get_tma_aligned_size(M)     # 256


def _ptr(i, off=0):
    return 0x10000000 * (i + 1) + off   # far apart: no two fake arrays overlap


def _da(i, shape, dtype, strides=None, off=0):
    return DeviceArray(_ptr(i, off), shape, dtype, strides=strides)


def _b_parts(n=N, k=K):
    kb, nb = fp8gemm.ceil_div(k, 128), fp8gemm.ceil_div(n, 128)
    return dict(b=_da(2, (G, n, k), "e4m3"), sb=_da(3, (G, nb, kb), "f32"))


def _contiguous(m=M, n=N, k=K, **over):
    kb = fp8gemm.ceil_div(k, 128)
    d = dict(a=_da(0, (m, k), "e4m3"), sa=_da(1, (m, kb), "f32", strides=(1, fp8gemm.get_tma_aligned_size(m))),
             out=_da(4, (m, n), "bf16"), m_indices=_da(5, (m,), "int32"), group_ends=_da(6, (G,), "int32"))
    d.update(_b_parts(n, k))
    d.update(over)
    return d


def _masked(m_max=M, n=N, k=K, **over):
    kb, s = fp8gemm.ceil_div(k, 128), fp8gemm.get_tma_aligned_size(m_max)
    d = dict(a=_da(0, (G, m_max, k), "e4m3"), sa=_da(1, (G, m_max, kb), "f32", strides=(kb * s, 1, s)),
             out=_da(4, (G, m_max, n), "bf16"), masked_m=_da(5, (G,), "int32"), expected_m=128)
    d.update(_b_parts(n, k))
    d.update(over)
    return d


def _call_indices(d):
    fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((d["a"], d["sa"]), (d["b"], d["sb"]), d["out"], d["m_indices"])


def _call_group_ends(d):
    fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((d["a"], d["sa"]), (d["b"], d["sb"]), d["out"],
                                                      group_ends=d["group_ends"])


def _call_masked(d):
    fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked((d["a"], d["sa"]), (d["b"], d["sb"]), d["out"], d["masked_m"],
                                                  d["expected_m"])


def _no_gpu():
    from fp8gemm import launcher
    if launcher.device_count() > 0:
        pytest.skip("a GPU is present: fake pointers would fail the pointer query instead")
    return launcher.NoDriverError


# ---- the base arguments are well formed -------------------------------------------------------
@pytest.mark.parametrize("call,make", [(_call_indices, _contiguous), (_call_group_ends, _contiguous),
                                       (_call_masked, _masked)], ids=["indices", "group_ends", "masked"])
def test_base_arguments_reach_the_driver(call, make):
    with pytest.raises(_no_gpu()):
        call(make())


@pytest.mark.parametrize("call,make,over", [
    (_call_indices, _contiguous, dict(b=_da(2, (G, N, K), "e4m3", strides=((N + 16) * K, K, 1)))),
    (_call_indices, _contiguous, dict(a=_da(0, (M, K), "e4m3", strides=(K + 64, 1)),
                                      out=_da(4, (M, N), "bf16", strides=(N + 24, 1)))),
    (_call_group_ends, _contiguous, dict(sa=_da(1, (M, KB), "f32", strides=(1, S + 12)))),
    (_call_masked, _masked, dict(a=_da(0, (G, M, K), "e4m3", strides=((M + 16) * K, K, 1)))),
    (_call_masked, _masked, dict(b=_da(2, (G, N, K), "e4m3", strides=((N + 16) * K, K, 1)))),
    (_call_masked, _masked, dict(out=_da(4, (G, M, N), "bf16", strides=((M + 8) * N, N, 1)))),
    (_call_masked, _masked, dict(sa=_da(1, (G, M, KB), "f32", strides=(KB * S + 4, 1, S)))),
], ids=["b-groups-apart", "strided-rows", "sfa-padded", "masked-a-groups-apart", "masked-b-groups-apart",
        "masked-out-groups-apart", "masked-sfa-groups-apart"])
def test_strided_arguments_reach_the_driver(call, make, over):
    """Groups or rows further apart than their width (16-byte multiples) are legal."""
    with pytest.raises(_no_gpu()):
        call(make(**over))


def test_base_arguments_with_tails_reach_the_driver():
    """N = 264 (not a multiple of any block) and K = 1040 (not a multiple of 128) are legal."""
    err = _no_gpu()
    with pytest.raises(err):
        _call_indices(_contiguous(n=264, k=1040))
    with pytest.raises(err):
        _call_masked(_masked(m_max=200, n=264, k=1040))


# ---- contiguous ---------------------------------------------------------------------------------
CONTIGUOUS_CASES = [
    # dtypes
    (dict(a=_da(0, (M, K), "bf16")), TypeError, r"\ba: dtype"),
    (dict(a=_da(0, (M, K), "uint8")), TypeError, r"\ba: dtype"),
    (dict(b=_da(2, (G, N, K), "f32")), TypeError, r"\bb: dtype"),
    (dict(out=_da(4, (M, N), "f32")), TypeError, r"\bout: dtype"),
    (dict(sa=_da(1, (M, KB), "bf16", strides=(1, S))), TypeError, r"\ba_scales: dtype"),
    (dict(sb=_da(3, (G, NB, KB), "bf16")), TypeError, r"\bb_scales: dtype"),
    (dict(m_indices=_da(5, (M,), "int64")), TypeError, r"\bm_indices: dtype"),
    (dict(m_indices=_da(5, (M,), "f32")), TypeError, r"\bm_indices: dtype"),
    # shapes and group counts
    (dict(b=_da(2, (N, K), "e4m3")), ValueError, r"\bb: shape"),                  # dense-shaped B
    (dict(b=_da(2, (G, N, K // 2), "e4m3")), ValueError, r"\bb: shape"),          # K differs from A's
    (dict(sb=_da(3, (G, NB, KB - 1), "f32")), ValueError, r"\bb_scales: shape"),
    (dict(sb=_da(3, (G - 1, NB, KB), "f32")), ValueError, r"\bb_scales: shape"),  # group count
    (dict(sb=_da(3, (NB, KB), "f32")), ValueError, r"\bb_scales: shape"),
    (dict(out=_da(4, (M, N + 8), "bf16")), ValueError, r"\bout: shape"),
    (dict(out=_da(4, (M - 1, N), "bf16")), ValueError, r"\bout: shape"),
    (dict(sa=_da(1, (M, KB - 1), "f32", strides=(1, S))), ValueError, r"\ba_scales: shape"),
    (dict(m_indices=_da(5, (M - 1,), "int32")), ValueError, r"\bm_indices: shape"),
    (dict(m_indices=_da(5, (M, 1), "int32")), ValueError, r"\bm_indices: shape"),
    # layouts, strides, alignment
    (dict(sa=_da(1, (M, KB), "f32")), ValueError, r"\ba_scales\b"),                          # row-major
    (dict(sa=_da(1, (M, KB), "f32", strides=(1, M + 2))), ValueError, r"\ba_scales\b"),      # not % 4
    (dict(sa=_da(1, (M, KB), "f32", strides=(1, M - 4))), ValueError, r"\ba_scales\b"),      # < M_sum
    (dict(sa=_da(1, (M, KB), "f32", strides=(1, S), off=4)), ValueError, r"\ba_scales\b"),   # 16-byte base
    (dict(sb=_da(3, (G, NB, KB), "f32", strides=(NB * KB, 1, NB))), ValueError, r"\bb_scales\b"),
    (dict(sb=_da(3, (G, NB, KB), "f32", strides=(NB * KB + 4, KB, 1))), ValueError, r"\bb_scales\b"),
    (dict(b=_da(2, (G, N, K), "e4m3", off=8)), ValueError, r"\bb\b"),
    (dict(a=_da(0, (M, K), "e4m3", off=8)), ValueError, r"\ba: .*align"),
    (dict(a=_da(0, (M, K), "e4m3", strides=(K + 6, 1))), ValueError, r"\ba: .*stride"),
    (dict(out=_da(4, (M, N), "bf16", strides=(1, M))), ValueError, r"\bout\b"),
    (dict(m_indices=_da(5, (M,), "int32", strides=(2,))), ValueError, r"\bm_indices\b"),
    (dict(m_indices=np.zeros(M, np.int32)), ValueError, r"\bm_indices\b"),                   # host array
]


@pytest.mark.parametrize("over,exc,msg", CONTIGUOUS_CASES)
def test_contiguous_validation(over, exc, msg):
    with pytest.raises(exc, match=msg):
        _call_indices(_contiguous(**over))


GROUP_ENDS_CASES = [
    (dict(group_ends=_da(6, (G,), "int64")), TypeError, r"\bgroup_ends: dtype"),
    (dict(group_ends=_da(6, (G,), "f32")), TypeError, r"\bgroup_ends: dtype"),
    (dict(group_ends=_da(6, (G - 1,), "int32")), ValueError, r"\bgroup_ends: shape"),     # group count
    (dict(group_ends=_da(6, (G + 1,), "int32")), ValueError, r"\bgroup_ends: shape"),
    (dict(group_ends=_da(6, (G, 1), "int32")), ValueError, r"\bgroup_ends: shape"),
    (dict(group_ends=_da(6, (G,), "int32", strides=(2,))), ValueError, r"\bgroup_ends\b"),
    (dict(group_ends=np.zeros(G, np.int32)), ValueError, r"\bgroup_ends\b"),
    (dict(sb=_da(3, (G - 1, NB, KB), "f32")), ValueError, r"\bb_scales: shape"),
    (dict(out=_da(4, (M, N + 8), "bf16")), ValueError, r"\bout: shape"),
]


@pytest.mark.parametrize("over,exc,msg", GROUP_ENDS_CASES)
def test_group_ends_validation(over, exc, msg):
    with pytest.raises(exc, match=msg):
        _call_group_ends(_contiguous(**over))


def test_contiguous_layout_argument_count():
    """Exactly one of m_indices and group_ends."""
    d = _contiguous()
    lhs, rhs = (d["a"], d["sa"]), (d["b"], d["sb"])
    with pytest.raises((TypeError, ValueError), match="m_indices|group_ends"):
        fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(lhs, rhs, d["out"])
    with pytest.raises((TypeError, ValueError), match="m_indices|group_ends"):
        fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(lhs, rhs, d["out"], d["m_indices"],
                                                          group_ends=d["group_ends"])


def test_contiguous_n_k_alignment_and_tuples():
    with pytest.raises(ValueError, match="multiple of 8"):
        _call_indices(_contiguous(n=500))
    with pytest.raises(ValueError, match="multiple of 16"):
        _call_indices(_contiguous(k=1000))
    d = _contiguous()
    with pytest.raises(TypeError, match="lhs"):
        fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(d["a"], (d["b"], d["sb"]), d["out"], d["m_indices"])
    with pytest.raises(TypeError, match="rhs"):
        fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((d["a"], d["sa"]), d["b"], d["out"], d["m_indices"])


# ---- masked -------------------------------------------------------------------------------------
MASKED_CASES = [
    # dtypes
    (dict(a=_da(0, (G, M, K), "bf16")), TypeError, r"\ba: dtype"),
    (dict(b=_da(2, (G, N, K), "f32")), TypeError, r"\bb: dtype"),
    (dict(out=_da(4, (G, M, N), "f32")), TypeError, r"\bout: dtype"),
    (dict(sa=_da(1, (G, M, KB), "bf16", strides=(KB * S, 1, S))), TypeError, r"\ba_scales: dtype"),
    (dict(sb=_da(3, (G, NB, KB), "bf16")), TypeError, r"\bb_scales: dtype"),
    (dict(masked_m=_da(5, (G,), "int64")), TypeError, r"\bmasked_m: dtype"),
    (dict(masked_m=_da(5, (G,), "f32")), TypeError, r"\bmasked_m: dtype"),
    # shapes and group counts
    (dict(a=_da(0, (G * M, K), "e4m3")), ValueError, r"\ba: shape"),                 # contiguous-shaped A
    (dict(b=_da(2, (G - 1, N, K), "e4m3"), sb=_da(3, (G - 1, NB, KB), "f32")), ValueError, r"\b[ab]: "),
    (dict(b=_da(2, (G, N, K // 2), "e4m3")), ValueError, r"\bb: shape"),
    (dict(sb=_da(3, (G, NB, KB - 1), "f32")), ValueError, r"\bb_scales: shape"),
    (dict(sb=_da(3, (G - 1, NB, KB), "f32")), ValueError, r"\bb_scales: shape"),
    (dict(sa=_da(1, (G * M, KB), "f32", strides=(1, G * M))), ValueError, r"\ba_scales: shape"),
    (dict(sa=_da(1, (G, M, KB - 1), "f32", strides=((KB - 1) * S, 1, S))), ValueError, r"\ba_scales: shape"),
    (dict(out=_da(4, (G, M, N + 8), "bf16")), ValueError, r"\bout: shape"),
    (dict(out=_da(4, (G, M - 1, N), "bf16")), ValueError, r"\bout: shape"),
    (dict(out=_da(4, (G - 1, M, N), "bf16")), ValueError, r"\bout: shape"),
    (dict(out=_da(4, (G * M, N), "bf16")), ValueError, r"\bout: shape"),
    (dict(masked_m=_da(5, (G - 1,), "int32")), ValueError, r"\bmasked_m: shape"),
    (dict(masked_m=_da(5, (G, 1), "int32")), ValueError, r"\bmasked_m: shape"),
    # layouts, strides, alignment
    (dict(sa=_da(1, (G, M, KB), "f32")), ValueError, r"\ba_scales\b"),                              # row-major
    (dict(sa=_da(1, (G, M, KB), "f32", strides=(KB * 258, 1, 258))), ValueError, r"\ba_scales\b"),  # not % 4
    (dict(sa=_da(1, (G, M, KB), "f32", strides=(KB * S + 1, 1, S))), ValueError, r"\ba_scales\b"),  # group stride % 4
    (dict(sa=_da(1, (G, M, KB), "f32", strides=(KB * S - 4, 1, S))), ValueError, r"\ba_scales\b"),  # groups overlap
    (dict(sa=_da(1, (G, M, KB), "f32", strides=(KB * S, 1, S), off=4)), ValueError, r"\ba_scales\b"),
    (dict(sb=_da(3, (G, NB, KB), "f32", strides=(NB * KB, 1, NB))), ValueError, r"\bb_scales\b"),
    (dict(a=_da(0, (G, M, K), "e4m3", off=8)), ValueError, r"\ba: .*align"),
    (dict(out=_da(4, (G, M, N), "bf16", strides=((M - 8) * N, N, 1))), ValueError, r"\bout"),       # groups overlap
    (dict(out=_da(4, (G, M, N), "bf16", strides=(M * N, 1, M))), ValueError, r"\bout\b"),
    (dict(masked_m=_da(5, (G,), "int32", strides=(2,))), ValueError, r"\bmasked_m\b"),
    (dict(masked_m=np.zeros(G, np.int32)), ValueError, r"\bmasked_m\b"),                            # host array
]


@pytest.mark.parametrize("over,exc,msg", MASKED_CASES)
def test_masked_validation(over, exc, msg):
    with pytest.raises(exc, match=msg):
        _call_masked(_masked(**over))


def test_masked_expected_m():
    with pytest.raises(ValueError, match="expected_m"):
        _call_masked(_masked(expected_m=-1))
    with pytest.raises(TypeError, match="expected_m"):
        _call_masked(_masked(expected_m="128"))


def test_masked_n_k_alignment_and_tuples():
    with pytest.raises(ValueError, match="multiple of 8"):
        _call_masked(_masked(n=500))
    with pytest.raises(ValueError, match="multiple of 16"):
        _call_masked(_masked(k=1000))
    d = _masked()
    with pytest.raises(TypeError, match="lhs"):
        fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked(d["a"], (d["b"], d["sb"]), d["out"], d["masked_m"], 128)
    with pytest.raises(TypeError, match="rhs"):
        fp8gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked((d["a"], d["sa"]), d["b"], d["out"], d["masked_m"], 128)


# ---- plans --------------------------------------------------------------------------------------
def _plan_contiguous(m_sum=M, n=N, k=K, groups=G, **kw):
    return fp8gemm.plan_m_grouped_gemm_contiguous(m_sum, n, k, groups, **kw)


def _plan_masked(m_max=M, n=N, k=K, groups=G, expected_m=128, **kw):
    return fp8gemm.plan_m_grouped_gemm_masked(m_max, n, k, groups, expected_m, **kw)


@pytest.mark.parametrize("kw,msg", [
    (dict(n=500), "multiple of 8"),
    (dict(k=1000), "multiple of 16"),
    (dict(groups=0), r"(?i)group|\bG\b"),
    (dict(m_sum=-1), r"(?i)m_sum|positive"),
    (dict(layout="rows"), "layout"),
    (dict(layout="group_ends", n=500), "multiple of 8"),
    (dict(a_stride=K - 16), "a_stride"),
    (dict(a_stride=K + 8), "stride"),
    (dict(out_stride=N - 8), "out_stride"),
    (dict(sfa_stride=M - 4), "sfa_stride"),
    (dict(sfa_stride=M + 2), "sfa_stride"),
])
def test_plan_contiguous_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        _plan_contiguous(**kw)


@pytest.mark.parametrize("kw,msg", [
    (dict(n=500), "multiple of 8"),
    (dict(k=1000), "multiple of 16"),
    (dict(groups=0), r"(?i)group|\bG\b"),
    (dict(m_max=-1), r"(?i)m_max|positive"),
])
def test_plan_masked_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        _plan_masked(**kw)
