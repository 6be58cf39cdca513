"""The exceptions fp8gemm raises itself; all derive from ``Fp8GemmError``.

Bad arguments are reported with the standard ``ValueError`` / ``TypeError`` (naming the
argument) before anything reaches the GPU; these classes are for everything else.
"""
from __future__ import annotations


class Fp8GemmError(RuntimeError):
    """Base class: ``except fp8gemm.Fp8GemmError`` catches every error below."""


class ToolchainError(Fp8GemmError, FileNotFoundError):
    """ptxas is missing or unusable, or the driver cannot load what it produces.

    (Also a ``FileNotFoundError``, which a missing ptxas was reported as before.)"""


class CompileError(Fp8GemmError):
    """ptxas rejected the PTX (the message holds ptxas's output and where the PTX was kept)."""
