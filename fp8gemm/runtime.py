"""Glue between the JIT and the launcher: a generated kernel -> a loaded CUfunction."""
from __future__ import annotations

import threading

from . import jit, launcher
from .ptx_templates.builder import Kernel

_functions: dict[tuple, tuple] = {}
_lock = threading.Lock()


def get_function(key: tuple, make: "callable[[], Kernel]", device: int, dynamic_smem: int = 0,
                 post_pass: bool | None = None):
    """(CUfunction, jit.Compiled) for the kernel ``make()`` builds, compiled and loaded once.

    ``key`` names the kernel configuration, so the PTX is generated only on the first call.
    """
    full = (key, device, dynamic_smem, jit.pass_tag(post_pass))
    with _lock:
        hit = _functions.get(full)
    if hit is not None:
        return hit
    kern = make()
    comp = jit.compile_ptx(kern.render(), kern.name, post_pass=post_pass)
    fn = launcher.load_function(comp.cubin, kern.name, device, dynamic_smem)
    with _lock:
        _functions[full] = (fn, comp)
    return fn, comp
