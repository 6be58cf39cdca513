"""The C runtime's launch path without a GPU: a stand-in libcuda.so.1 (built here) records what
the runtime asks of the driver, so the tensor-map cache can be checked on any machine with a C
compiler and a cuda.h: a repeated call encodes nothing, an array that moved costs one address
replacement, a new shape encodes afresh, and 8 threads launching at once each get their own
addresses in every launch.

The k-grouped wgrad GEMM (fp8gemm_k_grouped_wgrad) through the same driver: every launch's
parameters, byte for byte (the per-group arrays of tensor maps and values included), equal what
the Python API (k_grouped_wgrad_gemm_fp8_fp8_fp32_nt, run here with the same stand-in encoding
and the bundle's kernels) passes for the same call, chunked launches of more than MAX_K_GROUPS
groups included; the cache (a repeated batch_sizes encodes and allocates nothing, moved arrays
cost one replacement per map of each group, new batch_sizes encode afresh), no launch when every
K is 0, bad arguments refused by name before any launch, and 8 threads at once."""
from __future__ import annotations

import ctypes
import json
import random
import struct
import subprocess

import pytest

import fp8gemm
from fp8gemm.config import MAX_K_GROUPS, GemmConfig
from test_export_cpu import CC, INCLUDE

MARK = 0x5eed5eed5eed

# The stand-in driver: every call succeeds; a "tensor map" holds its address in word 0, its rank,
# element type and swizzle in word 1, dims, strides, box and whether the element strides are all
# one in words 2-14, and a mark in word 15 (fake_encode below is the same in Python); a function
# handle is its name. A launch records, per calling thread, the addresses of the maps among its
# parameters (their count comes from the kernel's spec, in STUB_NPARAMS) and, where STUB_LAYOUT
# names the kernels' parameter sizes ("name bytes bytes ..." lines), all its parameters' bytes,
# also appended in hex to STUB_LOG (with the marks stub_mark writes) while logging is on.
STUB = r"""
#include <cuda.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#define MARK 0x5eed5eed5eedULL
static int encodes, replaces, launches, logging = 1;
static __thread uint64_t last[8], scalars, grid;
static __thread int nlast;
static __thread unsigned char lastbuf[1 << 16];
static __thread size_t lastlen;
static pthread_mutex_t loglock = PTHREAD_MUTEX_INITIALIZER;
typedef struct { char name[160]; int n; size_t sizes[32]; } layout;
static layout layouts[64];
static int nlayouts;
__attribute__((constructor)) static void load_layouts(void) {
    const char *path = getenv("STUB_LAYOUT");
    char line[4096];
    FILE *f = path ? fopen(path, "r") : NULL;
    while (f && nlayouts < 64 && fgets(line, sizeof line, f)) {
        layout *l = &layouts[nlayouts++];
        char *tok = strtok(line, " \n");
        snprintf(l->name, sizeof l->name, "%s", tok ? tok : "");
        while ((tok = strtok(NULL, " \n")) && l->n < 32)
            l->sizes[l->n++] = strtoul(tok, NULL, 10);
    }
    if (f)
        fclose(f);
}
int stub_counts(int *e, int *r, int *l) { *e = encodes; *r = replaces; *l = launches; return 0; }
int stub_last(uint64_t *out) { memcpy(out, last, sizeof last); return nlast; }
/* the launch's grid and a checksum of its other (value) parameters' low 32 bits */
int stub_rest(uint64_t *g, uint64_t *sum) { *g = grid; *sum = scalars; return 0; }
/* this thread's last launch: all its parameters' bytes, back to back (STUB_LAYOUT kernels) */
size_t stub_params(unsigned char *out, size_t cap) { memcpy(out, lastbuf, lastlen < cap ? lastlen : cap); return lastlen; }
int stub_logging(int on) { logging = on; return 0; }
int stub_mark(const char *step) {
    const char *path = getenv("STUB_LOG");
    FILE *f = path ? fopen(path, "a") : NULL;
    if (f) {
        fprintf(f, "S %s\n", step);
        fclose(f);
    }
    return 0;
}
static void record(const CUlaunchConfig *c, const char *name, void **params) {
    const char *path = getenv("STUB_LOG");
    const layout *l = NULL;
    FILE *f;
    size_t j;
    int i;
    lastlen = 0;
    for (i = 0; i < nlayouts && !l; i++)
        if (!strcmp(layouts[i].name, name))
            l = &layouts[i];
    if (!l)
        return;
    for (i = 0; i < l->n; i++) {
        if (lastlen + l->sizes[i] > sizeof lastbuf)
            return;
        memcpy(lastbuf + lastlen, params[i], l->sizes[i]);
        lastlen += l->sizes[i];
    }
    if (!path || !logging)
        return;
    pthread_mutex_lock(&loglock);
    if ((f = fopen(path, "a"))) {
        const unsigned char *b = lastbuf;
        fprintf(f, "L %s %u %u %u %u %u", name, c->gridDimX, c->gridDimY, c->gridDimZ, c->blockDimX,
                c->sharedMemBytes);
        for (i = 0; i < l->n; i++) {
            fputc(' ', f);
            for (j = 0; j < l->sizes[i]; j++)
                fprintf(f, "%02x", *b++);
        }
        fputc('\n', f);
        fclose(f);
    }
    pthread_mutex_unlock(&loglock);
}
CUresult cuGetErrorName(CUresult r, const char **s) { (void)r; *s = "STUB"; return CUDA_SUCCESS; }
CUresult cuCtxGetDevice(CUdevice *d) { *d = 0; return CUDA_SUCCESS; }
CUresult cuDeviceGetAttribute(int *v, CUdevice_attribute a, CUdevice d) { (void)a; (void)d; *v = 132; return CUDA_SUCCESS; }
CUresult cuModuleLoadData(CUmodule *m, const void *img) { (void)img; *m = (CUmodule)(uintptr_t)16; return CUDA_SUCCESS; }
CUresult cuModuleUnload(CUmodule m) { (void)m; return CUDA_SUCCESS; }
CUresult cuModuleGetFunction(CUfunction *f, CUmodule m, const char *n) { (void)m; *f = (CUfunction)(void *)strdup(n); return CUDA_SUCCESS; }
CUresult cuFuncSetAttribute(CUfunction f, CUfunction_attribute a, int v) { (void)f; (void)a; (void)v; return CUDA_SUCCESS; }
CUresult cuOccupancyMaxActiveClusters(int *n, CUfunction f, const CUlaunchConfig *c) { (void)f; (void)c; *n = 66; return CUDA_SUCCESS; }
CUresult cuTensorMapEncodeTiled(CUtensorMap *m, CUtensorMapDataType t, cuuint32_t rank, void *addr,
                                const cuuint64_t *dims, const cuuint64_t *strides, const cuuint32_t *box,
                                const cuuint32_t *es, CUtensorMapInterleave il, CUtensorMapSwizzle sw,
                                CUtensorMapL2promotion l2, CUtensorMapFloatOOBfill oob) {
    uint64_t *w = (uint64_t *)m, box5[5] = {0, 0, 0, 0, 0};
    cuuint32_t i;
    (void)il; (void)l2; (void)oob;
    memset(m, 0, sizeof *m);
    w[0] = (uint64_t)(uintptr_t)addr, w[1] = rank | (uint64_t)t << 8 | (uint64_t)sw << 16, w[14] = 1, w[15] = MARK;
    for (i = 0; i < rank && i < 5; i++) {
        w[2 + i] = dims[i], box5[i] = box[i];
        w[14] &= es[i] == 1;
        if (i + 1 < rank)
            w[7 + i] = strides[i];
    }
    w[11] = box5[0] | box5[1] << 32, w[12] = box5[2] | box5[3] << 32, w[13] = box5[4];
    __sync_fetch_and_add(&encodes, 1);
    return CUDA_SUCCESS;
}
CUresult cuTensorMapReplaceAddress(CUtensorMap *m, void *addr) {
    ((uint64_t *)m)[0] = (uint64_t)(uintptr_t)addr;
    __sync_fetch_and_add(&replaces, 1);
    return CUDA_SUCCESS;
}
CUresult cuLaunchKernelEx(const CUlaunchConfig *c, CUfunction f, void **params, void **extra) {
    int i, count = getenv("STUB_NPARAMS") ? atoi(getenv("STUB_NPARAMS")) : 0;   /* from the kernel's spec */
    (void)extra;
    record(c, (const char *)(void *)f, params);
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
                        "-o", str(d / "stub" / "libcuda.so.1"), "-lpthread"], capture_output=True, text=True)
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


# ---- the k-grouped wgrad GEMM ------------------------------------------------------------------
# The program: loads the bundle through the stand-in and runs a script, one call of
# fp8gemm_k_grouped_wgrad a line ("step m n groups a a_scales sfa_stride b b_scales sfb_stride out
# out_stride out_group_stride count k_0 ... k_count-1", pointers in hex, count -1 for a NULL
# batch_sizes), printing per step: R step rc encodes replaces launches allocations<TAB>message
# (counts so far; allocations: the runtime's malloc / calloc / realloc / posix_memalign, counted by
# wrapping them at link time). A line "threads ..." instead runs 8 threads at once (see below).
PROBE_KG = r"""
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fp8gemm_rt.h"
static long allocs;
void *__real_malloc(size_t);
void *__real_calloc(size_t, size_t);
void *__real_realloc(void *, size_t);
int __real_posix_memalign(void **, size_t, size_t);
void *__wrap_malloc(size_t n) { __sync_fetch_and_add(&allocs, 1); return __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t s) { __sync_fetch_and_add(&allocs, 1); return __real_calloc(n, s); }
void *__wrap_realloc(void *p, size_t n) { __sync_fetch_and_add(&allocs, 1); return __real_realloc(p, n); }
int __wrap_posix_memalign(void **p, size_t a, size_t n) { __sync_fetch_and_add(&allocs, 1); return __real_posix_memalign(p, a, n); }
typedef int (*counts_fn)(int *, int *, int *);
typedef int (*mark_fn)(const char *);
typedef int (*logging_fn)(int);
typedef size_t (*params_fn)(unsigned char *, size_t);
static fp8gemm_bundle *bundle;
static params_fn stub_params;
typedef struct {
    long long m, n, groups, sfa, sfb, os, ogs;
    unsigned long long a, sa, b, sb, out;
    int count;
    int64_t ks[512];
} call;
static int run(const call *c, fp8gemm_status *st, CUdeviceptr shift) {
    return fp8gemm_k_grouped_wgrad(bundle, c->m, c->n, c->groups, c->count < 0 ? NULL : c->ks, c->a + shift, c->sa + shift,
                                   c->sfa, c->b + shift, c->sb + shift, c->sfb, c->out + shift, c->os, c->ogs, 0, st);
}
/* 8 threads, each with its arrays at its own offset, cycling through the calls: every launch's
 * parameters must be those the same call made alone (no thread sees another's maps) */
#define NT 8
#define NV 3
static call variants[NV];
static unsigned char *want[NT][NV];
static size_t wantlen[NT][NV];
static void *worker(void *arg) {
    long t = (long)arg, bad = 0;
    unsigned char got[1 << 16];
    fp8gemm_status st;
    int i;
    for (i = 0; i < 200; i++) {
        int v = (int)((i + t) % NV);
        if (run(&variants[v], &st, (CUdeviceptr)t << 32))
            return (void *)1000000;
        bad += stub_params(got, sizeof got) != wantlen[t][v] || memcmp(got, want[t][v], wantlen[t][v]);
    }
    return (void *)bad;
}
static int read_call(FILE *f, call *c) {
    int i;
    if (fscanf(f, "%lld %lld %lld %llx %llx %lld %llx %llx %lld %llx %lld %lld %d", &c->m, &c->n, &c->groups, &c->a,
               &c->sa, &c->sfa, &c->b, &c->sb, &c->sfb, &c->out, &c->os, &c->ogs, &c->count) != 13 || c->count > 512)
        return -1;
    for (i = 0; i < c->count; i++) {
        long long k;
        if (fscanf(f, "%lld", &k) != 1)
            return -1;
        c->ks[i] = k;
    }
    return 0;
}
int main(int argc, char **argv) {
    fp8gemm_status st;
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    counts_fn counts;
    mark_fn mark;
    logging_fn logging;
    char name[64];
    FILE *f;
    call c;
    int e, r, l, rc;
    if (argc < 3 || !h) { printf("NOSTUB\n"); return 1; }
    counts = (counts_fn)dlsym(h, "stub_counts");
    mark = (mark_fn)dlsym(h, "stub_mark");
    logging = (logging_fn)dlsym(h, "stub_logging");
    stub_params = (params_fn)dlsym(h, "stub_params");
    if (fp8gemm_bundle_load(argv[1], &bundle, &st)) { printf("LOAD %d %s\n", st.code, st.message); return 0; }
    if (!(f = fopen(argv[2], "r"))) return 2;
    while (fscanf(f, "%63s", name) == 1) {
        if (!strcmp(name, "threads")) {     /* threads: NV calls follow */
            pthread_t th[NT];
            long t, bad = 0, before;
            void *ret;
            int v;
            for (v = 0; v < NV; v++)
                if (read_call(f, &variants[v])) return 3;
            logging(0);
            for (t = 0; t < NT; t++)
                for (v = 0; v < NV; v++) {
                    if (run(&variants[v], &st, (CUdeviceptr)t << 32)) { printf("ERROR %s\n", st.message); return 4; }
                    want[t][v] = malloc(1 << 16);
                    wantlen[t][v] = stub_params(want[t][v], 1 << 16);
                }
            before = allocs;
            for (t = 0; t < NT; t++)
                pthread_create(&th[t], NULL, worker, (void *)t);
            for (t = 0; t < NT; t++) {
                pthread_join(th[t], &ret);
                bad += (long)ret;
            }
            logging(1);
            printf("T threads %ld %ld\n", bad, allocs - before);
            continue;
        }
        if (read_call(f, &c)) return 3;
        mark(name);
        rc = run(&c, &st, 0);
        counts(&e, &r, &l);
        printf("R %s %d %d %d %d %ld\t%s\n", name, rc, e, r, l, allocs, rc ? st.message : "");
    }
    fclose(f);
    fp8gemm_bundle_free(bundle);
    return 0;
}
"""

A, SA, B, SB, OUT = 0x10000000, 0x20000000, 0x30000000, 0x40000000, 0x50000000
BIG = 2 * MAX_K_GROUPS + 5          # three launches: MAX_K_GROUPS, MAX_K_GROUPS, 5 groups
KG_PROBLEMS = [(4, 256, 384, 512), (BIG, 64, 128, 256), (2 * MAX_K_GROUPS, 64, 128, 256)]


def fake_encode(dtype, ptr, dims, strides, box, swizzle=0, l2_promotion=256):
    """The stand-in driver's "tensor map" (see STUB), from launcher.encode_tensor_map's arguments."""
    from fp8gemm import launcher
    w = [0] * 16
    w[0] = ptr
    w[1] = len(dims) | int(launcher.TMAP_DTYPE[dtype]) << 8 | int(launcher._SWIZZLE[swizzle]) << 16
    w[2:2 + len(dims)] = dims
    w[7:7 + len(strides)] = strides
    b5 = list(box) + [0] * (5 - len(box))
    w[11], w[12], w[13], w[14], w[15] = b5[0] | b5[1] << 32, b5[2] | b5[3] << 32, b5[4], 1, MARK
    return struct.pack("<16Q", *w)


def _kb(ks):
    return sum(-(-k // 128) for k in ks)


def _call(step, groups, m, n, ks, *, a=A, sa=SA, b=B, sb=SB, out=OUT, sfa=0, sfb=0, os=0, ogs=0, count=None):
    return dict(step=step, m=m, n=n, groups=groups, ks=list(ks), a=a, sa=sa, b=b, sb=sb, out=out, sfa=sfa, sfb=sfb,
                os=os, ogs=ogs, count=len(ks) if count is None else count)


def _line(c):
    return " ".join([c["step"]] + [str(c[x]) for x in ("m", "n", "groups")] + [f"{c['a']:x}", f"{c['sa']:x}", str(c["sfa"]),
                    f"{c['b']:x}", f"{c['sb']:x}", str(c["sfb"]), f"{c['out']:x}", str(c["os"]), str(c["ogs"]),
                    str(c["count"])] + [str(k) for k in c["ks"][:max(c["count"], 0)]])


def python_launches(man, calls):
    """What k_grouped_wgrad_gemm_fp8_fp8_fp32_nt launches for each call, with the bundle's kernels
    standing in for the heuristic's picks, the stand-in encoding, and no driver: per call, a list of
    (kernel, grid, [every parameter's bytes])."""
    from fp8gemm import arrays, launcher, runtime, wgrad
    from fp8gemm.arrays import DeviceArray
    from fp8gemm.plan import default_grid, kernel_spec
    picks = {}
    for prob in man["problems"]:
        if prob["op"] == "k_grouped_wgrad":
            for size, idx in prob["chunks"]:
                picks[(prob["m"], prob["n"], size)] = GemmConfig(**man["kernels"][idx]["config"])
    got: list = []

    class FakeLaunch:
        def __init__(self, fn, grid, block, smem, cluster=(1, 1, 1), name=""):
            self.cfg, self.grid = fn, tuple(grid)

        def set_grid(self, grid):
            self.grid = tuple(grid)

        def __call__(self, address, stream=0):
            kinds = [p.ptx_type(self.cfg.groups) for p in kernel_spec(self.cfg).params]
            ptrs = (ctypes.c_void_p * len(kinds)).from_address(address)
            got.append((self.cfg.name, self.grid[0],
                        [ctypes.string_at(ptrs[i], ctypes.sizeof(launcher._slot_type(k))) for i, k in enumerate(kinds)]))

    def pick(m, n, k, groups, **kw):
        cfg = picks[(m, n, groups)]
        return cfg, default_grid(cfg, m, n, groups, man["heuristic_num_sms"])

    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wgrad, "_plans", {})
        mp.setattr(wgrad, "select_config", pick)
        mp.setattr(runtime, "get_function", lambda key, make, device, smem, post_pass=None: (key[1], None))
        mp.setattr(launcher, "Launch", FakeLaunch)
        mp.setattr(launcher, "encode_tensor_map", fake_encode)
        mp.setattr(launcher, "context_for", lambda device: None)
        mp.setattr(arrays, "check_same_device", lambda views: 0)
        for c in calls:
            m, n, g, ks = c["m"], c["n"], c["groups"], c["ks"]
            kb = _kb(ks)
            os, sfa, sfb = c["os"] or n, c["sfa"] or m, c["sfb"] or n
            lhs = (DeviceArray(c["a"], (m * sum(ks),), "float8_e4m3fn"),
                   DeviceArray(c["sa"], (kb, m), "float32", strides=(sfa, 1)))
            rhs = (DeviceArray(c["b"], (n * sum(ks),), "float8_e4m3fn"),
                   DeviceArray(c["sb"], (kb, n), "float32", strides=(sfb, 1)))
            d = DeviceArray(c["out"], (g, m, n), "float32", strides=(c["ogs"] or m * os, os, 1))
            del got[:]
            fp8gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, d, ks)
            out[c["step"]] = list(got)
    return out


def _ks(rng, groups, zeros=()):
    """Groups' K: multiples of 16 with tails (not multiples of 128) and some empty groups."""
    return [0 if g in zeros else rng.choice([0, 16, 112, 128, 144, 256, 400, 1024]) for g in range(groups)]


def _kg_script():
    rng = random.Random(11)
    ks1, ks2 = [256, 0, 144, 400], [128, 16, 0, 1040]
    big = _ks(rng, BIG)
    big_gap = _ks(rng, BIG, zeros=range(MAX_K_GROUPS, 2 * MAX_K_GROUPS))    # a whole launch of empty groups
    two = _ks(rng, 2 * MAX_K_GROUPS)
    padded = dict(sfa=264, sfb=392, os=392, ogs=256 * 392 + 64)
    good = [
        _call("first", 4, 256, 384, ks1),
        _call("again", 4, 256, 384, ks1),
        _call("moved", 4, 256, 384, ks1, a=A + 0x100000, out=OUT + 0x200000),
        _call("new_ks", 4, 256, 384, ks2, a=A + 0x100000, out=OUT + 0x200000),
        _call("back", 4, 256, 384, ks1, a=A + 0x100000, out=OUT + 0x200000),
        _call("padded", 4, 256, 384, ks1, **padded),
        _call("zero", 4, 256, 384, [0, 0, 0, 0]),
        _call("zero_null", 4, 256, 384, [0, 0, 0, 0], a=0, sa=0, b=0, sb=0),
        _call("big", BIG, 64, 128, big),
        _call("big_again", BIG, 64, 128, big),
        _call("big_gap", BIG, 64, 128, big_gap),
        _call("two", 2 * MAX_K_GROUPS, 64, 128, two),
    ]
    bad = [   # (call, error code, what the message says)
        (_call("bad_m", 4, 100, 384, ks1), 1, "m = 100 must be a multiple of 8"),
        (_call("bad_n", 4, 256, 0, ks1), 1, "m, n and groups must be positive"),
        (_call("bad_groups", 0, 256, 384, []), 1, "m, n and groups must be positive"),
        (_call("null_ks", 4, 256, 384, ks1, count=-1), 1, "batch_sizes is NULL"),
        (_call("ks_16", 4, 256, 384, [256, 0, 250, 400]), 1, "batch_sizes[2] = 250 must be a multiple of 16"),
        (_call("ks_neg", 4, 256, 384, [256, -16, 144, 400]), 1, "batch_sizes[1] = -16 must be >= 0"),
        (_call("sfa", 4, 256, 384, ks1, sfa=200), 1, "sfa_stride = 200 is smaller than 256"),
        (_call("sfb", 4, 256, 384, ks1, sfb=386), 1, "sfb_stride = 386 elements is not a multiple of 16 bytes"),
        (_call("os", 4, 256, 384, ks1, os=380), 1, "out_stride = 380 is smaller than 384"),
        (_call("ogs", 4, 256, 384, ks1, os=392, ogs=256 * 384), 1, f"out_group_stride = {256 * 384} is smaller than"),
        (_call("null_a", 4, 256, 384, ks1, a=0), 1, "a is NULL"),
        (_call("sb_align", 4, 256, 384, ks1, sb=SB + 4), 1, "b_scales = 0x40000004 is not 16-byte aligned"),
        (_call("out_align", 4, 256, 384, ks1, out=OUT + 8), 1, "out = 0x50000008 is not 16-byte aligned"),
        (_call("null_out_zero_k", 4, 256, 384, [0] * 4, out=0), 1, "out is NULL"),
        (_call("no_kernel", 5, 256, 384, ks1 + [16]), 2, "no k_grouped_wgrad kernel for M=256 N=384 groups=5"),
        (_call("bad_last", BIG, 64, 128, big[:-1] + [8]), 1, f"batch_sizes[{BIG - 1}] = 8 must be a multiple of 16"),
    ]
    threads = [_call("t", 4, 256, 384, k) for k in (ks1, ks2, [16, 16, 16, 2048])]
    return good, bad, threads


@pytest.fixture(scope="module")
def kg(tmp_path_factory):
    if CC is None or INCLUDE is None:
        pytest.skip("needs a C compiler and a cuda.h")
    d = tmp_path_factory.mktemp("rt-stub-kg")
    man = fp8gemm.export(d / "bundle", k_grouped=KG_PROBLEMS)
    sizes = {"tmap": 128, "u64": 8, "u32": 4}
    (d / "layout.txt").write_text("".join(
        e["name"] + "".join(f" {sizes[p['type']] * (e['config']['groups'] if p['per_group'] else 1)}"
                            for p in e["spec"]["params"]) + "\n" for e in man["kernels"]))
    (d / "stub.c").write_text(STUB)
    (d / "stub").mkdir()
    r = subprocess.run([CC, "-std=gnu99", "-shared", "-fPIC", f"-I{INCLUDE}", str(d / "stub.c"),
                        "-o", str(d / "stub" / "libcuda.so.1"), "-lpthread"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (d / "probe.c").write_text(PROBE_KG)
    wrap = "-Wl," + ",".join(f"--wrap={f}" for f in ("malloc", "calloc", "realloc", "posix_memalign"))
    r = subprocess.run([CC, "-std=c99", "-Wall", "-Wextra", "-Werror", f"-I{INCLUDE}", f"-I{d / 'bundle' / 'runtime'}",
                        str(d / "probe.c"), str(d / "bundle" / "runtime" / "fp8gemm_rt.c"), wrap, "-ldl", "-lpthread",
                        "-o", str(d / "probe")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    good, bad, threads = _kg_script()
    (d / "script.txt").write_text("\n".join([_line(c) for c in good] + [_line(c) for c, _, _ in bad] +
                                            ["threads " + " ".join(_line(c).split(" ", 1)[1] for c in threads)]) + "\n")

    def run(bundle, script):
        env = {"LD_LIBRARY_PATH": str(d / "stub"), "STUB_LAYOUT": str(d / "layout.txt"), "STUB_LOG": str(d / "log.txt")}
        (d / "log.txt").write_text("")
        out = subprocess.run([str(d / "probe"), str(bundle), str(script)], capture_output=True, text=True, timeout=300,
                             env=env)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout, (d / "log.txt").read_text()

    stdout, log = run(d / "bundle", d / "script.txt")
    steps = {}
    for ln in stdout.splitlines():
        head, _, msg = ln.partition("\t")
        f = head.split()
        if f[0] == "R":
            steps[f[1]] = dict(rc=int(f[2]), enc=int(f[3]), rep=int(f[4]), launches=int(f[5]), allocs=int(f[6]), msg=msg)
        elif f[0] == "T":
            steps["threads"] = dict(bad=int(f[2]), allocs=int(f[3]))
    launched, step = {}, None
    for ln in log.splitlines():
        f = ln.split()
        if f[0] == "S":
            step = f[1]
            launched[step] = []
        else:
            launched[step].append((f[1], int(f[2]), [bytes.fromhex(x) for x in f[7:]]))
    return dict(man=man, steps=steps, launched=launched, good=good, bad=bad, run=run, dir=d,
                python=python_launches(man, good))


def _delta(kg, step):
    names = list(kg["steps"])
    prev = kg["steps"][names[names.index(step) - 1]] if names.index(step) else dict(enc=0, rep=0, launches=0, allocs=None)
    cur = kg["steps"][step]
    return {x: cur[x] - prev[x] if prev[x] is not None else cur[x] for x in ("enc", "rep", "launches", "allocs")}


def _maps(kg, groups, arrays_=None):
    """Tensor maps a launch of the `groups`-group kernel of the 4-group problem encodes (each per-group
    map once per group), or only those of `arrays_`."""
    e = next(e for e in kg["man"]["kernels"] if e["config"]["groups"] == groups)
    return sum(groups if t["per_group"] else 1 for t in e["spec"]["tensor_maps"]
               if arrays_ is None or t["array"] in arrays_)


def test_k_grouped_launches_equal_the_python_apis(kg):
    """Every launch of every successful call: the same kernels, grids and parameter bytes as the
    Python API's for the same arguments (its group values, offsets, empty groups' maps at
    k_g = 16, strides, chunking into launches of MAX_K_GROUPS groups and skipping empty launches)."""
    for c in kg["good"]:
        step = c["step"]
        assert kg["steps"][step]["rc"] == 0, (step, kg["steps"][step]["msg"])
        want, got = kg["python"][step], kg["launched"].get(step, [])
        assert [(k, g) for k, g, _ in got] == [(k, g) for k, g, _ in want], step
        for i, ((name, _, cp), (_, _, pp)) in enumerate(zip(got, want)):
            spec = next(e["spec"] for e in kg["man"]["kernels"] if e["name"] == name)
            for p, x, y in zip(spec["params"], cp, pp):
                assert x == y, (step, i, p["name"])
            assert len(cp) == len(pp) == len(spec["params"])


def test_k_grouped_per_group_maps_are_at_each_groups_data(kg):
    """The per-group maps of the first call, read from what the runtime passed: group g's A map at
    a + M * (K of the groups before it), K dims k_g (16 for an empty group), the rows' stride k_g."""
    from fp8gemm.wgrad import group_values
    (name, _, params), = kg["launched"]["first"]
    spec = next(e["spec"] for e in kg["man"]["kernels"] if e["name"] == name)
    c = kg["good"][0]
    base = {"a": c["a"], "b": c["b"]}
    rows = {"a": c["m"], "b": c["n"]}
    for t in (t for t in spec["tensor_maps"] if t["per_group"]):
        raw = params[[p["name"] for p in spec["params"]].index(t["param"])]
        for g, gv in enumerate(group_values(c["ks"])):
            w = struct.unpack_from("<16Q", raw, 128 * g)
            k = max(gv["k_g"], 16)
            assert (w[0], w[1] & 0xFF, w[2], w[3], w[7]) == (base[t["array"]] + rows[t["array"]] * gv["k_start_g"], 2,
                                                             k, rows[t["array"]], k), (t["param"], g)


def test_k_grouped_cache(kg):
    """First call: every map encoded (each group's two); a repeat: nothing encoded or allocated;
    moved a and out: one replacement per map of theirs (per group for a); new batch_sizes: all
    encoded afresh; the old batch_sizes again: a hit."""
    everything = _maps(kg, 4)
    assert _delta(kg, "first")["enc"] == everything and _delta(kg, "first")["launches"] == 1
    assert _delta(kg, "again") == dict(enc=0, rep=0, launches=1, allocs=0)
    assert _delta(kg, "moved") == dict(enc=0, rep=_maps(kg, 4, ("a", "out", "c")), launches=1, allocs=0)
    d = _delta(kg, "new_ks")
    assert (d["enc"], d["rep"], d["launches"]) == (everything, 0, 1)
    assert _delta(kg, "back") == dict(enc=0, rep=0, launches=1, allocs=0)
    assert _delta(kg, "big_again") == dict(enc=0, rep=0, launches=len(kg["python"]["big"]), allocs=0)


def test_k_grouped_chunks_and_empty_launches(kg):
    """More than MAX_K_GROUPS groups: launches of MAX_K_GROUPS groups and the remainder, each with its
    kernel (none for a launch whose groups are all empty); every K 0: no launch, NULL operands fine."""
    groups = {e["name"]: e["config"]["groups"] for e in kg["man"]["kernels"]}
    assert [groups[k] for k, _, _ in kg["launched"]["big"]] == [MAX_K_GROUPS, MAX_K_GROUPS, BIG - 2 * MAX_K_GROUPS]
    assert [groups[k] for k, _, _ in kg["launched"]["big_gap"]] == [MAX_K_GROUPS, BIG - 2 * MAX_K_GROUPS]
    assert [groups[k] for k, _, _ in kg["launched"]["two"]] == [MAX_K_GROUPS, MAX_K_GROUPS]
    for step in ("zero", "zero_null"):
        assert kg["steps"][step]["rc"] == 0 and _delta(kg, step)["launches"] == 0 and kg["launched"][step] == []


def test_k_grouped_bad_arguments_are_refused_by_name_before_any_launch(kg):
    before = kg["steps"][kg["good"][-1]["step"]]["launches"]
    for c, code, what in kg["bad"]:
        got = kg["steps"][c["step"]]
        assert (got["rc"], what in got["msg"]) == (code, True), (c["step"], got["msg"])
        assert got["msg"].startswith(("fp8gemm_k_grouped_wgrad: ", "the bundle has no")), got["msg"]
        assert got["launches"] == before, c["step"]
    assert "--k-grouped 5x256x384:EXPECTED_K" in kg["steps"]["no_kernel"]["msg"]


def test_k_grouped_threads_each_launch_with_their_own_maps(kg):
    """8 threads x 200 calls cycling through 3 batch_sizes, each thread with its own arrays: every
    launch's parameters equal that call's alone; after warm-up the scratch blocks come from the pool."""
    assert kg["steps"]["threads"]["bad"] == 0
    assert kg["steps"]["threads"]["allocs"] <= 8


def test_readers_skip_ops_they_do_not_know(kg, tmp_path):
    """A bundle whose k-grouped problem carries an op this runtime does not know still loads (as one
    that predates the op loads today's: the problem has the n, k and kernel every problem has); the
    call then finds no kernel. A malformed k_grouped_wgrad problem is refused at load."""
    import shutil
    d = kg["dir"]
    folder = tmp_path / "b"
    shutil.copytree(d / "bundle", folder)
    man = json.loads((folder / "manifest.json").read_text())
    for p in man["problems"]:
        assert {"n", "k", "kernel"} <= set(p) and 0 <= p["kernel"] < len(man["kernels"])
        p["op"] = "k_grouped_wgrad_v2"
    (folder / "manifest.json").write_text(json.dumps(man))
    (tmp_path / "s.txt").write_text(_line(kg["good"][0]) + "\n")
    stdout, _ = kg["run"](folder, tmp_path / "s.txt")
    assert "\tthe bundle has no k_grouped_wgrad kernel for M=256 N=384 groups=4" in stdout and " 2 0 0 0 " in stdout
    man["problems"][0]["op"] = "k_grouped_wgrad"
    man["problems"][0]["chunks"] = [[3, man["problems"][0]["kernel"]]]      # a 4-group kernel named for 3
    (folder / "manifest.json").write_text(json.dumps(man))
    stdout, _ = kg["run"](folder, tmp_path / "s.txt")
    assert stdout.startswith("LOAD 3 ") and "chunk 0 names no k-grouped kernel of its group count" in stdout
