"""Array adapters and input validation (no GPU needed: every check fires before a launch)."""
import numpy as np
import pytest

import fp8gemm
from fp8gemm import arrays
from fp8gemm.arrays import DeviceArray, as_view


class CAI:
    def __init__(self, ptr, shape, typestr, strides=None):
        self.__cuda_array_interface__ = {"data": (ptr, False), "shape": shape, "typestr": typestr,
                                         "strides": strides, "version": 3}


def test_device_array_defaults_to_row_major():
    a = DeviceArray(0x10000, (3, 5, 7), "bfloat16")
    assert a.strides == (35, 7, 1) and a.itemsize == 2
    v = as_view(a, "a")
    assert (v.ptr, v.shape, v.strides, v.dtype, v.framework) == (0x10000, (3, 5, 7), (35, 7, 1), "bfloat16", "raw")


def test_dtype_names_accepted():
    assert arrays.canonical_dtype("e4m3") == "float8_e4m3fn"
    assert arrays.canonical_dtype(np.dtype(np.float32)) == "float32"
    import ml_dtypes
    assert arrays.canonical_dtype(np.dtype(ml_dtypes.bfloat16)) == "bfloat16"
    assert arrays.canonical_dtype(np.dtype(ml_dtypes.float8_e4m3fn)) == "float8_e4m3fn"
    with pytest.raises(TypeError, match="unsupported dtype"):
        arrays.canonical_dtype("complex64")


def test_cuda_array_interface_byte_strides():
    v = as_view(CAI(0x2000, (4, 6), "<f4", strides=(32, 4)), "x")
    assert v.strides == (8, 1) and v.dtype == "float32" and v.framework == "cai"
    v = as_view(CAI(0x2000, (4, 6), "|u1"), "x")
    assert v.strides == (6, 1) and v.dtype == "uint8"
    with pytest.raises(TypeError, match="typestr"):
        as_view(CAI(0x2000, (4,), "<c8"), "x")
    with pytest.raises(ValueError, match="multiples of the itemsize"):
        as_view(CAI(0x2000, (4, 6), "<f4", strides=(30, 4)), "x")


def test_view_as_reinterprets_bytes():
    raw = DeviceArray(0x4000, (8, 32), "uint8")
    f8 = fp8gemm.view_as(raw, "float8_e4m3fn")
    assert f8.dtype == "float8_e4m3fn" and f8.shape == (8, 32) and f8.ptr == 0x4000
    with pytest.raises(TypeError, match="itemsize"):
        fp8gemm.view_as(raw, "float32")


def test_dlpack_host_array_rejected():
    with pytest.raises(ValueError, match="host"):
        as_view(np.zeros((4, 4), np.float32), "x")


class OnlyDLPack:
    """A numpy array seen through __dlpack__ alone; ``versioned`` asks for a DLPack 1.x capsule."""

    def __init__(self, x, versioned):
        self.x, self.versioned = x, versioned

    def __dlpack__(self, stream=None, max_version=None, **_):
        return self.x.__dlpack__(max_version=(1, 0)) if self.versioned else self.x.__dlpack__()


@pytest.mark.parametrize("versioned", [False, True])
def test_dlpack_capsules_legacy_and_versioned(monkeypatch, versioned):
    x = np.zeros((6, 8), np.float32)[::2, 1:]            # strided, offset from its base
    with pytest.raises(ValueError, match="x: is a host \\(CPU\\) array"):
        as_view(OnlyDLPack(x, versioned), "x")
    monkeypatch.setattr(arrays, "_KDL_CUDA_MANAGED", 1)  # let the host capsule stand in for a device one
    v = as_view(OnlyDLPack(x, versioned), "x")
    assert (v.ptr, v.shape, v.strides, v.dtype, v.framework) == (x.ctypes.data, (3, 7), (16, 1), "float32", "dlpack")
    v = as_view(OnlyDLPack(np.zeros((2, 3), np.int32), versioned), "x")
    assert (v.shape, v.strides, v.dtype) == ((2, 3), (3, 1), "int32")


def test_unknown_object_rejected():
    with pytest.raises(TypeError, match="x: cannot use an object of type list"):
        as_view([1, 2, 3], "x")


# ---- quantization validation (fires before any device query) ------------------------------
def bf16(shape, ptr=0x10000, strides=None):
    return DeviceArray(ptr, shape, "bfloat16", strides)


@pytest.mark.parametrize("fn", [fp8gemm.per_token_cast_to_fp8, fp8gemm.per_block_cast_to_fp8])
def test_quant_rejects_bad_inputs(fn):
    with pytest.raises(TypeError, match="x: dtype is int32"):
        fn(DeviceArray(0x10000, (4, 128), "int32"))
    with pytest.raises(ValueError, match=r"x: shape is \[4, 128, 2\]"):
        fn(bf16((4, 128, 2)))
    with pytest.raises(ValueError, match="multiple of 16"):
        fn(bf16((4, 120)))
    with pytest.raises(ValueError, match="last dimension must be contiguous"):
        fn(bf16((4, 128), strides=(1, 4)))
    with pytest.raises(ValueError, match="not 16-byte aligned"):
        fn(bf16((4, 128), ptr=0x10002))
    with pytest.raises(ValueError, match="multiple of 16 bytes"):
        fn(bf16((4, 128), strides=(132, 1)))
    with pytest.raises(ValueError, match="host"):
        fn(np.zeros((4, 128), np.float32))


def test_quant_rejects_bad_outputs():
    x = bf16((4, 256))
    good_s = DeviceArray(0x30000, (4, 2), "float32", strides=(1, 4))
    with pytest.raises(TypeError, match=r"out\[0\] \(q\): dtype is uint8.*view_as"):
        fp8gemm.per_token_cast_to_fp8(x, out=(DeviceArray(0x20000, (4, 256), "uint8"), good_s))
    q = DeviceArray(0x20000, (4, 256), "float8_e4m3fn")
    with pytest.raises(ValueError, match=r"out\[0\] \(q\): shape is \[4, 128\]"):
        fp8gemm.per_token_cast_to_fp8(x, out=(DeviceArray(0x20000, (4, 128), "float8_e4m3fn"), good_s))
    with pytest.raises(ValueError, match="MN-major"):
        fp8gemm.per_token_cast_to_fp8(x, out=(q, DeviceArray(0x30000, (4, 2), "float32")))
    with pytest.raises(ValueError, match=r"out\[1\] \(scales\): shape is \[4, 3\]"):
        fp8gemm.per_token_cast_to_fp8(x, out=(q, DeviceArray(0x30000, (4, 3), "float32", strides=(1, 4))))
    with pytest.raises(ValueError, match="row-major"):
        fp8gemm.per_block_cast_to_fp8(DeviceArray(0x10000, (256, 256), "bfloat16"),
                                      out=(DeviceArray(0x20000, (256, 256), "float8_e4m3fn"),
                                           DeviceArray(0x30000, (2, 2), "float32", strides=(1, 2))))


def test_helpers():
    assert fp8gemm.get_tma_aligned_size(1) == 4 and fp8gemm.get_tma_aligned_size(8) == 8
    assert fp8gemm.get_tma_aligned_size(9) == 12
    assert fp8gemm.get_m_alignment_for_contiguous_layout() == 128
    assert fp8gemm.ceil_div(129, 128) == 2
