"""Glue between the JIT and the launcher: a generated kernel -> a loaded CUfunction."""
from __future__ import annotations

import threading

from . import jit, launcher
from .errors import ToolchainError
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
    check_driver_for_ptxas()
    try:
        fn = launcher.load_function(comp.cubin, kern.name, device, dynamic_smem)
    except launcher.KernelFault:
        raise
    except launcher.CudaError as e:
        if e.call != "cuModuleLoadData":
            raise
        raise ToolchainError(f"the CUDA driver ({_driver_release()}) could not load {kern.name} as compiled by "
                             f"ptxas {_ptxas_release()}: {e}. Update the driver, or point FP8GEMM_PTXAS at a "
                             "ptxas no newer than the driver's CUDA version.") from e
    with _lock:
        _functions[full] = (fn, comp)
    return fn, comp


# ---- driver vs ptxas ---------------------------------------------------------------------------
_driver_checked = False


def _driver_release() -> str:
    v = launcher.driver_version()
    return f"CUDA {v // 1000}.{v % 1000 // 10}"


def _ptxas_release() -> str:
    path, _ = jit.find_ptxas()
    return jit.ptxas_version(path)


def check_driver_for_ptxas() -> None:
    """Once per process, before the first load: a driver whose CUDA major version is older
    than the ptxas in use cannot load its cubins (within one major version, newer ptxas
    cubins load on older drivers). Raises ToolchainError naming both versions."""
    global _driver_checked
    if _driver_checked:
        return
    ptxas = _ptxas_release()                      # "V13.0.88"
    try:
        p_major = int(ptxas.lstrip("V").split(".")[0])
    except ValueError:
        p_major = None
    d = launcher.driver_version()
    if p_major is not None and d // 1000 < p_major:
        raise ToolchainError(f"the CUDA driver supports CUDA {d // 1000}.{d % 1000 // 10}, older than ptxas {ptxas} "
                             f"(CUDA {p_major}.x): its cubins would not load. Update the driver (CUDA {p_major} "
                             "needs driver 580 or newer), or set FP8GEMM_PTXAS to an older ptxas.")
    _driver_checked = True
