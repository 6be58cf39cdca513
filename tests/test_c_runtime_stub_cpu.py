"""The C runtime's launch path without a GPU: a stand-in libcuda.so.1 (built here) records what
the runtime asks of the driver, so the tensor-map cache can be checked on any machine with a C
compiler and a cuda.h: a repeated call encodes nothing, an array that moved costs one address
replacement, a new shape encodes afresh, and 8 threads launching at once each get their own
addresses in every launch."""
from __future__ import annotations

import subprocess

import pytest

import fp8gemm
from test_export_cpu import CC, INCLUDE

# The stand-in driver: every call succeeds; a "tensor map" holds its address in word 0 and a
# mark in word 15; a launch records, per calling thread, the addresses of the maps among its
# parameters (their count comes from the kernel's spec, in STUB_NPARAMS).
STUB = r"""
#include <cuda.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#define MARK 0x5eed5eed5eedULL
static int encodes, replaces, launches;
static __thread uint64_t last[8], scalars, grid;
static __thread int nlast;
int stub_counts(int *e, int *r, int *l) { *e = encodes; *r = replaces; *l = launches; return 0; }
int stub_last(uint64_t *out) { memcpy(out, last, sizeof last); return nlast; }
/* the launch's grid and a checksum of its other (value) parameters' low 32 bits */
int stub_rest(uint64_t *g, uint64_t *sum) { *g = grid; *sum = scalars; return 0; }
CUresult cuGetErrorName(CUresult r, const char **s) { (void)r; *s = "STUB"; return CUDA_SUCCESS; }
CUresult cuCtxGetDevice(CUdevice *d) { *d = 0; return CUDA_SUCCESS; }
CUresult cuDeviceGetAttribute(int *v, CUdevice_attribute a, CUdevice d) { (void)a; (void)d; *v = 132; return CUDA_SUCCESS; }
CUresult cuModuleLoadData(CUmodule *m, const void *img) { (void)img; *m = (CUmodule)(uintptr_t)16; return CUDA_SUCCESS; }
CUresult cuModuleUnload(CUmodule m) { (void)m; return CUDA_SUCCESS; }
CUresult cuModuleGetFunction(CUfunction *f, CUmodule m, const char *n) { (void)m; (void)n; *f = (CUfunction)(uintptr_t)32; return CUDA_SUCCESS; }
CUresult cuFuncSetAttribute(CUfunction f, CUfunction_attribute a, int v) { (void)f; (void)a; (void)v; return CUDA_SUCCESS; }
CUresult cuOccupancyMaxActiveClusters(int *n, CUfunction f, const CUlaunchConfig *c) { (void)f; (void)c; *n = 66; return CUDA_SUCCESS; }
CUresult cuTensorMapEncodeTiled(CUtensorMap *m, CUtensorMapDataType t, cuuint32_t rank, void *addr,
                                const cuuint64_t *dims, const cuuint64_t *strides, const cuuint32_t *box,
                                const cuuint32_t *es, CUtensorMapInterleave il, CUtensorMapSwizzle sw,
                                CUtensorMapL2promotion l2, CUtensorMapFloatOOBfill oob) {
    uint64_t *w = (uint64_t *)m;
    (void)t; (void)strides; (void)box; (void)es; (void)il; (void)sw; (void)l2; (void)oob;
    memset(m, 0, sizeof *m);
    w[0] = (uint64_t)(uintptr_t)addr, w[1] = rank, w[2] = dims[0], w[15] = MARK;
    __sync_fetch_and_add(&encodes, 1);
    return CUDA_SUCCESS;
}
CUresult cuTensorMapReplaceAddress(CUtensorMap *m, void *addr) {
    ((uint64_t *)m)[0] = (uint64_t)(uintptr_t)addr;
    __sync_fetch_and_add(&replaces, 1);
    return CUDA_SUCCESS;
}
CUresult cuLaunchKernelEx(const CUlaunchConfig *c, CUfunction f, void **params, void **extra) {
    int i, count = atoi(getenv("STUB_NPARAMS"));        /* the kernel's parameters, from its spec */
    (void)f; (void)extra;
    nlast = 0;
    scalars = 0;
    grid = c->gridDimX;
    for (i = 0; i < count && nlast < 8; i++) {
        const uint64_t *w = (const uint64_t *)params[i];
        if (((uintptr_t)w % 8) == 0 && w[15] == MARK)
            last[nlast++] = w[0];
        else
            scalars = scalars * 1000003 + *(const uint32_t *)params[i];
    }
    __sync_fetch_and_add(&launches, 1);
    return CUDA_SUCCESS;
}
"""

# The program: loads the bundle through the stand-in, makes the calls the test checks and
# prints one line per step: encodes replaces launches, then the map addresses of the launch.
PROBE = r"""
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include "fp8gemm_rt.h"
typedef int (*counts_fn)(int *, int *, int *);
typedef int (*last_fn)(uint64_t *);
typedef int (*rest_fn)(uint64_t *, uint64_t *);
static fp8gemm_bundle *bundle;
static last_fn stub_last;
static rest_fn stub_rest;
#define M 200
#define N 512
#define K 256
static int gemm(int64_t m, CUdeviceptr base, CUdeviceptr out) {
    fp8gemm_status st;
    int rc = fp8gemm_gemm(bundle, m, N, K, base, 0, base + 0x100000, 0, base + 0x200000, 0, base + 0x300000,
                          out, 0, 0, &st);
    if (rc)
        printf("ERROR %d %s\n", rc, st.message);
    return rc;
}
static void step(const char *name, counts_fn counts) {
    int e, r, l, i, n;
    uint64_t a[8], grid, sum;
    counts(&e, &r, &l);
    n = stub_last(a);
    stub_rest(&grid, &sum);
    printf("%s %d %d %d", name, e, r, l);
    for (i = 0; i < n; i++)
        printf(" %llx", (unsigned long long)a[i]);
    printf("\nrest_%s %llu %llu\n", name, (unsigned long long)grid, (unsigned long long)sum);
}
static void *worker(void *arg) {
    long t = (long)arg, bad = 0;
    int i, j, n;
    uint64_t a[8];
    CUdeviceptr base = 0x10000000 + (CUdeviceptr)t * 0x1000000, out = base + 0x400000;
    for (i = 0; i < 300; i++) {
        CUdeviceptr o = out + (CUdeviceptr)(i % 3) * 0x10000;   /* outputs that move between calls */
        if (gemm(M, base, o))
            return (void *)1000000;
        n = stub_last(a);
        for (j = 0; j < n; j++)
            bad += a[j] != base && a[j] != base + 0x100000 && a[j] != base + 0x200000 && a[j] != o;
        bad += a[n - 1] != o;
    }
    return (void *)bad;
}
int main(int argc, char **argv) {
    fp8gemm_status st;
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    counts_fn counts;
    pthread_t th[8];
    long t, bad = 0;
    void *ret;
    if (!h) { printf("NOSTUB %s\n", dlerror()); return 1; }
    counts = (counts_fn)dlsym(h, "stub_counts");
    stub_last = (last_fn)dlsym(h, "stub_last");
    stub_rest = (rest_fn)dlsym(h, "stub_rest");
    if (fp8gemm_bundle_load(argv[1], &bundle, &st)) { printf("LOAD %s\n", st.message); return 1; }
    (void)argc;
    gemm(M, 0x1000000, 0x1400000); step("first", counts);
    gemm(M, 0x1000000, 0x1400000); step("again", counts);
    gemm(M, 0x1000000, 0x1500000); step("out_moved", counts);
    gemm(M - 8, 0x1000000, 0x1500000); step("new_m", counts);
    gemm(M, 0x1000000, 0x1400000); step("back", counts);
    for (t = 0; t < 8; t++)
        pthread_create(&th[t], NULL, worker, (void *)t);
    for (t = 0; t < 8; t++) {
        pthread_join(th[t], &ret);
        bad += (long)ret;
    }
    printf("threads %ld\n", bad);
    fp8gemm_bundle_free(bundle);
    return 0;
}
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    if CC is None or INCLUDE is None:
        pytest.skip("needs a C compiler and a cuda.h")
    d = tmp_path_factory.mktemp("rt-stub")
    man = fp8gemm.export(d / "bundle", gemm=[(512, 256, 256)])
    counts = {len(kern["spec"]["params"]) for kern in man["kernels"]}
    assert len(counts) == 1, counts
    (d / "stub").mkdir()
    (d / "stub.c").write_text(STUB)
    r = subprocess.run([CC, "-std=gnu99", "-shared", "-fPIC", f"-I{INCLUDE}", str(d / "stub.c"),
                        "-o", str(d / "stub" / "libcuda.so.1")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (d / "probe.c").write_text(PROBE)
    r = subprocess.run([CC, "-std=c99", "-Wall", "-Wextra", "-Werror", f"-I{INCLUDE}",
                        f"-I{d / 'bundle' / 'runtime'}", str(d / "probe.c"), str(d / "bundle" / "runtime" / "fp8gemm_rt.c"),
                        "-ldl", "-lpthread", "-o", str(d / "probe")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(d / "probe"), str(d / "bundle")], capture_output=True, text=True, timeout=120,
                         env={"LD_LIBRARY_PATH": str(d / "stub"), "STUB_NPARAMS": str(counts.pop())})
    assert out.returncode == 0, out.stdout + out.stderr
    lines = {ln.split()[0]: ln.split()[1:] for ln in out.stdout.splitlines()}
    assert "ERROR" not in lines, out.stdout
    return lines


def _step(lines, name):
    e, r, n, *addrs = lines[name]
    return int(e), int(r), int(n), [int(x, 16) for x in addrs]


def test_first_call_encodes_every_map(probe):
    e, r, n, addrs = _step(probe, "first")
    assert (r, n) == (0, 1) and e == len(addrs) >= 4
    assert sorted(addrs) == [0x1000000, 0x1100000, 0x1200000, 0x1400000]   # a, a_scales, b, out


def test_a_repeated_call_encodes_nothing(probe):
    e0, *_ = _step(probe, "first")
    e, r, n, addrs = _step(probe, "again")
    assert (e, r, n) == (e0, 0, 2)
    assert sorted(addrs) == [0x1000000, 0x1100000, 0x1200000, 0x1400000]


def test_a_moved_array_costs_one_address_replacement(probe):
    e0, *_ = _step(probe, "first")
    e, r, n, addrs = _step(probe, "out_moved")
    assert (e, r, n) == (e0, 1, 3)
    assert 0x1500000 in addrs and 0x1400000 not in addrs


def test_another_shape_encodes_afresh_and_the_old_entry_stays(probe):
    e0, *_ = _step(probe, "first")
    e, r, n, _ = _step(probe, "new_m")
    assert (e, r, n) == (2 * e0, 1, 4)
    e, r, n, addrs = _step(probe, "back")          # the M=200 slot holds out=0x1500000 now
    assert (e, r, n) == (2 * e0, 2, 5)
    assert 0x1400000 in addrs


def test_threads_each_launch_with_their_own_addresses(probe):
    assert probe["threads"] == ["0"]


def test_a_cached_launch_passes_the_same_grid_and_values(probe):
    """The grid and the size-expression parameters come from the cache on a repeat: the same as
    when they were evaluated; another M gives other values."""
    assert probe["rest_again"] == probe["rest_first"] == probe["rest_out_moved"] == probe["rest_back"]
    assert probe["rest_new_m"][1] != probe["rest_first"][1]
    assert int(probe["rest_first"][0]) >= 1
