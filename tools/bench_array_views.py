#!/usr/bin/env python3
"""Host cost per call of turning an array into a view: fp8gemm's ``arrays.as_view`` against
cuda.core's ``StridedMemoryView``, on the same objects (no GPU needed for the DLPack cases).

    python tools/bench_array_views.py [--reps 200000]

Host arrays stand in for device ones in the DLPack rows: parsing a capsule costs the same
whatever device it names, so for those rows fp8gemm's CUDA-only device check is relaxed to
accept the host device type. Cases cuda.core cannot handle here are reported with its error.
"""
from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402

from fp8gemm import DeviceArray, arrays  # noqa: E402


class OnlyDLPack:
    """Hides numpy's other interfaces so that only ``__dlpack__`` is seen; ``versioned``
    asks the producer for a DLPack >= 1.0 capsule ("dltensor_versioned")."""

    def __init__(self, x, versioned: bool):
        self.x, self.versioned = x, versioned

    def __dlpack__(self, stream=None, max_version=None, **_):
        if self.versioned:
            return self.x.__dlpack__(max_version=(1, 0))
        return self.x.__dlpack__()

    def __dlpack_device__(self):
        return self.x.__dlpack_device__()


class CAI:
    def __init__(self, ptr, shape, typestr):
        self.__cuda_array_interface__ = {"data": (ptr, False), "shape": shape, "typestr": typestr,
                                         "strides": None, "version": 3}


def per_call_us(fn, reps: int) -> float:
    fn()
    best = min(timeit.repeat(fn, number=reps, repeat=5))
    return best / reps * 1e6


def ours(obj):
    def run():
        try:
            arrays.as_view(obj, "x")
        except ValueError:       # the host numpy array is rejected, as it must be
            pass
    return run


def core(obj, smv, kind):
    def run():
        v = getattr(smv, kind)(obj, stream_ptr=-1)
        v.ptr, v.shape, v.strides, v.dtype, v.device_id      # what as_view hands on
    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=200_000)
    args = p.parse_args()
    try:
        import cuda.core
        from cuda.core.utils import StridedMemoryView as smv
        core_version = cuda.core.__version__
    except ImportError:
        smv, core_version = None, None
    host = np.zeros((256, 512), np.float32)
    cases = [("numpy array (host: rejected)", host, "from_any_interface"),
             ("__dlpack__ capsule, legacy", OnlyDLPack(host, False), "from_dlpack"),
             ("__dlpack__ capsule, versioned", OnlyDLPack(host, True), "from_dlpack"),
             ("__cuda_array_interface__ dict", CAI(0x10000, (256, 512), "<f4"), "from_cuda_array_interface"),
             ("fp8gemm.DeviceArray", DeviceArray(0x10000, (256, 512), "bfloat16"), "from_cuda_array_interface")]
    print(f"cuda.core {core_version}; us per call, best of 5 x {args.reps}")
    arrays._KDL_CUDA_MANAGED = 1            # let the DLPack rows parse host capsules to the end
    for name, obj, kind in cases:
        mine = per_call_us(ours(obj), args.reps)
        if smv is None:
            theirs = "cuda.core not installed"
        else:
            try:
                theirs = f"{per_call_us(core(obj, smv, kind), args.reps):7.2f}"
            except Exception as e:   # noqa: BLE001 (report whatever it raised)
                theirs = f"fails: {type(e).__name__}: {str(e)[:70]}"
        print(f"{name:32s} fp8gemm {mine:7.2f}   cuda.core {theirs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
