/* fp8gemm C runtime: see fp8gemm_rt.h. C99; libcuda is opened with dlopen at load time.
 *
 * The manifest is the kernels' own spec as data: for each kernel, its parameters in order
 * (a tensor map, an array's address, or a size expression) and its tensor maps (dims, strides,
 * box as expressions over named problem values). This file only evaluates what the manifest
 * says; it restates nothing about the kernels.
 */
#define _POSIX_C_SOURCE 200809L
#include "fp8gemm_rt.h"

#include <ctype.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PARAMS 24
#define MAX_RANK 5

/* ---- status ------------------------------------------------------------------------------ */
static int fail(fp8gemm_status *st, int code, const char *fmt, ...) {
    if (st) {
        va_list ap;
        va_start(ap, fmt);
        st->code = code;
        vsnprintf(st->message, sizeof st->message, fmt, ap);
        va_end(ap);
    }
    return code;
}

static int ok(fp8gemm_status *st) {
    if (st) {
        st->code = FP8GEMM_OK;
        st->message[0] = '\0';
    }
    return FP8GEMM_OK;
}

/* ---- the driver, opened at run time -------------------------------------------------------- */
typedef CUresult (*pfn_GetErrorName)(CUresult, const char **);
typedef CUresult (*pfn_CtxGetDevice)(CUdevice *);
typedef CUresult (*pfn_DeviceGetAttribute)(int *, CUdevice_attribute, CUdevice);
typedef CUresult (*pfn_ModuleLoadData)(CUmodule *, const void *);
typedef CUresult (*pfn_ModuleUnload)(CUmodule);
typedef CUresult (*pfn_ModuleGetFunction)(CUfunction *, CUmodule, const char *);
typedef CUresult (*pfn_FuncSetAttribute)(CUfunction, CUfunction_attribute, int);
typedef CUresult (*pfn_OccupancyMaxActiveClusters)(int *, CUfunction, const CUlaunchConfig *);
typedef CUresult (*pfn_LaunchKernelEx)(const CUlaunchConfig *, CUfunction, void **, void **);
typedef CUresult (*pfn_TensorMapEncodeTiled)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *,
                                             const cuuint64_t *, const cuuint64_t *, const cuuint32_t *,
                                             const cuuint32_t *, CUtensorMapInterleave, CUtensorMapSwizzle,
                                             CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

typedef CUresult (*pfn_TensorMapReplaceAddress)(CUtensorMap *, void *);

typedef struct {
    void *lib;
    pfn_GetErrorName GetErrorName;
    pfn_CtxGetDevice CtxGetDevice;
    pfn_DeviceGetAttribute DeviceGetAttribute;
    pfn_ModuleLoadData ModuleLoadData;
    pfn_ModuleUnload ModuleUnload;
    pfn_ModuleGetFunction ModuleGetFunction;
    pfn_FuncSetAttribute FuncSetAttribute;
    pfn_OccupancyMaxActiveClusters OccupancyMaxActiveClusters;
    pfn_LaunchKernelEx LaunchKernelEx;
    pfn_TensorMapEncodeTiled TensorMapEncodeTiled;
    pfn_TensorMapReplaceAddress TensorMapReplaceAddress;
} driver;

static int driver_open(driver *d, fp8gemm_status *st) {
    memset(d, 0, sizeof *d);
    d->lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!d->lib)
        return fail(st, FP8GEMM_ERROR_CUDA, "cannot open libcuda.so.1 (the NVIDIA driver): %s", dlerror());
#define SYM(field, name)                                                                     \
    do {                                                                                     \
        void *p_ = dlsym(d->lib, name);                                                      \
        if (!p_)                                                                             \
            return fail(st, FP8GEMM_ERROR_CUDA, "libcuda.so.1 has no %s (driver too old?)", name); \
        memcpy(&d->field, &p_, sizeof p_);                                                   \
    } while (0)
    SYM(GetErrorName, "cuGetErrorName");
    SYM(CtxGetDevice, "cuCtxGetDevice");
    SYM(DeviceGetAttribute, "cuDeviceGetAttribute");
    SYM(ModuleLoadData, "cuModuleLoadData");
    SYM(ModuleUnload, "cuModuleUnload");
    SYM(ModuleGetFunction, "cuModuleGetFunction");
    SYM(FuncSetAttribute, "cuFuncSetAttribute");
    SYM(OccupancyMaxActiveClusters, "cuOccupancyMaxActiveClusters");
    SYM(LaunchKernelEx, "cuLaunchKernelEx");
    SYM(TensorMapEncodeTiled, "cuTensorMapEncodeTiled");
    SYM(TensorMapReplaceAddress, "cuTensorMapReplaceAddress");
#undef SYM
    return FP8GEMM_OK;
}

static int cuda_fail(const driver *d, fp8gemm_status *st, const char *call, CUresult r, const char *what) {
    const char *name = "unknown error";
    if (d->GetErrorName)
        d->GetErrorName(r, &name);
    return fail(st, FP8GEMM_ERROR_CUDA, "%s failed (%s) for %s", call, name ? name : "?", what);
}

/* ---- a small JSON reader (the manifest) ---------------------------------------------------- */
typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype;
typedef struct jv {
    jtype t;
    double num;
    char *str;          /* J_STR */
    struct jv *items;   /* J_ARR / J_OBJ values */
    char **keys;        /* J_OBJ */
    int n;
} jv;

typedef struct {
    const char *p, *end;
    int depth;
} jparser;

static void j_free(jv *v) {
    int i;
    if (!v)
        return;
    free(v->str);
    for (i = 0; i < v->n; i++) {
        j_free(&v->items[i]);
        if (v->keys)
            free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    memset(v, 0, sizeof *v);
}

static void j_ws(jparser *q) {
    while (q->p < q->end && isspace((unsigned char)*q->p))
        q->p++;
}

static int j_value(jparser *q, jv *out);

static int j_string(jparser *q, char **out) {
    size_t cap = 16, len = 0;
    char *s;
    if (q->p >= q->end || *q->p != '"')
        return -1;
    q->p++;
    s = malloc(cap);
    if (!s)
        return -1;
    while (q->p < q->end && *q->p != '"') {
        char c = *q->p++;
        if (c == '\\') {
            if (q->p >= q->end)
                break;
            c = *q->p++;
            if (c == 'n') c = '\n';
            else if (c == 't') c = '\t';
            else if (c == 'r') c = '\r';
            else if (c == 'u') { /* the manifest is ASCII: keep the code point's low byte */
                unsigned v = 0;
                int i;
                for (i = 0; i < 4 && q->p < q->end; i++, q->p++)
                    v = v * 16 + (unsigned)(isdigit((unsigned char)*q->p) ? *q->p - '0' : (tolower((unsigned char)*q->p) - 'a' + 10));
                c = (char)(v & 0x7F);
            }
        }
        if (len + 2 > cap) {
            char *t = realloc(s, cap *= 2);
            if (!t) {
                free(s);
                return -1;
            }
            s = t;
        }
        s[len++] = c;
    }
    if (q->p >= q->end) {
        free(s);
        return -1;
    }
    q->p++;
    s[len] = '\0';
    *out = s;
    return 0;
}

static int j_push(jv *v, const jv *item, char *key) {
    jv *items = realloc(v->items, (size_t)(v->n + 1) * sizeof *items);
    if (!items)
        return -1;
    v->items = items;
    if (v->t == J_OBJ) {
        char **keys = realloc(v->keys, (size_t)(v->n + 1) * sizeof *keys);
        if (!keys)
            return -1;
        v->keys = keys;
        v->keys[v->n] = key;
    }
    v->items[v->n++] = *item;
    return 0;
}

static int j_value(jparser *q, jv *out) {
    memset(out, 0, sizeof *out);
    j_ws(q);
    if (q->p >= q->end || ++q->depth > 64)
        return -1;
    if (*q->p == '{' || *q->p == '[') {
        int obj = *q->p == '{';
        out->t = obj ? J_OBJ : J_ARR;
        q->p++;
        j_ws(q);
        if (q->p < q->end && *q->p == (obj ? '}' : ']')) {
            q->p++;
            q->depth--;
            return 0;
        }
        for (;;) {
            jv item;
            char *key = NULL;
            j_ws(q);
            if (obj) {
                if (j_string(q, &key))
                    return -1;
                j_ws(q);
                if (q->p >= q->end || *q->p++ != ':') {
                    free(key);
                    return -1;
                }
            }
            if (j_value(q, &item) || j_push(out, &item, key)) {
                free(key);
                return -1;
            }
            j_ws(q);
            if (q->p < q->end && *q->p == ',') {
                q->p++;
                continue;
            }
            if (q->p < q->end && *q->p == (obj ? '}' : ']')) {
                q->p++;
                break;
            }
            return -1;
        }
    } else if (*q->p == '"') {
        out->t = J_STR;
        if (j_string(q, &out->str))
            return -1;
    } else if (!strncmp(q->p, "true", 4) || !strncmp(q->p, "false", 5)) {
        out->t = J_BOOL;
        out->num = *q->p == 't';
        q->p += *q->p == 't' ? 4 : 5;
    } else if (!strncmp(q->p, "null", 4)) {
        out->t = J_NULL;
        q->p += 4;
    } else {
        char *e;
        out->t = J_NUM;
        out->num = strtod(q->p, &e);
        if (e == q->p)
            return -1;
        q->p = e;
    }
    q->depth--;
    return 0;
}

static const jv *j_get(const jv *o, const char *key) {
    int i;
    if (!o || o->t != J_OBJ)
        return NULL;
    for (i = 0; i < o->n; i++)
        if (!strcmp(o->keys[i], key))
            return &o->items[i];
    return NULL;
}

static const char *j_str(const jv *o, const char *key) {
    const jv *v = j_get(o, key);
    return v && v->t == J_STR ? v->str : NULL;
}

static int j_int(const jv *o, const char *key, int64_t *out) {
    const jv *v = j_get(o, key);
    if (!v || v->t != J_NUM)
        return -1;
    *out = (int64_t)v->num;
    return 0;
}

/* ---- size expressions (the grammar of fp8gemm/ptx_templates/spec.py) ----------------------- */
/* the manifest's "values", the kernel's block sizes, then its "group_values" (one group's, for the
 * per-group parameters of the k-grouped kernels; 0 elsewhere) */
enum { V_M, V_N, V_K, V_GROUPS, V_KB, V_A_STRIDE, V_B_STRIDE, V_OUT_STRIDE, V_SFA_STRIDE, V_A_GROUP_STRIDE,
       V_B_GROUP_STRIDE, V_OUT_GROUP_STRIDE, V_SFA_GROUP_STRIDE, V_X_STRIDE, V_Q_STRIDE, V_S_STRIDE, V_C_STRIDE,
       V_SFB_STRIDE, V_KB_TOTAL, V_C_GROUP_STRIDE, V_BLOCK_M, V_BLOCK_N, V_K_G, V_K_START_G, V_KB_START_G,
       V_K_BLOCKS_G, V_COUNT };
static const char *const VALUE_NAMES[V_COUNT] = {
    "m", "n", "k", "groups", "kb", "a_stride", "b_stride", "out_stride", "sfa_stride", "a_group_stride",
    "b_group_stride", "out_group_stride", "sfa_group_stride", "x_stride", "q_stride", "s_stride", "c_stride",
    "sfb_stride", "kb_total", "c_group_stride", "block_m", "block_n", "k_g", "k_start_g", "kb_start_g",
    "k_blocks_g"};

typedef struct {
    const char *p;
    const char *const *names;
    const int64_t *values;
    int count;
    const char *err;
} xparser;

static int64_t x_sum(xparser *x);

static void x_ws(xparser *x) {
    while (*x->p == ' ')
        x->p++;
}

static int64_t x_atom(xparser *x) {
    x_ws(x);
    if (isdigit((unsigned char)*x->p)) {
        int64_t v = 0;
        while (isdigit((unsigned char)*x->p))
            v = v * 10 + (*x->p++ - '0');
        return v;
    }
    if (*x->p == '(') {
        int64_t v;
        x->p++;
        v = x_sum(x);
        x_ws(x);
        if (*x->p++ != ')')
            x->err = "expected ')'";
        return v;
    }
    if (isalpha((unsigned char)*x->p) || *x->p == '_') {
        char name[40];
        size_t len = 0;
        int i;
        while ((isalnum((unsigned char)*x->p) || *x->p == '_') && len + 1 < sizeof name)
            name[len++] = *x->p++;
        name[len] = '\0';
        x_ws(x);
        if (*x->p == '(') {  /* min, max, ceil_div of two arguments */
            int64_t a, b;
            x->p++;
            a = x_sum(x);
            x_ws(x);
            if (*x->p++ != ',') {
                x->err = "expected ','";
                return 0;
            }
            b = x_sum(x);
            x_ws(x);
            if (*x->p++ != ')') {
                x->err = "expected ')'";
                return 0;
            }
            if (!strcmp(name, "min"))
                return a < b ? a : b;
            if (!strcmp(name, "max"))
                return a > b ? a : b;
            if (!strcmp(name, "ceil_div")) {
                if (b == 0) {
                    x->err = "ceil_div by zero";
                    return 0;
                }
                return (a + b - 1) / b;
            }
            x->err = "unknown function";
            return 0;
        }
        for (i = 0; i < x->count; i++)
            if (!strcmp(x->names[i], name))
                return x->values[i];
        x->err = "unknown name";
        return 0;
    }
    x->err = "unexpected character";
    return 0;
}

static int64_t x_product(xparser *x) {
    int64_t v = x_atom(x);
    for (;;) {
        x_ws(x);
        if (*x->p == '*') {
            x->p++;
            v *= x_atom(x);
        } else if (x->p[0] == '/' && x->p[1] == '/') {
            int64_t d;
            x->p += 2;
            d = x_atom(x);
            if (d == 0) {
                x->err = "division by zero";
                return 0;
            }
            v /= d;
        } else {
            return v;
        }
    }
}

static int64_t x_sum(xparser *x) {
    int64_t v = x_product(x);
    for (;;) {
        x_ws(x);
        if (*x->p == '+') {
            x->p++;
            v += x_product(x);
        } else if (*x->p == '-') {
            x->p++;
            v -= x_product(x);
        } else {
            return v;
        }
    }
}

int fp8gemm_eval_expression(const char *expr, const char *const *names, const int64_t *values, int count,
                            int64_t *out, fp8gemm_status *st) {
    xparser x;
    int64_t v;
    x.p = expr;
    x.names = names;
    x.values = values;
    x.count = count;
    x.err = NULL;
    v = x_sum(&x);
    x_ws(&x);
    if (!x.err && *x.p)
        x.err = "trailing characters";
    if (x.err)
        return fail(st, FP8GEMM_ERROR_BUNDLE, "expression '%s': %s", expr, x.err);
    *out = v;
    return ok(st);
}

/* a manifest value: an integer or an expression string */
static int eval_item(const jv *v, const int64_t *vals, int64_t *out, fp8gemm_status *st) {
    if (v && v->t == J_NUM) {
        *out = (int64_t)v->num;
        return ok(st);
    }
    if (v && v->t == J_STR)
        return fp8gemm_eval_expression(v->str, VALUE_NAMES, vals, V_COUNT, out, st);
    return fail(st, FP8GEMM_ERROR_BUNDLE, "manifest: a size is neither an integer nor an expression");
}

/* ---- the bundle ------------------------------------------------------------------------------ */
enum { A_A, A_A_SCALES, A_B, A_B_SCALES, A_OUT, A_LAYOUT, A_DEBUG, A_X, A_Q, A_SCALES, A_C, A_COUNT };

typedef struct {
    int type;          /* 0 tensor map, 1 u64, 2 u32 */
    int array;         /* A_* for addresses and tensor maps, -1 for values */
    int per_group;     /* an array of one element per group (k_grouped), from the group's values */
    const jv *map;     /* the tensor map's manifest entry */
    const jv *value;   /* a value's expression (u32, or u64 without an array) */
    const jv *offset;  /* a per-group map: bytes from its array's address to the group's data */
} param;

/* one kernel parameter as passed to the launch */
typedef union {
    CUtensorMap map;
    uint64_t u64;
    uint32_t u32;
} param_value;

/* What a kernel was launched with, by problem values: a call whose values (shape, strides,
 * block) match a slot's copies its parameters and grid, replacing the address of any tensor
 * map whose array moved, instead of evaluating the size expressions and encoding every map
 * again. Slots are reused round-robin; the lock guards only the look-up and the fill, never a
 * driver call. Allocated at load, so calls allocate nothing.
 *
 * A kernel with per-group parameters (k_grouped) keys its slots by the groups' K too, and keeps
 * them in a block of its own per slot (allocated when the slot is first filled): the parameter
 * arrays, the address each group's map holds, and the groups' K. A call copies the block into a
 * scratch block of the same layout from a pool of SCRATCH_POOL (each allocated on first use; a
 * call beyond that many at once allocates and frees its own), so the cached path allocates
 * nothing. */
#define MAP_CACHE_SLOTS 8
#define SCRATCH_POOL 8
typedef struct {
    int used;
    int64_t vals[V_COUNT];
    CUdeviceptr ptrs[MAX_PARAMS];   /* the address each map holds (per-group maps: their array's) */
    param_value params[MAX_PARAMS];
    unsigned grid[3];
    unsigned char *pg;              /* per-group parameters, or NULL */
} map_cache_slot;

typedef struct {
    pthread_mutex_t lock;
    int next;
    map_cache_slot slots[MAP_CACHE_SLOTS];
    unsigned char *spare[SCRATCH_POOL];   /* free scratch blocks for the per-group parameters */
    int nspare;
} map_cache;

typedef struct {
    const char *name;
    CUmodule module;
    CUfunction fn;
    map_cache *cache;
    int threads, smem, cluster, max_clusters;
    int64_t block_m, block_n;
    const jv *units;       /* persistent kernels: work units */
    const jv *grid_dims;   /* other kernels: the grid itself */
    param params[MAX_PARAMS];
    int nparams;
    /* per-group parameters (k_grouped): the group count the kernel was compiled for (0: none) and
     * the layout of a per-group block: each array at pg_off[i], the maps' addresses (pg_map[i]:
     * which of the npg_maps) at pg_held_off, the groups' K at pg_ks_off; pg_bytes in all */
    int64_t groups;
    size_t pg_off[MAX_PARAMS], pg_held_off, pg_ks_off, pg_bytes;
    int pg_map[MAX_PARAMS], npg_maps;
} kernel;

typedef struct {
    const char *op, *src;
    int64_t groups, n, k, max_m;
    const jv *ranges;
    int kernel;
    int64_t m, max_groups;   /* k_grouped_wgrad: M, and the most groups one launch takes */
    const jv *chunks;        /* k_grouped_wgrad: [[groups, kernel], ...] per launch size */
} problem;

struct fp8gemm_bundle {
    driver drv;
    jv manifest;
    kernel *kernels;
    int nkernels;
    problem *problems;
    int nproblems;
    int num_sms;
};

int fp8gemm_bundle_kernels(const fp8gemm_bundle *b) { return b ? b->nkernels : 0; }
int fp8gemm_bundle_problems(const fp8gemm_bundle *b) { return b ? b->nproblems : 0; }

static int array_index(const char *name) {
    static const char *const names[] = {"a", "a_scales", "b", "b_scales", "out"};
    int i;
    for (i = 0; i < 5; i++)
        if (!strcmp(name, names[i]))
            return i;
    if (!strcmp(name, "m_indices") || !strcmp(name, "group_ends") || !strcmp(name, "masked_m"))
        return A_LAYOUT;
    if (!strcmp(name, "debug"))
        return A_DEBUG;
    if (!strcmp(name, "x"))
        return A_X;
    if (!strcmp(name, "q"))
        return A_Q;
    if (!strcmp(name, "scales"))
        return A_SCALES;
    if (!strcmp(name, "c"))
        return A_C;
    return -1;
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long n;
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = malloc((size_t)n + 1);
        if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
            free(buf);
            buf = NULL;
        }
        if (buf) {
            buf[n] = '\0';
            *len = (size_t)n;
        }
    }
    fclose(f);
    return buf;
}

static int load_kernel(fp8gemm_bundle *b, const char *folder, const jv *e, kernel *kr, fp8gemm_status *st) {
    const jv *spec = j_get(e, "spec"), *params, *maps, *block, *cluster;
    const char *cubin = j_str(e, "cubin");
    char path[4096];
    size_t len = 0;
    char *image;
    int64_t v;
    int i, j;
    CUresult r;
    kr->name = j_str(e, "name");
    params = j_get(spec, "params");
    maps = j_get(spec, "tensor_maps");
    block = j_get(spec, "block");
    cluster = j_get(spec, "cluster");
    kr->units = j_get(spec, "units");
    kr->grid_dims = j_get(spec, "grid_dims");
    if (kr->grid_dims && (kr->grid_dims->t != J_ARR || kr->grid_dims->n == 0))
        kr->grid_dims = NULL;
    if (!kr->name || !cubin || !params || params->t != J_ARR || !maps || !block || !cluster ||
        (!kr->grid_dims && (!kr->units || kr->units->t != J_STR)))
        return fail(st, FP8GEMM_ERROR_BUNDLE, "manifest: an incomplete kernel entry");
    if (kr->grid_dims && kr->grid_dims->n != 3)
        return fail(st, FP8GEMM_ERROR_BUNDLE, "manifest: %s: grid_dims must have 3 entries", kr->name);
    if (params->n > MAX_PARAMS)
        return fail(st, FP8GEMM_ERROR_BUNDLE, "%s: %d parameters (at most %d)", kr->name, params->n, MAX_PARAMS);
    if (j_int(spec, "threads", &v))
        return fail(st, FP8GEMM_ERROR_BUNDLE, "%s: no threads", kr->name);
    kr->threads = (int)v;
    if (j_int(spec, "smem_bytes", &v))
        return fail(st, FP8GEMM_ERROR_BUNDLE, "%s: no smem_bytes", kr->name);
    kr->smem = (int)v;
    kr->cluster = cluster->t == J_ARR && cluster->n > 0 ? (int)cluster->items[0].num : 1;
    if (!kr->grid_dims && (j_int(block, "block_m", &kr->block_m) || j_int(block, "block_n", &kr->block_n)))
        return fail(st, FP8GEMM_ERROR_BUNDLE, "%s: no block sizes", kr->name);
    kr->nparams = params->n;
    for (i = 0; i < params->n; i++) {
        const jv *p = &params->items[i];
        const char *type = j_str(p, "type"), *pname = j_str(p, "name"), *array = j_str(p, "array");
        param *q = &kr->params[i];
        if (!type || !pname)
            return fail(st, FP8GEMM_ERROR_BUNDLE, "%s: parameter %d has no name/type", kr->name, i);
        q->array = array ? array_index(array) : -1;
        q->map = NULL;
        q->value = NULL;
        q->offset = NULL;
        q->per_group = j_get(p, "per_group") && j_get(p, "per_group")->t == J_BOOL && j_get(p, "per_group")->num;
        if (!strcmp(type, "tmap")) {
            q->type = 0;
            for (j = 0; j < maps->n; j++) {
                const char *mp = j_str(&maps->items[j], "param");
                if (mp && !strcmp(mp, pname))
                    q->map = &maps->items[j];
            }
            if (!q->map || (q->array = array_index(j_str(q->map, "array") ? j_str(q->map, "array") : "")) < 0)
                return fail(st, FP8GEMM_ERROR_BUNDLE, "%s: tensor map %s is not described", kr->name, pname);
            if ((j_get(q->map, "per_group") && j_get(q->map, "per_group")->t == J_BOOL &&
                 j_get(q->map, "per_group")->num) != q->per_group)
                return fail(st, FP8GEMM_ERROR_BUNDLE, "%s: tensor map %s and its parameter disagree on per_group",
                            kr->name, pname);
            q->offset = j_get(q->map, "offset");
        } else if (!strcmp(type, "u64")) {
            q->type = 1;
            q->value = q->array < 0 ? j_get(p, "value") : NULL;
            if (q->array < 0 && (!q->value || q->value->t == J_NULL))
                return fail(st, FP8GEMM_ERROR_BUNDLE, "%s: %s names no known array and no value", kr->name, pname);
        } else if (!strcmp(type, "u32")) {
            q->type = 2;
            q->value = j_get(p, "value");
            if (!q->value || q->value->t == J_NULL)
                return fail(st, FP8GEMM_ERROR_BUNDLE, "%s: %s has no value", kr->name, pname);
        } else {
            return fail(st, FP8GEMM_ERROR_BUNDLE, "%s: parameter %s has type %s", kr->name, pname, type);
        }
        if (q->per_group && q->type == 1 && q->array >= 0)
            return fail(st, FP8GEMM_ERROR_BUNDLE, "%s: %s: a per-group address is not supported", kr->name, pname);
    }
    kr->groups = 0;
    kr->npg_maps = 0;
    kr->pg_bytes = 0;
    for (i = 0; i < kr->nparams; i++)
        if (kr->params[i].per_group && !kr->groups) {   /* the arrays' length: the config's group count */
            if (j_int(j_get(e, "config"), "groups", &kr->groups) || kr->groups < 1 || kr->groups > 4096)
                return fail(st, FP8GEMM_ERROR_BUNDLE, "%s: per-group parameters but no group count in its config",
                            kr->name);
        }
    if (kr->groups) {
        size_t off = 0;
        for (i = 0; i < kr->nparams; i++) {
            const param *q = &kr->params[i];
            size_t elem = q->type == 0 ? sizeof(CUtensorMap) : q->type == 1 ? 8 : 4;
            if (!q->per_group)
                continue;
            kr->pg_off[i] = off;
            off += ((size_t)kr->groups * elem + 63) / 64 * 64;
            if (q->type == 0)
                kr->pg_map[i] = kr->npg_maps++;
        }
        kr->pg_held_off = off;
        off += (size_t)kr->npg_maps * (size_t)kr->groups * sizeof(CUdeviceptr);
        kr->pg_ks_off = off;
        off += (size_t)kr->groups * sizeof(int64_t);
        kr->pg_bytes = (off + 63) / 64 * 64;
    }
    if (snprintf(path, sizeof path, "%s/%s", folder, cubin) >= (int)sizeof path)
        return fail(st, FP8GEMM_ERROR_BUNDLE, "path too long: %s/%s", folder, cubin);
    image = read_file(path, &len);
    if (!image)
        return fail(st, FP8GEMM_ERROR_BUNDLE, "cannot read %s", path);
    r = b->drv.ModuleLoadData(&kr->module, image);
    free(image);
    if (r != CUDA_SUCCESS)
        return cuda_fail(&b->drv, st, "cuModuleLoadData", r, path);
    if ((r = b->drv.ModuleGetFunction(&kr->fn, kr->module, kr->name)) != CUDA_SUCCESS)
        return cuda_fail(&b->drv, st, "cuModuleGetFunction", r, kr->name);
    if (kr->smem > 48 * 1024 &&
        (r = b->drv.FuncSetAttribute(kr->fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, kr->smem)) != CUDA_SUCCESS)
        return cuda_fail(&b->drv, st, "cuFuncSetAttribute", r, kr->name);
    if (posix_memalign((void **)&kr->cache, 64, sizeof *kr->cache)) {
        kr->cache = NULL;
        return fail(st, FP8GEMM_ERROR_BUNDLE, "%s: no memory for its tensor-map cache", kr->name);
    }
    memset(kr->cache, 0, sizeof *kr->cache);
    if (pthread_mutex_init(&kr->cache->lock, NULL)) {
        free(kr->cache);
        kr->cache = NULL;
        return fail(st, FP8GEMM_ERROR_BUNDLE, "%s: cannot create its tensor-map cache's lock", kr->name);
    }
    kr->max_clusters = 0;
    if (kr->cluster > 1) {   /* a persistent grid larger than what can be resident runs its tail late */
        CUlaunchConfig cfg;
        CUlaunchAttribute attr;
        memset(&cfg, 0, sizeof cfg);
        memset(&attr, 0, sizeof attr);
        cfg.gridDimX = (unsigned)(b->num_sms / kr->cluster * kr->cluster);
        cfg.gridDimY = cfg.gridDimZ = 1;
        cfg.blockDimX = (unsigned)kr->threads;
        cfg.blockDimY = cfg.blockDimZ = 1;
        cfg.sharedMemBytes = (unsigned)kr->smem;
        attr.id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
        attr.value.clusterDim.x = (unsigned)kr->cluster;
        attr.value.clusterDim.y = attr.value.clusterDim.z = 1;
        cfg.attrs = &attr;
        cfg.numAttrs = 1;
        if ((r = b->drv.OccupancyMaxActiveClusters(&kr->max_clusters, kr->fn, &cfg)) != CUDA_SUCCESS)
            return cuda_fail(&b->drv, st, "cuOccupancyMaxActiveClusters", r, kr->name);
    }
    return ok(st);
}

void fp8gemm_bundle_free(fp8gemm_bundle *b) {
    int i;
    if (!b)
        return;
    for (i = 0; i < b->nkernels; i++) {
        if (b->kernels[i].module && b->drv.ModuleUnload)
            b->drv.ModuleUnload(b->kernels[i].module);
        if (b->kernels[i].cache) {
            map_cache *c = b->kernels[i].cache;
            int s;
            for (s = 0; s < MAP_CACHE_SLOTS; s++)
                free(c->slots[s].pg);
            for (s = 0; s < c->nspare; s++)
                free(c->spare[s]);
            pthread_mutex_destroy(&c->lock);
            free(c);
        }
    }
    free(b->kernels);
    free(b->problems);
    j_free(&b->manifest);
    if (b->drv.lib)
        dlclose(b->drv.lib);
    free(b);
}

int fp8gemm_bundle_load(const char *folder, fp8gemm_bundle **out, fp8gemm_status *st) {
    fp8gemm_bundle *b;
    char path[4096];
    char *text;
    size_t len = 0;
    jparser q;
    const jv *kernels, *problems, *fmt;
    int64_t version = 0;
    CUdevice dev;
    CUresult r;
    int i, rc;
    if (!folder || !out)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "folder and out must not be NULL");
    *out = NULL;
    b = calloc(1, sizeof *b);
    if (!b)
        return fail(st, FP8GEMM_ERROR_BUNDLE, "out of host memory");
    if ((rc = driver_open(&b->drv, st)) != FP8GEMM_OK)
        goto bad;
    if ((r = b->drv.CtxGetDevice(&dev)) != CUDA_SUCCESS) {
        rc = cuda_fail(&b->drv, st, "cuCtxGetDevice", r, "the current context (make one current first)");
        goto bad;
    }
    if ((r = b->drv.DeviceGetAttribute(&b->num_sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev)) != CUDA_SUCCESS) {
        rc = cuda_fail(&b->drv, st, "cuDeviceGetAttribute", r, "the SM count");
        goto bad;
    }
    snprintf(path, sizeof path, "%s/manifest.json", folder);
    text = read_file(path, &len);
    if (!text) {
        rc = fail(st, FP8GEMM_ERROR_BUNDLE, "cannot read %s", path);
        goto bad;
    }
    q.p = text;
    q.end = text + len;
    q.depth = 0;
    rc = j_value(&q, &b->manifest);
    free(text);
    fmt = j_get(&b->manifest, "format");
    if (rc || !fmt || fmt->t != J_STR || strcmp(fmt->str, "fp8gemm-bundle") || j_int(&b->manifest, "version", &version) ||
        version != 1) {
        rc = fail(st, FP8GEMM_ERROR_BUNDLE, "%s is not an fp8gemm bundle manifest of version 1", path);
        goto bad;
    }
    kernels = j_get(&b->manifest, "kernels");
    problems = j_get(&b->manifest, "problems");
    if (!kernels || kernels->t != J_ARR || !problems || problems->t != J_ARR) {
        rc = fail(st, FP8GEMM_ERROR_BUNDLE, "%s: no kernels or problems", path);
        goto bad;
    }
    b->kernels = calloc((size_t)kernels->n + 1, sizeof *b->kernels);
    b->problems = calloc((size_t)problems->n + 1, sizeof *b->problems);
    if (!b->kernels || !b->problems) {
        rc = fail(st, FP8GEMM_ERROR_BUNDLE, "out of host memory");
        goto bad;
    }
    for (i = 0; i < kernels->n; i++, b->nkernels++)
        if ((rc = load_kernel(b, folder, &kernels->items[i], &b->kernels[i], st)) != FP8GEMM_OK)
            goto bad;
    for (i = 0; i < problems->n; i++) {
        const jv *p = &problems->items[i];
        problem *pr = &b->problems[b->nproblems++];
        int64_t kidx = -1;
        pr->op = j_str(p, "op");
        pr->src = j_str(p, "src");
        pr->groups = 1;
        j_int(p, "groups", &pr->groups);
        if (!pr->op || (!pr->src && (j_int(p, "n", &pr->n) || j_int(p, "k", &pr->k)))) {
            rc = fail(st, FP8GEMM_ERROR_BUNDLE, "%s: problem %d is incomplete", path, i);
            goto bad;
        }
        pr->ranges = j_get(p, "ranges");
        pr->max_m = 0;
        j_int(p, "max_m", &pr->max_m);
        j_int(p, "kernel", &kidx);
        pr->kernel = (int)kidx;
        if (pr->ranges ? pr->ranges->t != J_ARR || pr->ranges->n == 0 : (kidx < 0 || kidx >= b->nkernels)) {
            rc = fail(st, FP8GEMM_ERROR_BUNDLE, "%s: problem %d names no kernel", path, i);
            goto bad;
        }
        pr->m = pr->max_groups = 0;
        pr->chunks = NULL;
        if (!strcmp(pr->op, "k_grouped_wgrad")) {   /* the kernel of each launch size, checked here */
            int j;
            pr->chunks = j_get(p, "chunks");
            if (j_int(p, "m", &pr->m) || j_int(p, "max_groups", &pr->max_groups) || pr->max_groups < 1 ||
                !pr->chunks || pr->chunks->t != J_ARR || pr->chunks->n == 0) {
                rc = fail(st, FP8GEMM_ERROR_BUNDLE, "%s: k_grouped_wgrad problem %d is incomplete", path, i);
                goto bad;
            }
            for (j = 0; j < pr->chunks->n; j++) {
                const jv *c = &pr->chunks->items[j];
                int idx = c->t == J_ARR && c->n == 2 ? (int)c->items[1].num : -1;
                if (idx < 0 || idx >= b->nkernels || b->kernels[idx].groups != (int64_t)c->items[0].num) {
                    rc = fail(st, FP8GEMM_ERROR_BUNDLE, "%s: k_grouped_wgrad problem %d: chunk %d names no "
                              "k-grouped kernel of its group count", path, i, j);
                    goto bad;
                }
            }
        }
    }
    *out = b;
    return ok(st);
bad:
    fp8gemm_bundle_free(b);
    return rc;
}

/* ---- launching ------------------------------------------------------------------------------ */
static const kernel *select_kernel(const fp8gemm_bundle *b, const char *op, int64_t m, int64_t n, int64_t k,
                                   int64_t groups, fp8gemm_status *st) {
    int i, j;
    for (i = 0; i < b->nproblems; i++) {
        const problem *p = &b->problems[i];
        if (strcmp(p->op, op) || p->n != n || p->k != k || (!p->ranges && p->groups != groups) || p->src)
            continue;
        if (!p->ranges)
            return &b->kernels[p->kernel];
        for (j = 0; j < p->ranges->n; j++) {   /* [m_lo, m_hi, kernel]; past the last: its kernel */
            const jv *r = &p->ranges->items[j];
            if (r->t != J_ARR || r->n != 3)
                break;
            if (m <= (int64_t)r->items[1].num || j == p->ranges->n - 1) {
                int idx = (int)r->items[2].num;
                if (idx >= 0 && idx < b->nkernels)
                    return &b->kernels[idx];
            }
        }
    }
    fail(st, FP8GEMM_ERROR_NO_KERNEL, "the bundle has no %s kernel for N=%lld K=%lld groups=%lld (export it)", op,
         (long long)n, (long long)k, (long long)groups);
    return NULL;
}

static CUtensorMapDataType map_dtype(const char *t, int *ok_) {
    *ok_ = 1;
    if (!strcmp(t, "uint8") || !strcmp(t, "float8_e4m3fn"))
        return CU_TENSOR_MAP_DATA_TYPE_UINT8;
    if (!strcmp(t, "bfloat16"))
        return CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
    if (!strcmp(t, "float32"))
        return CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
    *ok_ = 0;
    return CU_TENSOR_MAP_DATA_TYPE_UINT8;
}

static CUtensorMapSwizzle map_swizzle(int64_t bytes) {
    return bytes == 128 ? CU_TENSOR_MAP_SWIZZLE_128B
         : bytes == 64  ? CU_TENSOR_MAP_SWIZZLE_64B
         : bytes == 32  ? CU_TENSOR_MAP_SWIZZLE_32B
                        : CU_TENSOR_MAP_SWIZZLE_NONE;
}

static int encode_map(const fp8gemm_bundle *b, const kernel *kr, const jv *map, CUdeviceptr ptr, const int64_t *vals,
                      CUtensorMap *out, fp8gemm_status *st) {
    const jv *dims = j_get(map, "dims"), *strides = j_get(map, "strides"), *box = j_get(map, "box");
    const char *dtype = j_str(map, "dtype");
    cuuint64_t gdim[MAX_RANK], gstride[MAX_RANK];
    cuuint32_t bdim[MAX_RANK], estride[MAX_RANK];
    int64_t v, swz = 0;
    int i, rank, good;
    CUtensorMapDataType dt;
    CUresult r;
    if (!dims || !strides || !box || !dtype || dims->t != J_ARR || dims->n > MAX_RANK || box->n != dims->n ||
        strides->n != dims->n - 1)
        return fail(st, FP8GEMM_ERROR_BUNDLE, "%s: a malformed tensor map", kr->name);
    rank = dims->n;
    for (i = 0; i < rank; i++) {
        if (eval_item(&dims->items[i], vals, &v, st))
            return st ? st->code : FP8GEMM_ERROR_BUNDLE;
        gdim[i] = (cuuint64_t)v;
        if (eval_item(&box->items[i], vals, &v, st))
            return st ? st->code : FP8GEMM_ERROR_BUNDLE;
        bdim[i] = (cuuint32_t)v;
        estride[i] = 1;
        if (i + 1 < rank) {
            if (eval_item(&strides->items[i], vals, &v, st))
                return st ? st->code : FP8GEMM_ERROR_BUNDLE;
            gstride[i] = (cuuint64_t)v;
        }
    }
    j_int(map, "swizzle", &swz);
    dt = map_dtype(dtype, &good);
    if (!good)
        return fail(st, FP8GEMM_ERROR_BUNDLE, "%s: tensor map element type %s", kr->name, dtype);
    r = b->drv.TensorMapEncodeTiled(out, dt, (cuuint32_t)rank, (void *)(uintptr_t)ptr, gdim, gstride, bdim, estride,
                                    CU_TENSOR_MAP_INTERLEAVE_NONE, map_swizzle(swz), CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS)
        return cuda_fail(&b->drv, st, "cuTensorMapEncodeTiled", r, j_str(map, "array") ? j_str(map, "array") : "?");
    return FP8GEMM_OK;
}

/* a slot holding the maps for `vals` (and, per-group parameters, the groups' K `ks`), or NULL (the
 * caller holds the lock) */
static map_cache_slot *cache_find(const kernel *kr, const int64_t *vals, const int64_t *ks) {
    map_cache *c = kr->cache;
    int s;
    for (s = 0; s < MAP_CACHE_SLOTS; s++) {
        const map_cache_slot *sl = &c->slots[s];
        if (sl->used && !memcmp(sl->vals, vals, sizeof sl->vals) &&
            (!kr->groups || !memcmp(sl->pg + kr->pg_ks_off, ks, (size_t)kr->groups * sizeof *ks)))
            return &c->slots[s];
    }
    return NULL;
}

/* the cached parameters and grid of `vals` (and the addresses its maps hold; per-group parameters:
 * the whole block into `pg`); 1 on a hit */
static int cache_get(const kernel *kr, const int64_t *vals, const int64_t *ks, param_value *params,
                     CUdeviceptr held[], unsigned grid[3], unsigned char *pg) {
    map_cache_slot *sl;
    pthread_mutex_lock(&kr->cache->lock);
    sl = cache_find(kr, vals, ks);
    if (sl) {
        memcpy(params, sl->params, (size_t)kr->nparams * sizeof *params);
        memcpy(held, sl->ptrs, (size_t)kr->nparams * sizeof *held);
        memcpy(grid, sl->grid, sizeof sl->grid);
        if (kr->groups)
            memcpy(pg, sl->pg, kr->pg_bytes);
    }
    pthread_mutex_unlock(&kr->cache->lock);
    return sl != NULL;
}

/* remember the parameters and grid of `vals` (the slot already holding them, else the next one);
 * a slot's first per-group block is allocated here (if that fails, the call is not cached) */
static void cache_put(const kernel *kr, const int64_t *vals, const int64_t *ks, const param_value *params,
                      const CUdeviceptr ptrs[], const unsigned grid[3], const unsigned char *pg) {
    map_cache *c = kr->cache;
    map_cache_slot *sl;
    pthread_mutex_lock(&c->lock);
    if (!(sl = cache_find(kr, vals, ks))) {
        sl = &c->slots[c->next];
        c->next = (c->next + 1) % MAP_CACHE_SLOTS;
        sl->used = 0;
        if (kr->groups && !sl->pg && posix_memalign((void **)&sl->pg, 64, kr->pg_bytes)) {
            sl->pg = NULL;
            pthread_mutex_unlock(&c->lock);
            return;
        }
        memcpy(sl->vals, vals, sizeof sl->vals);
        sl->used = 1;
    }
    memcpy(sl->params, params, (size_t)kr->nparams * sizeof *params);
    memcpy(sl->ptrs, ptrs, (size_t)kr->nparams * sizeof *ptrs);
    memcpy(sl->grid, grid, sizeof sl->grid);
    if (kr->groups)
        memcpy(sl->pg, pg, kr->pg_bytes);   /* the groups' K included: the slot's key */
    pthread_mutex_unlock(&c->lock);
}

/* a scratch block for one call's per-group parameters: a spare one, else a new one (NULL: none) */
static unsigned char *scratch_take(const kernel *kr) {
    map_cache *c = kr->cache;
    unsigned char *p = NULL;
    pthread_mutex_lock(&c->lock);
    if (c->nspare > 0)
        p = c->spare[--c->nspare];
    pthread_mutex_unlock(&c->lock);
    if (!p && posix_memalign((void **)&p, 64, kr->pg_bytes))
        p = NULL;
    return p;
}

static void scratch_give(const kernel *kr, unsigned char *p) {
    map_cache *c = kr->cache;
    pthread_mutex_lock(&c->lock);
    if (c->nspare < SCRATCH_POOL) {
        c->spare[c->nspare++] = p;
        p = NULL;
    }
    pthread_mutex_unlock(&c->lock);
    free(p);
}

/* the per-group parameters of a launch into `pg`: on a miss every group's maps encoded (at their
 * offset into the array; an empty group's with k_g = 16, never read but encodable) and values
 * evaluated from the group's values; on a hit only the maps of arrays that moved get their
 * groups' addresses replaced. Sets *moved when a map changed. */
static int fill_groups(const fp8gemm_bundle *b, const kernel *kr, const int64_t *vals, const CUdeviceptr *held,
                       const CUdeviceptr *want, const int64_t *ks, int hit, unsigned char *pg, int *moved,
                       fp8gemm_status *st) {
    CUdeviceptr *addrs = (CUdeviceptr *)(void *)(pg + kr->pg_held_off);
    int64_t gv[V_COUNT], enc[V_COUNT], v, k0 = 0, kb0 = 0;
    int64_t groups = kr->groups, g;
    int i, rc;
    CUresult r;
    if (hit) {
        for (i = 0; i < kr->nparams; i++) {
            const param *p = &kr->params[i];
            CUtensorMap *maps = (CUtensorMap *)(void *)(pg + kr->pg_off[i]);
            CUdeviceptr *at = addrs + (size_t)kr->pg_map[i] * (size_t)groups;
            if (!p->per_group || p->type != 0 || held[i] == want[i])
                continue;
            for (g = 0; g < groups; g++) {             /* the same offsets: the groups' K are the key */
                CUdeviceptr to = at[g] - held[i] + want[i];
                if ((r = b->drv.TensorMapReplaceAddress(&maps[g], (void *)(uintptr_t)to)) != CUDA_SUCCESS)
                    return cuda_fail(&b->drv, st, "cuTensorMapReplaceAddress", r,
                                     j_str(p->map, "array") ? j_str(p->map, "array") : "?");
                at[g] = to;
            }
            *moved = 1;
        }
        return FP8GEMM_OK;
    }
    memcpy(pg + kr->pg_ks_off, ks, (size_t)groups * sizeof *ks);
    memcpy(gv, vals, sizeof gv);
    for (g = 0; g < groups; g++) {
        gv[V_K_G] = ks[g];
        gv[V_K_START_G] = k0;
        gv[V_KB_START_G] = kb0;
        gv[V_K_BLOCKS_G] = (ks[g] + 127) / 128;
        for (i = 0; i < kr->nparams; i++) {
            const param *p = &kr->params[i];
            unsigned char *arr = pg + kr->pg_off[i];
            if (!p->per_group)
                continue;
            if (p->type == 0) {
                CUdeviceptr *at = addrs + (size_t)kr->pg_map[i] * (size_t)groups;
                int64_t off = 0;
                if (p->offset && (rc = eval_item(p->offset, gv, &off, st)) != FP8GEMM_OK)
                    return rc;
                memcpy(enc, gv, sizeof enc);
                if (enc[V_K_G] < 16)
                    enc[V_K_G] = 16;
                at[g] = want[i] + (CUdeviceptr)off;
                if ((rc = encode_map(b, kr, p->map, at[g], enc, (CUtensorMap *)(void *)arr + g, st)) != FP8GEMM_OK)
                    return rc;
                *moved = 1;
            } else {
                if ((rc = eval_item(p->value, gv, &v, st)) != FP8GEMM_OK)
                    return rc;
                if (p->type == 1)
                    ((uint64_t *)(void *)arr)[g] = (uint64_t)v;
                else
                    ((uint32_t *)(void *)arr)[g] = (uint32_t)v;
            }
        }
        k0 += ks[g];
        kb0 += gv[V_K_BLOCKS_G];
    }
    return FP8GEMM_OK;
}

/* one launch of `kr` for problem values `vals` and launch arguments `arrays`; a kernel with
 * per-group parameters takes the groups' K (`ks`, kr->groups entries) and a scratch block `pg` */
static int launch_with(const fp8gemm_bundle *b, const kernel *kr, int64_t *vals, const CUdeviceptr *arrays,
                       const int64_t *ks, unsigned char *pg, CUstream stream, fp8gemm_status *st) {
    param_value storage[MAX_PARAMS];        /* per call, on the stack: threads never share it */
    void *ptrs[MAX_PARAMS];
    CUdeviceptr held[MAX_PARAMS], want[MAX_PARAMS];
    unsigned grid[3];
    CUlaunchConfig cfg;
    CUlaunchAttribute attr;
    int64_t units, clusters, v;
    int i, rc, hit, moved = 0;
    CUresult r;
    vals[V_BLOCK_M] = kr->block_m;
    vals[V_BLOCK_N] = kr->block_n;
    vals[V_K_G] = vals[V_K_START_G] = vals[V_KB_START_G] = vals[V_K_BLOCKS_G] = 0;   /* per group only */
    for (i = 0; i < kr->nparams; i++) {
        ptrs[i] = kr->params[i].per_group ? (void *)(pg + kr->pg_off[i]) : (void *)&storage[i];
        want[i] = held[i] = kr->params[i].type == 0 ? arrays[kr->params[i].array] : 0;
    }
    hit = cache_get(kr, vals, ks, storage, held, grid, pg);
    for (i = 0; i < kr->nparams; i++) {
        const param *p = &kr->params[i];
        if (p->per_group)
            continue;                           /* below */
        if (p->type == 0) {
            if (hit && held[i] == want[i])
                continue;                       /* the cached map, as it is */
            if (hit) {                          /* same shape and strides, another address */
                if ((r = b->drv.TensorMapReplaceAddress(&storage[i].map, (void *)(uintptr_t)want[i])) != CUDA_SUCCESS)
                    return cuda_fail(&b->drv, st, "cuTensorMapReplaceAddress", r,
                                     j_str(p->map, "array") ? j_str(p->map, "array") : "?");
            } else if ((rc = encode_map(b, kr, p->map, want[i], vals, &storage[i].map, st)) != FP8GEMM_OK) {
                return rc;
            }
            moved = 1;
        } else if (p->type == 1 && p->array >= 0) {
            storage[i].u64 = p->array == A_DEBUG ? 0 : (uint64_t)arrays[p->array];   /* every call */
        } else if (!hit) {                      /* a size expression: cached with the values */
            if ((rc = eval_item(p->value, vals, &v, st)) != FP8GEMM_OK)
                return rc;
            if (p->type == 1)
                storage[i].u64 = (uint64_t)v;
            else
                storage[i].u32 = (uint32_t)v;
        }
    }
    if (kr->groups && (rc = fill_groups(b, kr, vals, held, want, ks, hit, pg, &moved, st)) != FP8GEMM_OK)
        return rc;
    if (!hit) {
        if (kr->grid_dims) {
            int64_t g;
            for (i = 0; i < 3; i++) {
                if ((rc = eval_item(&kr->grid_dims->items[i], vals, &g, st)) != FP8GEMM_OK)
                    return rc;
                grid[i] = (unsigned)(g < 1 ? 1 : g);
            }
        } else {
            if ((rc = eval_item(kr->units, vals, &units, st)) != FP8GEMM_OK)
                return rc;
            clusters = b->num_sms / kr->cluster;
            if (units < clusters)
                clusters = units;
            if (kr->max_clusters > 0 && clusters > kr->max_clusters)
                clusters = kr->max_clusters;
            if (clusters < 1)
                clusters = 1;
            grid[0] = (unsigned)(clusters * kr->cluster);
            grid[1] = grid[2] = 1;
        }
    }
    if (!hit || moved)
        cache_put(kr, vals, ks, storage, want, grid, pg);
    memset(&cfg, 0, sizeof cfg);
    memset(&attr, 0, sizeof attr);
    cfg.gridDimX = grid[0], cfg.gridDimY = grid[1], cfg.gridDimZ = grid[2];
    cfg.blockDimX = (unsigned)kr->threads;
    cfg.blockDimY = cfg.blockDimZ = 1;
    cfg.sharedMemBytes = (unsigned)kr->smem;
    cfg.hStream = stream;
    if (kr->cluster > 1) {
        attr.id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
        attr.value.clusterDim.x = (unsigned)kr->cluster;
        attr.value.clusterDim.y = attr.value.clusterDim.z = 1;
        cfg.attrs = &attr;
        cfg.numAttrs = 1;
    }
    if ((r = b->drv.LaunchKernelEx(&cfg, kr->fn, ptrs, NULL)) != CUDA_SUCCESS)
        return cuda_fail(&b->drv, st, "cuLaunchKernelEx", r, kr->name);
    return ok(st);
}

static int launch(const fp8gemm_bundle *b, const kernel *kr, int64_t *vals, const CUdeviceptr *arrays,
                  const int64_t *ks, CUstream stream, fp8gemm_status *st) {
    unsigned char *pg;
    int rc;
    if (!kr->groups)
        return launch_with(b, kr, vals, arrays, NULL, NULL, stream, st);
    if (!ks)
        return fail(st, FP8GEMM_ERROR_BUNDLE, "%s: a kernel with per-group parameters, launched without the "
                    "groups' K", kr->name);
    if (!(pg = scratch_take(kr)))
        return fail(st, FP8GEMM_ERROR_BUNDLE, "%s: out of host memory for its per-group parameters", kr->name);
    rc = launch_with(b, kr, vals, arrays, ks, pg, stream, st);
    scratch_give(kr, pg);
    return rc;
}

/* ---- argument checks (the Python API's rules) ------------------------------------------------ */
static int check_shape(fp8gemm_status *st, const char *who, int64_t m, int64_t n, int64_t k, int64_t groups) {
    if (m < 1 || n < 1 || k < 1 || groups < 1)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: m, n, k and groups must be positive (got %lld, %lld, %lld, %lld)",
                    who, (long long)m, (long long)n, (long long)k, (long long)groups);
    if (n % 8)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: n = %lld must be a multiple of 8 (16-byte rows of bf16 D)", who,
                    (long long)n);
    if (k % 16)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: k = %lld must be a multiple of 16 (16-byte rows of e4m3 A, B)",
                    who, (long long)k);
    return FP8GEMM_OK;
}

static int check_stride(fp8gemm_status *st, const char *who, const char *name, int64_t *s, int64_t dflt,
                        int64_t least, int itemsize) {
    if (*s == 0)
        *s = dflt;
    if (*s < least)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: %s = %lld is smaller than %lld", who, name, (long long)*s,
                    (long long)least);
    if ((*s * itemsize) % 16)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: %s = %lld elements is not a multiple of 16 bytes", who, name,
                    (long long)*s);
    return FP8GEMM_OK;
}

static int check_pointer(fp8gemm_status *st, const char *who, const char *name, CUdeviceptr p, unsigned align) {
    if (!p)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: %s is NULL", who, name);
    if (p % align)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: %s = 0x%llx is not %u-byte aligned", who, name,
                    (unsigned long long)p, align);
    return FP8GEMM_OK;
}

/* the five arrays every GEMM takes: TMA-read rows and scales 16-byte aligned, B scales 4 */
static int check_operands(fp8gemm_status *st, const char *who, CUdeviceptr a, CUdeviceptr a_scales, CUdeviceptr b,
                          CUdeviceptr b_scales, CUdeviceptr out) {
    int rc;
    if ((rc = check_pointer(st, who, "a", a, 16)) || (rc = check_pointer(st, who, "a_scales", a_scales, 16)) ||
        (rc = check_pointer(st, who, "b", b, 16)) || (rc = check_pointer(st, who, "b_scales", b_scales, 4)) ||
        (rc = check_pointer(st, who, "out", out, 16)))
        return rc;
    return FP8GEMM_OK;
}

#define TRY(x)                             \
    do {                                   \
        int rc_ = (x);                     \
        if (rc_ != FP8GEMM_OK)             \
            return rc_;                    \
    } while (0)

/* the tensor map through which a kernel reads or writes launch argument `array`, or NULL */
static const jv *kernel_map(const kernel *kr, int array) {
    int i;
    for (i = 0; i < kr->nparams; i++)
        if (kr->params[i].type == 0 && kr->params[i].array == array)
            return kr->params[i].map;
    return NULL;
}

static int dtype_bytes(const char *t) {
    return !t ? 1 : !strcmp(t, "float32") ? 4 : !strcmp(t, "bfloat16") ? 2 : 1;
}

/* the dense op of `variant` ("gemm" for bf16, "gemm_<variant>" else), checked against the ops the
 * manifest's "arguments" names (so this file keeps no list of variants) */
static int dense_op(const fp8gemm_bundle *b, const char *who, const char *variant, char *op, size_t size,
                    fp8gemm_status *st) {
    const jv *args = j_get(&b->manifest, "arguments");
    char known[256];
    size_t used = 0;
    int i;
    if (!variant)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: variant is NULL", who);
    if (!strcmp(variant, "bf16"))
        snprintf(op, size, "gemm");
    else if (strlen(variant) + 6 > size)
        op[0] = '\0';
    else
        snprintf(op, size, "gemm_%s", variant);
    if (op[0] && (!strcmp(op, "gemm") || j_get(args, op)))
        return FP8GEMM_OK;
    known[0] = '\0';
    for (i = 0; args && args->t == J_OBJ && i < args->n; i++) {
        const char *name = args->keys[i];
        if (strcmp(name, "gemm") && strncmp(name, "gemm_", 5))
            continue;
        used += (size_t)snprintf(known + used, used < sizeof known ? sizeof known - used : 0, "%s%s",
                                 used ? ", " : "", strcmp(name, "gemm") ? name + 5 : "bf16");
        if (used >= sizeof known)
            break;
    }
    return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: variant '%s' is not a dense GEMM variant of this bundle's format (%s)",
                who, variant, known);
}

/* every dense GEMM: the variant's kernel by M, then the arguments checked against what its spec
 * reads (the element size of D, a C map, a per-row B-scale map) */
static int dense(const fp8gemm_bundle *b, const char *who, const char *variant, int64_t m, int64_t n, int64_t k,
                 CUdeviceptr a, int64_t a_stride, CUdeviceptr a_scales, int64_t sfa_stride, CUdeviceptr bb,
                 int64_t b_stride, CUdeviceptr b_scales, int64_t sfb_stride, CUdeviceptr out, int64_t out_stride,
                 CUdeviceptr c, int64_t c_stride, CUstream stream, fp8gemm_status *st) {
    int64_t vals[V_COUNT] = {0};
    CUdeviceptr arrays[A_COUNT] = {0};
    const kernel *kr;
    char op[40];
    int out_bytes, has_c, row_sfb;
    if (!b)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: bundle is NULL", who);
    TRY(dense_op(b, who, variant, op, sizeof op, st));
    TRY(check_shape(st, who, m, n, k, 1));
    if (!(kr = select_kernel(b, op, m, n, k, 1, st)))
        return FP8GEMM_ERROR_NO_KERNEL;
    out_bytes = kernel_map(kr, A_OUT) ? dtype_bytes(j_str(kernel_map(kr, A_OUT), "dtype")) : 2;
    has_c = kernel_map(kr, A_C) != NULL;
    row_sfb = kernel_map(kr, A_B_SCALES) != NULL;
    TRY(check_stride(st, who, "a_stride", &a_stride, k, k, 1));
    TRY(check_stride(st, who, "b_stride", &b_stride, k, k, 1));
    TRY(check_stride(st, who, "out_stride", &out_stride, n, n, out_bytes));
    TRY(check_stride(st, who, "sfa_stride", &sfa_stride, (m + 3) / 4 * 4, m, 4));
    if (row_sfb)
        TRY(check_stride(st, who, "sfb_stride", &sfb_stride, (n + 3) / 4 * 4, n, 4));
    else if (sfb_stride)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: sfb_stride: the %s variant's B scales are 128x128 blocks "
                    "(row-major [ceil(N/128), ceil(K/128)]), pass 0", who, variant);
    else
        sfb_stride = (n + 3) / 4 * 4;
    TRY(check_operands(st, who, a, a_scales, bb, b_scales, out));
    if (row_sfb)
        TRY(check_pointer(st, who, "b_scales", b_scales, 16));
    /* wgrad is D += A.B^T whichever way its kernel accumulates (a C map on out, or a reduce-add
     * onto out with no C map): c may only be 0 or out */
    if (!strcmp(variant, "wgrad") && c && c != out)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: c: wgrad accumulates into out (C is out), pass 0 or out", who);
    if (!has_c && strcmp(variant, "wgrad") && (c || c_stride))
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: %s: the %s variant reads no C, pass 0", who, c ? "c" : "c_stride",
                    variant);
    if (!has_c && c_stride && c_stride != out_stride)   /* wgrad by reduce-add: c is out */
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: c_stride = %lld: c is out, so it must be 0 or out_stride (%lld)",
                    who, (long long)c_stride, (long long)out_stride);
    if (!has_c || !c || c == out) {   /* no C, or C is D: accumulate in place */
        if (has_c && c_stride && c_stride != out_stride)
            return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: c_stride = %lld: c is out, so it must be 0 or out_stride (%lld)",
                        who, (long long)c_stride, (long long)out_stride);
        c = has_c ? out : 0;
        c_stride = out_stride;
    } else {
        uint64_t out_end, c_end;
        TRY(check_stride(st, who, "c_stride", &c_stride, out_stride, n, out_bytes));
        TRY(check_pointer(st, who, "c", c, 16));
        out_end = out + (uint64_t)(((m - 1) * out_stride + n) * out_bytes);
        c_end = c + (uint64_t)(((m - 1) * c_stride + n) * out_bytes);
        if (c < out_end && out < c_end)
            return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: c overlaps out without being out itself", who);
    }
    vals[V_M] = m, vals[V_N] = n, vals[V_K] = k, vals[V_GROUPS] = 1, vals[V_KB] = (k + 127) / 128;
    vals[V_A_STRIDE] = a_stride, vals[V_B_STRIDE] = b_stride, vals[V_OUT_STRIDE] = out_stride;
    vals[V_SFA_STRIDE] = sfa_stride, vals[V_SFB_STRIDE] = sfb_stride, vals[V_C_STRIDE] = c_stride;
    arrays[A_A] = a, arrays[A_A_SCALES] = a_scales, arrays[A_B] = bb, arrays[A_B_SCALES] = b_scales;
    arrays[A_OUT] = out, arrays[A_C] = c;
    return launch(b, kr, vals, arrays, NULL, stream, st);
}

int fp8gemm_gemm(const fp8gemm_bundle *b, int64_t m, int64_t n, int64_t k, CUdeviceptr a, int64_t a_stride,
                 CUdeviceptr a_scales, int64_t sfa_stride, CUdeviceptr bb, int64_t b_stride, CUdeviceptr b_scales,
                 CUdeviceptr out, int64_t out_stride, CUstream stream, fp8gemm_status *st) {
    return dense(b, "fp8gemm_gemm", "bf16", m, n, k, a, a_stride, a_scales, sfa_stride, bb, b_stride, b_scales, 0,
                 out, out_stride, 0, 0, stream, st);
}

int fp8gemm_gemm_variant(const fp8gemm_bundle *b, const char *variant, int64_t m, int64_t n, int64_t k,
                         CUdeviceptr a, int64_t a_stride, CUdeviceptr a_scales, int64_t sfa_stride, CUdeviceptr bb,
                         int64_t b_stride, CUdeviceptr b_scales, int64_t sfb_stride, CUdeviceptr out,
                         int64_t out_stride, CUdeviceptr c, int64_t c_stride, CUstream stream, fp8gemm_status *st) {
    return dense(b, "fp8gemm_gemm_variant", variant, m, n, k, a, a_stride, a_scales, sfa_stride, bb, b_stride,
                 b_scales, sfb_stride, out, out_stride, c, c_stride, stream, st);
}

int fp8gemm_m_grouped_contiguous(const fp8gemm_bundle *b, int64_t m_sum, int64_t n, int64_t k, int64_t groups,
                                 CUdeviceptr a, int64_t a_stride, CUdeviceptr a_scales, int64_t sfa_stride,
                                 CUdeviceptr bb, int64_t b_stride, int64_t b_group_stride, CUdeviceptr b_scales,
                                 CUdeviceptr out, int64_t out_stride, CUdeviceptr layout, int group_ends,
                                 CUstream stream, fp8gemm_status *st) {
    const char *who = "fp8gemm_m_grouped_contiguous";
    int64_t vals[V_COUNT] = {0};
    CUdeviceptr arrays[A_COUNT] = {0};
    const kernel *kr;
    if (!b)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: bundle is NULL", who);
    TRY(check_shape(st, who, m_sum, n, k, groups));
    TRY(check_stride(st, who, "a_stride", &a_stride, k, k, 1));
    TRY(check_stride(st, who, "b_stride", &b_stride, k, k, 1));
    TRY(check_stride(st, who, "b_group_stride", &b_group_stride, n * b_stride, groups > 1 ? n * b_stride : 0, 1));
    TRY(check_stride(st, who, "out_stride", &out_stride, n, n, 2));
    TRY(check_stride(st, who, "sfa_stride", &sfa_stride, (m_sum + 3) / 4 * 4, m_sum, 4));
    TRY(check_operands(st, who, a, a_scales, bb, b_scales, out));
    TRY(check_pointer(st, who, group_ends ? "group_ends" : "m_indices", layout, 4));
    kr = select_kernel(b, group_ends ? "m_grouped_contiguous_psum" : "m_grouped_contiguous", m_sum, n, k, groups, st);
    if (!kr)
        return FP8GEMM_ERROR_NO_KERNEL;
    vals[V_M] = m_sum, vals[V_N] = n, vals[V_K] = k, vals[V_GROUPS] = groups, vals[V_KB] = (k + 127) / 128;
    vals[V_A_STRIDE] = a_stride, vals[V_B_STRIDE] = b_stride, vals[V_B_GROUP_STRIDE] = b_group_stride;
    vals[V_OUT_STRIDE] = out_stride, vals[V_SFA_STRIDE] = sfa_stride;
    arrays[A_A] = a, arrays[A_A_SCALES] = a_scales, arrays[A_B] = bb, arrays[A_B_SCALES] = b_scales;
    arrays[A_OUT] = out, arrays[A_LAYOUT] = layout;
    return launch(b, kr, vals, arrays, NULL, stream, st);
}

int fp8gemm_m_grouped_masked(const fp8gemm_bundle *b, int64_t m_max, int64_t n, int64_t k, int64_t groups,
                             CUdeviceptr a, int64_t a_stride, int64_t a_group_stride, CUdeviceptr a_scales,
                             int64_t sfa_stride, int64_t sfa_group_stride, CUdeviceptr bb, int64_t b_stride,
                             int64_t b_group_stride, CUdeviceptr b_scales, CUdeviceptr out, int64_t out_stride,
                             int64_t out_group_stride, CUdeviceptr masked_m, CUstream stream, fp8gemm_status *st) {
    const char *who = "fp8gemm_m_grouped_masked";
    int64_t vals[V_COUNT] = {0};
    CUdeviceptr arrays[A_COUNT] = {0};
    const kernel *kr;
    int64_t kb = (k + 127) / 128, many;
    if (!b)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: bundle is NULL", who);
    TRY(check_shape(st, who, m_max, n, k, groups));
    many = groups > 1;
    TRY(check_stride(st, who, "a_stride", &a_stride, k, k, 1));
    TRY(check_stride(st, who, "b_stride", &b_stride, k, k, 1));
    TRY(check_stride(st, who, "out_stride", &out_stride, n, n, 2));
    TRY(check_stride(st, who, "sfa_stride", &sfa_stride, (m_max + 3) / 4 * 4, m_max, 4));
    TRY(check_stride(st, who, "a_group_stride", &a_group_stride, m_max * a_stride, many ? m_max * a_stride : 0, 1));
    TRY(check_stride(st, who, "b_group_stride", &b_group_stride, n * b_stride, many ? n * b_stride : 0, 1));
    TRY(check_stride(st, who, "out_group_stride", &out_group_stride, m_max * out_stride,
                     many ? m_max * out_stride : 0, 2));
    TRY(check_stride(st, who, "sfa_group_stride", &sfa_group_stride, kb * sfa_stride, many ? kb * sfa_stride : 0, 4));
    TRY(check_operands(st, who, a, a_scales, bb, b_scales, out));
    TRY(check_pointer(st, who, "masked_m", masked_m, 4));
    if (!(kr = select_kernel(b, "m_grouped_masked", m_max, n, k, groups, st)))
        return FP8GEMM_ERROR_NO_KERNEL;
    vals[V_M] = m_max, vals[V_N] = n, vals[V_K] = k, vals[V_GROUPS] = groups, vals[V_KB] = kb;
    vals[V_A_STRIDE] = a_stride, vals[V_B_STRIDE] = b_stride, vals[V_OUT_STRIDE] = out_stride;
    vals[V_SFA_STRIDE] = sfa_stride, vals[V_A_GROUP_STRIDE] = a_group_stride;
    vals[V_B_GROUP_STRIDE] = b_group_stride, vals[V_OUT_GROUP_STRIDE] = out_group_stride;
    vals[V_SFA_GROUP_STRIDE] = sfa_group_stride;
    arrays[A_A] = a, arrays[A_A_SCALES] = a_scales, arrays[A_B] = bb, arrays[A_B_SCALES] = b_scales;
    arrays[A_OUT] = out, arrays[A_LAYOUT] = masked_m;
    return launch(b, kr, vals, arrays, NULL, stream, st);
}

/* ---- the k-grouped wgrad GEMM ------------------------------------------------------------------ */
/* the kernel of a launch of `size` groups of problem `p`, or NULL */
static const kernel *chunk_kernel(const fp8gemm_bundle *b, const problem *p, int64_t size) {
    int j;
    for (j = 0; j < p->chunks->n; j++) {
        const jv *c = &p->chunks->items[j];
        if ((int64_t)c->items[0].num == size)
            return &b->kernels[(int)c->items[1].num];
    }
    return NULL;
}

int fp8gemm_k_grouped_wgrad(const fp8gemm_bundle *b, int64_t m, int64_t n, int64_t groups,
                            const int64_t *batch_sizes, CUdeviceptr a, CUdeviceptr a_scales, int64_t sfa_stride,
                            CUdeviceptr bb, CUdeviceptr b_scales, int64_t sfb_stride, CUdeviceptr out,
                            int64_t out_stride, int64_t out_group_stride, CUstream stream, fp8gemm_status *st) {
    const char *who = "fp8gemm_k_grouped_wgrad";
    const problem *p = NULL;
    int64_t g, g0, k_total = 0, k0 = 0, kb0 = 0;
    int i;
    if (!b)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: bundle is NULL", who);
    if (m < 1 || n < 1 || groups < 1)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: m, n and groups must be positive (got %lld, %lld, %lld)", who,
                    (long long)m, (long long)n, (long long)groups);
    if (m % 8)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: m = %lld must be a multiple of 8", who, (long long)m);
    if (n % 8)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: n = %lld must be a multiple of 8", who, (long long)n);
    if (!batch_sizes)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: batch_sizes is NULL (the groups' K: %lld entries)", who,
                    (long long)groups);
    for (g = 0; g < groups; g++) {
        if (batch_sizes[g] < 0)
            return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: batch_sizes[%lld] = %lld must be >= 0", who, (long long)g,
                        (long long)batch_sizes[g]);
        if (batch_sizes[g] % 16)
            return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: batch_sizes[%lld] = %lld must be a multiple of 16 (16-byte "
                        "rows of e4m3 A and B)", who, (long long)g, (long long)batch_sizes[g]);
        if (batch_sizes[g] > (((int64_t)1 << 32) - 1) - k_total)
            return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: batch_sizes: the groups' K add up to more than 2^32 - 1 "
                        "(the kernels take K as a u32)", who);
        k_total += batch_sizes[g];
    }
    TRY(check_stride(st, who, "sfa_stride", &sfa_stride, m, m, 4));
    TRY(check_stride(st, who, "sfb_stride", &sfb_stride, n, n, 4));
    TRY(check_stride(st, who, "out_stride", &out_stride, n, n, 4));
    TRY(check_stride(st, who, "out_group_stride", &out_group_stride, m * out_stride, m * out_stride, 4));
    TRY(check_pointer(st, who, "out", out, 16));
    {   /* with no K at all the operands are empty: NULL is fine, misaligned is not */
        const char *names[4] = {"a", "a_scales", "b", "b_scales"};
        const CUdeviceptr ptrs[4] = {a, a_scales, bb, b_scales};
        for (i = 0; i < 4; i++)
            if (k_total || ptrs[i])
                TRY(check_pointer(st, who, names[i], ptrs[i], 16));
    }
    for (i = 0; i < b->nproblems && !p; i++) {
        const problem *q = &b->problems[i];
        if (q->chunks && !strcmp(q->op, "k_grouped_wgrad") && q->m == m && q->n == n && q->groups == groups)
            p = q;
    }
    if (!p)
        return fail(st, FP8GEMM_ERROR_NO_KERNEL, "the bundle has no k_grouped_wgrad kernel for M=%lld N=%lld "
                    "groups=%lld (export it with --k-grouped %lldx%lldx%lld:EXPECTED_K)", (long long)m, (long long)n,
                    (long long)groups, (long long)groups, (long long)m, (long long)n);
    for (g0 = 0; g0 < groups; g0 += p->max_groups) {   /* every launch's kernel before any launch */
        int64_t size = groups - g0 < p->max_groups ? groups - g0 : p->max_groups;
        if (!chunk_kernel(b, p, size))
            return fail(st, FP8GEMM_ERROR_NO_KERNEL, "the bundle's k_grouped_wgrad problem M=%lld N=%lld groups=%lld "
                        "has no kernel for its launches of %lld groups", (long long)m, (long long)n,
                        (long long)groups, (long long)size);
    }
    if (!k_total)
        return ok(st);                         /* nothing to add: no launch */
    /* launches of at most max_groups groups, as k_grouped_wgrad_gemm_fp8_fp8_fp32_nt splits them:
     * each at its first group's data (A and B elements, scale rows, out groups) */
    for (g0 = 0; g0 < groups; g0 += p->max_groups) {
        int64_t size = groups - g0 < p->max_groups ? groups - g0 : p->max_groups, k = 0, kb = 0;
        int64_t vals[V_COUNT] = {0};
        CUdeviceptr arrays[A_COUNT] = {0};
        for (g = g0; g < g0 + size; g++) {
            k += batch_sizes[g];
            kb += (batch_sizes[g] + 127) / 128;
        }
        if (k) {                               /* a launch whose groups all have K = 0 adds nothing */
            vals[V_M] = m, vals[V_N] = n, vals[V_GROUPS] = size, vals[V_K] = k, vals[V_KB] = kb;
            vals[V_KB_TOTAL] = kb, vals[V_SFA_STRIDE] = sfa_stride, vals[V_SFB_STRIDE] = sfb_stride;
            vals[V_OUT_STRIDE] = vals[V_C_STRIDE] = out_stride;
            vals[V_OUT_GROUP_STRIDE] = vals[V_C_GROUP_STRIDE] = out_group_stride;
            arrays[A_A] = a + (CUdeviceptr)(m * k0);
            arrays[A_A_SCALES] = a_scales + (CUdeviceptr)(4 * sfa_stride * kb0);
            arrays[A_B] = bb + (CUdeviceptr)(n * k0);
            arrays[A_B_SCALES] = b_scales + (CUdeviceptr)(4 * sfb_stride * kb0);
            arrays[A_OUT] = arrays[A_C] = out + (CUdeviceptr)(4 * out_group_stride * g0);   /* C is out */
            TRY(launch(b, chunk_kernel(b, p, size), vals, arrays, batch_sizes + g0, stream, st));
        }
        k0 += k;
        kb0 += kb;
    }
    return ok(st);
}

/* ---- casts ------------------------------------------------------------------------------------ */
static int cast(const fp8gemm_bundle *b, const char *op, const char *who, int64_t rows, int64_t k, int src_f32,
                CUdeviceptr x, int64_t x_stride, CUdeviceptr q, int64_t q_stride, CUdeviceptr scales, int64_t s_stride,
                int64_t s_default, int64_t s_least, CUstream stream, fp8gemm_status *st) {
    const char *src = src_f32 ? "float32" : "bfloat16";
    int64_t vals[V_COUNT] = {0};
    CUdeviceptr arrays[A_COUNT] = {0};
    int i;
    if (!b)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: bundle is NULL", who);
    if (rows < 1 || k < 1)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: rows and k must be positive", who);
    if (k % 16)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: k = %lld must be a multiple of 16", who, (long long)k);
    TRY(check_stride(st, who, "x_stride", &x_stride, k, k, src_f32 ? 4 : 2));
    TRY(check_stride(st, who, "q_stride", &q_stride, k, k, 1));
    if (s_stride == 0)
        s_stride = s_default;
    if (s_stride < s_least)
        return fail(st, FP8GEMM_ERROR_ARGUMENT, "%s: s_stride = %lld is smaller than %lld", who, (long long)s_stride,
                    (long long)s_least);
    TRY(check_pointer(st, who, "x", x, 16));
    TRY(check_pointer(st, who, "q", q, 16));
    TRY(check_pointer(st, who, "scales", scales, 4));
    for (i = 0; i < b->nproblems; i++) {
        const problem *p = &b->problems[i];
        if (p->src && !strcmp(p->op, op) && !strcmp(p->src, src)) {
            vals[V_M] = rows, vals[V_K] = k, vals[V_X_STRIDE] = x_stride, vals[V_Q_STRIDE] = q_stride;
            vals[V_S_STRIDE] = s_stride;
            arrays[A_X] = x, arrays[A_Q] = q, arrays[A_SCALES] = scales;
            return launch(b, &b->kernels[p->kernel], vals, arrays, NULL, stream, st);
        }
    }
    return fail(st, FP8GEMM_ERROR_NO_KERNEL, "the bundle has no %s kernel from %s (export it with --casts %s)", op, src,
                src);
}

int fp8gemm_per_token_cast(const fp8gemm_bundle *b, int64_t m, int64_t k, int src_f32, CUdeviceptr x,
                           int64_t x_stride, CUdeviceptr q, int64_t q_stride, CUdeviceptr scales, int64_t s_stride,
                           CUstream stream, fp8gemm_status *st) {
    return cast(b, "per_token_cast", "fp8gemm_per_token_cast", m, k, src_f32, x, x_stride, q, q_stride, scales,
                s_stride, (m + 3) / 4 * 4, m, stream, st);
}

int fp8gemm_per_block_cast(const fp8gemm_bundle *b, int64_t n, int64_t k, int src_f32, CUdeviceptr x,
                           int64_t x_stride, CUdeviceptr q, int64_t q_stride, CUdeviceptr scales, int64_t s_stride,
                           CUstream stream, fp8gemm_status *st) {
    return cast(b, "per_block_cast", "fp8gemm_per_block_cast", n, k, src_f32, x, x_stride, q, q_stride, scales,
                s_stride, (k + 127) / 128, (k + 127) / 128, stream, st);
}
