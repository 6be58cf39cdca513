"""SASS post-pass for ptxas cubins: ELF reading, sm_90 instruction decoding, FFMA interleaving.

Pure Python (no CUDA tools at run time). ``PASS_VERSION`` is part of the kernel cache key:
bump it whenever ``interleave_ffma`` could produce different bytes.
"""
from __future__ import annotations

from .cubin import Cubin, read_cubin, replace_text
from .instr import Instr, decode
from .interleave import PASS_VERSION, interleave_ffma

__all__ = ["read_cubin", "decode", "interleave_ffma", "PASS_VERSION", "Cubin", "Instr",
           "replace_text"]
