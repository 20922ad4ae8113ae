/* libvmambax_scan: the selective scan (Mamba S6) forward and backward in float32, plain C99.
 *
 * No Python C-API and no torch ABI: vmambax/ops/native.py loads this library with ctypes (which
 * releases the GIL during the call) and passes contiguous float32 buffers. Threads split the
 * rows (forward: one (batch, channel) row per unit; backward: fixed slices of a group's
 * channels per unit), so the results do not depend on the thread count.
 *
 * The kernels live in scan_kernel.h, compiled here once for the baseline instruction set and,
 * on x86-64 with gcc/clang, once more for AVX2+FMA; vmx_scan_isa() says which one runs (chosen
 * at run time with __builtin_cpu_supports). MSVC builds the baseline only.
 *
 * Build: python -m vmambax.ops.build_native (or pip install / CMake, which do the same):
 *   cc -O3 -std=c99 -shared -fPIC scan.c -o libvmambax_scan.so -lpthread
 * Do not add -ffast-math: the kernels rely on IEEE evaluation order (the exp rounding trick and
 * the fixed summation orders).
 */

#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _WIN32
#include <windows.h>
#define VMX_API __declspec(dllexport)
#else
#include <pthread.h>
#define VMX_API __attribute__((visibility("default")))
#endif

#define VMX_ABI_VERSION 2

struct ku_kernels {
    void (*prepare)(const float *u, const float *delta, float bias, int softplus, int64_t l,
                    float *dt, float *x, float *sig);
    void (*forward_row)(const float *dt, const float *x, const float *A, const float *Bt,
                        const float *Ct, int64_t np, int64_t l, float *y);
    void (*backward_row)(const float *dt, const float *x, const float *A, const float *Bt,
                         const float *Ct, const float *gy, int64_t np, int64_t l, float *H,
                         float *E, float *gBt, float *gCt, float *gx, float *gdt, double *gA);
    void (*finish_row)(const float *u, const float *gy, const float *dt, const float *sig,
                       const float *gx, const float *gdt, float D, int64_t l, float *gu,
                       float *gdelta, double *sums);
    void (*exp_array)(const float *x, float *y, int64_t n);
    void (*forward_pair4)(const float *dt0, const float *x0, const float *dt1, const float *x1,
                          const float *A0, const float *A1, const float *Bt, const float *Ct,
                          int64_t l, float *y0, float *y1);
};

/* ------------------------------------------------------------------ the kernel variants */

#if defined(__GNUC__) && !defined(__clang__)
/* The vector helpers are static inline: the ABI note about passing AVX vectors does not apply. */
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#if defined(__GNUC__) && !defined(VMX_NO_VECTOR_EXT)
#define KU_VECTOR_EXT 1
typedef float kf8 __attribute__((vector_size(32)));
typedef int32_t ki8 __attribute__((vector_size(32)));
typedef float kf4 __attribute__((vector_size(16)));
typedef int32_t ki4 __attribute__((vector_size(16)));
#endif

#define KSUFFIX _base
#include "scan_kernel.h"
#undef KSUFFIX

#if (defined(__x86_64__) || defined(_M_X64) || defined(__i386__)) && defined(__GNUC__)
#define VMX_HAVE_AVX2 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define KSUFFIX _avx2
/* One max and one min instruction instead of compare-and-blend pairs; x goes in the second
 * operand so that a NaN passes through (maxps/minps return the second operand on NaN). */
#define KV_CLAMP8(x, lo, hi) __builtin_ia32_minps256((hi), __builtin_ia32_maxps256((lo), (x)))
#include "scan_kernel.h"
#undef KV_CLAMP8
#undef KSUFFIX
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

/* isa: 0 baseline, 1 AVX2+FMA, -1 the best this CPU runs. */
static const struct ku_kernels *vmx_pick(int isa)
{
#ifdef VMX_HAVE_AVX2
    if (isa != 0) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            return &ku_table_avx2;
    }
#else
    (void)isa;
#endif
    return &ku_table_base;
}

VMX_API int vmx_scan_abi_version(void) { return VMX_ABI_VERSION; }

/* The instruction set `isa` resolves to on this CPU: "avx2+fma" or "baseline". */
VMX_API const char *vmx_scan_isa(int isa)
{
#ifdef VMX_HAVE_AVX2
    if (vmx_pick(isa) == &ku_table_avx2)
        return "avx2+fma";
#else
    (void)isa;
#endif
    return "baseline";
}

/* y[i] = exp(x[i]) with the kernels' own exp (the tests check its accuracy). */
VMX_API void vmx_scan_exp(const float *x, float *y, int64_t n, int isa)
{
    vmx_pick(isa)->exp_array(x, y, n);
}

/* ------------------------------------------------------------------ threads */

typedef struct vmx_job vmx_job;
struct vmx_job {
    int (*unit)(vmx_job *job, int64_t index, float *scratch); /* 0 ok, else an error */
    int64_t units;
    int64_t scratch_floats; /* per thread */
    volatile int64_t next;
    volatile int32_t failed; /* 32 bits: InterlockedExchange's LONG */
    const void *args;
};

/* The shared flag is written (and read) atomically, like the unit counter. */
static void vmx_set_failed(vmx_job *job)
{
#ifdef _WIN32
    InterlockedExchange((volatile LONG *)&job->failed, 1);
#else
    __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
#endif
}

static int vmx_has_failed(vmx_job *job)
{
#ifdef _WIN32
    return (int)InterlockedCompareExchange((volatile LONG *)&job->failed, 0, 0);
#else
    return __atomic_load_n(&job->failed, __ATOMIC_RELAXED);
#endif
}

static int64_t vmx_claim(vmx_job *job)
{
#ifdef _WIN32
    return (int64_t)InterlockedExchangeAdd64((volatile LONG64 *)&job->next, 1);
#else
    return __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
#endif
}

static void vmx_work(vmx_job *job)
{
    float *scratch = (float *)malloc((size_t)job->scratch_floats * sizeof(float));
    int64_t i;
    if (!scratch) {
        vmx_set_failed(job);
        return;
    }
    while (!vmx_has_failed(job) && (i = vmx_claim(job)) < job->units) {
        if (job->unit(job, i, scratch))
            vmx_set_failed(job);
    }
    free(scratch);
}

#ifdef _WIN32
static DWORD WINAPI vmx_thread(LPVOID arg) { vmx_work((vmx_job *)arg); return 0; }
#else
static void *vmx_thread(void *arg) { vmx_work((vmx_job *)arg); return NULL; }
#endif

/* Run all units on `threads` threads (the calling one included). Returns 0 or 2 (no memory). */
static int vmx_run(vmx_job *job, int threads)
{
    int i, started = 0;
#ifdef _WIN32
    HANDLE ids[64];
#else
    pthread_t ids[64];
#endif
    job->next = 0;
    job->failed = 0;
    if (threads > 64) threads = 64;
    if (threads > job->units) threads = (int)job->units;
    for (i = 1; i < threads; i++) {
#ifdef _WIN32
        ids[started] = CreateThread(NULL, 0, vmx_thread, job, 0, NULL);
        if (!ids[started]) break;
#else
        if (pthread_create(&ids[started], NULL, vmx_thread, job)) break;
#endif
        started++;
    }
    vmx_work(job); /* fewer threads than asked for if creation failed: still correct */
    for (i = 0; i < started; i++) {
#ifdef _WIN32
        WaitForSingleObject(ids[i], INFINITE);
        CloseHandle(ids[i]);
#else
        pthread_join(ids[i], NULL);
#endif
    }
    return vmx_has_failed(job) ? 2 : 0;
}

/* ------------------------------------------------------------------ layouts */

/* (bg, n, l) -> a new zero-padded time-major (bg, l, np) buffer (NULL: out of memory). In
 * blocks of 256 steps, so the block being written stays in L1. */
static float *vmx_time_major(const float *src, int64_t bg, int64_t n, int64_t l, int64_t np)
{
    float *dst = (float *)calloc((size_t)(bg * l * np), sizeof(float));
    int64_t i, k, t0, t;
    if (!dst) return NULL;
    for (i = 0; i < bg; i++) {
        const float *s = src + i * n * l;
        float *d = dst + i * l * np;
        for (t0 = 0; t0 < l; t0 += 256) {
            int64_t t1 = t0 + 256 < l ? t0 + 256 : l;
            for (k = 0; k < n; k++)
                for (t = t0; t < t1; t++) d[t * np + k] = s[k * l + t];
        }
    }
    return dst;
}

/* The inverse: time-major (bg, l, np) -> (bg, n, l), dropping the padded states. */
static void vmx_channel_major(const float *src, float *dst, int64_t bg, int64_t n, int64_t l, int64_t np)
{
    int64_t i, k, t0, t;
    for (i = 0; i < bg; i++) {
        const float *s = src + i * l * np;
        float *d = dst + i * n * l;
        for (t0 = 0; t0 < l; t0 += 256) {
            int64_t t1 = t0 + 256 < l ? t0 + 256 : l;
            for (k = 0; k < n; k++)
                for (t = t0; t < t1; t++) d[k * l + t] = s[t * np + k];
        }
    }
}

/* Element counts of the buffers are products of the sizes; a product that does not fit (in
 * int64 offsets and in size_t bytes of doubles) would wrap to a small buffer that the kernels
 * then write past. vmx_prod(a, b) is a * b, or -1 when it would exceed that limit (or a or b is
 * -1 already), so chains of it report any overflow at the end. */
#define VMX_MAX_ELEMS ((int64_t)(((uint64_t)SIZE_MAX < (uint64_t)INT64_MAX ? (uint64_t)SIZE_MAX \
                                                                          : (uint64_t)INT64_MAX) / sizeof(double)))

static int64_t vmx_prod(int64_t a, int64_t b)
{
    if (a < 0 || b < 0 || (a != 0 && b > VMX_MAX_ELEMS / a))
        return -1;
    return a * b;
}

static int vmx_bad_sizes(int64_t b, int64_t d, int64_t g, int64_t n, int64_t l, int64_t np)
{
    return b < 1 || d < 1 || g < 1 || l < 1 || n < 1 || n > np || d % g ||
           (np > 16 ? np % 16 != 0 : (np != 4 && np != 8 && np != 16));
}

/* ------------------------------------------------------------------ forward */

typedef struct {
    const struct ku_kernels *k;
    const float *u, *delta, *A, *Bt, *Ct, *D, *bias;
    float *y;
    int64_t d, g, l, np;
    int softplus, pairs; /* pairs: units are pairs of channels (np == 4, d/g even) */
} vmx_fwd_args;

static void vmx_add_Du(float *y, const float *u, float D, int64_t l)
{
    int64_t t;
    for (t = 0; t < l; t++) y[t] += D * u[t];
}

static int vmx_fwd_unit(vmx_job *job, int64_t unit, float *scratch)
{
    const vmx_fwd_args *a = (const vmx_fwd_args *)job->args;
    int64_t row = a->pairs ? 2 * unit : unit, l = a->l;
    int64_t bi = row / a->d, c = row % a->d, gi = c / (a->d / a->g);
    const float *u = a->u + row * l;
    const float *bc = a->Bt + (bi * a->g + gi) * l * a->np;
    const float *cc = a->Ct + (bi * a->g + gi) * l * a->np;
    float *dt = scratch, *x = scratch + l, *y = a->y + row * l;
    a->k->prepare(u, a->delta + row * l, a->bias ? a->bias[c] : 0.0f, a->softplus, l, dt, x, NULL);
    if (a->pairs) { /* channel c + 1 is in the same group: d/g is even */
        float *dt1 = x + l, *x1 = dt1 + l;
        a->k->prepare(u + l, a->delta + (row + 1) * l, a->bias ? a->bias[c + 1] : 0.0f,
                      a->softplus, l, dt1, x1, NULL);
        a->k->forward_pair4(dt, x, dt1, x1, a->A + c * 4, a->A + (c + 1) * 4, bc, cc, l, y, y + l);
        if (a->D) vmx_add_Du(y + l, u + l, a->D[c + 1], l);
    } else {
        a->k->forward_row(dt, x, a->A + c * a->np, bc, cc, a->np, l, y);
    }
    if (a->D) vmx_add_Du(y, u, a->D[c], l);
    return 0;
}

/* y (b, d, l) = selective_scan(u, delta, A, B, C, D, delta_bias, softplus): u, delta (b, d, l),
 * A (d, np) zero-padded, B and C (b, g, n, l), D and bias (d,) or NULL, all contiguous float32.
 * np: n padded to 4, 8 or a multiple of 16. Returns 0, 1 (bad sizes) or 2 (out of memory). */
VMX_API int vmx_scan_forward(const float *u, const float *delta, const float *A, const float *B,
                             const float *C, const float *D, const float *bias, float *y,
                             int64_t b, int64_t d, int64_t g, int64_t n, int64_t l, int64_t np,
                             int softplus, int threads, int isa)
{
    vmx_fwd_args args;
    vmx_job job;
    float *Bt, *Ct;
    int rc;
    if (vmx_bad_sizes(b, d, g, n, l, np))
        return 1;
    if (vmx_prod(vmx_prod(vmx_prod(b, g), l), np) < 0 || vmx_prod(b, d) < 0 || vmx_prod(4, l) < 0)
        return 2; /* buffer sizes beyond the address space */
    Bt = vmx_time_major(B, b * g, n, l, np);
    Ct = Bt ? vmx_time_major(C, b * g, n, l, np) : NULL;
    if (!Ct) {
        free(Bt);
        return 2;
    }
    args.k = vmx_pick(isa);
    args.u = u; args.delta = delta; args.A = A; args.Bt = Bt; args.Ct = Ct;
    args.D = D; args.bias = bias; args.y = y;
    args.d = d; args.g = g; args.l = l; args.np = np; args.softplus = softplus;
    args.pairs = np == 4 && (d / g) % 2 == 0;
    job.unit = vmx_fwd_unit;
    job.units = args.pairs ? b * d / 2 : b * d;
    job.scratch_floats = 4 * l;
    job.args = &args;
    rc = vmx_run(&job, threads < 1 ? 1 : threads);
    free(Bt);
    free(Ct);
    return rc;
}

/* ------------------------------------------------------------------ backward */

typedef struct {
    const struct ku_kernels *k;
    const float *u, *delta, *A, *Bt, *Ct, *D, *bias, *gy;
    float *gu, *gdelta, *gBt, *gCt; /* gBt/gCt: (b, g, S, l, np) unit accumulators, zeroed */
    double *gA, *gD, *gbias;        /* per (batch, channel) partial sums, reduced afterwards */
    int64_t d, g, l, np, slices;
    int softplus;
} vmx_bwd_args;

static int vmx_bwd_unit(vmx_job *job, int64_t unit, float *scratch)
{
    const vmx_bwd_args *a = (const vmx_bwd_args *)job->args;
    int64_t S = a->slices, dg = a->d / a->g, l = a->l, np = a->np;
    int64_t s = unit % S, bg = unit / S, bi = bg / a->g, gi = bg % a->g;
    int64_t c0 = gi * dg + s * dg / S, c1 = gi * dg + (s + 1) * dg / S, c, t;
    int64_t ns = np >= 16 ? 16 : np;
    const float *bc = a->Bt + bg * l * np, *cc = a->Ct + bg * l * np;
    float *gbt = a->gBt + (bg * S + s) * l * np, *gct = a->gCt + (bg * S + s) * l * np;
    float *dt = scratch, *x = dt + l, *sig = x + l, *gx = sig + l, *gdt = gx + l;
    float *Hm = gdt + l, *H = Hm + ns, *E = H + l * ns;
    for (t = 0; t < ns; t++) Hm[t] = 0.0f; /* H[-1] = 0: the state before the first step */
    for (c = c0; c < c1; c++) {
        int64_t row = bi * a->d + c;
        double sums[2];
        const float *u = a->u + row * l, *gy = a->gy + row * l;
        a->k->prepare(u, a->delta + row * l, a->bias ? a->bias[c] : 0.0f, a->softplus, l, dt, x,
                      a->softplus ? sig : NULL);
        memset(gx, 0, (size_t)l * sizeof(float));
        memset(gdt, 0, (size_t)l * sizeof(float));
        a->k->backward_row(dt, x, a->A + c * np, bc, cc, gy, np, l, H, E, gbt, gct, gx, gdt,
                           a->gA + row * np);
        a->k->finish_row(u, gy, dt, a->softplus ? sig : NULL, gx, gdt, a->D ? a->D[c] : 0.0f, l,
                         a->gu + row * l, a->gdelta + row * l, sums);
        a->gD[row] = sums[0];
        a->gbias[row] = sums[1];
    }
    return 0;
}

/* Slices of a group's channels per backward unit: enough units for 16 threads, fixed by the
 * shapes only, so that the gB/gC sums (slice by slice, in order) do not depend on threads. */
static int64_t vmx_slices(int64_t b, int64_t d, int64_t g)
{
    int64_t dg = d / g, S = (16 + b * g - 1) / (b * g);
    return S < 1 ? 1 : (S > dg ? dg : S);
}

/* Gradients of sum(gy * y) for vmx_scan_forward's arguments (same layouts). Outputs: gu, gdelta
 * (b, d, l), gA (d, np), gB, gC (b, g, n, l), gD, gbias (d,) (NULL when D / bias are); every
 * output is overwritten. Returns 0, 1 (bad sizes) or 2 (out of memory). */
VMX_API int vmx_scan_backward(const float *u, const float *delta, const float *A, const float *B,
                              const float *C, const float *D, const float *bias, const float *gy,
                              float *gu, float *gdelta, float *gA, float *gB, float *gC,
                              float *gD, float *gbias, int64_t b, int64_t d, int64_t g, int64_t n,
                              int64_t l, int64_t np, int softplus, int threads, int isa)
{
    vmx_bwd_args args;
    vmx_job job;
    int64_t S, i, j, bi, ns;
    size_t bc_size;
    float *Bt = NULL, *Ct = NULL, *gBt = NULL, *gCt = NULL, *gB_units = NULL, *gC_units = NULL;
    double *partials = NULL;
    int rc;
    if (vmx_bad_sizes(b, d, g, n, l, np))
        return 1;
    S = vmx_slices(b, d, g);
    ns = np >= 16 ? 16 : np;
    if (vmx_prod(vmx_prod(vmx_prod(vmx_prod(b, g), l), np), S) < 0 || vmx_prod(vmx_prod(b, d), np + 2) < 0 ||
        vmx_prod(l + 1, 5 + 2 * ns) < 0)
        return 2; /* buffer sizes beyond the address space (the scratch: 5 l + (2 l + 1) ns) */
    bc_size = (size_t)(b * g * l * np);
    Bt = vmx_time_major(B, b * g, n, l, np);
    Ct = vmx_time_major(C, b * g, n, l, np);
    gBt = (float *)calloc(bc_size, sizeof(float));
    gCt = (float *)calloc(bc_size, sizeof(float));
    gB_units = S == 1 ? gBt : (float *)calloc(bc_size * (size_t)S, sizeof(float));
    gC_units = S == 1 ? gCt : (float *)calloc(bc_size * (size_t)S, sizeof(float));
    partials = (double *)calloc((size_t)(b * d * (np + 2)), sizeof(double));
    if (!Bt || !Ct || !gBt || !gCt || !gB_units || !gC_units || !partials) {
        rc = 2;
        goto done;
    }
    args.k = vmx_pick(isa);
    args.u = u; args.delta = delta; args.A = A; args.Bt = Bt; args.Ct = Ct;
    args.D = D; args.bias = bias; args.gy = gy;
    args.gu = gu; args.gdelta = gdelta; args.gBt = gB_units; args.gCt = gC_units;
    args.gA = partials; args.gD = partials + b * d * np; args.gbias = args.gD + b * d;
    args.d = d; args.g = g; args.l = l; args.np = np; args.slices = S;
    args.softplus = softplus;
    job.unit = vmx_bwd_unit;
    job.units = b * g * S;
    job.scratch_floats = 5 * l + (2 * l + 1) * ns;
    job.args = &args;
    rc = vmx_run(&job, threads < 1 ? 1 : threads);
    if (rc == 0) {
        /* Reductions in a fixed order: over the slices of each group, over the batch. */
        if (S > 1) {
            for (i = 0; i < b * g; i++) {
                float *ob = gBt + i * l * np, *oc = gCt + i * l * np;
                const float *sb = gB_units + i * S * l * np, *sc = gC_units + i * S * l * np;
                memcpy(ob, sb, (size_t)(l * np) * sizeof(float));
                memcpy(oc, sc, (size_t)(l * np) * sizeof(float));
                for (j = 1; j < S; j++) {
                    const float *pb = sb + j * l * np, *pc = sc + j * l * np;
                    int64_t e;
                    for (e = 0; e < l * np; e++) { ob[e] += pb[e]; oc[e] += pc[e]; }
                }
            }
        }
        vmx_channel_major(gBt, gB, b * g, n, l, np);
        vmx_channel_major(gCt, gC, b * g, n, l, np);
        for (i = 0; i < d * np; i++) {
            double acc = 0.0;
            for (bi = 0; bi < b; bi++) acc += args.gA[bi * d * np + i];
            gA[i] = (float)acc;
        }
        for (i = 0; i < d; i++) {
            double accd = 0.0, accb = 0.0;
            for (bi = 0; bi < b; bi++) { accd += args.gD[bi * d + i]; accb += args.gbias[bi * d + i]; }
            if (gD) gD[i] = (float)accd;
            if (gbias) gbias[i] = (float)accb;
        }
    }
done:
    if (S > 1) { free(gB_units); free(gC_units); }
    free(Bt); free(Ct); free(gBt); free(gCt);
    free(partials);
    return rc;
}
