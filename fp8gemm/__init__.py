"""fp8gemm: FP8 GEMMs with fine-grained scaling for NVIDIA Hopper, generated as PTX from Python.

Importing needs no GPU and no torch; kernels are compiled on first use.
"""
from __future__ import annotations

from .arrays import DeviceArray, view_as
from .config import GemmConfig, get_num_sms, set_num_sms
from .gemm import (GemmPlan, gemm_fp8_fp8_bf16_nt, gemm_fp8_fp8_fp32_nt, plan_gemm, plan_wgrad_gemm,
                   wgrad_gemm_fp8_fp8_fp32_nt)
from .bundle import export
from .grouped import (ContiguousPlan, MaskedPlan, get_m_alignment_for_contiguous_layout,
                      m_grouped_gemm_fp8_fp8_bf16_nt_contiguous, m_grouped_gemm_fp8_fp8_bf16_nt_masked,
                      plan_m_grouped_gemm_contiguous, plan_m_grouped_gemm_masked)
from .errors import CompileError, Fp8GemmError, ToolchainError
from .launcher import CudaError, KernelFault, NoDriverError
from .quant import per_block_cast_to_fp8, per_token_cast_to_fp8
from .reference import ceil_div
from .wgrad import KGroupedPlan, k_grouped_wgrad_gemm_fp8_fp8_fp32_nt, plan_k_grouped_wgrad_gemm



def __getattr__(name: str):
    """``__version__`` on first use: reading package metadata costs milliseconds at import."""
    if name == "__version__":
        from ._version import package_version
        globals()["__version__"] = version = package_version()
        return version
    raise AttributeError(f"module 'fp8gemm' has no attribute {name!r}")


def get_tma_aligned_size(m: int, element_size: int = 4) -> int:
    """M rounded up so that an MN-major column of ``element_size``-byte scales is 16-byte aligned."""
    from .reference import tma_aligned_size
    return tma_aligned_size(m, element_size)


__all__ = ["gemm_fp8_fp8_bf16_nt", "gemm_fp8_fp8_fp32_nt", "wgrad_gemm_fp8_fp8_fp32_nt",
           "k_grouped_wgrad_gemm_fp8_fp8_fp32_nt", "plan_gemm", "plan_wgrad_gemm", "plan_k_grouped_wgrad_gemm",
           "GemmPlan", "KGroupedPlan", "m_grouped_gemm_fp8_fp8_bf16_nt_contiguous",
           "m_grouped_gemm_fp8_fp8_bf16_nt_masked", "plan_m_grouped_gemm_contiguous", "plan_m_grouped_gemm_masked",
           "ContiguousPlan", "MaskedPlan", "GemmConfig", "set_num_sms", "get_num_sms",
           "DeviceArray", "view_as", "Fp8GemmError", "CompileError", "ToolchainError", "CudaError",
           "NoDriverError", "KernelFault", "per_token_cast_to_fp8",
           "per_block_cast_to_fp8", "ceil_div", "get_tma_aligned_size",
           "get_m_alignment_for_contiguous_layout", "export"]
