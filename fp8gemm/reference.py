"""NumPy references: the quantizers bit for bit, and the float64 GEMM the kernels must match.

Quantization in float32, the same operations in the same order as the PTX kernels:
    amax = max(max|x|, 1e-4);  q = e4m3(x * (448 / amax));  scale = amax / 448
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

E4M3 = ml_dtypes.float8_e4m3fn
BF16 = ml_dtypes.bfloat16
_F448 = np.float32(448.0)
_FLOOR = np.float32(1e-4)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def tma_aligned_size(m: int, itemsize: int = 4) -> int:
    """Rows of an MN-major scale array padded so each column starts 16-byte aligned."""
    align = 16 // itemsize
    return ceil_div(m, align) * align


def _quantize(x: np.ndarray, amax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    amax = np.maximum(amax.astype(np.float32), _FLOOR)
    inv = (_F448 / amax).astype(np.float32)
    scale = (amax / _F448).astype(np.float32)
    return inv, scale


def per_token_cast_to_fp8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [M, K] (float32 or bfloat16) -> (q [M, K] e4m3, scales [M, ceil(K/128)] float32)."""
    x = np.asarray(x).astype(np.float32)
    m, k = x.shape
    kb = ceil_div(k, 128)
    xp = np.zeros((m, kb * 128), np.float32)
    xp[:, :k] = x
    g = xp.reshape(m, kb, 128)
    inv, scale = _quantize(g, np.abs(g).max(axis=2))
    q = (g * inv[:, :, None]).astype(np.float32).astype(E4M3).reshape(m, kb * 128)[:, :k]
    return np.ascontiguousarray(q), scale


def per_block_cast_to_fp8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [N, K] -> (q [N, K] e4m3, scales [ceil(N/128), ceil(K/128)] float32)."""
    x = np.asarray(x).astype(np.float32)
    n, k = x.shape
    nb, kb = ceil_div(n, 128), ceil_div(k, 128)
    xp = np.zeros((nb * 128, kb * 128), np.float32)
    xp[:n, :k] = x
    g = xp.reshape(nb, 128, kb, 128)
    inv, scale = _quantize(g, np.abs(g).max(axis=(1, 3)))
    q = (g * inv[:, None, :, None]).astype(np.float32).astype(E4M3).reshape(nb * 128, kb * 128)[:n, :k]
    return np.ascontiguousarray(q), scale


def dequantize_per_token(q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """float64 [M, K] from e4m3 [M, K] and scales [M, ceil(K/128)]."""
    k = q.shape[-1]
    return q.astype(np.float64) * np.repeat(s.astype(np.float64), 128, axis=-1)[..., :k]


def dequantize_per_block(q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """float64 [N, K] from e4m3 [N, K] and block scales [ceil(N/128), ceil(K/128)]."""
    n, k = q.shape[-2:]
    full = np.repeat(np.repeat(s.astype(np.float64), 128, axis=-2), 128, axis=-1)[..., :n, :k]
    return q.astype(np.float64) * full


def gemm_nt(a_q, a_s, b_q, b_s) -> np.ndarray:
    """The exact answer (float64) of D = A . B^T for scaled e4m3 inputs."""
    return dequantize_per_token(a_q, a_s) @ dequantize_per_block(b_q, b_s).T


def wgrad_nt(a_q, a_s, b_q, b_s) -> np.ndarray:
    """The exact answer (float64) of A . B^T with 1x128 scales on both operands (the weight
    gradient; the kernel adds it to its output)."""
    return dequantize_per_token(a_q, a_s) @ dequantize_per_token(b_q, b_s).T


def k_grouped_wgrad_nt(a_flat, a_s, b_flat, b_s, m: int, n: int, ks) -> np.ndarray:
    """float64 [G, M, N]: group g's A_g . B_g^T from the flat k-grouped layout (A_g [M, k_g]
    row-major back to back; scales [sum ceil(k_g/128), M] and [.., N] stacked)."""
    out = np.zeros((len(ks), m, n))
    k0 = kb0 = 0
    for g, k in enumerate(ks):
        kb = ceil_div(k, 128)
        if k:
            a = a_flat[m * k0:m * (k0 + k)].reshape(m, k)
            b = b_flat[n * k0:n * (k0 + k)].reshape(n, k)
            out[g] = wgrad_nt(a, a_s[kb0:kb0 + kb].T, b, b_s[kb0:kb0 + kb].T)
        k0, kb0 = k0 + k, kb0 + kb
    return out


def to_bf16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).astype(BF16)


def rel_error(out: np.ndarray, ref: np.ndarray) -> float:
    """Normwise relative error ||out - ref|| / ||ref|| in float64."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    den = np.linalg.norm(ref)
    return float(np.linalg.norm(out - ref) / den) if den else float(np.linalg.norm(out))


def calc_diff(x: np.ndarray, y: np.ndarray) -> float:
    """DeepGEMM's similarity metric 1 - 2*sum(x*y)/sum(x*x + y*y)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    den = (x * x + y * y).sum()
    return float(1 - 2 * (x * y).sum() / den) if den else 0.0
