/* fp8gemm C runtime: launch the kernels of an exported bundle on device pointers, no Python.
 *
 * Build: cc -std=c99 -O2 -I<dir of cuda.h> -c fp8gemm_rt.c   (link with -ldl -lpthread; libcuda is
 * opened at run time with dlopen, so nothing links against it). Export a bundle with
 *     python -m fp8gemm export BUNDLE --gemm 7168x2048:4096 --masked 8x4096x7168:256
 * (add --variants bf16,fp32,fp32_c,bf16_c,wgrad for fp8gemm_gemm_variant's training GEMMs and
 * --k-grouped GxMxN:EXPECTED_K for fp8gemm_k_grouped_wgrad)
 * then fp8gemm_bundle_load(BUNDLE, ...) in a thread whose current CUDA context is the one the
 * kernels should run in (the device's primary context, as torch/JAX/CuPy use).
 *
 * Layouts are those of the Python API: A [M, K] e4m3 rows (stride a_stride elements), A scales
 * float32 MN-major (element (m, kb) at a_scales[kb * sfa_stride + m], sfa_stride >= M, % 4 == 0),
 * B [N, K] e4m3 rows, B scales float32 row-major [ceil(N/128), ceil(K/128)], D [M, N] bf16 rows.
 * A stride of 0 means the default (the row width; sfa_stride: M rounded up to 4).
 * Every call returns FP8GEMM_OK or an error code; when `status` is not NULL it also holds a
 * message naming the argument or the driver call. Calls allocate nothing (but see
 * fp8gemm_k_grouped_wgrad), never synchronise, and may be made from several threads at once on
 * one bundle. Each kernel keeps the tensor maps of its last 8 problem shapes (strides included):
 * a call with a known shape copies them and replaces only the addresses that changed
 * (cuTensorMapReplaceAddress) instead of encoding.
 */
#ifndef FP8GEMM_RT_H
#define FP8GEMM_RT_H

#include <stddef.h>
#include <stdint.h>
#include <cuda.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    FP8GEMM_OK = 0,
    FP8GEMM_ERROR_ARGUMENT = 1,     /* a bad argument: the message names it */
    FP8GEMM_ERROR_NO_KERNEL = 2,    /* the bundle has no kernel for this problem */
    FP8GEMM_ERROR_BUNDLE = 3,       /* the bundle folder or its manifest is unusable */
    FP8GEMM_ERROR_CUDA = 4          /* a driver call failed: the message names it */
};

typedef struct {
    int code;
    char message[512];
} fp8gemm_status;

typedef struct fp8gemm_bundle fp8gemm_bundle;

int fp8gemm_bundle_load(const char *folder, fp8gemm_bundle **out, fp8gemm_status *status);
void fp8gemm_bundle_free(fp8gemm_bundle *bundle);
/* kernels and problems in the bundle (for logging) */
int fp8gemm_bundle_kernels(const fp8gemm_bundle *bundle);
int fp8gemm_bundle_problems(const fp8gemm_bundle *bundle);

/* D[M, N] = A[M, K] . B[N, K]^T with 1x128 / 128x128 scaling. */
int fp8gemm_gemm(const fp8gemm_bundle *bundle, int64_t m, int64_t n, int64_t k,
                 CUdeviceptr a, int64_t a_stride, CUdeviceptr a_scales, int64_t sfa_stride,
                 CUdeviceptr b, int64_t b_stride, CUdeviceptr b_scales,
                 CUdeviceptr out, int64_t out_stride, CUstream stream, fp8gemm_status *status);

/* The dense training variants (export with --variants): `variant` is "fp32" (D fp32 =
 * gemm_fp8_fp8_fp32_nt), "fp32_c" / "bf16_c" (D = C + A.B^T with C of D's type, the c= forms),
 * "wgrad" (wgrad_gemm_fp8_fp8_fp32_nt: D fp32 += A.B^T, B scales 1x128 per row of B) or "bf16"
 * (fp8gemm_gemm). Layouts as above, except: D (and C) rows out_stride (c_stride) elements of D's
 * type apart; for wgrad, B scales float32 MN-major like A's (element (n, kb) at
 * b_scales[kb * sfb_stride + n], sfb_stride >= N, % 4 == 0, 0 = N rounded up to 4; 16-byte aligned),
 * for the others sfb_stride must be 0. `c`: 0 for the variants without C; for fp32_c / bf16_c a
 * separate buffer (not overlapping D) or 0 / `out` to accumulate into D (c_stride then 0 or
 * out_stride); for wgrad 0 or `out` (the kernel reads D as C). The kernel is picked by M as for
 * fp8gemm_gemm. The k-grouped wgrad GEMM is fp8gemm_k_grouped_wgrad. */
int fp8gemm_gemm_variant(const fp8gemm_bundle *bundle, const char *variant, int64_t m, int64_t n, int64_t k,
                         CUdeviceptr a, int64_t a_stride, CUdeviceptr a_scales, int64_t sfa_stride,
                         CUdeviceptr b, int64_t b_stride, CUdeviceptr b_scales, int64_t sfb_stride,
                         CUdeviceptr out, int64_t out_stride, CUdeviceptr c, int64_t c_stride, CUstream stream,
                         fp8gemm_status *status);

/* Grouped along M, rows of all groups concatenated: A [M_sum, K], D [M_sum, N], B [G, N, K]
 * (groups b_group_stride elements apart, 0 = N * b_stride), B scales [G, ceil(N/128), ceil(K/128)].
 * `layout` is m_indices (int32 [M_sum], each row's group or -1) or, with group_ends != 0,
 * int32 [G] group ends (the psum form). */
int fp8gemm_m_grouped_contiguous(const fp8gemm_bundle *bundle, int64_t m_sum, int64_t n, int64_t k,
                                 int64_t groups, CUdeviceptr a, int64_t a_stride, CUdeviceptr a_scales,
                                 int64_t sfa_stride, CUdeviceptr b, int64_t b_stride, int64_t b_group_stride,
                                 CUdeviceptr b_scales, CUdeviceptr out, int64_t out_stride,
                                 CUdeviceptr layout, int group_ends, CUstream stream, fp8gemm_status *status);

/* Masked: A [G, M_max, K], A scales [G, M_max, ceil(K/128)] MN-major per group (group stride
 * sfa_group_stride, 0 = ceil(K/128) * sfa_stride), D [G, M_max, N]; masked_m int32 [G] on the
 * device. Group strides of 0 take the packed defaults. */
int fp8gemm_m_grouped_masked(const fp8gemm_bundle *bundle, int64_t m_max, int64_t n, int64_t k, int64_t groups,
                             CUdeviceptr a, int64_t a_stride, int64_t a_group_stride,
                             CUdeviceptr a_scales, int64_t sfa_stride, int64_t sfa_group_stride,
                             CUdeviceptr b, int64_t b_stride, int64_t b_group_stride, CUdeviceptr b_scales,
                             CUdeviceptr out, int64_t out_stride, int64_t out_group_stride,
                             CUdeviceptr masked_m, CUstream stream, fp8gemm_status *status);

/* The k-grouped weight gradient (k_grouped_wgrad_gemm_fp8_fp8_fp32_nt): out[g] (fp32 [M, N]) +=
 * A_g . B_g^T for each of `groups` groups, group g with its own K = batch_sizes[g] (a host array
 * of `groups` entries, each >= 0 and a multiple of 16, their sum below 2^32; a group with K = 0
 * leaves its slice of out as it was; when every K is 0 nothing is launched). A_g e4m3 [M, k_g]
 * and B_g e4m3 [N, k_g] row-major, each group's matrix right after the previous one's in `a` /
 * `b`; the 1x128 scales of all groups stacked MN-major: element (m, kb) of group g at
 * a_scales[(kb_start_g + kb) * sfa_stride + m], with kb_start_g = sum over earlier groups of
 * ceil(k/128) (sfa_stride >= M, 0 = M; b_scales likewise with sfb_stride >= N, 0 = N); out
 * [G, M, N] fp32, rows out_stride elements apart (0 = N), groups out_group_stride (0 =
 * M * out_stride); every stride % 4 == 0, every pointer 16-byte aligned (a, b and the scales may
 * be 0 when every K is 0). M and N multiples of 8. Export with --k-grouped GxMxN:EXPECTED_K (the
 * problem is looked up by M, N and groups). More groups than one kernel takes (the manifest's
 * max_groups, 120) run as several launches, as in Python: each of max_groups groups, the
 * remainder last, all arguments checked before the first. Every launch's kernel takes two
 * tensor maps per group: the cache keys them by the groups' K too (a repeated batch_sizes copies
 * them, replacing the addresses of arrays that moved; a new one encodes all). They are kept in
 * host memory allocated when a cache slot is first filled, and a call copies them into a scratch
 * block from a pool of 8 per kernel (allocated on first use; a call beyond 8 at once on one
 * kernel allocates and frees its own); all is freed with the bundle. */
int fp8gemm_k_grouped_wgrad(const fp8gemm_bundle *bundle, int64_t m, int64_t n, int64_t groups,
                            const int64_t *batch_sizes, CUdeviceptr a, CUdeviceptr a_scales, int64_t sfa_stride,
                            CUdeviceptr b, CUdeviceptr b_scales, int64_t sfb_stride, CUdeviceptr out,
                            int64_t out_stride, int64_t out_group_stride, CUstream stream, fp8gemm_status *status);

/* Casts to e4m3 (x bf16, or float32 with src_f32 = 1; k a multiple of 16; rows x_stride elements
 * apart, q rows q_stride bytes apart). Per-token: x [M, K] in 1x128 groups, scales MN-major
 * (element (m, g) at scales[g * s_stride + m]; s_stride 0 = M rounded up to 4). Per-block: x [N, K]
 * in 128x128 blocks, scales row-major [ceil(N/128), ceil(K/128)] with row stride s_stride
 * (0 = ceil(K/128)). Export with --casts bfloat16 / --casts float32. */
int fp8gemm_per_token_cast(const fp8gemm_bundle *bundle, int64_t m, int64_t k, int src_f32, CUdeviceptr x,
                           int64_t x_stride, CUdeviceptr q, int64_t q_stride, CUdeviceptr scales, int64_t s_stride,
                           CUstream stream, fp8gemm_status *status);
int fp8gemm_per_block_cast(const fp8gemm_bundle *bundle, int64_t n, int64_t k, int src_f32, CUdeviceptr x,
                           int64_t x_stride, CUdeviceptr q, int64_t q_stride, CUdeviceptr scales, int64_t s_stride,
                           CUstream stream, fp8gemm_status *status);

/* Evaluate a manifest size expression (tests and tools): FP8GEMM_OK and *out, or an error. */
int fp8gemm_eval_expression(const char *expr, const char *const *names, const int64_t *values, int count,
                            int64_t *out, fp8gemm_status *status);

#ifdef __cplusplus
}
#endif
#endif /* FP8GEMM_RT_H */
