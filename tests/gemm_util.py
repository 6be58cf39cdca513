"""Shared helpers for the GPU GEMM tests and tools: inputs, the float64 reference, checks."""
import numpy as np

POISON = 0x7FC1  # a bf16 NaN: any element the kernel fails to write shows up


def make_inputs(torch, m, n, k, seed, a_row_stride=None, out_row_stride=None):
    """Random bf16-range inputs quantized by our kernels; the float64 reference on the GPU."""
    import fp8gemm
    g = torch.Generator(device="cuda").manual_seed(seed)
    a_full = torch.randn((m, a_row_stride or k), device="cuda", generator=g)
    a = a_full[:, :k]
    b = torch.randn((n, k), device="cuda", generator=g)
    a_bf, b_bf = a.to(torch.bfloat16), b.to(torch.bfloat16)
    aq, sa = fp8gemm.per_token_cast_to_fp8(a_bf)
    bq, sb = fp8gemm.per_block_cast_to_fp8(b_bf)
    if a_row_stride:
        buf = torch.empty((m, a_row_stride), device="cuda", dtype=torch.float8_e4m3fn)
        buf[:, :k] = aq
        aq = buf[:, :k]
    out_buf = torch.empty((m, out_row_stride or n), device="cuda", dtype=torch.bfloat16)
    out = out_buf[:, :n]
    out.view(torch.int16).fill_(POISON)
    return (aq, sa), (bq, sb), out, (a_bf, b_bf)


def reference(torch, lhs, rhs):
    """float64 D of the dequantized inputs (computed on the GPU in float64)."""
    (aq, sa), (bq, sb) = lhs, rhs
    m, k = aq.shape
    n = bq.shape[0]
    ad = aq.double() * sa.double().repeat_interleave(128, dim=1)[:, :k]
    bd = bq.double() * sb.double().repeat_interleave(128, dim=0)[:n].repeat_interleave(128, dim=1)[:, :k]
    return ad @ bd.t()


def check(torch, out, ref, unquantized=None):
    """(normwise relative error, DeepGEMM diff); asserts every element written and finite."""
    o = out.double()
    assert torch.isfinite(o).all(), "NaN/Inf in the output (unwritten element or overflow)"
    if out.numel() < 4096:
        target = ref.to(torch.bfloat16).double()  # small outputs: compare with the rounded answer
    else:
        target = ref
    den = target.norm().item()
    err = (o - target).norm().item() / den if den else o.norm().item()
    diff = None
    if unquantized is not None:
        a_bf, b_bf = unquantized
        x = (a_bf.double() @ b_bf.double().t())
        diff = (1 - 2 * (o * x).sum() / (o * o + x * x).sum()).item()
    return err, diff
