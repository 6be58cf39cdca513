"""PTX -> sm_90a cubin with ptxas, a SASS post-pass, and a disk + in-process cache.

The cache key is a hash of the PTX text, the ptxas version, the target, the flags and the
SASS-pass version, so a new compiler or a new pass never reuses an old cubin. Entries are
written to a temporary file and renamed into place (safe under concurrent processes) and
carry a checksum, so a truncated or corrupt entry is rebuilt instead of loaded.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger("fp8gemm.jit")

TARGET = "sm_90a"
PTXAS_FLAGS = ("-O3",)
_MAGIC = b"FP8GEMM-CUBIN-1\n"


from .errors import CompileError, ToolchainError  # noqa: E402  (re-exported)


@dataclasses.dataclass(frozen=True)
class Resources:
    registers: int
    static_smem: int
    stack_frame: int
    spill_stores: int
    spill_loads: int
    barriers: int = 0

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads


@dataclasses.dataclass
class Compiled:
    name: str                 # kernel entry name
    cubin: bytes
    resources: Resources
    key: str
    source: str               # "compiled" | "disk" | "memo"
    seconds: float            # compile or load time
    sass_report: dict | None = None


# ---- finding ptxas -----------------------------------------------------------------------
def _wheel_bin_dirs() -> list[Path]:
    """bin/ folders of the installed nvidia-cuda-* wheels (nvcc, nvdisasm, cuobjdump)."""
    try:
        import nvidia  # namespace package of the nvidia-cuda-* wheels
    except ImportError:
        return []
    return [Path(base) / sub / "bin" for base in getattr(nvidia, "__path__", [])
            for sub in ("cu13", "cuda_nvcc", "cuda_nvdisasm", "cuda_cuobjdump", "cu12")]


def _wheel_ptxas() -> Path | None:
    return next((d / "ptxas" for d in _wheel_bin_dirs() if (d / "ptxas").is_file()), None)


def find_ptxas() -> tuple[Path, str]:
    """(path, where-from). Order: FP8GEMM_PTXAS, CUDA_HOME, PATH, the nvidia-cuda-nvcc wheel."""
    env = os.environ.get("FP8GEMM_PTXAS")
    if env:
        if not Path(env).is_file():
            raise ToolchainError(f"FP8GEMM_PTXAS={env!r} is not a file: point it at a ptxas from CUDA 12.4+ "
                                 "or unset it")
        return Path(env), "FP8GEMM_PTXAS"
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and (Path(home) / "bin" / "ptxas").is_file():
            return Path(home) / "bin" / "ptxas", var
    on_path = shutil.which("ptxas")
    if on_path:
        return Path(on_path), "PATH"
    wheel = _wheel_ptxas()
    if wheel:
        return wheel, "nvidia-cuda-nvcc wheel"
    raise ToolchainError(
        "ptxas not found: install the 'nvidia-cuda-nvcc' wheel (pip install nvidia-cuda-nvcc), "
        "set CUDA_HOME to a CUDA toolkit, or set FP8GEMM_PTXAS to a ptxas binary")


def find_cuda_tool(name: str) -> Path | None:
    """Another CUDA binary (nvdisasm, cuobjdump): beside the ptxas in use, then CUDA_HOME /
    CUDA_PATH, the nvidia-* wheels, PATH; None if absent (it is only needed for inspection)."""
    dirs = []
    try:
        ptxas, _ = find_ptxas()
        dirs += [ptxas.parent, ptxas.resolve().parent]
    except FileNotFoundError:
        pass
    dirs += [Path(os.environ[v]) / "bin" for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    for d in dirs + _wheel_bin_dirs():
        p = d / name
        if p.is_file() and os.access(p, os.X_OK):
            return p
    on_path = shutil.which(name)
    return Path(on_path) if on_path else None


_version_memo: dict[str, str] = {}


def ptxas_version(path: Path) -> str:
    key = str(path)
    if key not in _version_memo:
        try:
            proc = subprocess.run([key, "--version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            raise ToolchainError(f"ptxas at {key} cannot run ({e}); fix or replace it (FP8GEMM_PTXAS, "
                                 "CUDA_HOME, or the nvidia-cuda-nvcc wheel)") from None
        m = re.search(r"release (\S+), (V\S+)", proc.stdout)
        if proc.returncode != 0 or not m:
            raise ToolchainError(f"{key} --version failed or is not ptxas (exit {proc.returncode}): "
                                 f"{(proc.stdout + proc.stderr).strip()[:300]!r}; fix or replace it")
        _version_memo[key] = m.group(2)
    return _version_memo[key]


# ---- ptxas -v parsing --------------------------------------------------------------------
def parse_resources(log_text: str) -> Resources:
    regs = int(m.group(1)) if (m := re.search(r"Used (\d+) registers", log_text)) else 0
    smem = int(m.group(1)) if (m := re.search(r"(\d+) bytes smem", log_text)) else 0
    bars = int(m.group(1)) if (m := re.search(r"used (\d+) barriers", log_text)) else 0
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                  log_text)
    frame, st, ld = (int(g) for g in m.groups()) if m else (0, 0, 0)
    return Resources(regs, smem, frame, st, ld, bars)


# ---- cache ---------------------------------------------------------------------------------
def cache_dir() -> Path:
    """FP8GEMM_CACHE_DIR when set (``~`` expanded), else ``$XDG_CACHE_HOME/fp8gemm``, else
    ``~/.cache/fp8gemm``. Per the XDG Base Directory spec an empty or relative XDG_CACHE_HOME is
    invalid and ignored (a relative one would put the cache wherever the process happens to run)."""
    d = os.environ.get("FP8GEMM_CACHE_DIR")
    if d:
        return Path(d).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "fp8gemm"


def _pack_entry(meta: dict, cubin: bytes) -> bytes:
    meta = dict(meta, cubin_sha256=hashlib.sha256(cubin).hexdigest(), cubin_len=len(cubin))
    mj = json.dumps(meta, sort_keys=True).encode()
    return _MAGIC + struct.pack("<I", len(mj)) + mj + cubin


def _unpack_entry(blob: bytes) -> tuple[dict, bytes] | None:
    """Parse a cache entry; None when it is truncated, corrupt or not ours."""
    try:
        if not blob.startswith(_MAGIC):
            return None
        (n,) = struct.unpack_from("<I", blob, len(_MAGIC))
        start = len(_MAGIC) + 4
        meta = json.loads(blob[start:start + n])
        cubin = blob[start + n:]
        if len(cubin) != meta["cubin_len"] or hashlib.sha256(cubin).hexdigest() != meta["cubin_sha256"]:
            return None
        return meta, cubin
    except (ValueError, KeyError, struct.error, UnicodeDecodeError):
        return None


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---- the SASS post-pass hook -------------------------------------------------------------
# Off until the benchmark shows a gain on our kernels (DESIGN.md section 4); the env vars
# FP8GEMM_FFMA_INTERLEAVE=1 / FP8GEMM_DISABLE_FFMA_INTERLEAVE=1 override the default.
FFMA_INTERLEAVE_DEFAULT = False


def ffma_interleave_enabled() -> bool:
    if os.environ.get("FP8GEMM_DISABLE_FFMA_INTERLEAVE", "0") not in ("", "0"):
        return False
    if os.environ.get("FP8GEMM_FFMA_INTERLEAVE", "") not in ("",):
        return os.environ["FP8GEMM_FFMA_INTERLEAVE"] != "0"
    return FFMA_INTERLEAVE_DEFAULT


def _sass_pass(force: bool | tuple | None = None) -> tuple[str, Callable[[bytes], tuple[bytes, dict]] | None]:
    """(tag for the cache key, function) of the post-ptxas pass; ('off', None) when off.

    ``force``: None follows the library default, True/False turn the pass on/off, and a
    (mode, fraction) pair turns it on with that variant (experiments, e.g. the benchmark)."""
    enabled = ffma_interleave_enabled() if force is None else bool(force)
    if not enabled:
        return "off", None
    import functools
    from .sass_patch import PASS_VERSION, interleave_ffma
    mode, fraction = (force[0], float(force[1])) if isinstance(force, tuple) else pass_variant()
    if (mode, fraction) == ("anchor", 9 / 16):
        return f"ffma-interleave-v{PASS_VERSION}", interleave_ffma
    return (f"ffma-interleave-v{PASS_VERSION}-{mode}-{fraction:.6f}",
            functools.partial(interleave_ffma, fraction=fraction, mode=mode))


def pass_variant() -> tuple[str, float]:
    """(mode, fraction) of the SASS pass: the anchor rule over 9/16 of each run unless
    FP8GEMM_FFMA_INTERLEAVE_MODE / FP8GEMM_FFMA_INTERLEAVE_FRACTION say otherwise (experiments)."""
    mode = os.environ.get("FP8GEMM_FFMA_INTERLEAVE_MODE", "") or "anchor"
    fraction = float(os.environ.get("FP8GEMM_FFMA_INTERLEAVE_FRACTION", "") or 9 / 16)
    return mode, fraction


def pass_tag(force: bool | None = None) -> str:
    """The SASS pass setting a compile with ``post_pass=force`` would use (for memo keys)."""
    return _sass_pass(force)[0]


# ---- compile -------------------------------------------------------------------------------
_memo: dict[str, Compiled] = {}
_memo_lock = threading.Lock()


def compile_ptx(ptx: str, name: str, *, use_cache: bool = True, post_pass: bool | tuple | None = None,
                cache: str | Path | None = None) -> Compiled:
    """Compile ``ptx`` (entry ``name``) for sm_90a, through the memo and the disk cache.

    ``post_pass``: None follows the library default (env ``FP8GEMM_DISABLE_FFMA_INTERLEAVE``),
    True/False force the SASS pass on or off, (mode, fraction) picks a pass variant.
    ``cache``: the disk-cache folder for this call (default ``cache_dir()``).
    """
    ptxas, _ = find_ptxas()
    version = ptxas_version(ptxas)
    pass_tag, pass_fn = _sass_pass(post_pass)
    key_src = "\0".join([ptx, version, TARGET, " ".join(PTXAS_FLAGS), pass_tag])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:32]

    with _memo_lock:
        hit = _memo.get(key)
    if hit is not None:
        return dataclasses.replace(hit, source="memo", seconds=0.0)

    path = (Path(cache) if cache is not None else cache_dir()) / f"{name[:48]}-{key}.fp8gemm"
    if use_cache and path.is_file():
        t0 = time.perf_counter()
        try:
            blob = path.read_bytes()
        except OSError as e:
            _warn_cache_once(path.parent, f"cannot read it ({e})")
            blob = b""
        entry = _unpack_entry(blob) if blob else None
        if entry is not None and (entry[0].get("ptxas"), entry[0].get("target"), entry[0].get("pass")) != (
                version, TARGET, pass_tag):
            entry = None          # another compiler or pass wrote it: never use it
        if entry is not None:
            meta, cubin = entry
            res = Resources(**meta["resources"])
            out = Compiled(name, cubin, res, key, "disk", time.perf_counter() - t0, meta.get("sass"))
            log.debug("cache load %s: %.2f ms", name, out.seconds * 1e3)
            with _memo_lock:
                _memo[key] = out
            return out
        elif blob:
            log.warning("fp8gemm cache entry %s is corrupt or foreign; rebuilding it", path)

    t0 = time.perf_counter()
    cubin, res = _run_ptxas(ptxas, ptx, name)
    report = None
    if pass_fn is not None:
        cubin, report = pass_fn(cubin)
    out = Compiled(name, cubin, res, key, "compiled", time.perf_counter() - t0, report)
    log.debug("compiled %s in %.1f ms (%d regs, %d spill bytes)", name, out.seconds * 1e3,
              res.registers, res.spills)
    if use_cache:
        meta = {"name": name, "ptxas": version, "target": TARGET, "pass": pass_tag,
                "resources": dataclasses.asdict(res), "sass": _jsonable(report)}
        try:
            _atomic_write(path, _pack_entry(meta, cubin))
        except OSError as e:  # a read-only or full cache must not break compilation
            _warn_cache_once(path.parent, f"cannot write to it ({e})")
    with _memo_lock:
        _memo[key] = out
    return out


_cache_warned: set = set()


def _warn_cache_once(folder: Path, why: str) -> None:
    """One warning per cache folder and process; kernels are then kept in memory only."""
    if str(folder) not in _cache_warned:
        _cache_warned.add(str(folder))
        log.warning("fp8gemm kernel cache %s: %s; compiled kernels are kept in memory only "
                    "(set FP8GEMM_CACHE_DIR to a writable folder)", folder, why)


def _jsonable(report):
    try:
        json.dumps(report)
        return report
    except TypeError:
        return None


def _run_ptxas(ptxas: Path, ptx: str, name: str) -> tuple[bytes, Resources]:
    with tempfile.TemporaryDirectory(prefix="fp8gemm-") as d:
        src, dst = Path(d) / f"{name}.ptx", Path(d) / f"{name}.cubin"
        src.write_text(ptx)
        cmd = [str(ptxas), f"-arch={TARGET}", "-v", *PTXAS_FLAGS, "-o", str(dst), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            fd, keep = tempfile.mkstemp(prefix=f"fp8gemm-failed-{name[:48]}-", suffix=".ptx")
            with os.fdopen(fd, "w") as f:     # a private file per failure, never a shared path
                f.write(ptx)
            err = CompileError(f"ptxas failed on {name} (PTX kept at {keep}):\n{proc.stderr}")
            err.ptx_path = keep
            raise err
        text = proc.stdout + proc.stderr
        return dst.read_bytes(), parse_resources(text)


def clear_memo() -> None:
    """Forget in-process results (tests use it to exercise the disk cache)."""
    with _memo_lock:
        _memo.clear()
