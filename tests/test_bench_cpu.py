"""Bench helpers that run on the CPU with torch: the cuBLAS row-wise fast-accum column."""
import pytest

torch = pytest.importorskip("torch")

from fp8gemm import bench  # noqa: E402


def test_rowwise_fast_accum_column_is_an_fp8_gemm_of_the_inputs(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)     # the helper syncs after its probe
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(64, 512, generator=gen).bfloat16()
    b = torch.randn(32, 512, generator=gen).bfloat16()
    fn, note = bench._cublas_rowwise_fast(torch, a, b)
    if fn is None:
        pytest.skip(f"this torch build has no CPU _scaled_mm: {note}")
    x, ref = fn().double(), a.double() @ b.double().t()
    assert x.shape == (64, 32) and x.dtype == torch.float64
    assert ((x - ref).norm() / ref.norm()).item() < 0.06      # e4m3 with one scale per row
    assert "use_fast_accum=True" in note


def test_rowwise_fast_accum_column_is_absent_where_the_shape_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no\nmore")))
    fn, note = bench._cublas_rowwise_fast(torch, torch.ones(1, 32).bfloat16(), torch.ones(16, 32).bfloat16())
    assert fn is None and note == "rowwise fast-accum unavailable: no"
