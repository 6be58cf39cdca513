"""Problem-level argument checks shared by every plan and command line: ints that are ints,
the sizes the kernels accept, and strides. Each raises TypeError / ValueError naming the
argument, and none touches the GPU, so a mistake is reported the same with or without one."""
from __future__ import annotations

from typing import Any

import numpy as np


def positive_int(name: str, value: Any, *, zero_ok: bool = False) -> int:
    """``value`` as an int: a Python or numpy integer (not a bool, str or float), > 0 (>= 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: must be an int, got {type(value).__name__} {value!r}")
    if value < (0 if zero_ok else 1):
        raise ValueError(f"{name}: must be {'>= 0' if zero_ok else 'positive'}, got {value}")
    return int(value)


def check_problem(who: str, m: Any, n: Any, k: Any, groups: Any = 1, m_name: str = "m") -> tuple[int, int, int, int]:
    """(m, n, k, groups) checked against what the kernels accept: all positive ints, N a
    multiple of 8 (16-byte rows of bf16 D), K a multiple of 16 (16-byte rows of e4m3 A, B)."""
    m = positive_int(f"{who}: {m_name}", m)
    n, k, groups = (positive_int(f"{who}: {x}", v) for x, v in (("n", n), ("k", k), ("groups", groups)))
    if n % 8:
        raise ValueError(f"{who}: N = {n} must be a multiple of 8 (16-byte rows of bf16 D)")
    if k % 16:
        raise ValueError(f"{who}: K = {k} must be a multiple of 16 (16-byte rows of e4m3 A and B)")
    return m, n, k, groups


def stride_or(name: str, value: Any, default: int) -> int:
    """A stride argument: None means ``default``; anything else must be a positive int
    (0 is an error, never a silent default)."""
    return default if value is None else positive_int(name, value)


def check_strides(who: str, strides: dict[str, tuple[int, int, int]]) -> None:
    """(stride, minimum, bytes per element) per name: large enough and 16-byte multiples."""
    for name, (s, least, isz) in strides.items():
        if s < least:
            raise ValueError(f"{who}: {name} = {s} is smaller than {least}")
        if (s * isz) % 16:
            raise ValueError(f"{who}: {name} = {s} elements is not a multiple of 16 bytes")
