"""Shared helpers for the GPU GEMM tests and tools: inputs, the float64 reference, checks."""
from fp8gemm.testing import POISON, check, reference  # noqa: F401  (re-exported)


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
