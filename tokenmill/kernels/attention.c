/* Attention over keys/values read where the cache keeps them, float32, for any number of query rows.
 *
 * Keys/values are either [batch, kv_heads, seq, dim] tensors of any strides or, for the paged cache, pool rows
 * chosen per column by a slot table, so no gathered copy of the context is made. SDPA's CPU kernel costs
 * ~0.2 ms per layer at batch 8 for one query row per head (dispatch and blocking), and for a causal prefill it
 * computes the masked half as well; this visits only the columns a row can see.
 *
 * Work is split into tasks of (sequence, kv head, block of queries): every query head of the group and every
 * query of the block reads each key and value once from cache, 16 keys at a time. Each (sequence, query row,
 * head) is still computed alone and in the same order whatever the tile around it (scores key by key, the
 * weighted sum of values in column order), so a row's result depends neither on its batch nor on how many
 * queries are attended together.
 *
 * Softmax in three passes over the visible keys: scores (and their max), exp(score - max) summed, then the
 * weighted sum of values divided by that sum, as the usual definition reads.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exports.h"
#include "target.h"
#include "vector_math.h"

/* score rows held per task: a block of queries is sized so its scores stay in L2 (64 KiB) */
#define SCORE_BUDGET 16384
#define MAX_BLOCK_QUERIES 16

typedef struct {
    const float *keys, *values;
    const int64_t *key_offsets, *value_offsets; /* element offset of column s's row, for this task's (b, g) */
    int64_t dim;
    float scale;
} kv_view;

/* The visible columns of one query row: [lo, hi) bounds them, `mask` (NULL: all of [lo, hi)) refines. */
typedef struct {
    int64_t lo, hi;
    const uint8_t *mask;
    int64_t mask_stride;
} row_view;

static row_view visible_range(const uint8_t *visible, const int64_t *mask_strides, int causal, int64_t b,
                              int64_t i, int64_t columns) {
    row_view row = {0, causal && !visible ? (i + 1 < columns ? i + 1 : columns) : columns, NULL, 1};
    if (!visible) return row;
    row.mask = visible + b * mask_strides[0] + i * mask_strides[1];
    row.mask_stride = mask_strides[2];
    while (row.lo < row.hi && !row.mask[row.lo * row.mask_stride]) row.lo++;
    while (row.hi > row.lo && !row.mask[(row.hi - 1) * row.mask_stride]) row.hi--;
    return row;
}

#if defined(TM_AVX512)

static const float ZERO_ROW[256] __attribute__((aligned(64)));

/* the rows of columns c0 .. c0 + n - 1 (n <= 16); a zero row stands in for the missing ones */
static inline void chunk_keys(const kv_view *kv, int64_t c0, int n, const float **key) {
    for (int j = 0; j < 16; j++) key[j] = j < n ? kv->keys + kv->key_offsets[c0 + j] : ZERO_ROW;
}

/* scores[0..n) = scale * q . key[j], -inf where the row cannot see column c0 + j */
static inline void score_chunk(const float *q, const float *const *key, const kv_view *kv, const row_view *row,
                               int64_t c0, int n, float *scores) {
    __m512 acc[16];
    for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
    for (int64_t d = 0; d < kv->dim; d += 16) {
        __m512 qv = _mm512_loadu_ps(q + d);
        for (int j = 0; j < 16; j++) acc[j] = _mm512_fmadd_ps(_mm512_loadu_ps(key[j] + d), qv, acc[j]);
    }
    const __m512 scaled = _mm512_mul_ps(reduce16(acc), _mm512_set1_ps(kv->scale));
    if (!row->mask && c0 >= row->lo && c0 + n <= row->hi) {  /* every column of the chunk visible */
        _mm512_mask_storeu_ps(scores, (__mmask16)((1u << n) - 1), scaled);
        return;
    }
    float sums[16];
    _mm512_storeu_ps(sums, scaled);
    for (int j = 0; j < n; j++) {
        int64_t s = c0 + j;
        int seen = s >= row->lo && s < row->hi && (!row->mask || row->mask[s * row->mask_stride]);
        scores[j] = seen ? sums[j] : -INFINITY;
    }
}

/* scores in place -> exp(score - max) over [0, span); returns their sum (0: nothing visible) */
static float softmax_numerators(float *scores, int64_t span) {
    __m512 top = _mm512_set1_ps(-INFINITY);
    int64_t s = 0;
    for (; s + 16 <= span; s += 16) top = _mm512_max_ps(top, _mm512_loadu_ps(scores + s));
    float max = _mm512_reduce_max_ps(top);
    for (; s < span; s++) max = scores[s] > max ? scores[s] : max;
    if (max == -INFINITY) {
        memset(scores, 0, sizeof(float) * (size_t)span);
        return 0.0f;
    }
    __m512 shift = _mm512_set1_ps(max), sum = _mm512_setzero_ps();
    for (s = 0; s + 16 <= span; s += 16) {
        __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(scores + s), shift));
        _mm512_storeu_ps(scores + s, e);
        sum = _mm512_add_ps(sum, e);
    }
    if (s < span) {
        __mmask16 tail = (__mmask16)((1u << (span - s)) - 1);
        __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, scores + s), shift));
        e = _mm512_maskz_mov_ps(tail, e);
        _mm512_mask_storeu_ps(scores + s, tail, e);
        sum = _mm512_add_ps(sum, e);
    }
    return _mm512_reduce_add_ps(sum);
}

/* out[t] = sum over columns of weights[t][s] * value(lo + s) / totals[t], for T rows sharing each value row
 * (T * vectors <= 16 accumulators). A column every row gives zero weight is skipped: it adds nothing, and a
 * masked slot may hold anything. */
static inline __attribute__((always_inline)) void weighted_values(const int T, const int vectors,
                                                                 float *const *weights, const float *totals,
                                                                 const kv_view *kv, int64_t lo, int64_t span,
                                                                 float *const *out) {
    __m512 acc[16];
    for (int a = 0; a < T * vectors; a++) acc[a] = _mm512_setzero_ps();
    for (int64_t s = 0; s < span; s++) {
        int any = 0;
        for (int t = 0; t < T; t++) any |= weights[t][s] != 0.0f;
        if (!any) continue;
        const float *row = kv->values + kv->value_offsets[lo + s];
        for (int v = 0; v < vectors; v++) {
            __m512 value = _mm512_loadu_ps(row + 16 * v);
            for (int t = 0; t < T; t++)
                acc[t * vectors + v] = _mm512_fmadd_ps(_mm512_set1_ps(weights[t][s]), value, acc[t * vectors + v]);
        }
    }
    for (int t = 0; t < T; t++) {
        __m512 inverse = _mm512_set1_ps(totals[t] > 0.0f ? 1.0f / totals[t] : 0.0f);
        for (int v = 0; v < vectors; v++) _mm512_storeu_ps(out[t] + 16 * v, _mm512_mul_ps(acc[t * vectors + v], inverse));
    }
}

/* rows [0, count) of a block, T at a time; a partial tile repeats its first row and writes the copies to `sink` */
static void values_for_rows(int64_t count, float *const *weights, const float *totals, const kv_view *kv,
                            int64_t lo, int64_t span, float *const *out) {
    float sink[256];
    const int vectors = (int)(kv->dim / 16);
    const int T = vectors == 4 ? 4 : vectors == 8 ? 2 : vectors <= 2 ? 8 : 1;
    for (int64_t r0 = 0; r0 < count; r0 += T) {
        float *tile_weights[8], *tile_out[8];
        float tile_totals[8];
        for (int t = 0; t < T; t++) {
            int here = r0 + t < count;
            tile_weights[t] = weights[here ? r0 + t : r0];
            tile_out[t] = here ? out[r0 + t] : sink;
            tile_totals[t] = totals[here ? r0 + t : r0];
        }
        switch (vectors) {
        case 1: weighted_values(8, 1, tile_weights, tile_totals, kv, lo, span, tile_out); break;
        case 2: weighted_values(8, 2, tile_weights, tile_totals, kv, lo, span, tile_out); break;
        case 4: weighted_values(4, 4, tile_weights, tile_totals, kv, lo, span, tile_out); break;
        case 8: weighted_values(2, 8, tile_weights, tile_totals, kv, lo, span, tile_out); break;
        default: weighted_values(1, vectors, tile_weights, tile_totals, kv, lo, span, tile_out); break;
        }
    }
}

/* Per thread, kept between calls (a decode step calls this once per layer): scores for a block's rows,
 * pointers into them, and the row offsets of one (sequence, kv head). */
typedef struct {
    float *scores, *totals;
    float **weights, **out;
    const float **q;
    row_view *rows;
    int64_t *offsets;
    int64_t score_capacity, row_capacity, column_capacity;
} workspace;

static __thread workspace thread_space;

static int resize(void **buffer, int64_t count, size_t size) {
    void *fresh = realloc(*buffer, size * (size_t)count);
    if (fresh) *buffer = fresh;
    return fresh != NULL;
}

/* this thread's workspace, grown to hold `rows` rows over `columns` columns; NULL if out of memory */
static workspace *workspace_for(int64_t rows, int64_t columns) {
    workspace *w = &thread_space;
    if (rows * columns > w->score_capacity) {
        if (!resize((void **)&w->scores, rows * columns, sizeof(float))) return NULL;
        w->score_capacity = rows * columns;
    }
    if (columns > w->column_capacity) {
        if (!resize((void **)&w->offsets, 2 * columns, sizeof(int64_t))) return NULL;
        w->column_capacity = columns;
    }
    if (rows > w->row_capacity) {
        if (!(resize((void **)&w->totals, rows, sizeof(float)) && resize((void **)&w->weights, rows, sizeof(float *))
              && resize((void **)&w->out, rows, sizeof(float *)) && resize((void **)&w->q, rows, sizeof(float *))
              && resize((void **)&w->rows, rows, sizeof(row_view))))
            return NULL;
        w->row_capacity = rows;
    }
    return w;
}

/* one task: `count` rows (queries x heads of one kv group) whose visible columns lie within [lo, hi) */
static void attend_block(workspace *w, int64_t count, const kv_view *kv, int64_t lo, int64_t hi) {
    const int64_t span = hi - lo;
    for (int64_t r = 0; r < count; r++) w->weights[r] = w->scores + r * span;
    for (int64_t c0 = lo; c0 < hi; c0 += 16) {
        const int n = hi - c0 < 16 ? (int)(hi - c0) : 16;
        const float *key[16];
        chunk_keys(kv, c0, n, key);
        for (int64_t r = 0; r < count; r++) {
            const row_view *row = &w->rows[r];
            if (c0 + n <= row->lo || c0 >= row->hi) {
                for (int j = 0; j < n; j++) w->weights[r][c0 - lo + j] = -INFINITY;
            } else {
                score_chunk(w->q[r], key, kv, row, c0, n, w->weights[r] + (c0 - lo));
            }
        }
    }
    for (int64_t r = 0; r < count; r++) w->totals[r] = softmax_numerators(w->weights[r], span);
    values_for_rows(count, w->weights, w->totals, kv, lo, span, w->out);
}

#define HAVE_VECTOR_ATTENTION 1
#endif

#ifndef HAVE_VECTOR_ATTENTION
/* One query row of one head, scalar: out[dim] = softmax(scale * q.K^T over the row's columns) V. */
static void attend_row(const float *q, const float *keys, const float *values, const int64_t *key_offsets,
                       const int64_t *value_offsets, const row_view *row, int64_t dim, float scale, float *scores,
                       float *out) {
    float max = -INFINITY;
    for (int64_t s = row->lo; s < row->hi; s++) {
        scores[s] = -INFINITY;
        if (row->mask && !row->mask[s * row->mask_stride]) continue;
        float score = 0.0f;
        for (int64_t d = 0; d < dim; d++) score += q[d] * keys[key_offsets[s] + d];
        scores[s] = score * scale;
        if (scores[s] > max) max = scores[s];
    }
    for (int64_t d = 0; d < dim; d++) out[d] = 0.0f;
    if (max == -INFINITY) return;  /* nothing visible (the mask builders never do this): zeros, not NaN */
    float total = 0.0f;
    for (int64_t s = row->lo; s < row->hi; s++) total += scores[s] = expf(scores[s] - max);
    for (int64_t s = row->lo; s < row->hi; s++)
        if (scores[s] != 0.0f)
            for (int64_t d = 0; d < dim; d++) out[d] += scores[s] * values[value_offsets[s] + d];
    for (int64_t d = 0; d < dim; d++) out[d] /= total;
}
#endif

/*
 * q [batch, heads, queries, dim] at strides (q_sb, q_sh, q_sq); head h reads kv head h / (heads / kv_heads).
 * Keys/values: element (b, g, s) starts at base + offset, offset = b * sb + g * sh + s * ss, or, with a slot
 * table ([batch, columns] int64), slots[b, s] * ss + g * sh. visible: uint8 mask (b, query, column) at strides
 * (m_sb, m_sq, m_ss), or NULL: every column visible (causal == 0) or column <= query (causal == 1: the
 * upper-left alignment of torch's `is_causal`, the same as the usual causal mask when queries == columns).
 * out: [batch, queries, heads, dim] contiguous, the layout the output projection reads.
 * Returns 0, 1 for a shape this code does not take, 2 if out of memory.
 */
int tm_attention(const float *q, int64_t q_sb, int64_t q_sh, int64_t q_sq, const float *keys, const float *values,
                 const int64_t *k_strides, const int64_t *v_strides, const int64_t *slots, const uint8_t *visible,
                 const int64_t *mask_strides, int causal, int64_t batch, int64_t heads, int64_t kv_heads,
                 int64_t queries, int64_t columns, int64_t dim, float scale, float *out, int threads) {
    if (batch <= 0 || kv_heads <= 0 || heads % kv_heads || dim <= 0 || dim > 256 || dim % 16 || columns <= 0
        || queries <= 0)
        return 1;
    const int64_t group = heads / kv_heads;
    int64_t block = SCORE_BUDGET / (group * columns);
    block = block < 1 ? 1 : block > MAX_BLOCK_QUERIES ? MAX_BLOCK_QUERIES : block;
    block = block > queries ? queries : block;
    const int64_t blocks = (queries + block - 1) / block, tasks = batch * kv_heads * blocks;
    int failed = 0;
#pragma omp parallel num_threads(threads > 0 ? threads : 1) reduction(| : failed) \
    if (tasks * queries * columns * dim > 32768)
    {
#ifdef HAVE_VECTOR_ATTENTION
        workspace *w = workspace_for(block * group, columns);
        int64_t *row_offsets = w ? w->offsets : NULL;
#else
        /* the scalar path keeps no workspace between calls */
        int64_t *row_offsets = malloc(sizeof(int64_t) * 2 * (size_t)columns);
        float *scores = malloc(sizeof(float) * (size_t)columns);
        if (!scores) { free(row_offsets); row_offsets = NULL; }
#endif
        int64_t offsets_for = -1; /* the (b, g) whose row offsets row_offsets holds */
        /* a thread short of memory still takes part in the loop (every thread must), but computes nothing */
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < tasks; task++) {
            if (!row_offsets) {
                failed = 1;
                continue;
            }
            const int64_t pair = task / blocks, b = pair / kv_heads, g = pair % kv_heads;
            const int64_t i0 = (task % blocks) * block, i1 = i0 + block < queries ? i0 + block : queries;
            if (offsets_for != pair) {
                for (int64_t s = 0; s < columns; s++) {
                    int64_t row = slots ? slots[b * columns + s] : s;
                    row_offsets[s] = (slots ? 0 : b * k_strides[0]) + g * k_strides[1] + row * k_strides[2];
                    row_offsets[columns + s] = (slots ? 0 : b * v_strides[0]) + g * v_strides[1] + row * v_strides[2];
                }
                offsets_for = pair;
            }
#ifdef HAVE_VECTOR_ATTENTION
            const kv_view kv = {keys, values, row_offsets, row_offsets + columns, dim, scale};
            int64_t lo = columns, hi = 0, count = 0;
            for (int64_t i = i0; i < i1; i++) {
                row_view row = visible_range(visible, mask_strides, causal, b, i, columns);
                if (row.lo < row.hi) {
                    lo = row.lo < lo ? row.lo : lo;
                    hi = row.hi > hi ? row.hi : hi;
                }
                for (int64_t h = g * group; h < (g + 1) * group; h++, count++) {
                    w->rows[count] = row;
                    w->q[count] = q + b * q_sb + h * q_sh + i * q_sq;
                    w->out[count] = out + ((b * queries + i) * heads + h) * dim;
                }
            }
            if (lo >= hi) {  /* nothing visible to any row (the mask builders never do this): zeros, not NaN */
                for (int64_t r = 0; r < count; r++) memset(w->out[r], 0, sizeof(float) * (size_t)dim);
            } else {
                attend_block(w, count, &kv, lo, hi);
            }
#else
            for (int64_t i = i0; i < i1; i++) {
                row_view row = visible_range(visible, mask_strides, causal, b, i, columns);
                for (int64_t h = g * group; h < (g + 1) * group; h++)
                    attend_row(q + b * q_sb + h * q_sh + i * q_sq, keys, values, row_offsets, row_offsets + columns,
                               &row, dim, scale, scores, out + ((b * queries + i) * heads + h) * dim);
            }
#endif
        }
#ifndef HAVE_VECTOR_ATTENTION
        free(row_offsets);
        free(scores);
#endif
    }
    return failed ? 2 : 0;
}
