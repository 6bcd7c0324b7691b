/* The closed-form chunk loss of closed_form.py in three passes over each row: forward KL at one
 * temperature and cross-entropy (label smoothing) at another, on dense teacher logits.
 *
 * Per row of V logits: pass 1 finds max s and max t; pass 2 computes every exp once (student at the KL
 * temperature, teacher, student at the CE temperature when it differs) into a row scratch that stays in
 * L2, with their sums; pass 3 writes the gradient over s. The torch path makes about twelve passes over
 * a tile, each its own kernel. Values and gradients equal that path's to fp32 rounding
 * (tests/losses/fused/test_native.py). Built by native.py with the system C compiler; no OpenMP: rows are split
 * between Python threads, and ctypes releases the GIL during the call.
 *
 * A teacher logit of -inf is outside the teacher's support: the KL drops it from both distributions (the
 * student renormalised over the support), CE does not (signals.py's rule).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 512 /* elements summed in fp32 before they join the row's fp64 sum */

/* exp for x <= ~88, vectorisable (no calls, no branches): Cody-Waite reduction, Cephes' expf
 * polynomial, 2^n by the exponent bits. Below -87 it returns exp(-87) ~ 1.6e-38, not 0: every caller
 * adds it to a sum that is >= 1 (the row's maximum contributes exp(0)). Relative error ~2 ulp. */
static inline float kd_exp(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale;
    scale.i = ((int32_t)n + 127) << 23;
    return y * scale.f;
}

static float *scratch_for(int64_t n) {
    static __thread float *buffer = NULL;
    static __thread int64_t capacity = 0;
    if (n > capacity) {
        free(buffer);
        buffer = (float *)malloc((size_t)n * sizeof(float));
        capacity = buffer ? n : 0;
    }
    return buffer;
}

/* a max reduction vectorises only where NaN need not be ordered: none is in a row of logits */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("finite-math-only")))
#endif
static float row_max(const float *restrict x, int64_t n) {
    float m = -INFINITY;
    for (int64_t v = 0; v < n; v++)
        m = x[v] > m ? x[v] : m;
    return m;
}

/* e[v] = exp((x[v] - top) * inv); returns the sum and adds sum of the exponents' arguments into *args */
static double exp_sum(const float *restrict x, float *restrict e, int64_t n, float top, float inv,
                      double *args) {
    double total = 0, arg_total = 0;
    for (int64_t b = 0; b < n; b += BLOCK) {
        const int64_t end = b + BLOCK < n ? b + BLOCK : n;
        float bt = 0, ba = 0;
        for (int64_t v = b; v < end; v++) {
            const float d = (x[v] - top) * inv;
            const float ex = kd_exp(d);
            e[v] = ex;
            bt += ex;
            ba += d;
        }
        total += bt;
        arg_total += ba;
    }
    *args = arg_total;
    return total;
}

/* The teacher's side of one row: eu[v] = exp(du) on its support (0 off it), du = (t - mt) * inv; the
 * sums of eu, of ek on the support and of eu * (du - dk), dk = (s - ms) * inv; returns the ids off the
 * support. */
static int64_t teacher_sums(const float *restrict t, const float *restrict s, const float *restrict ek,
                            float *restrict eu, int64_t n, float mt, float ms, float inv, double *su,
                            double *ssup, double *acc) {
    double tu = 0, tsup = 0, tacc = 0, gaps = 0;
    for (int64_t b = 0; b < n; b += BLOCK) {
        const int64_t end = b + BLOCK < n ? b + BLOCK : n;
        float bu = 0, bsup = 0, bacc = 0, bg = 0;
        for (int64_t v = b; v < end; v++) {
            const float in = t[v] != -INFINITY ? 1.0f : 0.0f;
            const float du0 = (t[v] - mt) * inv;
            const float du = du0 < -87.0f ? -87.0f : du0;
            const float xu = kd_exp(du) * in;
            const float dk = (s[v] - ms) * inv;
            eu[v] = xu;
            bu += xu;
            bsup += ek[v] * in;
            bacc += xu * (du - dk);
            bg += 1.0f - in;
        }
        tu += bu; tsup += bsup; tacc += bacc; gaps += bg;
    }
    *su = tu; *ssup = tsup; *acc = tacc;
    return (int64_t)gaps;
}

/* Rows [0, rows) of s (row stride ss) and t (row stride ts, NULL without a KL term), targets y (NULL
 * without CE). kl_coef, ce_coef: each term's gradient coefficient c (weight * scale / T), already times
 * 1/count. Writes d loss / d s over s and each row's KL and CE values into kl_out, ce_out (NULL when
 * absent). Returns 0, or 1 when the scratch could not be allocated (s untouched). */
int kd_closed_form(float *s, int64_t ss, const float *t, int64_t ts, const int64_t *y, int64_t rows,
                   int64_t V, float inv_tk, float inv_tc, double kl_coef, double ce_coef, double eps,
                   double *kl_out, double *ce_out) {
    const int has_kl = t != NULL, has_ce = y != NULL;
    const int same_t = !has_kl || !has_ce || inv_tk == inv_tc;
    float *ek = scratch_for(3 * V);
    if (ek == NULL)
        return 1;
    float *eu = ek + V, *ec = same_t ? ek : ek + 2 * V;
    const float inv_s = has_kl ? inv_tk : inv_tc; /* the student's temperature of ek */
    for (int64_t r = 0; r < rows; r++) {
        float *restrict sr = s + r * ss;
        const float *restrict tr = has_kl ? t + r * ts : NULL;
        const float ms = row_max(sr, V);
        double args = 0, su = 0, ssup = 0, acc = 0, sdc = 0;
        int64_t gaps = 0;
        const double sk = exp_sum(sr, ek, V, ms, inv_s, &args);
        double sc = sk;
        sdc = args;
        if (has_kl) {
            gaps = teacher_sums(tr, sr, ek, eu, V, row_max(tr, V), ms, inv_tk, &su, &ssup, &acc);
            kl_out[r] = acc / su - log(su) + log(ssup);
        }
        if (!same_t)
            sc = exp_sum(sr, ec, V, ms, inv_tc, &sdc);
        if (has_ce) {
            const double picked = ((double)sr[y[r]] - ms) * inv_tc;
            const double ce_y = log(sc) - picked;
            ce_out[r] = eps != 0 ? (1 - eps) * ce_y + eps * (log(sc) - sdc / (double)V) : ce_y;
        }
        /* gradient: kl_coef (ek in / ssup - eu / su) + ce_coef (ec / sc - eps / V - (1-eps) [v = y]) */
        const float a = has_kl ? (float)(kl_coef / ssup) : 0.0f;
        const float bcoef = has_kl ? (float)(kl_coef / su) : 0.0f;
        const float cc = has_ce ? (float)(ce_coef / sc) : 0.0f;
        const float shift = has_ce ? (float)(ce_coef * eps / (double)V) : 0.0f;
        if (!has_kl) {
            for (int64_t v = 0; v < V; v++)
                sr[v] = ec[v] * cc - shift;
        } else if (same_t && gaps == 0) {
            const float k = a + cc;
            for (int64_t v = 0; v < V; v++)
                sr[v] = ek[v] * k - eu[v] * bcoef - shift;
        } else if (same_t) {
            for (int64_t v = 0; v < V; v++)
                sr[v] = ek[v] * ((tr[v] != -INFINITY ? a : 0.0f) + cc) - eu[v] * bcoef - shift;
        } else {
            for (int64_t v = 0; v < V; v++)
                sr[v] = ek[v] * (tr[v] != -INFINITY ? a : 0.0f) - eu[v] * bcoef + ec[v] * cc - shift;
        }
        if (has_ce)
            sr[y[r]] -= (float)(ce_coef * (1 - eps));
    }
    return 0;
}
