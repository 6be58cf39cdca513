"""Properties of the NumPy reference quantizers and GEMM."""
import numpy as np
import pytest

from fp8gemm import reference as ref


@pytest.mark.parametrize("m,k", [(1, 128), (7, 576), (65, 1000 // 16 * 16), (33, 2048)])
def test_per_token_round_trip(m, k):
    rng = np.random.default_rng(m * 1000 + k)
    x = rng.standard_normal((m, k)).astype(np.float32) * rng.uniform(0.01, 100, size=(m, 1)).astype(np.float32)
    q, s = ref.per_token_cast_to_fp8(x)
    assert q.dtype == ref.E4M3 and q.shape == (m, k) and s.shape == (m, ref.ceil_div(k, 128))
    back = ref.dequantize_per_token(q, s)
    # e4m3 keeps 3 mantissa bits: relative error per element <= 2^-4 of the group's max
    for g in range(s.shape[1]):
        cols = slice(g * 128, min(k, (g + 1) * 128))
        amax = np.abs(x[:, cols]).max(axis=1, keepdims=True)
        assert np.all(np.abs(back[:, cols] - x[:, cols]) <= amax * 2.0 ** -4 + 1e-12)
        assert np.allclose(s[:, g], np.maximum(amax[:, 0], 1e-4) / 448, rtol=1e-6)
    assert np.abs(q.astype(np.float32)).max() <= 448


@pytest.mark.parametrize("n,k", [(128, 128), (2120, 576), (300, 7168 // 16)])
def test_per_block_round_trip(n, k):
    rng = np.random.default_rng(n + k)
    x = rng.standard_normal((n, k)).astype(np.float32)
    q, s = ref.per_block_cast_to_fp8(x)
    assert s.shape == (ref.ceil_div(n, 128), ref.ceil_div(k, 128))
    back = ref.dequantize_per_block(q, s)
    assert ref.rel_error(back, x) < 0.04
    # the largest element of each block maps to +-448 exactly
    blk = np.abs(q.astype(np.float32))[:128, :128]
    assert blk.max() == 448


def test_zero_group_uses_floor():
    x = np.zeros((2, 256), np.float32)
    x[1, 128:] = 3.0
    q, s = ref.per_token_cast_to_fp8(x)
    assert s[0, 0] == np.float32(np.float32(1e-4) / np.float32(448))
    assert np.all(q[0].astype(np.float32) == 0)
    assert np.all(q[1, 128:].astype(np.float32) == 448)


def test_gemm_reference_matches_dequantized_matmul():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 384)).astype(np.float32)
    b = rng.standard_normal((136, 384)).astype(np.float32)
    aq, as_ = ref.per_token_cast_to_fp8(a)
    bq, bs = ref.per_block_cast_to_fp8(b)
    d = ref.gemm_nt(aq, as_, bq, bs)
    assert d.shape == (5, 136) and d.dtype == np.float64
    assert ref.rel_error(d, a.astype(np.float64) @ b.T.astype(np.float64)) < 0.05
    assert ref.calc_diff(d, a @ b.T) < 1e-3
    assert ref.calc_diff(d, d) == 0.0
