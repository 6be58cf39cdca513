"""JIT: finding ptxas, compiling generated PTX, and the disk cache."""
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from fp8gemm import jit
from fp8gemm.ptx_templates import quant

QUANT_KERNELS = [(f, s) for f in (quant.per_token_kernel, quant.per_block_kernel) for s in ("bf16", "f32")]


@pytest.mark.parametrize("make,src", QUANT_KERNELS)
def test_quant_kernels_compile_without_spills(make, src, tmp_path, monkeypatch):
    monkeypatch.setenv("FP8GEMM_CACHE_DIR", str(tmp_path))
    k = make(src)
    c = jit.compile_ptx(k.render(), k.name)
    assert c.cubin[:4] == b"\x7fELF"
    assert c.resources.spills == 0 and c.resources.stack_frame == 0
    assert 0 < c.resources.registers <= 255


def test_find_ptxas_prefers_env(tmp_path, monkeypatch):
    fake = tmp_path / "ptxas"
    fake.write_text("#!/bin/sh\n")
    monkeypatch.setenv("FP8GEMM_PTXAS", str(fake))
    assert jit.find_ptxas() == (fake, "FP8GEMM_PTXAS")
    monkeypatch.setenv("FP8GEMM_PTXAS", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        jit.find_ptxas()


def test_wheel_ptxas_found_without_toolkit(monkeypatch):
    """With no toolkit visible, ptxas comes from the nvidia-cuda-nvcc wheel."""
    if jit._wheel_ptxas() is None:
        pytest.skip("nvidia-cuda-nvcc wheel not installed")
    monkeypatch.delenv("FP8GEMM_PTXAS", raising=False)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    path, origin = jit.find_ptxas()
    assert origin == "nvidia-cuda-nvcc wheel" and path.is_file()
    assert jit.ptxas_version(path).startswith("V")


def test_parse_resources():
    text = ("ptxas info    : Used 168 registers, used 1 barriers, 32 bytes smem, 400 bytes cmem[0]\n"
            "    24 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\n")
    r = jit.parse_resources(text)
    assert (r.registers, r.static_smem, r.barriers, r.stack_frame, r.spill_stores, r.spill_loads) == \
        (168, 32, 1, 24, 8, 12)
    assert r.spills == 20


def _entry(tmp_path):
    files = list(Path(tmp_path).glob("*.fp8gemm"))
    assert len(files) == 1
    return files[0]


def test_cache_miss_hit_memo(tmp_path, monkeypatch):
    monkeypatch.setenv("FP8GEMM_CACHE_DIR", str(tmp_path))
    jit.clear_memo()
    k = quant.per_token_kernel("bf16")
    a = jit.compile_ptx(k.render(), k.name)
    assert a.source == "compiled"
    b = jit.compile_ptx(k.render(), k.name)
    assert b.source == "memo" and b.cubin == a.cubin
    jit.clear_memo()
    c = jit.compile_ptx(k.render(), k.name)
    assert c.source == "disk" and c.cubin == a.cubin and c.resources == a.resources
    # a different PTX text is a different key
    jit.clear_memo()
    d = jit.compile_ptx(k.render() + "\n// changed\n", k.name)
    assert d.source == "compiled" and d.key != a.key


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_entry_is_rebuilt(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("FP8GEMM_CACHE_DIR", str(tmp_path))
    jit.clear_memo()
    k = quant.per_block_kernel("f32")
    good = jit.compile_ptx(k.render(), k.name)
    path = _entry(tmp_path)
    blob = path.read_bytes()
    bad = {"truncate": blob[: len(blob) // 2],
           "flip": blob[:-100] + bytes([blob[-100] ^ 0xFF]) + blob[-99:],
           "garbage": b"not a cache entry at all",
           "empty": b""}[damage]
    path.write_bytes(bad)
    jit.clear_memo()
    again = jit.compile_ptx(k.render(), k.name)
    assert again.source == "compiled" and again.cubin == good.cubin
    jit.clear_memo()
    assert jit.compile_ptx(k.render(), k.name).source == "disk"  # the rebuilt entry is good


def test_cache_key_includes_sass_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("FP8GEMM_CACHE_DIR", str(tmp_path))
    jit.clear_memo()
    k = quant.per_token_kernel("f32")
    off = jit.compile_ptx(k.render(), k.name, post_pass=False)
    on = jit.compile_ptx(k.render(), k.name, post_pass=True)
    assert off.key != on.key


def _compile_in_child(args):
    cache, ptx, name = args
    os.environ["FP8GEMM_CACHE_DIR"] = cache
    from fp8gemm import jit as j
    c = j.compile_ptx(ptx, name)
    return c.cubin


def test_concurrent_processes_share_one_entry(tmp_path):
    k = quant.per_block_kernel("bf16")
    ptx = k.render()
    ctx = mp.get_context("spawn")
    with ctx.Pool(8) as pool:
        cubins = pool.map(_compile_in_child, [(str(tmp_path), ptx, k.name)] * 8)
    assert len(set(cubins)) == 1
    entry = _entry(tmp_path)  # exactly one entry, no temp files left behind
    assert not list(Path(tmp_path).glob("*.tmp"))
    assert jit._unpack_entry(entry.read_bytes())[1] == cubins[0]


def test_compile_error_names_kernel_and_keeps_the_ptx_privately(tmp_path, monkeypatch):
    monkeypatch.setenv("FP8GEMM_CACHE_DIR", str(tmp_path))
    bad = ".version 8.0\n.target sm_90a\n.address_size 64\n.visible .entry broken() { bogus.op; }\n"
    kept = []
    for _ in range(2):
        with pytest.raises(jit.CompileError, match="broken") as e:
            jit.compile_ptx(bad, "broken")
        kept.append(Path(e.value.ptx_path))
        assert str(kept[-1]) in str(e.value) and kept[-1].read_text() == bad
    try:
        assert kept[0] != kept[1]            # one file per failure, never a path shared by every user
    finally:
        for p in kept:
            p.unlink()


def test_sass_pass_variant_is_part_of_the_cache_key(monkeypatch):
    from fp8gemm import jit
    default = jit.pass_tag(True)
    assert jit.pass_tag(False) == "off"
    monkeypatch.setenv("FP8GEMM_FFMA_INTERLEAVE_MODE", "alternate")
    monkeypatch.setenv("FP8GEMM_FFMA_INTERLEAVE_FRACTION", "1")
    assert jit.pass_tag(True) != default and "alternate" in jit.pass_tag(True)
    monkeypatch.setenv("FP8GEMM_FFMA_INTERLEAVE_MODE", "bogus")
    tag, fn = jit._sass_pass(True)
    with pytest.raises(ValueError, match="mode"):
        fn(b"")


# ---- where the cache lives -------------------------------------------------------------------
@pytest.mark.parametrize("ours, xdg, want", [
    ("/opt/k", "/xdg", "/opt/k"),                       # FP8GEMM_CACHE_DIR first
    ("~/kernels", None, "HOME/kernels"),                # ~ expanded
    (None, "/xdg", "/xdg/fp8gemm"),                     # then an absolute XDG_CACHE_HOME
    (None, "relative/cache", "HOME/.cache/fp8gemm"),    # a relative one is invalid (XDG spec): ignored
    (None, "", "HOME/.cache/fp8gemm"),                  # so is an empty one
    ("", None, "HOME/.cache/fp8gemm"),                  # an empty FP8GEMM_CACHE_DIR counts as unset
])
def test_cache_dir_follows_the_xdg_rules(monkeypatch, tmp_path, ours, xdg, want):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name, value in (("FP8GEMM_CACHE_DIR", ours), ("XDG_CACHE_HOME", xdg)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert jit.cache_dir() == Path(want.replace("HOME", str(tmp_path)))
