/* Row-wise float32 kernels for the decode step, where one ATen op costs more in dispatch than in arithmetic.
 *
 * rotary: x * cos + roll(x, half) * signed_sin, rounding each product and the sum as torch does: bit-identical.
 * silu_mul: silu(gate) * up over a fused [gate | up] row; exp is evaluated as in vector_math.h, within ~2 ulp
 * of torch's.
 *
 * rms_norm: out = x * (1 / sqrt(mean(x^2) + eps)) * w, rounding after each product as torch does. The mean
 * is accumulated in double where torch sums in float32: the two differ by about 1 ulp of the scale.
 * Each row is computed alone, so a row's result never depends on the batch it is in.
 */
#include <math.h>
#include <stdint.h>

#include "exports.h"
#include "target.h"
#include "vector_math.h"

static void rms_norm_row(const float *x, int64_t dim, const float *w, float eps, int unit_offset, float *out) {
    double sums[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= dim; i += 8)
        for (int lane = 0; lane < 8; lane++) sums[lane] += (double)x[i + lane] * (double)x[i + lane];
    double total = 0;
    for (; i < dim; i++) total += (double)x[i] * (double)x[i];
    for (int lane = 0; lane < 8; lane++) total += sums[lane];
    const float scale = (float)(1.0 / sqrt(total / (double)dim + (double)eps));
    if (unit_offset) {
        for (i = 0; i < dim; i++) out[i] = (x[i] * scale) * (1.0f + w[i]);
    } else {
        for (i = 0; i < dim; i++) out[i] = (x[i] * scale) * w[i];
    }
}

int tm_rms_norm(const float *x, int64_t rows, int64_t dim, const float *w, float eps, int unit_offset, float *out,
                int threads) {
    if (rows < 0 || dim <= 0) return 1;
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * dim > 65536)
    for (int64_t row = 0; row < rows; row++) rms_norm_row(x + row * dim, dim, w, eps, unit_offset, out + row * dim);
    return 0;
}

/* Index of each row's largest value, the first one on ties; a NaN counts as the largest (torch.argmax). */
#if defined(TM_AVX512)
static int64_t argmax_row(const float *x, int64_t n) {
    int64_t i = 0;
    __m512 best = _mm512_set1_ps(-INFINITY);
    __mmask16 nan = 0;
    for (; i + 16 <= n && !nan; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        best = _mm512_max_ps(best, v);
    }
    float top = _mm512_reduce_max_ps(best);
    for (; i < n && !nan; i++) {
        if (x[i] != x[i]) nan = 1;
        else if (x[i] > top) top = x[i];
    }
    const __m512 wanted = _mm512_set1_ps(top);
    for (i = 0; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        __mmask16 hit = nan ? _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) : _mm512_cmp_ps_mask(v, wanted, _CMP_EQ_OQ);
        if (hit) return i + __builtin_ctz((unsigned)hit);
    }
    for (; i < n; i++)
        if (nan ? x[i] != x[i] : x[i] == top) return i;
    return 0;
}
#else
static int64_t argmax_row(const float *x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 0; i < n; i++) {
        if (x[i] != x[i]) return i;
        if (x[i] > x[best]) best = i;
    }
    return best;
}
#endif

int tm_argmax_rows(const float *x, int64_t rows, int64_t n, int64_t *out, int threads) {
    if (rows < 0 || n <= 0) return 1;
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * n > 262144)
    for (int64_t row = 0; row < rows; row++) out[row] = argmax_row(x + row * n, n);
    return 0;
}

/* out[b, h, l, :] = rotary of x[b, h, l, :] (strides xs: b, h, l; last stride 1) with cos/signed_sin rows at
 * (b * cs_b + l * cs_l) (cs_b 0 when one table serves the batch); out is contiguous [batch, heads, seq, dim]. */
int tm_rotary(const float *x, const int64_t *xs, int64_t batch, int64_t heads, int64_t seq, int64_t dim,
              const float *cos, const float *signed_sin, int64_t cs_b, int64_t cs_l, float *out, int threads) {
    if (batch < 0 || heads < 0 || seq < 0 || dim <= 0 || dim % 2) return 1;
    const int64_t half = dim / 2, rows = batch * heads * seq;
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * dim > 65536)
    for (int64_t row = 0; row < rows; row++) {
        const int64_t b = row / (heads * seq), h = row / seq % heads, l = row % seq;
        const float *src = x + b * xs[0] + h * xs[1] + l * xs[2];
        const float *c = cos + b * cs_b + l * cs_l, *s = signed_sin + b * cs_b + l * cs_l;
        float *dst = out + row * dim;
        for (int64_t d = 0; d < half; d++) dst[d] = src[d] * c[d] + src[d + half] * s[d];
        for (int64_t d = half; d < dim; d++) dst[d] = src[d] * c[d] + src[d - half] * s[d];
    }
    return 0;
}

/* out[r, :] = silu(gate_up[r, :inter]) * gate_up[r, inter:] */
int tm_silu_mul(const float *gate_up, int64_t rows, int64_t inter, float *out, int threads) {
    if (rows < 0 || inter <= 0) return 1;
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * inter > 65536)
    for (int64_t r = 0; r < rows; r++) {
        const float *gate = gate_up + r * 2 * inter, *up = gate + inter;
        float *dst = out + r * inter;
        int64_t i = 0;
#if defined(TM_AVX512)
        const __m512 one = _mm512_set1_ps(1.0f);
        for (; i + 16 <= inter; i += 16) {
            __m512 g = _mm512_loadu_ps(gate + i);
            /* e = exp(-|g|) <= 1 never overflows: silu = g / (1 + e) for g >= 0, g * e / (1 + e) below */
            __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(g)));
            __mmask16 negative = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_LT_OQ);
            __m512 numerator = _mm512_mask_mul_ps(g, negative, g, e);
            __m512 silu = _mm512_div_ps(numerator, _mm512_add_ps(one, e));
            _mm512_storeu_ps(dst + i, _mm512_mul_ps(silu, _mm512_loadu_ps(up + i)));
        }
#endif
        for (; i < inter; i++) {
            float g = gate[i];
            dst[i] = (g / (1.0f + expf(-g))) * up[i];
        }
    }
    return 0;
}
