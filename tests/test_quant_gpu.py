"""Quantization kernels on the GPU: bit-exact against the NumPy reference."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fp8gemm import reference as ref

pytestmark = pytest.mark.gpu

# >= 20 shapes, with M = 1, K = 576 and N = 2120 among them
SHAPES = [(1, 128), (1, 576), (2, 16), (3, 7168), (7, 576), (64, 2048), (65, 1008), (127, 129 // 16 * 16 + 16),
          (128, 128), (129, 256), (1000, 576), (2120, 7168), (2120, 576), (4096, 512), (333, 1536),
          (17, 4080), (256, 16384), (5, 48), (4095, 144), (8, 7168), (300, 2112)]


def _torch():
    return pytest.importorskip("torch")


def _random(torch, shape, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(shape, device="cuda", generator=g, dtype=torch.float32)
    # per-row magnitudes spread over decades, plus a few exact zeros and large outliers
    x = x * torch.exp(torch.randn(shape[0], 1, device="cuda", generator=g) * 3)
    x[:, ::97] = 0
    x[::13, ::31] *= 50
    return x.to(dtype)


@pytest.mark.parametrize("m,k", SHAPES)
@pytest.mark.parametrize("src", ["bfloat16", "float32"])
def test_per_token_bit_exact(m, k, src):
    torch = _torch()
    import fp8gemm
    x = _random(torch, (m, k), getattr(torch, src), seed=m * 7 + k)
    kb, am = ref.ceil_div(k, 128), ref.tma_aligned_size(m)
    q = torch.full((m, k), 0x7F, dtype=torch.uint8, device="cuda").view(torch.float8_e4m3fn)  # NaN poison
    sbuf = torch.full((kb, am), float("nan"), device="cuda")
    s = sbuf.t()[:m]
    fp8gemm.per_token_cast_to_fp8(x, out=(q, s))
    torch.cuda.synchronize()
    rq, rs = ref.per_token_cast_to_fp8(x.float().cpu().numpy())
    assert np.array_equal(q.view(torch.uint8).cpu().numpy(), rq.view(np.uint8))
    assert np.array_equal(s.cpu().numpy().view(np.uint32), rs.view(np.uint32))
    # allocation path gives the same, in the TMA-aligned MN-major layout
    q2, s2 = fp8gemm.per_token_cast_to_fp8(x)
    assert s2.stride() == (1, am) and q2.dtype == torch.float8_e4m3fn
    assert torch.equal(q2.view(torch.uint8), q.view(torch.uint8)) and torch.equal(s2, s)


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("src", ["bfloat16", "float32"])
def test_per_block_bit_exact(n, k, src):
    torch = _torch()
    import fp8gemm
    x = _random(torch, (n, k), getattr(torch, src), seed=n * 11 + k)
    q = torch.full((n, k), 0x7F, dtype=torch.uint8, device="cuda").view(torch.float8_e4m3fn)
    s = torch.full((ref.ceil_div(n, 128), ref.ceil_div(k, 128)), float("nan"), device="cuda")
    fp8gemm.per_block_cast_to_fp8(x, out=(q, s))
    torch.cuda.synchronize()
    rq, rs = ref.per_block_cast_to_fp8(x.float().cpu().numpy())
    assert np.array_equal(q.view(torch.uint8).cpu().numpy(), rq.view(np.uint8))
    assert np.array_equal(s.cpu().numpy().view(np.uint32), rs.view(np.uint32))


def test_strided_input_and_side_stream():
    torch = _torch()
    import fp8gemm
    base = _random(torch, (300, 1024), torch.bfloat16, seed=5)
    x = base[:, :512]                      # row stride 1024 > width 512
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):        # default stream = torch's current stream
        q, s = fp8gemm.per_token_cast_to_fp8(x)
    stream.synchronize()
    rq, rs = ref.per_token_cast_to_fp8(x.float().cpu().numpy())
    assert np.array_equal(q.view(torch.uint8).cpu().numpy(), rq.view(np.uint8))
    assert np.array_equal(s.cpu().numpy(), rs)
    q3, s3 = fp8gemm.per_block_cast_to_fp8(x, stream=stream.cuda_stream)
    stream.synchronize()
    rq3, rs3 = ref.per_block_cast_to_fp8(x.float().cpu().numpy())
    assert np.array_equal(q3.view(torch.uint8).cpu().numpy(), rq3.view(np.uint8))
    assert np.array_equal(s3.cpu().numpy(), rs3)


def test_wrong_device_or_host_tensor_rejected():
    torch = _torch()
    import fp8gemm
    with pytest.raises(ValueError, match="host"):
        fp8gemm.per_token_cast_to_fp8(torch.randn(4, 128))
    x = torch.randn(4, 128, device="cuda")
    q = torch.empty(4, 128, device="cuda", dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="host"):
        fp8gemm.per_token_cast_to_fp8(x, out=(q, torch.empty(1, 4).t()))


RAW_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import fp8gemm
    from fp8gemm import launcher, reference as ref
    from fp8gemm.arrays import DeviceArray
    rng = np.random.default_rng(1)
    m, k = 77, 576
    x = (rng.standard_normal((m, k)) * 5).astype(np.float32)
    kb, am = ref.ceil_div(k, 128), ref.tma_aligned_size(m)
    bx, bq, bs = launcher.DeviceBuffer(x.nbytes), launcher.DeviceBuffer(m * k), launcher.DeviceBuffer(kb * am * 4)
    bx.upload(x.tobytes()); bq.fill_u8(0x7F); bs.fill_u8(0xFF)
    fp8gemm.per_token_cast_to_fp8(DeviceArray(bx.ptr, (m, k), "float32"),
        out=(DeviceArray(bq.ptr, (m, k), "float8_e4m3fn"), DeviceArray(bs.ptr, (m, kb), "float32", strides=(1, am))))
    launcher.synchronize()
    q = np.frombuffer(bytes(bq.download()), np.uint8).reshape(m, k)
    s = np.frombuffer(bytes(bs.download()), np.float32).reshape(kb, am)[:, :m].T
    rq, rs = ref.per_token_cast_to_fp8(x)
    assert np.array_equal(q, rq.view(np.uint8)), "q differs"
    assert np.array_equal(s, rs), "scales differ"
    # the allocating path returns owned DeviceArrays
    q2, s2 = fp8gemm.per_block_cast_to_fp8(DeviceArray(bx.ptr, (m, k), "float32"))
    assert isinstance(q2, DeviceArray) and q2.shape == (m, k)
    launcher.synchronize()
    assert "torch" not in sys.modules, "torch was imported"
    print("RAW-OK")
""")


def test_raw_pointers_without_torch():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", RAW_SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "RAW-OK" in r.stdout, r.stdout + r.stderr
