"""DeepGEMM (a local source tree, built in place) as a comparator for fp8gemm.bench.

    python -m fp8gemm.deepgemm_side info DIR    # commit, paths, environment (no GPU needed)

From Python: ``h = load(DIR)``, then ``dense(h, ...)`` / ``contiguous(h, ...)`` / ``masked(h, ...)``
return zero-argument callables that run DeepGEMM on fp8gemm's quantized inputs (layouts converted
once, outside the callable), and ``warm(DIR, jobs, n_procs)`` JIT-compiles DeepGEMM's kernels for
a list of problems in parallel processes so the timing process loads them from the disk cache.

Written against DeepGEMM 54e2261 (2026-06, C++ JIT). Facts it relies on:
- the JIT compiles with ``nvcc -I DIR/deep_gemm/include`` only, so that folder must hold ``cute``
  and ``cutlass`` (``prepare`` checks; DeepGEMM's develop.sh links them, ``build_ext --inplace``
  does not copy them);
- its on-disk kernel cache is ``$DG_JIT_CACHE_DIR`` (default ``~/.deep_gemm``), keyed on the
  generated source, nvcc version and flags (the flags hold DIR's absolute path);
- nvcc is ``$DG_JIT_NVCC_COMPILER`` or ``CUDA_HOME/bin/nvcc``; CUDA_HOME from ``CUDA_HOME``,
  ``CUDA_PATH``, ``which nvcc`` or /usr/local/cuda;
- on SM90 with FP32 scales the recipe defaults to (1, 128, 128): A scales MN-major with column
  stride exactly ``align(M, 4)`` (3-D: strides ``(kb*align(M,4), 1, align(M,4))``), anything else
  is transposed on every call; B scales plain row-major ``[(G,) ceil(N/128), kb]``;
- N and K are compiled into the kernel, M is not, but the heuristic's choice of tile depends on M
  (masked: on ``expected_m``), so a warm-up must use the exact shapes that will be timed;
- PDL is off unless ``set_pdl(True)``; this module leaves it off (as DeepGEMM's tests do).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

DEFAULT_CACHE_SUBDIR = ".jit-cache"


@dataclass
class Handle:
    dir: Path
    commit: str
    module: Any                    # the imported deep_gemm package
    cache_dir: Path
    cuda_home: str | None
    pdl: bool | None
    version: str | None
    extra: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"dir": str(self.dir), "commit": self.commit, "version": self.version,
                "jit_cache_dir": str(self.cache_dir), "cuda_home": self.cuda_home, "pdl": self.pdl}


# ---- the source tree ---------------------------------------------------------------------------
def read_commit(dir: str | os.PathLike) -> str:
    """The tree's DeepGEMM commit: first word of DIR/DEEPGEMM_COMMIT, else DIR's own .git."""
    d = Path(dir)
    f = d / "DEEPGEMM_COMMIT"
    if f.is_file():
        words = f.read_text().split()
        if words:
            return words[0]
    if (d / ".git").exists():     # only DIR's own repository, never an enclosing one
        try:
            out = subprocess.run(["git", "-C", str(d), "rev-parse", "HEAD"], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except OSError:
            pass
    return "unknown"


def prepare(dir: str | os.PathLike) -> None:
    """Check that DIR is ready to run: DeepGEMM's JIT compiles with ``-I DIR/deep_gemm/include``
    only, so that folder must hold ``cute`` and ``cutlass`` (links to CUTLASS's include/, as
    DeepGEMM's own develop script makes them). This module builds and links nothing itself."""
    d = Path(dir).resolve()
    inc = d / "deep_gemm" / "include"
    for name in ("cute", "cutlass"):
        if not (inc / name).is_dir():
            raise FileNotFoundError(f"{inc / name} is missing: DeepGEMM's JIT needs CUTLASS's include/{name} "
                                    "there (link it as DeepGEMM's develop script does)")
    if not list(d.glob("deep_gemm/_C*.so")) and not list(d.glob("deep_gemm/*.so")):
        raise FileNotFoundError(f"{d}/deep_gemm has no built extension: build DeepGEMM in place first")


def _set_env(dir: Path, cache_dir: str | os.PathLike | None) -> Path:
    cache = Path(cache_dir) if cache_dir else dir / DEFAULT_CACHE_SUBDIR
    cache = cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["DG_JIT_CACHE_DIR"] = str(cache)
    return cache


def load(dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Handle:
    """Import ``deep_gemm`` from DIR (built in place) with its JIT cache at CACHE_DIR
    (default DIR/.jit-cache; exported as DG_JIT_CACHE_DIR before the import)."""
    d = Path(dir).resolve()
    if not (d / "deep_gemm" / "__init__.py").is_file():
        raise FileNotFoundError(f"{d} holds no deep_gemm package")
    prepare(d)
    cache = _set_env(d, cache_dir)
    already = sys.modules.get("deep_gemm")
    if already is not None and not str(Path(already.__file__).resolve()).startswith(str(d)):
        raise RuntimeError(f"another deep_gemm is already imported: {already.__file__}")
    if str(d) not in sys.path:
        sys.path.insert(0, str(d))
    import deep_gemm  # noqa: PLC0415
    if not str(Path(deep_gemm.__file__).resolve()).startswith(str(d)):
        raise RuntimeError(f"imported deep_gemm from {deep_gemm.__file__}, not from {d}")
    for name in ("fp8_gemm_nt", "m_grouped_fp8_gemm_nt_contiguous", "m_grouped_fp8_gemm_nt_masked"):
        if not hasattr(deep_gemm, name):
            raise RuntimeError(f"deep_gemm from {d} has no {name} (is _C built for this CUDA?)")
    try:
        cuda_home = deep_gemm._find_cuda_home()
    except Exception:  # noqa: BLE001 - informational only
        cuda_home = os.environ.get("CUDA_HOME")
    try:
        pdl = bool(deep_gemm.get_pdl())
    except Exception:  # noqa: BLE001
        pdl = None
    return Handle(dir=d, commit=read_commit(d), module=deep_gemm, cache_dir=cache, cuda_home=cuda_home,
                  pdl=pdl, version=getattr(deep_gemm, "__version__", None))


# ---- layouts -------------------------------------------------------------------------------------
def _tma_aligned(m: int) -> int:
    return -(-m // 4) * 4


def _sfa_mn_major(torch, sa):
    """A's scales exactly as DeepGEMM's SM90 path wants them (no per-call transpose):
    2-D [M, kb] strides (1, align(M, 4)); 3-D [G, M, kb] strides (kb*align(M, 4), 1, align(M, 4))."""
    if sa.dtype != torch.float32:
        raise TypeError(f"A scales must be float32, got {sa.dtype}")
    if sa.dim() == 2:
        m, kb = sa.shape
        s = _tma_aligned(m)
        if tuple(sa.stride()) == (1, s):
            return sa
        out = torch.empty((kb, s), dtype=torch.float32, device=sa.device).t()[:m]
    elif sa.dim() == 3:
        g, m, kb = sa.shape
        s = _tma_aligned(m)
        if tuple(sa.stride()) == (kb * s, 1, s):
            return sa
        out = torch.empty((g, kb, s), dtype=torch.float32, device=sa.device).transpose(1, 2)[:, :m, :]
    else:
        raise ValueError(f"A scales must be 2-D or 3-D, got shape {tuple(sa.shape)}")
    out.copy_(sa)
    return out


def _row_major(x):
    return x if x.is_contiguous() else x.contiguous()


def _check_fp8(torch, name, x, dims):
    if x.dtype != torch.float8_e4m3fn:
        raise TypeError(f"{name} must be float8_e4m3fn, got {x.dtype}")
    if x.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D, got shape {tuple(x.shape)}")


def dense(h: Handle, aq, sa, bq, sb, out) -> Callable[[], None]:
    """D[M,N] = A[M,K] . B[N,K]^T: aq e4m3 [M,K], sa f32 [M,kb] MN-major, bq e4m3 [N,K],
    sb f32 [ceil(N/128), kb], out bf16 [M,N] (written by the callable)."""
    import torch
    _check_fp8(torch, "aq", aq, 2)
    _check_fp8(torch, "bq", bq, 2)
    a = (_row_major(aq), _sfa_mn_major(torch, sa))
    b = (_row_major(bq), _row_major(sb))
    fn = h.module.fp8_gemm_nt
    return lambda: fn(a, b, out, disable_ue8m0_cast=True)


def contiguous(h: Handle, aq, sa, bq, sb, out, m_indices) -> Callable[[], None]:
    """M-grouped contiguous: aq [M_sum,K], sa [M_sum,kb] MN-major, bq [G,N,K], sb [G,nb,kb],
    out [M_sum,N], m_indices int32 [M_sum] (group per row, -1 on padding rows; groups padded to
    DeepGEMM's contiguous-layout alignment, 128 on SM90)."""
    import torch
    _check_fp8(torch, "aq", aq, 2)
    _check_fp8(torch, "bq", bq, 3)
    if m_indices.dtype != torch.int32:
        raise TypeError(f"m_indices must be int32, got {m_indices.dtype}")
    a = (_row_major(aq), _sfa_mn_major(torch, sa))
    b = (_row_major(bq), _row_major(sb))
    layout = _row_major(m_indices)
    fn = h.module.m_grouped_fp8_gemm_nt_contiguous
    return lambda: fn(a, b, out, layout, disable_ue8m0_cast=True)


def masked(h: Handle, aq, sa, bq, sb, out, masked_m, expected_m: int) -> Callable[[], None]:
    """M-grouped masked: aq [G,M_max,K], sa [G,M_max,kb] MN-major per group, bq [G,N,K],
    sb [G,nb,kb], out [G,M_max,N], masked_m int32 [G] on the device, expected_m a host int."""
    import torch
    _check_fp8(torch, "aq", aq, 3)
    _check_fp8(torch, "bq", bq, 3)
    if masked_m.dtype != torch.int32:
        raise TypeError(f"masked_m must be int32, got {masked_m.dtype}")
    a = (_row_major(aq), _sfa_mn_major(torch, sa))
    b = (_row_major(bq), _row_major(sb))
    mm = _row_major(masked_m)
    hint = int(expected_m)
    fn = h.module.m_grouped_fp8_gemm_nt_masked
    return lambda: fn(a, b, out, mm, hint, disable_ue8m0_cast=True)


def wgrad(h: Handle, aq, sa, bq, sb, out) -> Callable[[], None]:
    """out[M,N] (fp32) += A . B^T with 1x128 scales on both (DeepGEMM HEAD's SM90 "1D1D" kernel:
    ``fp8_gemm_nt`` with recipe (1, 1, 128) and c = d): aq [M,K], sa [M,kb] MN-major, bq [N,K],
    sb [N,kb] MN-major. HEAD's kernel reads A and B with row stride K (contiguous only)."""
    import torch
    _check_fp8(torch, "aq", aq, 2)
    _check_fp8(torch, "bq", bq, 2)
    a = (_row_major(aq), _sfa_mn_major(torch, sa))
    b = (_row_major(bq), _sfa_mn_major(torch, sb))
    fn = h.module.fp8_gemm_nt
    return lambda: fn(a, b, out, c=out, recipe=(1, 1, 128), disable_ue8m0_cast=True)


def k_grouped_wgrad(h: Handle, a_flat, sa_stacked, b_flat, sb_stacked, out, ks) -> Callable[[], None]:
    """out[g] (fp32 [M,N]) += A_g . B_g^T (HEAD's ``k_grouped_fp8_gemm_nt_contiguous``, SM90):
    the flat concatenations of the groups' [M,k_g] / [N,k_g] row-major matrices, the stacked
    scales [sum kb, M] / [sum kb, N] (passed as their MN-major [M, sum kb] views), ks a host
    list of the groups' K (HEAD wants multiples of 128), out [G,M,N] contiguous."""
    import torch
    _check_fp8(torch, "a_flat", a_flat, 1)
    _check_fp8(torch, "b_flat", b_flat, 1)
    ks = [int(x) for x in ks]
    layout = torch.tensor(ks, dtype=torch.int32, device=out.device)
    a = (_row_major(a_flat), _row_major(sa_stacked).t())
    b = (_row_major(b_flat), _row_major(sb_stacked).t())
    fn = h.module.k_grouped_fp8_gemm_nt_contiguous
    return lambda: fn(a, b, out, ks, layout, c=out, recipe=(1, 1, 128))


def calc_diff(h: Handle | None, x, y) -> float:
    """DeepGEMM's similarity measure 1 - 2<x,y>/(|x|^2+|y|^2) (its own function when loaded)."""
    f = getattr(getattr(h.module, "testing", None), "calc_diff", None) if h is not None else None
    if f is not None:
        return float(f(x, y))
    xd, yd = x.double(), y.double()
    den = (xd * xd + yd * yd).sum()
    return 0.0 if float(den) == 0 else float(1 - 2 * (xd * yd).sum() / den)


# ---- parallel JIT warm-up -----------------------------------------------------------------------
def job_key(job: dict) -> str:
    return json.dumps(job, sort_keys=True)


_CONFIG_RE = re.compile(r"block_m=(\d+), block_n=(\d+).*?cluster_m=(\d+), cluster_n=(\d+).*?"
                        r"num_stages=(\d+).*?LaunchConfig\(num_sms=(\d+)")


def short_config(line: str) -> str | None:
    """'bm128_bn192_s4_c2x1_sms132' (tile, stages, cluster if 2 CTAs, SMs used) from a line that
    DeepGEMM prints under DG_PRINT_CONFIGS=1."""
    mt = _CONFIG_RE.search(line)
    if not mt:
        return None
    bm, bn, cm, cn, st, sms = (int(x) for x in mt.groups())
    name = f"bm{bm}_bn{bn}_s{st}"
    if cm * cn > 1:
        name += f"_c{cm}x{cn}"
    return f"{name}_sms{sms}"


_worker_handle: Handle | None = None


def _worker_init(dir: str, cache_dir: str) -> None:
    global _worker_handle
    # (DG_PRINT_CONFIGS would make the config print path run; it crashed in our builds (an ostream
    # of an int inside _C), so configs are not captured)
    _worker_handle = load(dir, cache_dir)


def _zeros_fp8(torch, shape):
    return torch.zeros(shape, dtype=torch.uint8, device="cuda").view(torch.float8_e4m3fn)


def _sfa_ones(torch, g, m, kb):
    s = _tma_aligned(m)
    if g is None:
        return torch.ones((kb, s), dtype=torch.float32, device="cuda").t()[:m]
    return torch.ones((g, kb, s), dtype=torch.float32, device="cuda").transpose(1, 2)[:, :m, :]


def _run_job(h: Handle, job: dict) -> None:
    """One DeepGEMM call on placeholder data (zeros, unit scales) with the job's exact shapes."""
    import torch
    kind, n, k = job["kind"], job["n"], job["k"]
    kb, nb = -(-k // 128), -(-n // 128)
    if kind == "dense":
        m = job["m"]
        fn = dense(h, _zeros_fp8(torch, (m, k)), _sfa_ones(torch, None, m, kb), _zeros_fp8(torch, (n, k)),
                   torch.ones((nb, kb), device="cuda"), torch.empty((m, n), dtype=torch.bfloat16, device="cuda"))
    elif kind == "contiguous":
        g, m = job["groups"], job["m_sum"]
        fn = contiguous(h, _zeros_fp8(torch, (m, k)), _sfa_ones(torch, None, m, kb), _zeros_fp8(torch, (g, n, k)),
                        torch.ones((g, nb, kb), device="cuda"),
                        torch.empty((m, n), dtype=torch.bfloat16, device="cuda"),
                        torch.zeros((m,), dtype=torch.int32, device="cuda"))
    elif kind == "masked":
        g, m = job["groups"], job["m_max"]
        fn = masked(h, _zeros_fp8(torch, (g, m, k)), _sfa_ones(torch, g, m, kb), _zeros_fp8(torch, (g, n, k)),
                    torch.ones((g, nb, kb), device="cuda"),
                    torch.empty((g, m, n), dtype=torch.bfloat16, device="cuda"),
                    torch.full((g,), min(job["expected_m"], m), dtype=torch.int32, device="cuda"),
                    job["expected_m"])
    elif kind == "wgrad":
        m = job["m"]
        fn = wgrad(h, _zeros_fp8(torch, (m, k)), _sfa_ones(torch, None, m, kb), _zeros_fp8(torch, (n, k)),
                   _sfa_ones(torch, None, n, kb), torch.zeros((m, n), dtype=torch.float32, device="cuda"))
    elif kind == "k_grouped_wgrad":
        m, ks = job["m"], job["ks"]
        kbt = sum(-(-x // 128) for x in ks)
        fn = k_grouped_wgrad(h, _zeros_fp8(torch, (m * sum(ks),)), torch.ones((kbt, m), device="cuda"),
                             _zeros_fp8(torch, (n * sum(ks),)), torch.ones((kbt, n), device="cuda"),
                             torch.zeros((len(ks), m, n), dtype=torch.float32, device="cuda"), ks)
    else:
        raise ValueError(f"unknown job kind {kind!r}")
    fn()
    torch.cuda.synchronize()


def _warm_one(job: dict) -> dict:
    """Runs in a worker: the call with fd 1 captured (DeepGEMM prints its config there)."""
    import ctypes
    import tempfile
    t0 = time.perf_counter()
    err = None
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            _run_job(_worker_handle, job)
        except Exception as e:  # noqa: BLE001 - reported to the parent
            err = f"{type(e).__name__}: {str(e)[:2000]}"
        finally:
            try:
                ctypes.CDLL(None).fflush(None)
            except Exception:  # noqa: BLE001
                pass
            os.dup2(saved, 1)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    cfg_lines = [ln for ln in text.splitlines() if "GemmConfig(" in ln]
    other = "\n".join(ln for ln in text.splitlines() if "GemmConfig(" not in ln).strip()
    return {"key": job_key(job), "seconds": time.perf_counter() - t0, "error": err,
            "config": short_config(cfg_lines[-1]) if cfg_lines else None, "output": other[-4000:] or None}


def warm(dir: str | os.PathLike, jobs: list[dict], n_procs: int = 8,
         cache_dir: str | os.PathLike | None = None, timeout_s: float = 300.0) -> dict:
    """Compile DeepGEMM's kernels for JOBS in N_PROCS 'spawn' processes sharing one JIT cache.

    A job is {"kind": "dense", "m", "n", "k"}, {"kind": "contiguous", "groups", "m_sum", "n", "k"}
    or {"kind": "masked", "groups", "m_max", "n", "k", "expected_m"}; each is called once on
    placeholder data of exactly those shapes. Returns {"seconds", "procs", "cache_dir",
    "jobs": {job_key: {"seconds", "config", "error", "output"}}}. DG_JIT_CACHE_DIR is set in this
    process too, so a later ``load`` here uses the same cache (pass the same CACHE_DIR)."""
    import multiprocessing as mp
    d = Path(dir).resolve()
    prepare(d)
    cache = _set_env(d, cache_dir)
    uniq = list({job_key(j): j for j in jobs}.values())
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    if uniq:
        n = max(1, min(int(n_procs), len(uniq)))
        ctx = mp.get_context("spawn")
        with ctx.Pool(n, initializer=_worker_init, initargs=(str(d), str(cache))) as pool:
            it = pool.imap_unordered(_warm_one, uniq)
            for _ in uniq:
                try:       # a worker that dies takes its job with it: do not wait forever
                    r = it.next(timeout=timeout_s)
                except mp.TimeoutError:
                    print(f"deepgemm warm: no result for {timeout_s:.0f} s; the rest compile on first call",
                          file=sys.stderr, flush=True)
                    break
                results[r.pop("key")] = r
                if r["error"]:
                    print(f"deepgemm warm: {r['error']}\n{r['output'] or ''}", file=sys.stderr, flush=True)
        n_used = n
    else:
        n_used = 0
    secs = [r["seconds"] for r in results.values()]
    return {"seconds": time.perf_counter() - t0, "procs": n_used, "cache_dir": str(cache), "jobs": results,
            "median_job_seconds": sorted(secs)[len(secs) // 2] if secs else None,
            "errors": sum(1 for r in results.values() if r["error"]) + len(uniq) - len(results)}


# ---- command line -------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    pi = sub.add_parser("info", help="print the tree's commit and what load() would use")
    pi.add_argument("dir")
    args = p.parse_args(argv)
    if args.what == "info":
        d = Path(args.dir).resolve()
        print(json.dumps({"dir": str(d), "commit": read_commit(d),
                          "jit_cache_dir": os.environ.get("DG_JIT_CACHE_DIR") or str(d / DEFAULT_CACHE_SUBDIR),
                          "built": sorted(x.name for x in (d / "deep_gemm").glob("_C*.so")),
                          "include_links": {n: (d / "deep_gemm" / "include" / n).exists() for n in ("cute", "cutlass")}},
                         indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
