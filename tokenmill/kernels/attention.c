/* Attention for a few query rows per sequence (decode steps, speculative verification), float32.
 *
 * SDPA's CPU kernel is built for long queries: for one query row per head it costs ~0.2 ms per layer at batch 8
 * in dispatch and blocking, several times the arithmetic. This reads keys/values where the cache keeps them:
 * either [batch, kv_heads, seq, dim] tensors of any strides, or, for the paged cache, pool rows chosen per
 * column by a slot table, so no gathered copy of the context is made. Each (sequence, query row, head) is
 * computed alone: a row's result does not depend on the batch around it.
 *
 * Softmax in three passes over the visible keys: scores (and their max), exp(score - max) summed, then the
 * weighted sum of values divided by that sum, as the usual definition reads.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "vector_math.h"

#if defined(__AVX512F__)

static inline float dot(const float *a, const float *b, int64_t dim) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t d = 0;
    for (; d + 32 <= dim; d += 32) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + d), _mm512_loadu_ps(b + d), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + d + 16), _mm512_loadu_ps(b + d + 16), acc1);
    }
    if (d < dim) acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + d), _mm512_loadu_ps(b + d), acc0);
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

/* sum over s of weights[s] (0 where masked) times values row s, divided by total; dim <= 256 */
static inline void weighted_rows(const float *weights, float total, const float *base, const int64_t *offsets,
                                 int64_t columns, int64_t dim, float *out) {
    __m512 acc[16];
    const int vectors = (int)(dim / 16);
    for (int v = 0; v < vectors; v++) acc[v] = _mm512_setzero_ps();
    for (int64_t s = 0; s < columns; s++) {
        if (weights[s] == 0.0f) continue;
        __m512 weight = _mm512_set1_ps(weights[s]);
        const float *row = base + offsets[s];
        for (int v = 0; v < vectors; v++) acc[v] = _mm512_fmadd_ps(weight, _mm512_loadu_ps(row + 16 * v), acc[v]);
    }
    __m512 inverse = _mm512_set1_ps(1.0f / total);
    for (int v = 0; v < vectors; v++) _mm512_storeu_ps(out + 16 * v, _mm512_mul_ps(acc[v], inverse));
}

/* weights[s] = exp(weights[s] - max) in place (masked entries, -inf, become 0); returns their sum */
static inline float exp_shifted(float *weights, int64_t columns, float max) {
    __m512 shift = _mm512_set1_ps(max), sum = _mm512_setzero_ps();
    int64_t s = 0;
    for (; s + 16 <= columns; s += 16) {
        __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(weights + s), shift));
        _mm512_storeu_ps(weights + s, e);
        sum = _mm512_add_ps(sum, e);
    }
    if (s < columns) {
        __mmask16 tail = (__mmask16)((1u << (columns - s)) - 1);
        __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, weights + s), shift));
        e = _mm512_maskz_mov_ps(tail, e);
        _mm512_mask_storeu_ps(weights + s, tail, e);
        sum = _mm512_add_ps(sum, e);
    }
    return _mm512_reduce_add_ps(sum);
}
#define HAVE_VECTOR_ATTENTION 1
#endif

/* One query row of one head: out[dim] = softmax(scale * q.K^T over visible columns) V. */
static void attend_row(const float *q, const float *keys, const float *values, const int64_t *key_offsets,
                       const int64_t *value_offsets, const uint8_t *visible, int64_t mask_stride, int64_t columns,
                       int64_t dim, float scale, float *scores, float *out) {
    float max = -INFINITY;
    for (int64_t s = 0; s < columns; s++) {
        if (!visible[s * mask_stride]) {
            scores[s] = -INFINITY;
            continue;
        }
#ifdef HAVE_VECTOR_ATTENTION
        float score = dot(q, keys + key_offsets[s], dim) * scale;
#else
        float score = 0.0f;
        for (int64_t d = 0; d < dim; d++) score += q[d] * keys[key_offsets[s] + d];
        score *= scale;
#endif
        scores[s] = score;
        if (score > max) max = score;
    }
    if (max == -INFINITY) {  /* nothing visible (the mask builders never do this): zeros, not NaN */
        for (int64_t d = 0; d < dim; d++) out[d] = 0.0f;
        return;
    }
#ifdef HAVE_VECTOR_ATTENTION
    float total = exp_shifted(scores, columns, max);
    weighted_rows(scores, total, values, value_offsets, columns, dim, out);
#else
    float total = 0.0f;
    for (int64_t s = 0; s < columns; s++) total += scores[s] = expf(scores[s] - max);
    for (int64_t d = 0; d < dim; d++) {
        float acc = 0.0f;
        for (int64_t s = 0; s < columns; s++) acc += scores[s] * values[value_offsets[s] + d];
        out[d] = acc / total;
    }
#endif
}

/*
 * q [batch, heads, queries, dim] at strides (q_sb, q_sh, q_sq); head h reads kv head h / (heads / kv_heads).
 * Keys/values: element (b, g, s) starts at base + offset, offset = b * sb + g * sh + s * ss, or, with a slot
 * table ([batch, columns] int64), slots[b, s] * ss + g * sh. visible: uint8 mask (b, query, column) at strides
 * (m_sb, m_sq, m_ss), or NULL: every column visible (causal == 0) or column <= query (causal == 1: the
 * upper-left alignment of torch's `is_causal`, the same as the usual causal mask when queries == columns). out: [batch, queries, heads, dim] contiguous, the layout the output projection reads.
 * Returns 0, 1 for a shape this code does not take, 2 if out of memory.
 */
int tm_attention(const float *q, int64_t q_sb, int64_t q_sh, int64_t q_sq, const float *keys, const float *values,
                 const int64_t *k_strides, const int64_t *v_strides, const int64_t *slots, const uint8_t *visible,
                 const int64_t *mask_strides, int causal, int64_t batch, int64_t heads, int64_t kv_heads,
                 int64_t queries, int64_t columns, int64_t dim, float scale, float *out, int threads) {
    if (batch <= 0 || kv_heads <= 0 || heads % kv_heads || dim <= 0 || dim > 256 || dim % 16 || columns <= 0) return 1;
    const int64_t group = heads / kv_heads, tasks = batch * kv_heads;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed) if (tasks * queries * columns * dim > 32768)
    {
        /* per thread: scores, key and value row offsets, and an all-visible / causal mask row */
        float *scores = malloc(sizeof(float) * (size_t)columns);
        int64_t *offsets = malloc(sizeof(int64_t) * 2 * (size_t)columns);
        uint8_t *open = malloc((size_t)columns);
        if (!scores || !offsets || !open) {
            failed = 1;
        } else {
#pragma omp for schedule(static)
            for (int64_t task = 0; task < tasks; task++) {
                const int64_t b = task / kv_heads, g = task % kv_heads;
                for (int64_t s = 0; s < columns; s++) {
                    int64_t row = slots ? slots[b * columns + s] : s;
                    offsets[s] = (slots ? 0 : b * k_strides[0]) + g * k_strides[1] + row * k_strides[2];
                    offsets[columns + s] = (slots ? 0 : b * v_strides[0]) + g * v_strides[1] + row * v_strides[2];
                }
                for (int64_t i = 0; i < queries; i++) {
                    const uint8_t *mask_row;
                    int64_t mask_stride = 1;
                    if (visible) {
                        mask_row = visible + b * mask_strides[0] + i * mask_strides[1];
                        mask_stride = mask_strides[2];
                    } else {
                        int64_t last = causal ? i : columns - 1;
                        for (int64_t s = 0; s < columns; s++) open[s] = s <= last;
                        mask_row = open;
                    }
                    for (int64_t h = g * group; h < (g + 1) * group; h++)
                        attend_row(q + b * q_sb + h * q_sh + i * q_sq, keys, values, offsets, offsets + columns,
                                   mask_row, mask_stride, columns, dim, scale, scores,
                                   out + ((b * queries + i) * heads + h) * dim);
                }
            }
        }
        free(scores);
        free(offsets);
        free(open);
    }
    return failed ? 2 : 0;
}
