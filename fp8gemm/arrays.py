"""Framework-agnostic views of device arrays, and argument validation.

Any of these becomes one ``View`` (pointer, shape, strides in elements, dtype, device):
a torch tensor, an object with ``__cuda_array_interface__`` (CuPy, Numba, ...), an object
with ``__dlpack__`` (JAX, CuPy, ...), or ``fp8gemm.DeviceArray`` around a raw pointer.
torch is never imported here; a tensor is recognised only if torch is already loaded.
"""
from __future__ import annotations

import ctypes
import dataclasses
import math
import sys
from typing import Any, Sequence

# canonical dtype names -> itemsize
DTYPES = {"float8_e4m3fn": 1, "uint8": 1, "int8": 1, "bfloat16": 2, "float16": 2,
          "float32": 4, "int32": 4, "int64": 8}
_ALIASES = {"e4m3": "float8_e4m3fn", "fp8": "float8_e4m3fn", "bf16": "bfloat16", "f32": "float32",
            "float": "float32", "half": "float16", "f16": "float16", "i32": "int32", "u8": "uint8",
            "i8": "int8"}
_CAI_TYPESTR = {"|u1": "uint8", "|i1": "int8", "<f2": "float16", "<f4": "float32", "<i4": "int32",
                "<i8": "int64", "<u1": "uint8", "<i1": "int8"}
# DLPack (code, bits) -> name; code 4 = bfloat, 10 = float8_e4m3fn (DLPack >= 1.1)
_DL_TYPES = {(0, 8): "int8", (0, 32): "int32", (0, 64): "int64", (1, 8): "uint8", (2, 16): "float16",
             (2, 32): "float32", (4, 16): "bfloat16", (10, 8): "float8_e4m3fn"}
_TORCH_NAMES = {"float8_e4m3fn": "float8_e4m3fn", "bfloat16": "bfloat16", "float32": "float32",
                "float16": "float16", "int32": "int32", "int64": "int64", "uint8": "uint8",
                "int8": "int8"}


def canonical_dtype(dtype: Any) -> str:
    """Accept 'bfloat16', numpy/ml_dtypes dtypes or scalar types (np.float32, ml_dtypes.bfloat16),
    torch dtypes; return the canonical name."""
    name = dtype if isinstance(dtype, str) else getattr(dtype, "name", None)
    if not isinstance(name, str):
        if isinstance(dtype, type):         # a scalar type such as np.float32: its dtype's name
            try:
                import numpy as np
                name = np.dtype(dtype).name
            except (ImportError, TypeError):
                name = dtype.__name__
        else:
            name = str(dtype)
    name = name.replace("torch.", "")
    name = _ALIASES.get(name, name)
    if name not in DTYPES:
        raise TypeError(f"unsupported dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    return name


class DeviceArray:
    """A device array described by a raw pointer: ``DeviceArray(ptr, shape, dtype, strides=None)``.

    ``strides`` are in elements (row-major when None). ``owner`` keeps whatever owns the memory
    alive. It exposes ``__cuda_array_interface__`` (where the dtype allows), so CuPy or Numba
    can wrap it.
    """

    def __init__(self, ptr: int, shape: Sequence[int], dtype: Any, strides: Sequence[int] | None = None,
                 device: int | None = None, owner: Any = None):
        self.ptr = int(ptr)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = canonical_dtype(dtype)
        self.strides = _row_major(self.shape) if strides is None else tuple(int(s) for s in strides)
        if len(self.strides) != len(self.shape):
            raise ValueError(f"strides {self.strides} do not match shape {self.shape}")
        self.device = device
        self.owner = owner

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype]

    @property
    def __cuda_array_interface__(self) -> dict:
        inv = {v: k for k, v in _CAI_TYPESTR.items() if k.startswith(("|", "<"))}
        typestr = inv.get(self.dtype, {"float8_e4m3fn": "|u1", "bfloat16": "<V2"}.get(self.dtype))
        return {"shape": self.shape, "typestr": typestr, "data": (self.ptr, False), "version": 3,
                "strides": tuple(s * self.itemsize for s in self.strides)}

    def __repr__(self) -> str:
        return f"DeviceArray(ptr=0x{self.ptr:x}, shape={self.shape}, dtype={self.dtype}, strides={self.strides})"


def view_as(array: Any, dtype: Any) -> DeviceArray:
    """Reinterpret an array's bytes as another dtype of the same itemsize (e.g. uint8 -> e4m3)."""
    v = as_view(array, "array")
    dtype = canonical_dtype(dtype)
    if DTYPES[dtype] != v.itemsize:
        raise TypeError(f"view_as: itemsize of {dtype} differs from {v.dtype}")
    return DeviceArray(v.ptr, v.shape, dtype, v.strides, v.device, owner=v.owner)


@dataclasses.dataclass
class View:
    ptr: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]      # elements
    dtype: str
    device: int | None            # CUDA ordinal; None = not known yet
    owner: Any                    # keeps the source object alive
    framework: str                # "torch" | "cai" | "dlpack" | "raw"

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)


_torch_dtype_names: dict = {}          # torch.dtype -> canonical name (str() of a dtype costs per call)


def _is_torch_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def as_view(obj: Any, name: str) -> View:
    """Build a View from any supported array; raise TypeError naming ``name`` otherwise."""
    if isinstance(obj, View):
        return obj
    if isinstance(obj, DeviceArray):
        return View(obj.ptr, obj.shape, obj.strides, obj.dtype, obj.device, obj, "raw")
    if _is_torch_tensor(obj):
        if not obj.is_cuda:
            raise ValueError(f"{name}: is a host (CPU) tensor; expected a CUDA device tensor")
        dtype = _torch_dtype_names.get(obj.dtype)
        if dtype is None:
            dname = str(obj.dtype).replace("torch.", "")
            if dname not in _TORCH_NAMES:
                raise TypeError(f"{name}: torch dtype {obj.dtype} is not supported")
            dtype = _torch_dtype_names[obj.dtype] = _TORCH_NAMES[dname]
        return View(obj.data_ptr(), tuple(obj.shape), obj.stride(), dtype, obj.get_device(), obj, "torch")
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is not None:
        return _from_cai(cai, obj, name)
    if hasattr(obj, "__array_interface__") or type(obj).__module__.startswith("numpy"):
        raise ValueError(f"{name}: is a host (numpy) array; expected a device array (e.g. a CUDA "
                         "torch tensor, CuPy array or fp8gemm.DeviceArray)")
    if hasattr(obj, "__dlpack__"):
        return _from_dlpack(obj, name)
    raise TypeError(f"{name}: cannot use an object of type {type(obj).__name__} as a device array "
                    "(expected a torch tensor, an object with __cuda_array_interface__ or "
                    "__dlpack__, or fp8gemm.DeviceArray)")


def _from_cai(cai: dict, obj: Any, name: str) -> View:
    typestr = cai["typestr"]
    if typestr not in _CAI_TYPESTR:
        raise TypeError(f"{name}: __cuda_array_interface__ typestr {typestr!r} is not supported "
                        "(wrap the pointer in fp8gemm.DeviceArray with an explicit dtype)")
    dtype = _CAI_TYPESTR[typestr]
    shape = tuple(int(s) for s in cai["shape"])
    isz = DTYPES[dtype]
    if cai.get("strides") is None:
        strides = _row_major(shape)
    else:
        bstr = cai["strides"]
        if any(b % isz for b in bstr):
            raise ValueError(f"{name}: byte strides {bstr} are not multiples of the itemsize {isz}")
        strides = tuple(b // isz for b in bstr)
    return View(int(cai["data"][0]), shape, strides, dtype, None, obj, "cai")


# DLPack is parsed here, not by cuda.core's StridedMemoryView: cuda.core 1.2.2 cannot name the
# dtype of a float8_e4m3fn capsule (DLPack code 10: TypeError), and its __cuda_array_interface__
# path queries the driver for every view, while our argument checks must all come before any
# device query. Measured on CPU (tools/bench_array_views.py, benchmarks/NOTES.md 2026-12-03).
class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


_KDL_CUDA, _KDL_CUDA_MANAGED = 2, 13
# A DLManagedTensorVersioned starts with DLPackVersion (8 bytes), manager_ctx, deleter and flags
# (8 each) before its DLTensor; a legacy DLManagedTensor starts with the DLTensor.
_VERSIONED_TENSOR_OFFSET = 32

# CPython's capsule calls, prototyped once here: setting restype/argtypes on the shared
# ctypes.pythonapi functions per call cost microseconds and could clash with another library's.
_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi))
_capsule_is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_IsValid", ctypes.pythonapi))


def _from_dlpack(obj: Any, name: str) -> View:
    capsule = obj.__dlpack__()
    if _capsule_is_valid(capsule, b"dltensor"):
        addr = _capsule_pointer(capsule, b"dltensor")
    elif _capsule_is_valid(capsule, b"dltensor_versioned"):
        addr = _capsule_pointer(capsule, b"dltensor_versioned") + _VERSIONED_TENSOR_OFFSET
    else:
        raise TypeError(f"{name}: __dlpack__ returned an unknown capsule")
    t = _DLTensor.from_address(addr)
    device = t.device
    if device.device_type not in (_KDL_CUDA, _KDL_CUDA_MANAGED):
        where = {1: "a host (CPU) array", 3: "a pinned host (CUDA host) array"}.get(
            device.device_type, f"on DLPack device type {device.device_type}, not CUDA")
        raise ValueError(f"{name}: is {where}; expected a CUDA device array")
    dt = t.dtype
    dtype = _DL_TYPES.get((dt.code, dt.bits))
    if dtype is None or dt.lanes != 1:
        raise TypeError(f"{name}: DLPack dtype code={dt.code} bits={dt.bits} is not supported")
    ndim = t.ndim
    shape = tuple(t.shape[:ndim])
    strides = tuple(t.strides[:ndim]) if t.strides else _row_major(shape)
    ptr = (t.data or 0) + t.byte_offset
    return View(ptr, shape, strides, dtype, device.device_id, (obj, capsule), "dlpack")


def _row_major(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a C-contiguous array (the protocols' 'strides absent')."""
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))


# ---- validation --------------------------------------------------------------------------
def check_dtype(v: View, name: str, *allowed: str) -> None:
    if v.dtype not in allowed:
        hint = ""
        if "float8_e4m3fn" in allowed and v.dtype in ("uint8", "int8"):
            hint = " (wrap FP8 bytes with fp8gemm.view_as(x, 'float8_e4m3fn'))"
        raise TypeError(f"{name}: dtype is {v.dtype}; expected {' or '.join(allowed)}{hint}")


def fp8_operands(lhs, rhs) -> tuple[View, View, View, View]:
    """(a, a_scales, b, b_scales) views from the GEMMs' (a, a_scales), (b, b_scales) pairs,
    dtypes checked: e4m3 data, float32 scales."""
    if not (isinstance(lhs, tuple) and len(lhs) == 2):
        raise TypeError("lhs must be a tuple (a, a_scales)")
    if not (isinstance(rhs, tuple) and len(rhs) == 2):
        raise TypeError("rhs must be a tuple (b, b_scales)")
    a, sa = as_view(lhs[0], "a"), as_view(lhs[1], "a_scales")
    b, sb = as_view(rhs[0], "b"), as_view(rhs[1], "b_scales")
    check_dtype(a, "a", "float8_e4m3fn")
    check_dtype(b, "b", "float8_e4m3fn")
    check_dtype(sa, "a_scales", "float32")
    check_dtype(sb, "b_scales", "float32")
    return a, sa, b, sb


def check_shape(v: View, name: str, shape: Sequence[int | None]) -> None:
    ok = len(v.shape) == len(shape) and all(w is None or w == s for s, w in zip(v.shape, shape))
    if not ok:
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name}: shape is {list(v.shape)}; expected {want}")


def check_rows(v: View, name: str, *, align_bytes: int = 16) -> None:
    """Last dimension contiguous; every other stride a multiple of ``align_bytes``; aligned base."""
    if v.ndim >= 1 and v.shape[-1] > 1 and v.strides[-1] != 1:
        raise ValueError(f"{name}: the last dimension must be contiguous (stride 1), got strides {v.strides}")
    if v.ptr % align_bytes:
        raise ValueError(f"{name}: data pointer 0x{v.ptr:x} is not {align_bytes}-byte aligned")
    for d in range(v.ndim - 1):
        if v.shape[d] > 1 and (v.strides[d] * v.itemsize) % align_bytes:
            raise ValueError(f"{name}: stride of dimension {d} is {v.strides[d]} elements "
                             f"({v.strides[d] * v.itemsize} bytes); must be a multiple of {align_bytes} bytes")
    if v.ndim == 2 and v.shape[0] > 1 and v.strides[0] < v.shape[1]:
        raise ValueError(f"{name}: row stride {v.strides[0]} is smaller than the row width {v.shape[1]}")


def check_same_device(views: dict[str, View]) -> int:
    """Resolve every view's device (querying the driver where unknown); all must agree."""
    from .launcher import pointer_device
    devs = {}
    for name, v in views.items():
        if v.numel() == 0:
            continue
        if v.framework == "torch":   # torch already knows; a driver query per call costs microseconds
            devs[name] = v.device
            continue
        dev = pointer_device(v.ptr, name)
        if v.device is not None and v.device != dev:
            raise ValueError(f"{name}: reports device {v.device} but its memory is on device {dev}")
        v.device = dev
        devs[name] = dev
    if len(set(devs.values())) > 1:
        raise ValueError(f"arrays are on different devices: {devs}")
    return next(iter(devs.values()), 0)


def resolve_stream(stream: Any, views: Sequence[View], device: int) -> int:
    """The raw CUstream to launch on: the one given, else torch's current stream when the
    inputs are torch tensors, else the legacy default stream (0)."""
    from .launcher import stream_handle
    if stream is not None:
        return stream_handle(stream)
    if any(v.framework == "torch" for v in views):
        import torch
        return int(torch.cuda.current_stream(device).cuda_stream)
    return 0
