"""CUDA driver API through cuda-python: contexts, modules, tensor maps, parameters, launches.

Every driver call goes through ``_drv`` so a failure raises ``CudaError`` naming the call.
Contexts: the current one if it is on the wanted device, else that device's primary context
(the one torch, CuPy and JAX use), so memory is shared with them.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import threading
from typing import Any, Sequence

from .errors import Fp8GemmError

try:
    from cuda.bindings import driver as _d
except ImportError:  # pragma: no cover - cuda-bindings < 12.6 layout
    from cuda import cuda as _d  # type: ignore


class CudaError(Fp8GemmError):
    """A CUDA driver call failed (``call``: the driver function, ``code``: its CUresult)."""

    def __init__(self, call: str, code: Any, detail: str = ""):
        self.call, self.code = call, code
        try:
            err_name = _d.cuGetErrorName(code)
            err_str = _d.cuGetErrorString(code)
            nm = err_name[1].decode() if err_name[0] == _d.CUresult.CUDA_SUCCESS else str(code)
            st = err_str[1].decode() if err_str[0] == _d.CUresult.CUDA_SUCCESS else ""
        except Exception:  # no driver library to ask: the enum's own name
            nm, st = getattr(code, "name", str(code)), ""
        super().__init__(f"{call} failed: {nm}: {st}" + (f"\n{detail}" if detail else ""))


class NoDriverError(CudaError):
    """No usable CUDA driver (no GPU, or the driver library is missing)."""

    def __init__(self, message: str):
        self.call, self.code = "cuInit", None
        Fp8GemmError.__init__(self, message)


class KernelFault(CudaError):
    """A kernel died on the device (illegal address or instruction, a trap in a debug build).

    The CUDA context is unusable afterwards (every later call in it fails): restart the
    process. ``kernel`` describes the last fp8gemm launch before the fault was seen."""

    def __init__(self, call: str, code: Any, kernel: str):
        self.kernel = kernel
        super().__init__(call, code, f"the CUDA context is now unusable (restart the process); the last fp8gemm "
                                     f"kernel launched before this was seen: {kernel}")


_SUCCESS = _d.CUresult.CUDA_SUCCESS
# errors that mean a kernel died: sticky, every later call in the context returns them
_FAULTS = {getattr(_d.CUresult, n) for n in (
    "CUDA_ERROR_ILLEGAL_ADDRESS", "CUDA_ERROR_ILLEGAL_INSTRUCTION", "CUDA_ERROR_MISALIGNED_ADDRESS",
    "CUDA_ERROR_INVALID_ADDRESS_SPACE", "CUDA_ERROR_INVALID_PC", "CUDA_ERROR_LAUNCH_FAILED",
    "CUDA_ERROR_HARDWARE_STACK_ERROR", "CUDA_ERROR_ASSERT", "CUDA_ERROR_LAUNCH_TIMEOUT")
    if hasattr(_d.CUresult, n)}
_last_launch: list = [None, 0]      # (Launch, stream) of the newest launch, for KernelFault
# FP8GEMM_CHECK_LAUNCHES=1: wait for every launch, so a fault is raised by the call that
# launched the faulting kernel (debugging; it serialises the host with the GPU)
CHECK_LAUNCHES = os.environ.get("FP8GEMM_CHECK_LAUNCHES", "0") not in ("", "0")


def _describe_last() -> str:
    launch, stream = _last_launch
    if launch is None:
        return "none (no fp8gemm kernel was launched in this process)"
    return f"{launch.name}, grid {launch.grid[0]}, block {launch.block[0]}, stream 0x{stream:x}"


def _error(name: str, code: Any) -> CudaError:
    if code in _FAULTS:
        return KernelFault(name, code, _describe_last())
    return CudaError(name, code)


def _drv(name: str, *args):
    res = getattr(_d, name)(*args)
    if res[0] != _SUCCESS:
        raise _error(name, res[0])
    return res[1] if len(res) == 2 else (res[1:] if len(res) > 2 else None)


_lock = threading.Lock()
_initialised = False


def init() -> None:
    global _initialised
    if not _initialised:
        with _lock:
            if not _initialised:
                try:
                    res = _d.cuInit(0)
                except Exception as e:  # the driver library itself is missing
                    raise NoDriverError(f"CUDA driver not available: {e}") from None
                if res[0] != _SUCCESS:
                    raise NoDriverError(f"CUDA driver not available: cuInit failed with {res[0]!r}")
                _initialised = True


def driver_version() -> int:
    """The driver's CUDA version as an int (13000 = CUDA 13.0)."""
    init()
    return int(_drv("cuDriverGetVersion"))


def device_count() -> int:
    """Number of CUDA devices, 0 when there is no driver or no GPU (never raises)."""
    try:
        init()
        return int(_drv("cuDeviceGetCount"))
    except Exception:
        return 0


def context_for(device: int):
    """Make a context for ``device`` current (the current one, else the primary) and return it."""
    init()
    ctx = _drv("cuCtxGetCurrent")
    if int(ctx) != 0:
        if int(_drv("cuCtxGetDevice")) == device:
            return ctx
    dev = _drv("cuDeviceGet", device)
    ctx = _drv("cuDevicePrimaryCtxRetain", dev)
    _drv("cuCtxSetCurrent", ctx)
    return ctx


def pointer_device(ptr: int, name: str = "pointer") -> int:
    """The device ordinal owning ``ptr``; ValueError if it is host memory or unknown to CUDA."""
    init()
    attr = _d.CUpointer_attribute
    res = _d.cuPointerGetAttribute(attr.CU_POINTER_ATTRIBUTE_MEMORY_TYPE, ptr)
    if res[0] != _SUCCESS:
        raise ValueError(f"{name}: 0x{ptr:x} is not a CUDA device pointer ({CudaError('cuPointerGetAttribute', res[0])})")
    if int(res[1]) == int(_d.CUmemorytype.CU_MEMORYTYPE_HOST):
        raise ValueError(f"{name}: 0x{ptr:x} is host memory; expected device memory")
    return int(_drv("cuPointerGetAttribute", attr.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, ptr))


@functools.lru_cache(maxsize=None)
def sm_count(device: int = 0) -> int:
    init()
    return int(_drv("cuDeviceGetAttribute",
                    _d.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, device))


def compute_capability(device: int = 0) -> tuple[int, int]:
    init()
    a = _d.CUdevice_attribute
    return (int(_drv("cuDeviceGetAttribute", a.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)),
            int(_drv("cuDeviceGetAttribute", a.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)))


# ---- modules -------------------------------------------------------------------------------
_modules: dict[tuple[int, str], Any] = {}


def load_function(cubin: bytes, name: str, device: int, dynamic_smem: int = 0):
    """Load ``cubin`` into ``device``'s context once; return the CUfunction ``name``."""
    ctx = context_for(device)
    key = (int(ctx), hashlib.sha1(cubin).hexdigest())
    with _lock:
        mod = _modules.get(key)
        if mod is None:
            mod = _drv("cuModuleLoadData", cubin)
            _modules[key] = mod
    fn = _drv("cuModuleGetFunction", mod, name.encode())
    if dynamic_smem > 48 * 1024:
        _drv("cuFuncSetAttribute", fn,
             _d.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, dynamic_smem)
    return fn


# ---- tensor maps ---------------------------------------------------------------------------
TMAP_DTYPE = {"uint8": _d.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_UINT8,
              "float8_e4m3fn": _d.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_UINT8,
              "bfloat16": _d.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
              "float32": _d.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_FLOAT32}
_SWIZZLE = {0: _d.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_NONE,
            32: _d.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_32B,
            64: _d.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_64B,
            128: _d.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_128B}


def encode_tensor_map(dtype: str, ptr: int, dims: Sequence[int], strides_bytes: Sequence[int],
                      box: Sequence[int], swizzle: int = 0, l2_promotion: int = 256) -> bytes:
    """A tiled ``CUtensorMap`` (128 bytes). dims/box innermost first; strides for dims[1:]."""
    init()
    promo = {0: _d.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_NONE,
             64: _d.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_64B,
             128: _d.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
             256: _d.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B}[l2_promotion]
    rank = len(dims)
    tmap = _drv("cuTensorMapEncodeTiled", TMAP_DTYPE[dtype], rank, ptr,
                [_d.cuuint64_t(int(x)) for x in dims], [_d.cuuint64_t(int(x)) for x in strides_bytes],
                [_d.cuuint32_t(int(x)) for x in box], [_d.cuuint32_t(1)] * rank,
                _d.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE, _SWIZZLE[swizzle], promo,
                _d.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)
    return ctypes.string_at(tmap.getPtr(), 128)


# ---- parameters ----------------------------------------------------------------------------
_CTYPE = {"u64": ctypes.c_uint64, "u32": ctypes.c_uint32, "s32": ctypes.c_int32,
          "f32": ctypes.c_float, "tmap": ctypes.c_uint8 * 128}


class ParamPack:
    """Kernel parameters kept in ctypes storage; ``address`` is the ``void**`` for the launch.

    Setting a value writes in place, so a plan re-launches with no allocation.
    """

    def __init__(self, kinds: Sequence[str]):
        self.kinds = list(kinds)
        self.slots = [_slot_type(k)() for k in self.kinds]
        self.array = (ctypes.c_void_p * max(1, len(self.slots)))(
            *[ctypes.addressof(s) for s in self.slots])
        self.address = ctypes.addressof(self.array)

    def __setitem__(self, i: int, value) -> None:
        kind = self.kinds[i]
        if kind == "tmap" or kind.endswith("]"):     # a tensor map, or a whole array, as bytes
            ctypes.memmove(self.slots[i], value, ctypes.sizeof(self.slots[i]))
        else:
            self.slots[i].value = value

    def set_element(self, i: int, j: int, value) -> None:
        """Element ``j`` of array parameter ``i`` ("u32[N]": an int; "tmap[N]": 128 bytes)."""
        if self.kinds[i].startswith("tmap"):
            ctypes.memmove(ctypes.addressof(self.slots[i]) + 128 * j, value, 128)
        else:
            self.slots[i][j] = value

    def __getitem__(self, i: int):
        s = self.slots[i]
        kind = self.kinds[i]
        return bytes(s) if kind == "tmap" or kind.endswith("]") else s.value

    def copy(self) -> "ParamPack":
        """A pack of the same kinds holding the same values (its own storage)."""
        out = ParamPack(self.kinds)
        for i in range(len(self.kinds)):
            out[i] = self[i]
        return out


def _slot_type(kind: str):
    """ctypes storage of one parameter: a scalar, a 128-byte tensor map, or an array of either."""
    if kind.endswith("]"):
        base, n = kind[:-1].split("[")
        return ctypes.c_uint8 * (128 * int(n)) if base == "tmap" else _CTYPE[base] * int(n)
    return _CTYPE[kind]


# ---- launches ------------------------------------------------------------------------------
def stream_handle(stream: Any) -> int:
    """A raw CUstream from an int, a CUstream, a torch/CuPy stream, or None (legacy default)."""
    if stream is None:
        return 0
    if isinstance(stream, int):
        return stream
    if hasattr(stream, "__cuda_stream__"):
        return int(stream.__cuda_stream__()[1])
    for attr in ("cuda_stream", "ptr", "handle"):
        h = getattr(stream, attr, None)
        if isinstance(h, int):
            return h
    try:
        return int(stream)
    except (TypeError, ValueError):
        raise TypeError(f"stream: cannot get a CUstream from {type(stream).__name__}") from None


class Launch:
    """A CUfunction with a fixed grid/block/smem/cluster; ``__call__`` launches on a stream.

    Thread-safe: the launch config carries the stream, so each thread launches through its
    own copy (made on its first launch); ``config`` is the shared template (occupancy queries).
    """

    def __init__(self, fn, grid: Sequence[int], block: Sequence[int], smem: int,
                 cluster: Sequence[int] = (1, 1, 1), name: str = "kernel"):
        self.fn, self.name = fn, name
        self.grid, self.block = tuple(int(x) for x in grid), tuple(int(x) for x in block)
        self.smem, self.cluster = int(smem), tuple(int(x) for x in cluster)
        self.config = self._make_config()
        self._generation = 0
        self._local = threading.local()

    def _make_config(self):
        cfg = _d.CUlaunchConfig()
        cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ = self.grid
        cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ = self.block
        cfg.sharedMemBytes = self.smem
        attrs = []
        if self.cluster != (1, 1, 1):
            a = _d.CUlaunchAttribute()
            a.id = _d.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
            a.value.clusterDim.x, a.value.clusterDim.y, a.value.clusterDim.z = self.cluster
            attrs.append(a)
        cfg.attrs = attrs
        cfg.numAttrs = len(attrs)
        return cfg

    def set_grid(self, grid: Sequence[int]) -> None:
        """Change the grid (before launches from other threads start)."""
        self.grid = tuple(int(x) for x in grid)
        self.config = self._make_config()
        self._generation += 1

    def __call__(self, params_address: int, stream: int = 0) -> None:
        loc = self._local
        if getattr(loc, "generation", None) != self._generation:
            loc.config, loc.streams, loc.generation = self._make_config(), {}, self._generation
        s = loc.streams.get(stream)
        if s is None:
            s = loc.streams[stream] = _d.CUstream(stream)
        loc.config.hStream = s
        res = _d.cuLaunchKernelEx(loc.config, self.fn, params_address, 0)
        if res[0] != _SUCCESS:
            raise _error("cuLaunchKernelEx", res[0])   # a fault here is an earlier kernel's
        _last_launch[0], _last_launch[1] = self, stream
        if CHECK_LAUNCHES:
            res = _d.cuStreamSynchronize(s)
            if res[0] != _SUCCESS:
                raise _error("cuStreamSynchronize (FP8GEMM_CHECK_LAUNCHES=1)", res[0])


def max_active_clusters(launch: "Launch") -> int:
    """How many clusters of ``launch``'s shape can be resident at once (GPC limits included)."""
    cfg = launch.config
    return int(_drv("cuOccupancyMaxActiveClusters", launch.fn, cfg))


# ---- small memory helpers (tests, tools, outputs allocated without a framework) -----------
class DeviceBuffer:
    """Owned device memory (cuMemAlloc / cuMemFree)."""

    def __init__(self, nbytes: int, device: int = 0):
        context_for(device)
        self.nbytes = int(nbytes)
        self.device = device
        self.ptr = int(_drv("cuMemAlloc", max(1, self.nbytes)))

    def __del__(self):
        ptr, self.ptr = getattr(self, "ptr", 0), 0
        if ptr:
            try:
                _d.cuMemFree(ptr)
            except Exception:
                pass

    def upload(self, data: bytes | memoryview, offset: int = 0) -> None:
        _drv("cuMemcpyHtoD", self.ptr + offset, data, len(data))

    def download(self, nbytes: int | None = None, offset: int = 0) -> bytearray:
        n = self.nbytes - offset if nbytes is None else nbytes
        out = bytearray(n)
        _drv("cuMemcpyDtoH", out, self.ptr + offset, n)
        return out

    def fill_u8(self, value: int, stream: int = 0) -> None:
        _drv("cuMemsetD8Async", self.ptr, value & 0xFF, self.nbytes, _d.CUstream(stream))


def stream_synchronize(stream: int) -> None:
    _drv("cuStreamSynchronize", _d.CUstream(stream))


def copy_to_host(ptr: int, nbytes: int) -> bytearray:
    """Device memory -> a new host buffer (synchronous)."""
    out = bytearray(nbytes)
    if nbytes:
        _drv("cuMemcpyDtoH", out, ptr, nbytes)
    return out


def synchronize(device: int = 0) -> None:
    context_for(device)
    _drv("cuCtxSynchronize")
