/* fp8gemm from C, no Python at run time: load an exported bundle, run the dense, contiguous
 * and masked GEMMs on random data quantized here on the host, and check every output element
 * against a float64 host reference; run the per-token cast on the GPU and check it bit for bit
 * against the host quantization. Exits non-zero on any mismatch.
 *
 *     make bundle      # python -m fp8gemm export bundle --gemm 512x640:256 --contiguous 3x256x512:128 ...
 *     make run         # builds ./example and runs it on device 0
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda.h>

#include "fp8gemm_rt.h"

/* the problems the bundle was exported for (see the Makefile's `bundle` target) */
#define DN 512
#define DK 640
#define DM 200
#define CG 3
#define CN 256
#define CK 512
#define MG 4
#define MN 256
#define MK 512
#define M_MAX 100

static int failures = 0;

#define CU(call)                                                                            \
    do {                                                                                    \
        CUresult r_ = (call);                                                               \
        if (r_ != CUDA_SUCCESS) {                                                           \
            const char *s_ = NULL;                                                          \
            cuGetErrorString(r_, &s_);                                                      \
            fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call, s_ ? s_ : "?"); \
            exit(2);                                                                        \
        }                                                                                   \
    } while (0)

/* ---- host quantization (the library's rule: scale = max(amax, 1e-4) / 448) ----------------- */
static uint8_t to_e4m3(float x) {   /* round to nearest even, saturate to +-448 */
    uint8_t sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x), mant;
    int e, m;
    if (isnan(x))
        return 0x7F;
    if (a >= 448.0f)
        return sign | 0x7E;
    if (a < 0.015625f) {            /* subnormal: multiples of 2^-9 */
        m = (int)nearbyintf(a * 512.0f);
        return sign | (uint8_t)(m >= 8 ? 0x08 : m);
    }
    frexpf(a, &e);
    e -= 1;                          /* a = (1 + m/8) 2^e */
    mant = a / ldexpf(1.0f, e) - 1.0f;
    m = (int)nearbyintf(mant * 8.0f);
    if (m == 8) {
        m = 0;
        e++;
    }
    if (e + 7 > 15 || (e + 7 == 15 && m > 6))
        return sign | 0x7E;
    return sign | (uint8_t)((e + 7) << 3) | (uint8_t)m;
}

static double from_e4m3(uint8_t b) {
    int e = (b >> 3) & 0xF, m = b & 7;
    double v = e ? ldexp(1.0 + m / 8.0, e - 7) : ldexp(m / 8.0, -6);
    return (b & 0x80) ? -v : v;
}

static double from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static float rnd(void) { /* roughly normal */
    return ((float)rand() / RAND_MAX + (float)rand() / RAND_MAX + (float)rand() / RAND_MAX - 1.5f) * 2.0f;
}

/* A rows [rows, k] per 1x128 group: q row-major, scales MN-major with column stride `sstride` */
static void quant_rows(const float *x, int rows, int k, uint8_t *q, float *s, int sstride) {
    int r, c, g;
    for (r = 0; r < rows; r++)
        for (g = 0; g * 128 < k; g++) {
            float amax = 1e-4f, inv;
            for (c = g * 128; c < k && c < g * 128 + 128; c++)
                amax = fmaxf(amax, fabsf(x[(size_t)r * k + c]));
            inv = 448.0f / amax;
            s[(size_t)g * sstride + r] = amax / 448.0f;
            for (c = g * 128; c < k && c < g * 128 + 128; c++)
                q[(size_t)r * k + c] = to_e4m3(x[(size_t)r * k + c] * inv);
        }
}

/* B [n, k] per 128x128 block: scales row-major [ceil(n/128), ceil(k/128)] */
static void quant_blocks(const float *x, int n, int k, uint8_t *q, float *s) {
    int kb = (k + 127) / 128, bn, bk, r, c;
    for (bn = 0; bn * 128 < n; bn++)
        for (bk = 0; bk < kb; bk++) {
            float amax = 1e-4f, inv;
            for (r = bn * 128; r < n && r < bn * 128 + 128; r++)
                for (c = bk * 128; c < k && c < bk * 128 + 128; c++)
                    amax = fmaxf(amax, fabsf(x[(size_t)r * k + c]));
            inv = 448.0f / amax;
            s[bn * kb + bk] = amax / 448.0f;
            for (r = bn * 128; r < n && r < bn * 128 + 128; r++)
                for (c = bk * 128; c < k && c < bk * 128 + 128; c++)
                    q[(size_t)r * k + c] = to_e4m3(x[(size_t)r * k + c] * inv);
        }
}

/* out rows [rows, n] (bf16) against the float64 product of the dequantized inputs:
 * |out - ref| <= 2^-8 |ref| + 2^-7 sum |a||b| (bf16 rounding + FP8 tensor-core accumulation) */
static void check(const char *what, const uint16_t *out, int rows, int n, int k, const uint8_t *aq, const float *sa,
                  int sstride, const uint8_t *bq, const float *sb) {
    int kb = (k + 127) / 128, r, c, i, bad = 0;
    for (r = 0; r < rows; r++)
        for (c = 0; c < n; c++) {
            double ref = 0, mag = 0, got = from_bf16(out[(size_t)r * n + c]);
            for (i = 0; i < k; i++) {
                double a = from_e4m3(aq[(size_t)r * k + i]) * sa[(size_t)(i / 128) * sstride + r];
                double b = from_e4m3(bq[(size_t)c * k + i]) * sb[(c / 128) * kb + i / 128];
                ref += a * b;
                mag += fabs(a * b);
            }
            if (!(fabs(got - ref) <= ldexp(fabs(ref), -8) + ldexp(mag, -7))) {
                if (bad++ < 3)
                    fprintf(stderr, "%s: (%d, %d) = %g, reference %g\n", what, r, c, got, ref);
            }
        }
    printf("%-12s %d x %d: %s\n", what, rows, n, bad ? "MISMATCH" : "ok");
    failures += bad != 0;
}

/* a device copy of host[0, bytes); with host == NULL an output buffer, poisoned with 0xff bytes
 * (NaN in bf16, fp32 and e4m3) so that an element the kernel never wrote cannot pass the check */
static CUdeviceptr upload(const void *host, size_t bytes) {
    CUdeviceptr d;
    CU(cuMemAlloc(&d, bytes ? bytes : 1));
    if (bytes && host)
        CU(cuMemcpyHtoD(d, host, bytes));
    else if (bytes)
        CU(cuMemsetD8(d, 0xff, bytes));
    return d;
}

static void die_status(const char *what, int rc, const fp8gemm_status *st) {
    fprintf(stderr, "%s: error %d: %s\n", what, rc, st->message);
    exit(3);
}

int main(int argc, char **argv) {
    CUdevice dev;
    CUcontext ctx;
    fp8gemm_bundle *b = NULL;
    fp8gemm_status st;
    int rc, i;
    if (argc < 2) {
        fprintf(stderr, "usage: %s BUNDLE_DIR\n", argv[0]);
        return 2;
    }
    srand(1);
    CU(cuInit(0));
    CU(cuDeviceGet(&dev, 0));
    CU(cuDevicePrimaryCtxRetain(&ctx, dev));
    CU(cuCtxSetCurrent(ctx));
    if ((rc = fp8gemm_bundle_load(argv[1], &b, &st)) != FP8GEMM_OK)
        die_status("fp8gemm_bundle_load", rc, &st);
    printf("bundle %s: %d kernels, %d problems\n", argv[1], fp8gemm_bundle_kernels(b), fp8gemm_bundle_problems(b));

    { /* dense */
        int sstride = (DM + 3) / 4 * 4, kb = (DK + 127) / 128;
        float *a = malloc(sizeof(float) * DM * DK), *bm = malloc(sizeof(float) * DN * DK);
        uint8_t *aq = malloc(DM * DK), *bq = malloc(DN * DK);
        float *sa = calloc((size_t)kb * sstride, sizeof(float)), *sb = malloc(sizeof(float) * ((DN + 127) / 128) * kb);
        uint16_t *out = malloc(2 * DM * DN);
        CUdeviceptr da, dsa, db, dsb, dout;
        for (i = 0; i < DM * DK; i++) a[i] = rnd();
        for (i = 0; i < DN * DK; i++) bm[i] = rnd();
        quant_rows(a, DM, DK, aq, sa, sstride);
        quant_blocks(bm, DN, DK, bq, sb);
        da = upload(aq, DM * DK), dsa = upload(sa, sizeof(float) * kb * sstride), db = upload(bq, DN * DK);
        dsb = upload(sb, sizeof(float) * ((DN + 127) / 128) * kb), dout = upload(NULL, 2 * DM * DN);
        rc = fp8gemm_gemm(b, DM, DN, DK, da, 0, dsa, sstride, db, 0, dsb, dout, 0, NULL, &st);
        if (rc)
            die_status("fp8gemm_gemm", rc, &st);
        CU(cuCtxSynchronize());
        CU(cuMemcpyDtoH(out, dout, 2 * DM * DN));
        check("dense", out, DM, DN, DK, aq, sa, sstride, bq, sb);
        { /* the per-token cast of the same A (float32 source) on the GPU: bit-identical to the host's */
            CUdeviceptr dx = upload(a, sizeof(float) * DM * DK), dq = upload(NULL, DM * DK);
            CUdeviceptr ds = upload(NULL, sizeof(float) * kb * sstride);
            uint8_t *q2 = malloc(DM * DK);
            float *s2 = malloc(sizeof(float) * kb * sstride);
            int r, g, bad = 0;
            rc = fp8gemm_per_token_cast(b, DM, DK, 1, dx, 0, dq, 0, ds, sstride, NULL, &st);
            if (rc)
                die_status("fp8gemm_per_token_cast", rc, &st);
            CU(cuCtxSynchronize());
            CU(cuMemcpyDtoH(q2, dq, DM * DK));
            CU(cuMemcpyDtoH(s2, ds, sizeof(float) * kb * sstride));
            bad = memcmp(q2, aq, DM * DK) != 0;
            for (r = 0; r < DM; r++)
                for (g = 0; g < kb; g++)
                    bad |= memcmp(&s2[g * sstride + r], &sa[g * sstride + r], sizeof(float)) != 0;
            printf("%-12s %d x %d: %s\n", "cast", DM, DK, bad ? "MISMATCH" : "ok");
            failures += bad;
        }
    }
    { /* contiguous: groups of 130, 0 and 90 rows, each padded to 128 (m_indices -1) */
        static const int sizes[CG] = {130, 0, 90};
        int starts[CG], msum = 0, g, kb = (CK + 127) / 128, nb = (CN + 127) / 128, sstride;
        int32_t *idx;
        float *a, *bm, *sa, *sb;
        uint8_t *aq, *bq;
        uint16_t *out;
        for (g = 0; g < CG; g++) {
            starts[g] = msum;
            msum += (sizes[g] + 127) / 128 * 128;
        }
        sstride = (msum + 3) / 4 * 4;
        idx = malloc(sizeof(int32_t) * msum);
        a = malloc(sizeof(float) * msum * CK), bm = malloc(sizeof(float) * CG * CN * CK);
        aq = malloc((size_t)msum * CK), bq = malloc((size_t)CG * CN * CK);
        sa = calloc((size_t)kb * sstride, sizeof(float)), sb = malloc(sizeof(float) * CG * nb * kb);
        out = malloc((size_t)2 * msum * CN);
        for (i = 0; i < msum; i++) idx[i] = -1;
        for (g = 0; g < CG; g++)
            for (i = 0; i < sizes[g]; i++) idx[starts[g] + i] = g;
        for (i = 0; i < msum * CK; i++) a[i] = rnd();
        for (i = 0; i < CG * CN * CK; i++) bm[i] = rnd();
        quant_rows(a, msum, CK, aq, sa, sstride);
        for (g = 0; g < CG; g++)
            quant_blocks(bm + (size_t)g * CN * CK, CN, CK, bq + (size_t)g * CN * CK, sb + (size_t)g * nb * kb);
        {
            CUdeviceptr da = upload(aq, (size_t)msum * CK), dsa = upload(sa, sizeof(float) * kb * sstride);
            CUdeviceptr db = upload(bq, (size_t)CG * CN * CK), dsb = upload(sb, sizeof(float) * CG * nb * kb);
            CUdeviceptr dout = upload(NULL, (size_t)2 * msum * CN), didx = upload(idx, sizeof(int32_t) * msum);
            rc = fp8gemm_m_grouped_contiguous(b, msum, CN, CK, CG, da, 0, dsa, sstride, db, 0, 0, dsb, dout, 0, didx, 0,
                                              NULL, &st);
            if (rc)
                die_status("fp8gemm_m_grouped_contiguous", rc, &st);
            CU(cuCtxSynchronize());
            CU(cuMemcpyDtoH(out, dout, (size_t)2 * msum * CN));
        }
        for (g = 0; g < CG; g++)
            if (sizes[g]) {   /* each group's rows; scales indexed from its first row */
                char what[32];
                snprintf(what, sizeof what, "contiguous %d", g);
                check(what, out + (size_t)starts[g] * CN, sizes[g], CN, CK, aq + (size_t)starts[g] * CK,
                      sa + starts[g], sstride, bq + (size_t)g * CN * CK, sb + (size_t)g * nb * kb);
            }
    }
    { /* masked: 4 groups of M_max rows, masked_m = 0, 1, M_max, 37 */
        static const int32_t mm[MG] = {0, 1, M_MAX, 37};
        int g, kb = (MK + 127) / 128, nb = (MN + 127) / 128, sstride = (M_MAX + 3) / 4 * 4;
        float *a = malloc(sizeof(float) * MG * M_MAX * MK), *bm = malloc(sizeof(float) * MG * MN * MK);
        uint8_t *aq = malloc((size_t)MG * M_MAX * MK), *bq = malloc((size_t)MG * MN * MK);
        float *sa = calloc((size_t)MG * kb * sstride, sizeof(float)), *sb = malloc(sizeof(float) * MG * nb * kb);
        uint16_t *out = malloc((size_t)2 * MG * M_MAX * MN);
        for (i = 0; i < MG * M_MAX * MK; i++) a[i] = rnd();
        for (i = 0; i < MG * MN * MK; i++) bm[i] = rnd();
        for (g = 0; g < MG; g++) {
            quant_rows(a + (size_t)g * M_MAX * MK, M_MAX, MK, aq + (size_t)g * M_MAX * MK,
                       sa + (size_t)g * kb * sstride, sstride);
            quant_blocks(bm + (size_t)g * MN * MK, MN, MK, bq + (size_t)g * MN * MK, sb + (size_t)g * nb * kb);
        }
        {
            CUdeviceptr da = upload(aq, (size_t)MG * M_MAX * MK);
            CUdeviceptr dsa = upload(sa, sizeof(float) * MG * kb * sstride);
            CUdeviceptr db = upload(bq, (size_t)MG * MN * MK), dsb = upload(sb, sizeof(float) * MG * nb * kb);
            CUdeviceptr dout = upload(NULL, (size_t)2 * MG * M_MAX * MN), dmm = upload(mm, sizeof mm);
            rc = fp8gemm_m_grouped_masked(b, M_MAX, MN, MK, MG, da, 0, 0, dsa, sstride, 0, db, 0, 0, dsb, dout, 0, 0,
                                          dmm, NULL, &st);
            if (rc)
                die_status("fp8gemm_m_grouped_masked", rc, &st);
            CU(cuCtxSynchronize());
            CU(cuMemcpyDtoH(out, dout, (size_t)2 * MG * M_MAX * MN));
        }
        for (g = 0; g < MG; g++)
            if (mm[g]) {
                char what[32];
                snprintf(what, sizeof what, "masked %d", g);
                check(what, out + (size_t)g * M_MAX * MN, mm[g], MN, MK, aq + (size_t)g * M_MAX * MK,
                      sa + (size_t)g * kb * sstride, sstride, bq + (size_t)g * MN * MK, sb + (size_t)g * nb * kb);
            }
    }
    fp8gemm_bundle_free(b);
    printf("%s\n", failures ? "FAILED" : "all ok");
    return failures ? 1 : 0;
}
