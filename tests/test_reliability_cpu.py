"""Failure handling without a GPU: command-line shapes, the error hierarchy, dtype and host
array messages, argument checks before any device query, kernel-cache faults, a missing or
broken ptxas, a driver older than the ptxas, and the fault message."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fp8gemm
from fp8gemm import jit, launcher, runtime
from fp8gemm.ptx_templates import gemm as template

ROOT = Path(__file__).resolve().parents[1]


# ---- command lines use the library's shape rules ---------------------------------------------
@pytest.mark.parametrize("argv,msg", [(["--n", "7"], "multiple of 8"), (["--m", "0"], "positive"),
                                      (["--m", "-5"], "positive"), (["--k", "100"], "multiple of 16")])
def test_demo_cli_rejects_bad_shapes(argv, msg):
    r = subprocess.run([sys.executable, "-m", "fp8gemm", "--cpu", *argv], capture_output=True, text=True,
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 2 and msg in r.stderr


def test_dump_cli_rejects_bad_shapes():
    r = subprocess.run([sys.executable, "tools/dump.py", "--m", "16", "--n", "7", "--k", "128"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "multiple of 8" in r.stderr


# ---- one base class ------------------------------------------------------------------------------
def test_every_library_error_derives_from_the_base():
    for cls in (fp8gemm.CudaError, fp8gemm.NoDriverError, fp8gemm.KernelFault, fp8gemm.CompileError,
                fp8gemm.ToolchainError):
        assert issubclass(cls, fp8gemm.Fp8GemmError), cls
    assert issubclass(fp8gemm.NoDriverError, fp8gemm.CudaError)
    assert issubclass(fp8gemm.ToolchainError, FileNotFoundError)     # what a missing ptxas was before


def test_a_fault_code_becomes_a_kernel_fault_naming_the_last_launch(monkeypatch):
    class FakeLaunch:
        name, grid, block = "fp8gemm_dense_bm128_bn128_s5 (m=256, n=256, k=256, groups=1)", (132, 1, 1), (384, 1, 1)
    monkeypatch.setattr(launcher, "_last_launch", [FakeLaunch(), 0x1234])
    err = launcher._error("cuStreamSynchronize", launcher._d.CUresult.CUDA_ERROR_ILLEGAL_ADDRESS)
    assert isinstance(err, fp8gemm.KernelFault)
    assert "fp8gemm_dense_bm128_bn128_s5" in str(err) and "unusable" in str(err) and "0x1234" in str(err)
    other = launcher._error("cuMemAlloc", launcher._d.CUresult.CUDA_ERROR_OUT_OF_MEMORY)
    assert type(other) is fp8gemm.CudaError


# ---- arrays --------------------------------------------------------------------------------------
def test_dtype_classes_are_accepted():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    assert fp8gemm.DeviceArray(1 << 30, (4,), np.float32).dtype == "float32"
    assert fp8gemm.DeviceArray(1 << 30, (4,), ml_dtypes.bfloat16).dtype == "bfloat16"
    assert fp8gemm.DeviceArray(1 << 30, (4,), ml_dtypes.float8_e4m3fn).dtype == "float8_e4m3fn"
    with pytest.raises(TypeError, match="unsupported dtype"):
        fp8gemm.DeviceArray(1 << 30, (4,), np.complex64)


def test_numpy_array_is_called_a_host_array():
    with pytest.raises(ValueError, match=r"^a: is a host \(numpy\) array"):
        fp8gemm.gemm_fp8_fp8_bf16_nt((np.zeros((4, 16), np.uint8), None), (None, None), None)


# ---- plan arguments are checked before the device is touched -----------------------------------
@pytest.mark.parametrize("kw,exc,msg", [
    (dict(a_stride=8), ValueError, "a_stride = 8 is smaller than 256"),
    (dict(a_stride=0), ValueError, "a_stride: must be positive"),
    (dict(out_stride=260), ValueError, "out_stride = 260 elements is not a multiple of 16 bytes"),
    (dict(sfa_stride=2.0), TypeError, "sfa_stride: must be an int"),
])
def test_plan_gemm_stride_errors_come_first(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        fp8gemm.plan_gemm(128, 256, 256, **kw)


@pytest.mark.parametrize("args,exc,name", [(("4096", 256, 256), TypeError, "m"), ((128, 256.0, 256), TypeError, "n"),
                                           ((128, 256, True), TypeError, "k"), ((0, 256, 256), ValueError, "m")])
def test_plan_gemm_shape_types(args, exc, name):
    with pytest.raises(exc, match=f"plan_gemm: {name}:"):
        fp8gemm.plan_gemm(*args)


def test_grouped_plans_reject_zero_strides():
    with pytest.raises(ValueError, match="b_stride: must be positive"):
        fp8gemm.plan_m_grouped_gemm_contiguous(256, 256, 256, 2, b_stride=0)
    with pytest.raises(ValueError, match="out_group_stride: must be positive"):
        fp8gemm.plan_m_grouped_gemm_masked(128, 256, 256, 2, 64, out_group_stride=0)


# ---- kernel cache faults -------------------------------------------------------------------------
def _small_ptx():
    cfg = fp8gemm.GemmConfig(64, 64, 2)
    return template.build(cfg).render(), cfg.name


@pytest.fixture
def fresh_jit(monkeypatch):
    jit.clear_memo()
    monkeypatch.setattr(jit, "_cache_warned", set())
    yield
    jit.clear_memo()


def test_read_only_cache_works_from_memory_with_one_warning(tmp_path, monkeypatch, caplog, fresh_jit):
    if os.geteuid() == 0:
        # root ignores permissions: make the cache "folder" a file instead, which nobody can write into
        ro = tmp_path / "not-a-folder"
        ro.write_text("")
        cache = ro / "sub"
    else:
        cache = tmp_path / "ro"
        cache.mkdir()
        cache.chmod(0o500)
    monkeypatch.setenv("FP8GEMM_CACHE_DIR", str(cache))
    ptx, name = _small_ptx()
    with caplog.at_level(logging.WARNING, logger="fp8gemm.jit"):
        a = jit.compile_ptx(ptx, name)
        b = jit.compile_ptx(ptx.replace("// Generated", "// generated"), name)   # another key, same folder
    assert a.source == b.source == "compiled" and a.cubin
    warnings = [r for r in caplog.records if "kept in memory only" in r.getMessage()]
    assert len(warnings) == 1
    assert jit.compile_ptx(ptx, name).source == "memo"


def test_full_disk_leaves_no_entry(tmp_path, monkeypatch, fresh_jit):
    monkeypatch.setenv("FP8GEMM_CACHE_DIR", str(tmp_path))
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, data):
            self.f.write(data[:100])               # part of it lands, then the disk is full
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(jit.os, "fdopen", lambda fd, mode="r": Full(real_fdopen(fd, mode)))
    ptx, name = _small_ptx()
    assert jit.compile_ptx(ptx, name).source == "compiled"
    assert list(tmp_path.iterdir()) == []          # neither an entry nor a temporary file


def test_entry_from_another_ptxas_is_never_used(tmp_path, monkeypatch, fresh_jit):
    monkeypatch.setenv("FP8GEMM_CACHE_DIR", str(tmp_path))
    ptx, name = _small_ptx()
    first = jit.compile_ptx(ptx, name)
    entry = next(tmp_path.glob("*.fp8gemm"))
    meta, cubin = jit._unpack_entry(entry.read_bytes())
    entry.write_bytes(jit._pack_entry(dict(meta, ptxas="V11.8.89"), b"\0" * len(cubin)))
    jit.clear_memo()
    again = jit.compile_ptx(ptx, name)
    assert again.source == "compiled" and again.cubin == first.cubin


# ---- toolchain -----------------------------------------------------------------------------------
def test_missing_ptxas_says_how_to_fix_it(monkeypatch, tmp_path):
    monkeypatch.setenv("FP8GEMM_PTXAS", str(tmp_path / "nope"))
    with pytest.raises(fp8gemm.ToolchainError, match="FP8GEMM_PTXAS"):
        jit.find_ptxas()
    monkeypatch.delenv("FP8GEMM_PTXAS")
    for var in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(jit, "_wheel_ptxas", lambda: None)
    with pytest.raises(fp8gemm.ToolchainError, match="pip install nvidia-cuda-nvcc"):
        jit.find_ptxas()


def test_broken_ptxas_is_one_clear_error(monkeypatch, tmp_path):
    fake = tmp_path / "ptxas"
    fake.write_text("#!/bin/sh\necho 'segmentation fault' >&2\nexit 139\n")
    fake.chmod(0o755)
    monkeypatch.setenv("FP8GEMM_PTXAS", str(fake))
    monkeypatch.setattr(jit, "_version_memo", {})
    with pytest.raises(fp8gemm.ToolchainError, match="not ptxas|failed"):
        jit.compile_ptx(*_small_ptx())


def test_driver_older_than_ptxas_names_both(monkeypatch):
    monkeypatch.setattr(runtime, "_driver_checked", False)
    monkeypatch.setattr(runtime, "_ptxas_release", lambda: "V13.0.88")
    monkeypatch.setattr(launcher, "driver_version", lambda: 12080)
    with pytest.raises(fp8gemm.ToolchainError, match=r"CUDA 12\.8.*V13\.0\.88"):
        runtime.check_driver_for_ptxas()
    monkeypatch.setattr(launcher, "driver_version", lambda: 13000)
    runtime.check_driver_for_ptxas()
    assert runtime._driver_checked


def test_tools_share_code_through_the_package_not_tests():
    for tool in sorted((ROOT / "tools").glob("*.py")) + sorted((ROOT / "fp8gemm").glob("*.py")):
        text = tool.read_text()
        assert '"tests"' not in text and "gemm_util" not in text and "grouped_util" not in text, tool.name


@pytest.mark.parametrize("module", ["fp8gemm.fuzz", "fp8gemm.sanitize", "fp8gemm.bench", "fp8gemm.dump"])
def test_package_tools_have_help_without_torch_or_a_gpu(module):
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0 and "usage" in r.stdout.lower(), r.stderr


# ---- several GPUs: SM counts per device, set_num_sms reaching cached plans --------------------------
def test_sm_counts_are_per_device_and_capped(monkeypatch):
    from fp8gemm import config, gemm, grouped
    counts = {0: 132, 1: 114}
    monkeypatch.setattr(launcher, "sm_count", lambda d=0: counts[d])
    monkeypatch.setattr(launcher, "device_count", lambda: 2)
    monkeypatch.setattr(config, "_num_sms", None)
    config._select.cache_clear()
    assert config.get_num_sms(0) == 132 and config.get_num_sms(1) == 114
    _, g0 = config.select_config(8192, 7168, 2048, device=0)
    _, g1 = config.select_config(8192, 7168, 2048, device=1)
    assert g0 <= 132 and g1 <= 114 and g0 != g1
    monkeypatch.setitem(gemm._plans, ("stale",), object())
    monkeypatch.setitem(grouped._plans, ("stale",), object())
    try:
        fp8gemm.set_num_sms(100)
        assert config.get_num_sms(0) == 100 and config.get_num_sms(1) == 100
        assert ("stale",) not in gemm._plans and ("stale",) not in grouped._plans   # replanned on next use
        with pytest.raises(ValueError, match="set_num_sms"):
            fp8gemm.set_num_sms(0)
    finally:
        fp8gemm.set_num_sms(None)
    assert config.get_num_sms(1) == 114


def test_validation_cache_still_checks_every_pointer():
    """A shape/stride/dtype signature seen before skips the pointer-independent checks, never
    the alignment of this call's pointers."""
    base = 1 << 32
    m, n, k = 64, 256, 512

    def arrays(shift_a=0, shift_sb=0):
        a = fp8gemm.DeviceArray(base + shift_a, (m, k), "float8_e4m3fn")
        sa = fp8gemm.DeviceArray(base + (1 << 24), (m, k // 128), "float32", strides=(1, m))
        b = fp8gemm.DeviceArray(base + (2 << 24), (n, k), "float8_e4m3fn")
        sb = fp8gemm.DeviceArray(base + (3 << 24) + shift_sb, (n // 128, k // 128), "float32")
        out = fp8gemm.DeviceArray(base + (4 << 24), (m, n), "bfloat16")
        return (a, sa), (b, sb), out
    for _ in range(2):                       # the second call takes the cached signature
        with pytest.raises(fp8gemm.NoDriverError):
            fp8gemm.gemm_fp8_fp8_bf16_nt(*arrays())
    with pytest.raises(ValueError, match="^a: data pointer .* not 16-byte aligned"):
        fp8gemm.gemm_fp8_fp8_bf16_nt(*arrays(shift_a=8))
    with pytest.raises(ValueError, match="b_scales: data pointer must be 4-byte aligned"):
        fp8gemm.gemm_fp8_fp8_bf16_nt(*arrays(shift_sb=2))


# ---- the version string is written once, in pyproject.toml ------------------------------------
def test_version_is_the_one_in_pyproject():
    from fp8gemm._version import version_in_pyproject
    written = version_in_pyproject(ROOT / "pyproject.toml")
    assert written and fp8gemm.__version__ == written
    assert "__version__ =" not in (ROOT / "fp8gemm" / "__init__.py").read_text()


def test_version_without_package_metadata_reads_the_checkouts_pyproject(monkeypatch):
    """A checkout run with PYTHONPATH=. and nothing installed still knows its version."""
    from importlib import metadata

    from fp8gemm import _version

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(metadata, "version", not_installed)
    assert _version.package_version() == _version.version_in_pyproject(ROOT / "pyproject.toml")
    monkeypatch.setattr(_version, "version_in_pyproject", lambda path: None)
    assert _version.package_version() == _version.UNKNOWN


def test_version_in_pyproject_reads_only_fp8gemms_project_table(tmp_path):
    from fp8gemm._version import version_in_pyproject
    p = tmp_path / "pyproject.toml"
    p.write_text('[tool.x]\nversion = "9"\n[project]\nname = "fp8gemm"\nversion = "1.2.3"\n[tool.y]\nversion = "8"\n')
    assert version_in_pyproject(p) == "1.2.3"
    p.write_text('[project]\nname = "other"\nversion = "1.2.3"\n')
    assert version_in_pyproject(p) is None
    assert version_in_pyproject(tmp_path / "missing.toml") is None
