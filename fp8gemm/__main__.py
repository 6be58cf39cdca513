"""`python -m fp8gemm`: with a Hopper GPU, quantize and multiply a real shape and report
accuracy and speed; without one, compile a kernel and summarise its PTX and SASS."""
from __future__ import annotations

import argparse
import sys
import time

from . import config, jit, launcher
from .checks import check_problem
from .ptx_templates import gemm as template


def _cpu_demo(m: int, n: int, k: int) -> int:
    cfg, grid = config.select_config(m, n, k, num_sms=132)
    kern = template.build(cfg)
    ptx = kern.render()
    comp = jit.compile_ptx(ptx, kern.name)
    path, origin = jit.find_ptxas()
    print(f"No Hopper GPU found: compiled the kernel the heuristic picks for M={m} N={n} K={k} (132 SMs).")
    print(f"  config   : {cfg}  grid={grid}")
    print(f"  ptxas    : {path} ({origin}, {jit.ptxas_version(path)}), {comp.seconds * 1e3:.0f} ms ({comp.source})")
    print(f"  PTX      : {len(ptx.splitlines())} lines, {ptx.count('wgmma.mma_async')} wgmma, "
          f"{ptx.count('cp.async.bulk.tensor')} TMA ops, {ptx.count('fma.rn.f32')} promotion FFMAs")
    r = comp.resources
    print(f"  resources: {r.registers} registers/thread at entry, {cfg.smem_bytes} B dynamic shared memory, "
          f"{r.spills} spill bytes")
    from .sass_patch import decode, read_cubin
    cub = read_cubin(comp.cubin)
    for name, kt in cub.kernels.items():
        counts: dict[str, int] = {}
        for ins in decode(kt.data):
            counts[ins.mnemonic_class] = counts.get(ins.mnemonic_class, 0) + 1
        top = ", ".join(f"{c} {v}" for c, v in sorted(counts.items(), key=lambda x: -x[1])[:8])
        print(f"  SASS     : {sum(counts.values())} instructions ({top})")
    return 0


def _gpu_demo(m: int, n: int, k: int) -> int:
    import numpy as np

    from . import gemm_fp8_fp8_bf16_nt, per_block_cast_to_fp8, per_token_cast_to_fp8, plan_gemm
    from . import reference as ref
    from .arrays import DeviceArray
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((n, k)).astype(np.float32)
    bufs = [launcher.DeviceBuffer(x.nbytes) for x in (a, b)]
    for buf, x in zip(bufs, (a, b)):
        buf.upload(x.tobytes())
    aq, sa = per_token_cast_to_fp8(DeviceArray(bufs[0].ptr, (m, k), "float32"))
    bq, sb = per_block_cast_to_fp8(DeviceArray(bufs[1].ptr, (n, k), "float32"))
    out_buf = launcher.DeviceBuffer(m * n * 2)
    out = DeviceArray(out_buf.ptr, (m, n), "bfloat16")
    t0 = time.perf_counter()
    gemm_fp8_fp8_bf16_nt((aq, sa), (bq, sb), out)
    launcher.synchronize()
    first = time.perf_counter() - t0
    d = np.frombuffer(bytes(out_buf.download()), np.uint16).astype(np.uint32) << 16
    d = d.view(np.float32).reshape(m, n)
    rows = slice(0, min(m, 256))
    qa = np.frombuffer(bytes(aq.owner.download()), np.uint8).reshape(m, k)[rows]
    sa_host = np.frombuffer(bytes(sa.owner.download()), np.float32).reshape(-1, sa.strides[1])[:, :m].T[rows]
    qb = np.frombuffer(bytes(bq.owner.download()), np.uint8).reshape(n, k)
    sb_host = np.frombuffer(bytes(sb.owner.download()), np.float32).reshape(sb.shape)
    exact = ref.gemm_nt(qa.view(ref.E4M3), sa_host, qb.view(ref.E4M3), sb_host)
    err = ref.rel_error(d[rows], exact)
    plan = plan_gemm(m, n, k, sfa_stride=sa.strides[1])
    args = (aq.ptr, sa.ptr, bq.ptr, sb.ptr, out.ptr, 0)
    for _ in range(3):
        plan.launch(*args)
    launcher.synchronize()
    reps = 20
    t0 = time.perf_counter()
    for _ in range(reps):
        plan.launch(*args)
    launcher.synchronize()
    t = (time.perf_counter() - t0) / reps
    print(f"fp8gemm on {launcher.compute_capability(0)} GPU: D[{m},{n}] = A[{m},{k}] . B[{n},{k}]^T")
    print(f"  config       : {plan.config.name}, grid {plan.grid}")
    print(f"  accuracy     : normwise relative error {err:.2e} vs the float64 product of the quantized inputs "
          f"(first {rows.stop} rows)")
    print(f"  speed        : {t * 1e6:.1f} us per call = {2 * m * n * k / t / 1e12:.0f} TFLOPS (wall clock, no L2 flush)")
    print(f"  first call   : {first * 1e3:.0f} ms including JIT compile")
    return 0 if err < 2e-3 else 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["export"]:                 # python -m fp8gemm export DIR --gemm NxK:MAX_M ...
        from .bundle import main as export_main
        return export_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m fp8gemm", description=__doc__,
                                epilog="python -m fp8gemm export --help: ahead-of-time bundles for the C runtime")
    p.add_argument("--m", type=int, default=4096)
    p.add_argument("--n", type=int, default=7168)
    p.add_argument("--k", type=int, default=16384)
    p.add_argument("--cpu", action="store_true", help="compile only, even if a GPU is present")
    a = p.parse_args(argv)
    try:
        check_problem("python -m fp8gemm", a.m, a.n, a.k)     # the library's own shape rules
    except ValueError as e:
        p.error(str(e))
    gpu = not a.cpu and launcher.device_count() > 0 and launcher.compute_capability(0)[0] == 9
    return _gpu_demo(a.m, a.n, a.k) if gpu else _cpu_demo(a.m, a.n, a.k)


if __name__ == "__main__":
    sys.exit(main())
