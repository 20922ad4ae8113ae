/* The selective-scan kernels, compiled once per instruction set.
 *
 * scan.c includes this file several times with KSUFFIX (the function-name suffix) set and, for
 * the SIMD variants, the compiler's target attribute applied to every function, so each copy is
 * vectorised for its own instruction set. Nothing here calls libm: exp and log1p are our own
 * polynomials (ku_exp, ku_log1p_unit; kv_exp8/kv_exp4 for vectors) written as plain float
 * arithmetic plus integer bit moves. With gcc/clang the kernels use GNU vector extensions (the
 * kv_* functions: a channel's NS states in one or two SIMD registers); elsewhere (MSVC) the
 * plain-loop ku_* kernels, same formulas and summation order, which the compiler may vectorise.
 *
 * Layout (A padded by vmambax/ops/native.py, B and C made time-major by scan.c):
 *   u, delta, y, gy, gu, gdelta   (b, d, l)          rows of l steps, one row per (batch, channel)
 *   A, gA                         (d, np)            np = n padded with zeros to 4, 8 or 16k
 *   Bt, Ct, gBt, gCt              (b, g, l, np)      time-major: the np values of one step together
 * Padded states have A = B = C = 0, so their h stays 0 and they add nothing.
 */

#define KN2(a, b) a##b
#define KN1(a, b) KN2(a, b)
#define KNAME(x) KN1(x, KSUFFIX)

/* Vectorise the loop over a channel's states (gcc/clang: -fopenmp-simd, no OpenMP runtime). */
#ifndef KU_SIMD
#if defined(_OPENMP) || defined(__clang__) || defined(__GNUC__)
#define KU_PRAGMA(x) _Pragma(#x)
#define KU_SIMD KU_PRAGMA(omp simd)
#else
#define KU_SIMD
#endif
#endif

/* min(max(x, lo), hi) with bit masks rather than ?: -- gcc turns the ternaries into branches
 * here, which stops it from vectorising the loops that call ku_exp. */
static inline float KNAME(ku_clamp)(float x, float lo, float hi)
{
    uint32_t xb, lb, hb, below, above;
    memcpy(&xb, &x, 4);
    memcpy(&lb, &lo, 4);
    memcpy(&hb, &hi, 4);
    below = (uint32_t)0 - (uint32_t)(x < lo);
    above = (uint32_t)0 - (uint32_t)(x > hi);
    xb = (xb & ~below) | (lb & below);
    xb = (xb & ~above) | (hb & above);
    memcpy(&x, &xb, 4);
    return x;
}

/* exp(x) for float32, |relative error| < 2e-7 on [-86.5, 88], without libm.
 * x = k ln2 + r with |r| <= ln2/2; exp(r) by a degree-6 polynomial (Cephes' coefficients);
 * 2^k put into the exponent bits. k is rounded with the 1.5*2^23 trick (pure float adds, so no
 * rounding-mode instruction is needed). Inputs are clamped: exp(-86.5) ~ 2.7e-38 stands in for
 * smaller values (a decay that small multiplies states of order 1: it is zero to float
 * precision either way). */
static inline float KNAME(ku_exp)(float x)
{
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    float t, k, r, r2, p;
    uint32_t bits, kb;
    x = KNAME(ku_clamp)(x, -86.5f, 88.0f);
    t = x * 1.44269504088896341f + magic;
    k = t - magic;
    r = x - k * 0.693359375f;
    r = r + k * 2.12194440e-4f;
    r2 = r * r;
    p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r2 + r + 1.0f;
    memcpy(&kb, &t, 4);
    memcpy(&bits, &p, 4);
    bits += kb << 23; /* the low bits of t are k (mod 2^9): add k to the exponent field */
    memcpy(&p, &bits, 4);
    return p;
}

/* log(1 + v) for v in [0, 1] as 2 atanh(s), s = v / (2 + v) in [0, 1/3]: odd series to s^17
 * (truncation < 1e-9). */
static inline float KNAME(ku_log1p_unit)(float v)
{
    float s = v / (2.0f + v), s2 = s * s, p;
    p = 1.0f / 17;
    p = p * s2 + 1.0f / 15;
    p = p * s2 + 1.0f / 13;
    p = p * s2 + 1.0f / 11;
    p = p * s2 + 1.0f / 9;
    p = p * s2 + 1.0f / 7;
    p = p * s2 + 1.0f / 5;
    p = p * s2 + 1.0f / 3;
    p = p * s2 + 1.0f;
    return 2.0f * s * p;
}

/* dt = softplus(z) = max(z, 0) + log1p(exp(-|z|)) (or z), x = dt * u, and, when wanted, the
 * softplus derivative sigmoid(z) = 1 / (1 + e) for z >= 0, e / (1 + e) below, e = exp(-|z|).
 * One pass over a channel's row, vectorised over the steps. */
static void KNAME(ku_prepare)(const float *u, const float *delta, float bias, int softplus,
                              int64_t l, float *dt, float *x, float *sig)
{
    int64_t t;
    if (!softplus) {
        for (t = 0; t < l; t++) {
            float z = delta[t] + bias;
            dt[t] = z;
            x[t] = z * u[t];
        }
        return;
    }
    for (t = 0; t < l; t++) {
        float z = delta[t] + bias;
        float az = z < 0 ? -z : z;
        float e = KNAME(ku_exp)(-az);
        float sp = (z > 0 ? z : 0.0f) + KNAME(ku_log1p_unit)(e);
        sp = z > 20.0f ? z : sp; /* torch's threshold: linear above 20 */
        dt[t] = sp;
        x[t] = sp * u[t];
        if (sig) {
            float inv = 1.0f / (1.0f + e);
            float sg = z >= 0 ? inv : e * inv;
            sig[t] = z > 20.0f ? 1.0f : sg;
        }
    }
}

#ifndef KU_VECTOR_EXT
/* The portable kernels (MSVC, or VMX_NO_VECTOR_EXT): plain loops over the states. */

/* Sum of NS floats in a fixed pairwise order (the same on every compiler and ISA). */
#define KU_HSUM(out, v)                                                         \
    do {                                                                        \
        float s_[NS];                                                           \
        int w_, j_;                                                             \
        for (j_ = 0; j_ < NS; j_++) s_[j_] = (v)[j_];                           \
        for (w_ = NS / 2; w_ >= 1; w_ /= 2)                                     \
            for (j_ = 0; j_ < w_; j_++) s_[j_] = s_[j_] + s_[j_ + w_];          \
        (out) = s_[0];                                                          \
    } while (0)

/* The forward of one (batch, channel) row and one block of NS states: y[t] (+)= <h_t, C_t>. */
#define KU_DEFINE_FORWARD(NSV)                                                                  \
static void KNAME(ku_forward_block##NSV)(const float *dt, const float *x, const float *A,       \
                                         const float *Bt, const float *Ct, int64_t np,          \
                                         int64_t l, float *y, int accumulate)                   \
{                                                                                               \
    enum { NS = NSV };                                                                          \
    float h[NS], a[NS];                                                                         \
    int64_t t;                                                                                  \
    int k;                                                                                      \
    for (k = 0; k < NS; k++) { h[k] = 0.0f; a[k] = A[k]; }                                      \
    for (t = 0; t < l; t++) {                                                                   \
        const float *bt = Bt + t * np, *ct = Ct + t * np;                                       \
        float p[NS], yt, dtt = dt[t], xt = x[t];                                                \
        KU_SIMD                                                                                 \
        for (k = 0; k < NS; k++) {                                                              \
            h[k] = KNAME(ku_exp)(dtt * a[k]) * h[k] + xt * bt[k];                               \
            p[k] = h[k] * ct[k];                                                                \
        }                                                                                       \
        KU_HSUM(yt, p);                                                                         \
        y[t] = accumulate ? y[t] + yt : yt;                                                     \
    }                                                                                           \
}

KU_DEFINE_FORWARD(4)
KU_DEFINE_FORWARD(8)
KU_DEFINE_FORWARD(16)

/* Backward of one row and one block of NS states. Recomputes the states h_t (H) and decays
 * dA_t = exp(dt_t A) (E), then runs the adjoint lam_t = dA_{t+1} lam_{t+1} + gy_t C_t backwards:
 *   gC_t += gy_t h_t;  gB_t += x_t lam_t;  gx_t += <B_t, lam_t>;
 *   q_t = lam_t dA_t h_{t-1};  gdt_t += <q_t, A>;  gA += sum_t q_t dt_t.
 * gBt/gCt are the unit's (time-major) accumulators, gx/gdt per-step accumulators of the row,
 * gA the row's NS partial sums (accumulated in double per 64 steps). */
#define KU_DEFINE_BACKWARD(NSV)                                                                 \
static void KNAME(ku_backward_block##NSV)(const float *dt, const float *x, const float *A,      \
                                          const float *Bt, const float *Ct, const float *gy,    \
                                          int64_t np, int64_t l, float *H, float *E,            \
                                          float *gBt, float *gCt, float *gx, float *gdt,        \
                                          double *gA)                                           \
{                                                                                               \
    enum { NS = NSV };                                                                          \
    float h[NS], a[NS], lam[NS], en[NS], ga[NS];                                                \
    int64_t t;                                                                                  \
    int k;                                                                                      \
    for (k = 0; k < NS; k++) { h[k] = 0.0f; a[k] = A[k]; lam[k] = 0.0f; en[k] = 0.0f;           \
                               ga[k] = 0.0f; }                                                  \
    for (t = 0; t < l; t++) {                                                                   \
        const float *bt = Bt + t * np;                                                          \
        float dtt = dt[t], xt = x[t];                                                           \
        KU_SIMD                                                                                 \
        for (k = 0; k < NS; k++) {                                                              \
            float e = KNAME(ku_exp)(dtt * a[k]);                                                \
            h[k] = e * h[k] + xt * bt[k];                                                       \
            E[t * NS + k] = e;                                                                  \
            H[t * NS + k] = h[k];                                                               \
        }                                                                                       \
    }                                                                                           \
    for (t = l - 1; t >= 0; t--) {                                                              \
        const float *bt = Bt + t * np, *ct = Ct + t * np;                                       \
        float *gbt = gBt + t * np, *gct = gCt + t * np;                                         \
        const float *ht = H + t * NS, *et = E + t * NS;                                         \
        float g = gy[t], xt = x[t], dtt = dt[t], sb[NS], sq[NS], sx, sd;                        \
        KU_SIMD                                                                                 \
        for (k = 0; k < NS; k++) {                                                              \
            float hp = H[(t - 1) * NS + k], q; /* H[-1] is a row of zeros */                   \
            lam[k] = en[k] * lam[k] + g * ct[k];                                                \
            gct[k] += g * ht[k];                                                                \
            gbt[k] += xt * lam[k];                                                              \
            sb[k] = bt[k] * lam[k];                                                             \
            q = lam[k] * et[k] * hp;                                                            \
            sq[k] = q * a[k];                                                                   \
            ga[k] += q * dtt;                                                                   \
            en[k] = et[k];                                                                      \
        }                                                                                       \
        KU_HSUM(sx, sb);                                                                        \
        KU_HSUM(sd, sq);                                                                        \
        gx[t] += sx;                                                                            \
        gdt[t] += sd;                                                                           \
        if ((t & 63) == 0)                                                                      \
            for (k = 0; k < NS; k++) { gA[k] += ga[k]; ga[k] = 0.0f; }                          \
    }                                                                                           \
}

KU_DEFINE_BACKWARD(4)
KU_DEFINE_BACKWARD(8)
KU_DEFINE_BACKWARD(16)
#undef KU_DEFINE_FORWARD
#undef KU_DEFINE_BACKWARD
#undef KU_HSUM
#endif /* !KU_VECTOR_EXT */

#ifdef KU_VECTOR_EXT
/* ---- The same kernels with GNU vector extensions (gcc, clang): the NS states of a channel are
 * one or two SIMD registers for the whole time loop (the loops above keep them in memory). The
 * arithmetic and the summation order are those of the loops above. */

static inline kf8 KNAME(kv_exp8)(kf8 x)
{
    const kf8 zero = {0};
    ki8 below = x < -86.5f, above = x > 88.0f, kb, bits;
    kf8 t, k, r, r2, p;
#ifdef KV_CLAMP8
    (void)below; (void)above;
    x = KV_CLAMP8(x, zero - 86.5f, zero + 88.0f);
#else
    x = (kf8)(((ki8)x & ~below) | ((ki8)(zero - 86.5f) & below));
    x = (kf8)(((ki8)x & ~above) | ((ki8)(zero + 88.0f) & above));
#endif
    t = x * 1.44269504088896341f + 12582912.0f;
    k = t - 12582912.0f;
    r = x - k * 0.693359375f;
    r = r + k * 2.12194440e-4f;
    r2 = r * r;
    p = zero + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r2 + r + 1.0f;
    kb = (ki8)t << 23;
    bits = (ki8)p + kb;
    return (kf8)bits;
}

static inline kf4 KNAME(kv_exp4)(kf4 x)
{
    const kf4 zero = {0};
    ki4 below = x < -86.5f, above = x > 88.0f, kb, bits;
    kf4 t, k, r, r2, p;
    x = (kf4)(((ki4)x & ~below) | ((ki4)(zero - 86.5f) & below));
    x = (kf4)(((ki4)x & ~above) | ((ki4)(zero + 88.0f) & above));
    t = x * 1.44269504088896341f + 12582912.0f;
    k = t - 12582912.0f;
    r = x - k * 0.693359375f;
    r = r + k * 2.12194440e-4f;
    r2 = r * r;
    p = zero + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r2 + r + 1.0f;
    kb = (ki4)t << 23;
    bits = (ki4)p + kb;
    return (kf4)bits;
}

static inline kf8 KNAME(kv_ld8)(const float *p) { kf8 v; memcpy(&v, p, sizeof v); return v; }
static inline kf4 KNAME(kv_ld4)(const float *p) { kf4 v; memcpy(&v, p, sizeof v); return v; }
static inline void KNAME(kv_st8)(float *p, kf8 v) { memcpy(p, &v, sizeof v); }
static inline void KNAME(kv_st4)(float *p, kf4 v) { memcpy(p, &v, sizeof v); }
/* Lane sums in the order of KU_HSUM: halves added, then quarters, then the last pair. */
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
static inline float KNAME(kv_sum4)(kf4 v)
{
    kf4 a = v + __builtin_shufflevector(v, v, 2, 3, 2, 3);
    return a[0] + a[1];
}
static inline float KNAME(kv_sum8)(kf8 v)
{
    kf4 a = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
    return KNAME(kv_sum4)(a);
}
#else
static inline float KNAME(kv_sum8)(kf8 v)
{
    float s0 = v[0] + v[4], s1 = v[1] + v[5], s2 = v[2] + v[6], s3 = v[3] + v[7];
    return (s0 + s2) + (s1 + s3);
}
static inline float KNAME(kv_sum4)(kf4 v) { return (v[0] + v[2]) + (v[1] + v[3]); }
#endif

static inline kf8 KNAME(kv_sel8)(ki8 m, kf8 a, kf8 b) /* m ? a : b, lane by lane */
{
    return (kf8)(((ki8)a & m) | ((ki8)b & ~m));
}

/* ku_prepare for 8 steps at a time; the same formulas, so the same values. */
static void KNAME(kv_prepare)(const float *u, const float *delta, float bias, int softplus,
                              int64_t l, float *dt, float *x, float *sig)
{
    const kf8 zero = {0};
    int64_t t = 0;
    if (softplus) {
        for (; t + 8 <= l; t += 8) {
            kf8 z = KNAME(kv_ld8)(delta + t) + bias, uu = KNAME(kv_ld8)(u + t);
            kf8 az = (kf8)((ki8)z & 0x7fffffff);
            kf8 e = KNAME(kv_exp8)(zero - az);
            kf8 sv = e / (2.0f + e), s2 = sv * sv, p, sp, inv, sg;
            ki8 big = z > 20.0f, pos = z > 0.0f, nonneg = z >= 0.0f;
            p = zero + 1.0f / 17;
            p = p * s2 + 1.0f / 15;
            p = p * s2 + 1.0f / 13;
            p = p * s2 + 1.0f / 11;
            p = p * s2 + 1.0f / 9;
            p = p * s2 + 1.0f / 7;
            p = p * s2 + 1.0f / 5;
            p = p * s2 + 1.0f / 3;
            p = p * s2 + 1.0f;
            sp = KNAME(kv_sel8)(pos, z, zero) + 2.0f * sv * p;
            sp = KNAME(kv_sel8)(big, z, sp);
            KNAME(kv_st8)(dt + t, sp);
            KNAME(kv_st8)(x + t, sp * uu);
            if (sig) {
                inv = 1.0f / (1.0f + e);
                sg = KNAME(kv_sel8)(nonneg, inv, e * inv);
                KNAME(kv_st8)(sig + t, KNAME(kv_sel8)(big, zero + 1.0f, sg));
            }
        }
    }
    if (t < l)
        KNAME(ku_prepare)(u + t, delta + t, bias, softplus, l - t, dt + t, x + t, sig ? sig + t : NULL);
}

/* FWD(name, vector type, width W, registers NV, NV==2 statement, load, exp, sum) */
#define KV_DEFINE_FORWARD(NAME, VF, W, TWO, LD, EXP, SUM)                                        \
static void KNAME(NAME)(const float *dt, const float *x, const float *A, const float *Bt,       \
                        const float *Ct, int64_t np, int64_t l, float *y, int accumulate)       \
{                                                                                               \
    const VF zero = {0};                                                                        \
    VF a0 = LD(A), h0 = zero, a1 = zero, h1 = zero;                                             \
    int64_t t;                                                                                  \
    (void)a1; (void)h1;                                                                         \
    TWO(a1 = LD(A + W);)                                                                        \
    for (t = 0; t < l; t++) {                                                                   \
        const float *bt = Bt + t * np, *ct = Ct + t * np;                                       \
        float dtt = dt[t], xt = x[t], yt;                                                       \
        VF p;                                                                                   \
        h0 = EXP(a0 * dtt) * h0 + LD(bt) * xt;                                                  \
        p = h0 * LD(ct);                                                                        \
        TWO(h1 = EXP(a1 * dtt) * h1 + LD(bt + W) * xt; p = p + h1 * LD(ct + W);)                \
        yt = SUM(p);                                                                            \
        y[t] = accumulate ? y[t] + yt : yt;                                                     \
    }                                                                                           \
}

#define KV_ONE(stmts)
#define KV_TWO(stmts) stmts

KV_DEFINE_FORWARD(kv_forward16, kf8, 8, KV_TWO, KNAME(kv_ld8), KNAME(kv_exp8), KNAME(kv_sum8))
KV_DEFINE_FORWARD(kv_forward8, kf8, 8, KV_ONE, KNAME(kv_ld8), KNAME(kv_exp8), KNAME(kv_sum8))
KV_DEFINE_FORWARD(kv_forward4, kf4, 4, KV_ONE, KNAME(kv_ld4), KNAME(kv_exp4), KNAME(kv_sum4))

/* Two channels of one group with 4 states each (the decoder's n = 4) in one 8-lane vector:
 * lanes 0-3 are channel 0's states, 4-7 channel 1's; B_t and C_t are shared. Same arithmetic
 * per lane as kv_forward4, so each channel's result equals a kv_forward4 run on its own. */
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
static void KNAME(kv_forward4x2)(const float *dt0, const float *x0, const float *dt1,
                                 const float *x1, const float *A0, const float *A1,
                                 const float *Bt, const float *Ct, int64_t l, float *y0, float *y1)
{
    const kf8 zero = {0};
    kf4 a0 = KNAME(kv_ld4)(A0), a1 = KNAME(kv_ld4)(A1);
    kf8 a = __builtin_shufflevector(a0, a1, 0, 1, 2, 3, 4, 5, 6, 7), h = zero;
    int64_t t;
    for (t = 0; t < l; t++) {
        kf4 b4 = KNAME(kv_ld4)(Bt + t * 4), c4 = KNAME(kv_ld4)(Ct + t * 4);
        kf8 bb = __builtin_shufflevector(b4, b4, 0, 1, 2, 3, 0, 1, 2, 3);
        kf8 cc = __builtin_shufflevector(c4, c4, 0, 1, 2, 3, 0, 1, 2, 3);
        kf8 dtv = {dt0[t], dt0[t], dt0[t], dt0[t], dt1[t], dt1[t], dt1[t], dt1[t]};
        kf8 xv = {x0[t], x0[t], x0[t], x0[t], x1[t], x1[t], x1[t], x1[t]};
        kf8 p, q;
        h = KNAME(kv_exp8)(a * dtv) * h + bb * xv;
        p = h * cc;
        q = p + __builtin_shufflevector(p, p, 2, 3, 0, 1, 6, 7, 4, 5); /* (v0+v2, v1+v3) per half */
        y0[t] = q[0] + q[1];
        y1[t] = q[4] + q[5];
    }
}
#define KU_HAVE_PAIR4 1
#endif

#define KV_DEFINE_BACKWARD(NAME, VF, W, NS, TWO, LD, ST, EXP, SUM)                               \
static void KNAME(NAME)(const float *dt, const float *x, const float *A, const float *Bt,       \
                        const float *Ct, const float *gy, int64_t np, int64_t l, float *H,      \
                        float *E, float *gBt, float *gCt, float *gx, float *gdt, double *gA)    \
{                                                                                               \
    const VF zero = {0};                                                                        \
    VF a0 = LD(A), a1 = zero, h0 = zero, h1 = zero, lam0 = zero, lam1 = zero;                   \
    VF en0 = zero, en1 = zero, ga0 = zero, ga1 = zero;                                          \
    int64_t t;                                                                                  \
    int k;                                                                                      \
    (void)a1; (void)h1; (void)lam1; (void)en1; (void)ga1;                                       \
    TWO(a1 = LD(A + W);)                                                                        \
    for (t = 0; t < l; t++) {                                                                   \
        const float *bt = Bt + t * np;                                                          \
        float dtt = dt[t], xt = x[t];                                                           \
        VF e0 = EXP(a0 * dtt);                                                                  \
        h0 = e0 * h0 + LD(bt) * xt;                                                             \
        ST(E + t * NS, e0);                                                                     \
        ST(H + t * NS, h0);                                                                     \
        TWO(VF e1 = EXP(a1 * dtt); h1 = e1 * h1 + LD(bt + W) * xt;                              \
            ST(E + t * NS + W, e1); ST(H + t * NS + W, h1);)                                    \
    }                                                                                           \
    for (t = l - 1; t >= 0; t--) {                                                              \
        const float *bt = Bt + t * np, *ct = Ct + t * np;                                       \
        float *gbt = gBt + t * np, *gct = gCt + t * np;                                         \
        const float *ht = H + t * NS, *et = E + t * NS, *hp = H + (t - 1) * NS;                 \
        float g = gy[t], xt = x[t], dtt = dt[t];                                                \
        VF e = LD(et), q, sb, sq;                                                               \
        lam0 = en0 * lam0 + LD(ct) * g;                                                         \
        ST(gct, LD(gct) + LD(ht) * g);                                                          \
        ST(gbt, LD(gbt) + lam0 * xt);                                                           \
        sb = LD(bt) * lam0;                                                                     \
        q = lam0 * e * LD(hp);                                                                  \
        sq = q * a0;                                                                            \
        ga0 = ga0 + q * dtt;                                                                    \
        en0 = e;                                                                                \
        TWO(e = LD(et + W);                                                                     \
            lam1 = en1 * lam1 + LD(ct + W) * g;                                                 \
            ST(gct + W, LD(gct + W) + LD(ht + W) * g);                                          \
            ST(gbt + W, LD(gbt + W) + lam1 * xt);                                               \
            sb = sb + LD(bt + W) * lam1;                                                        \
            q = lam1 * e * LD(hp + W);                                                          \
            sq = sq + q * a1;                                                                   \
            ga1 = ga1 + q * dtt;                                                                \
            en1 = e;)                                                                           \
        gx[t] += SUM(sb);                                                                       \
        gdt[t] += SUM(sq);                                                                      \
        if ((t & 63) == 0) {                                                                    \
            for (k = 0; k < W; k++) gA[k] += ga0[k];                                            \
            TWO(for (k = 0; k < W; k++) gA[W + k] += ga1[k];)                                   \
            ga0 = zero;                                                                         \
            TWO(ga1 = zero;)                                                                    \
        }                                                                                       \
    }                                                                                           \
}

KV_DEFINE_BACKWARD(kv_backward16, kf8, 8, 16, KV_TWO, KNAME(kv_ld8), KNAME(kv_st8), KNAME(kv_exp8),
                   KNAME(kv_sum8))
KV_DEFINE_BACKWARD(kv_backward8, kf8, 8, 8, KV_ONE, KNAME(kv_ld8), KNAME(kv_st8), KNAME(kv_exp8),
                   KNAME(kv_sum8))
KV_DEFINE_BACKWARD(kv_backward4, kf4, 4, 4, KV_ONE, KNAME(kv_ld4), KNAME(kv_st4), KNAME(kv_exp4),
                   KNAME(kv_sum4))

#undef KV_ONE
#undef KV_TWO
#undef KV_DEFINE_FORWARD
#undef KV_DEFINE_BACKWARD
#define KU_PREPARE KNAME(kv_prepare)
#define KU_FWD16 KNAME(kv_forward16)
#define KU_FWD8 KNAME(kv_forward8)
#define KU_FWD4 KNAME(kv_forward4)
#define KU_BWD16 KNAME(kv_backward16)
#define KU_BWD8 KNAME(kv_backward8)
#define KU_BWD4 KNAME(kv_backward4)
#else
#define KU_PREPARE KNAME(ku_prepare)
#define KU_FWD16 KNAME(ku_forward_block16)
#define KU_FWD8 KNAME(ku_forward_block8)
#define KU_FWD4 KNAME(ku_forward_block4)
#define KU_BWD16 KNAME(ku_backward_block16)
#define KU_BWD8 KNAME(ku_backward_block8)
#define KU_BWD4 KNAME(ku_backward_block4)
#endif

static void KNAME(ku_forward_row)(const float *dt, const float *x, const float *A,
                                  const float *Bt, const float *Ct, int64_t np, int64_t l,
                                  float *y)
{
    int64_t s;
    int ns = np >= 16 ? 16 : (int)np;
    for (s = 0; s < np; s += ns) {
        if (ns == 16)
            KU_FWD16(dt, x, A + s, Bt + s, Ct + s, np, l, y, s > 0);
        else if (ns == 8)
            KU_FWD8(dt, x, A + s, Bt + s, Ct + s, np, l, y, s > 0);
        else
            KU_FWD4(dt, x, A + s, Bt + s, Ct + s, np, l, y, s > 0);
    }
}

static void KNAME(ku_backward_row)(const float *dt, const float *x, const float *A,
                                   const float *Bt, const float *Ct, const float *gy, int64_t np,
                                   int64_t l, float *H, float *E, float *gBt, float *gCt,
                                   float *gx, float *gdt, double *gA)
{
    int64_t s;
    int ns = np >= 16 ? 16 : (int)np;
    for (s = 0; s < np; s += ns) {
        if (ns == 16)
            KU_BWD16(dt, x, A + s, Bt + s, Ct + s, gy, np, l, H, E, gBt + s,
                                       gCt + s, gx, gdt, gA + s);
        else if (ns == 8)
            KU_BWD8(dt, x, A + s, Bt + s, Ct + s, gy, np, l, H, E, gBt + s,
                                      gCt + s, gx, gdt, gA + s);
        else
            KU_BWD4(dt, x, A + s, Bt + s, Ct + s, gy, np, l, H, E, gBt + s,
                                      gCt + s, gx, gdt, gA + s);
    }
}

/* The end of a row's backward: gu = gx dt + D gy; gdt += gx u, times sigmoid(z) after softplus;
 * gdelta = gdt. Returns sum_t gy u (for gD) and sum_t gdelta (for delta_bias) in sums[0..1],
 * summed in 8 lanes per 256 steps and then in double, in a fixed order. */
static void KNAME(ku_finish_row)(const float *u, const float *gy, const float *dt,
                                 const float *sig, const float *gx, const float *gdt, float D,
                                 int64_t l, float *gu, float *gdelta, double *sums)
{
    float su[8], sd[8];
    double acc_u = 0.0, acc_d = 0.0;
    int64_t t0, t;
    int j;
    for (t0 = 0; t0 < l; t0 += 256) {
        int64_t t1 = t0 + 256 < l ? t0 + 256 : l;
        for (j = 0; j < 8; j++) { su[j] = 0.0f; sd[j] = 0.0f; }
        for (t = t0; t + 8 <= t1; t += 8) {
            for (j = 0; j < 8; j++) {
                float g = gy[t + j], v = gx[t + j];
                float d = gdt[t + j] + v * u[t + j];
                d = sig ? d * sig[t + j] : d;
                gu[t + j] = v * dt[t + j] + D * g;
                gdelta[t + j] = d;
                su[j] += g * u[t + j];
                sd[j] += d;
            }
        }
        for (; t < t1; t++) {
            float g = gy[t], v = gx[t];
            float d = gdt[t] + v * u[t];
            d = sig ? d * sig[t] : d;
            gu[t] = v * dt[t] + D * g;
            gdelta[t] = d;
            su[0] += g * u[t];
            sd[0] += d;
        }
        for (j = 0; j < 8; j++) { acc_u += su[j]; acc_d += sd[j]; }
    }
    sums[0] = acc_u;
    sums[1] = acc_d;
}


/* The forward of two rows (channels c, c+1 of one group) with np = 4. */
static void KNAME(ku_forward_pair4)(const float *dt0, const float *x0, const float *dt1,
                                    const float *x1, const float *A0, const float *A1,
                                    const float *Bt, const float *Ct, int64_t l, float *y0,
                                    float *y1)
{
#if defined(KU_VECTOR_EXT) && defined(KU_HAVE_PAIR4)
    KNAME(kv_forward4x2)(dt0, x0, dt1, x1, A0, A1, Bt, Ct, l, y0, y1);
#else
    KNAME(ku_forward_row)(dt0, x0, A0, Bt, Ct, 4, l, y0);
    KNAME(ku_forward_row)(dt1, x1, A1, Bt, Ct, 4, l, y1);
#endif
}

/* y = exp(x) elementwise with the kernels' exp (for the accuracy tests). */
static void KNAME(ku_exp_array)(const float *x, float *y, int64_t n)
{
    int64_t i = 0;
#ifdef KU_VECTOR_EXT
    for (; i + 8 <= n; i += 8) KNAME(kv_st8)(y + i, KNAME(kv_exp8)(KNAME(kv_ld8)(x + i)));
#endif
    for (; i < n; i++) y[i] = KNAME(ku_exp)(x[i]);
}

/* A kernel table for scan.c. */
static const struct ku_kernels KNAME(ku_table) = {
    KU_PREPARE, KNAME(ku_forward_row), KNAME(ku_backward_row), KNAME(ku_finish_row),
    KNAME(ku_exp_array), KNAME(ku_forward_pair4)
};

#undef KU_PREPARE
#undef KU_FWD16
#undef KU_FWD8
#undef KU_FWD4
#undef KU_BWD16
#undef KU_BWD8
#undef KU_BWD4
#undef KU_HAVE_PAIR4
#undef KNAME
#undef KN1
#undef KN2
