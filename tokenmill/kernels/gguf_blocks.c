/* float32 matrix products over weights kept in their GGUF block formats.
 *
 * Each weight row [K] is stored as K / block_elements ggml blocks. A row is dequantized into a small
 * float32 scratch (L1-resident) with the same arithmetic, in the same order, as tokenmill's torch
 * dequantizers (loading/dequant.py): the values are bit-identical, so the only difference from a dense
 * float32 matmul is the order of the dot-product sums. Memory traffic is the block bytes (4.5 bits per
 * weight for Q4_1), not 32 bits per weight: on a bandwidth-bound CPU decode step that is the speed-up.
 *
 * Built by tokenmill/kernels/build.py with -ffp-contract=off, so `d * q + m` rounds twice as torch does;
 * the dot products use explicit fused multiply-adds where the target has them (TM_FMA, target.h).
 * Each block_<TYPE> below is named after its row in gguf_types.h, which lists the types served here.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exports.h"
#include "gguf_types.h"
#include "tables.h"
#include "target.h"

static const float IQ4_VALUES[16] = TM_IQ4_VALUES;
static const float NF4_VALUES[16] = TM_NF4_VALUES;
static const float FP4_VALUES[16] = TM_FP4_VALUES;

/* IEEE half -> float, exact for every input (subnormals, inf, nan included). */
static inline float half_at(const uint8_t *p) {
    uint32_t h = (uint32_t)p[0] | ((uint32_t)p[1] << 8);
    uint32_t sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    union { uint32_t u; float f; } out;
    if (exponent == 0) {
        float magnitude = (float)mantissa * 5.9604644775390625e-08f; /* mantissa * 2^-24, exact */
        out.f = magnitude;
        out.u |= sign;
        return out.f;
    }
    out.u = exponent == 31 ? (sign | 0x7f800000u | (mantissa << 13))
                           : (sign | ((exponent + 112u) << 23) | (mantissa << 13));
    return out.f;
}

static void block_Q8_0(const uint8_t *b, float *out) {
    const float d = half_at(b);
    const int8_t *q = (const int8_t *)(b + 2);
    for (int j = 0; j < 32; j++) out[j] = (float)q[j] * d;
}

static void block_Q4_0(const uint8_t *b, float *out) {
    const float d = half_at(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) {
        out[j] = ((float)(qs[j] & 0x0F) - 8.0f) * d;
        out[j + 16] = ((float)(qs[j] >> 4) - 8.0f) * d;
    }
}

static void block_Q4_1(const uint8_t *b, float *out) {
    const float d = half_at(b), m = half_at(b + 2);
    const uint8_t *qs = b + 4;
    for (int j = 0; j < 16; j++) {
        out[j] = (float)(qs[j] & 0x0F) * d + m;
        out[j + 16] = (float)(qs[j] >> 4) * d + m;
    }
}

/* 5-bit values: low nibbles (elements 0-15, then 16-31 from the high nibbles) plus bit i of qh at 4. */
static inline void five_bit(const uint8_t *qh_bytes, const uint8_t *qs, int *q) {
    uint32_t qh = (uint32_t)qh_bytes[0] | ((uint32_t)qh_bytes[1] << 8) | ((uint32_t)qh_bytes[2] << 16)
                | ((uint32_t)qh_bytes[3] << 24);
    for (int j = 0; j < 16; j++) {
        q[j] = (qs[j] & 0x0F) | (((qh >> j) & 1u) << 4);
        q[j + 16] = (qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4);
    }
}

static void block_Q5_0(const uint8_t *b, float *out) {
    const float d = half_at(b);
    int q[32];
    five_bit(b + 2, b + 6, q);
    for (int j = 0; j < 32; j++) out[j] = ((float)q[j] - 16.0f) * d;
}

static void block_Q5_1(const uint8_t *b, float *out) {
    const float d = half_at(b), m = half_at(b + 2);
    int q[32];
    five_bit(b + 4, b + 8, q);
    for (int j = 0; j < 32; j++) out[j] = (float)q[j] * d + m;
}

static void block_Q2_K(const uint8_t *b, float *out) {
    const uint8_t *scales = b, *qs = b + 16;
    const float d = half_at(b + 80), dmin = half_at(b + 82);
    for (int e = 0; e < 256; e++) {
        int half = e / 128, shift = (e % 128) / 32, byte = e % 32, group = e / 16;
        float q = (float)((qs[half * 32 + byte] >> (2 * shift)) & 3);
        float dl = d * (float)(scales[group] & 0x0F), ml = dmin * (float)(scales[group] >> 4);
        out[e] = q * dl - ml;
    }
}

static void block_Q3_K(const uint8_t *b, float *out) {
    const uint8_t *hmask = b, *qs = b + 32, *packed = b + 96;
    const float d = half_at(b + 108);
    float dl[16];
    for (int i = 0; i < 16; i++) {
        int low = i < 8 ? (packed[i] & 0x0F) : (packed[i - 8] >> 4);
        int high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        dl[i] = d * (float)((int)(int8_t)(uint8_t)(low | (high << 4)) - 32);
    }
    for (int e = 0; e < 256; e++) {
        int half = e / 128, shift = (e % 128) / 32, byte = e % 32;
        int low = (qs[half * 32 + byte] >> (2 * shift)) & 3;
        int bit = e / 32, mask_byte = e % 32;
        int cleared = ((hmask[mask_byte] >> bit) & 1) ^ 1; /* a clear high bit means "subtract 4" */
        out[e] = (float)(low - (cleared << 2)) * dl[e / 16];
    }
}

/* Q4_K / Q5_K header: 8 six-bit scales and 8 six-bit mins packed in 12 bytes. */
static inline void k_scale_min(const uint8_t *p, float *scale, float *minimum) {
    for (int j = 0; j < 4; j++) {
        scale[j] = (float)(p[j] & 0x3F);
        minimum[j] = (float)(p[4 + j] & 0x3F);
        scale[j + 4] = (float)((p[8 + j] & 0x0F) | ((p[j] >> 2) & 0x30));
        minimum[j + 4] = (float)((p[8 + j] >> 4) | ((p[4 + j] >> 2) & 0x30));
    }
}

static void block_Q4_K(const uint8_t *b, float *out) {
    const float d = half_at(b), dmin = half_at(b + 2);
    float scale[8], minimum[8];
    k_scale_min(b + 4, scale, minimum);
    const uint8_t *qs = b + 16;
    for (int sub = 0; sub < 8; sub++) {
        const float dl = d * scale[sub], ml = dmin * minimum[sub];
        const uint8_t *chunk = qs + (sub / 2) * 32;
        const int shift = (sub % 2) * 4;
        for (int j = 0; j < 32; j++) out[sub * 32 + j] = (float)((chunk[j] >> shift) & 0x0F) * dl - ml;
    }
}

static void block_Q5_K(const uint8_t *b, float *out) {
    const float d = half_at(b), dmin = half_at(b + 2);
    float scale[8], minimum[8];
    k_scale_min(b + 4, scale, minimum);
    const uint8_t *qh = b + 16, *qs = b + 48;
    for (int sub = 0; sub < 8; sub++) {
        const float dl = d * scale[sub], ml = dmin * minimum[sub];
        const uint8_t *chunk = qs + (sub / 2) * 32;
        const int shift = (sub % 2) * 4;
        for (int j = 0; j < 32; j++) {
            int q = ((chunk[j] >> shift) & 0x0F) | (((qh[j] >> sub) & 1) << 4);
            out[sub * 32 + j] = (float)q * dl - ml;
        }
    }
}

static void block_Q6_K(const uint8_t *b, float *out) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *scales = (const int8_t *)(b + 192);
    const float d = half_at(b + 208);
    for (int e = 0; e < 256; e++) {
        int half = e / 128, rest = e % 128;
        int low = (ql[half * 64 + rest % 64] >> (4 * (rest / 64))) & 0x0F;
        int high = (qh[half * 32 + rest % 32] >> (2 * (rest / 32))) & 3;
        int q = (int)(int8_t)(uint8_t)(low | (high << 4)) - 32;
        out[e] = (float)q * (d * (float)scales[e / 16]);
    }
}

static void block_IQ4_NL(const uint8_t *b, float *out) {
    const float d = half_at(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) {
        out[j] = IQ4_VALUES[qs[j] & 0x0F] * d;
        out[j + 16] = IQ4_VALUES[qs[j] >> 4] * d;
    }
}

/* a float16 scale, then 32 nibbles indexing `table` (IQ4_NL's layout) */
static inline void table_block(const float *table, const uint8_t *b, float *out) {
    const float d = half_at(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) {
        out[j] = table[qs[j] & 0x0F] * d;
        out[j + 16] = table[qs[j] >> 4] * d;
    }
}

static void block_NF4(const uint8_t *b, float *out) { table_block(NF4_VALUES, b, out); }

static void block_FP4(const uint8_t *b, float *out) { table_block(FP4_VALUES, b, out); }

static void block_IQ4_XS(const uint8_t *b, float *out) {
    const float d = half_at(b);
    const uint32_t high_bits = (uint32_t)b[2] | ((uint32_t)b[3] << 8);
    const uint8_t *low_bits = b + 4, *qs = b + 8;
    for (int sub = 0; sub < 8; sub++) {
        int low = (low_bits[sub / 2] >> (4 * (sub % 2))) & 0x0F;
        int high = (high_bits >> (2 * sub)) & 3;
        const float dl = d * (float)((int)(int8_t)(uint8_t)(low | (high << 4)) - 32);
        const uint8_t *chunk = qs + sub * 16;
        for (int j = 0; j < 16; j++) {
            out[sub * 32 + j] = IQ4_VALUES[chunk[j] & 0x0F] * dl;
            out[sub * 32 + j + 16] = IQ4_VALUES[chunk[j] >> 4] * dl;
        }
    }
}

typedef void (*block_fn)(const uint8_t *, float *);

typedef struct {
    block_fn dequant;
    int elements, bytes;
} block_kind;

#define KIND_CASE(NAME, ID, BYTES, ELEMENTS, KERNELS) \
    TM_IF_BLOCKS_##KERNELS(case ID: *kind = (block_kind){block_##NAME, ELEMENTS, BYTES}; return 1;)

static int kind_of(int ggml_type, block_kind *kind) {
    switch (ggml_type) {
    TM_GGUF_TYPES(KIND_CASE)
    default: return 0;
    }
}

#define BYTES_CASE(NAME, ID, BYTES, ELEMENTS, KERNELS) case ID: return BYTES;
#define ELEMENTS_CASE(NAME, ID, BYTES, ELEMENTS, KERNELS) case ID: return ELEMENTS;

int tm_block_bytes(int ggml_type) {
    switch (ggml_type) {
    TM_GGUF_TYPES(BYTES_CASE)
    default: return 0;
    }
}

int tm_block_elements(int ggml_type) {
    switch (ggml_type) {
    TM_GGUF_TYPES(ELEMENTS_CASE)
    default: return 0;
    }
}

const char *tm_build_isa(void) { return TM_BUILD_ISA; }

int tm_supports(int ggml_type) {
    block_kind kind;
    return kind_of(ggml_type, &kind);
}

static inline void dequant_row(const uint8_t *row, const block_kind *kind, int64_t k, float *out) {
    for (int64_t e = 0; e < k; e += kind->elements, row += kind->bytes) kind->dequant(row, out + e);
}

/* sum a[i] * b[i] over k (a multiple of 32), with 32 independent lanes: vectorizes to two zmm (four ymm) FMAs */
static inline float dot(const float *restrict a, const float *restrict b, int64_t k) {
    float lanes[32] = {0};
    for (int64_t i = 0; i < k; i += 32)
        for (int j = 0; j < 32; j++) lanes[j] = TM_FMA(a[i + j], b[i + j], lanes[j]);
    for (int width = 16; width >= 1; width /= 2)
        for (int j = 0; j < width; j++) lanes[j] += lanes[j + width];
    return lanes[0];
}

/* y[m, n] = sum_k x[m, k] * W[n, k] for W's rows [row_start, row_end); x is [m, k], y is [m, n_rows]. */
static void rows_times_x(const uint8_t *w, int64_t row_bytes, const block_kind *kind, int64_t row_start,
                         int64_t row_end, int64_t n_rows, int64_t k, const float *x, int64_t m, float *y,
                         float *scratch) {
    for (int64_t n = row_start; n < row_end; n++) {
        dequant_row(w + n * row_bytes, kind, k, scratch);
        for (int64_t r = 0; r < m; r++) y[r * n_rows + n] = dot(x + r * k, scratch, k);
    }
}

/* Returns 0 on success, -1 for an unsupported type, -2 when scratch memory cannot be allocated. */
/* x [m, k] repacked in groups of `group` rows (the last may be short), group g at g * group * k laid out
 * [k / 16][rows in g][16]: a register tile then reads its rows of x from one stream with constant offsets */
static float *pack_rows(const float *x, int64_t m, int64_t k, int64_t group) {
    float *packed = (float *)aligned_alloc(64, (size_t)((m * k * 4 + 63) / 64 * 64));
    if (packed == NULL) return NULL;
    for (int64_t g0 = 0; g0 < m; g0 += group) {
        const int64_t rows = m - g0 < group ? m - g0 : group;
        float *base = packed + g0 * k;
        for (int64_t e = 0; e < k; e += 16)
            for (int64_t r = 0; r < rows; r++)
                for (int j = 0; j < 16; j++) base[(e / 16 * rows + r) * 16 + j] = x[(g0 + r) * k + e + j];
    }
    return packed;
}

int tm_matmul(const uint8_t *w, int64_t row_bytes, int ggml_type, int64_t n_rows, int64_t k, const float *x,
              int64_t m, float *y, int threads) {
    block_kind kind;
    if (!kind_of(ggml_type, &kind)) return -1;
    const int vectorized = tm_has_avx512(ggml_type);
    /* 5..8 rows: one group (register tiles over all of them); more: groups of 4 (tiles over scratch) */
    float *packed = NULL;
    if (vectorized && m > 4) {
        if (k % 16) return -1;
        packed = pack_rows(x, m, k, m <= 8 ? 8 : 4);
        if (packed == NULL) return -2;
    }
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        /* TILE_N dequantized rows, for the paths that stage weights (more than 8 rows of x, or no AVX-512) */
        float *scratch = (float *)aligned_alloc(64, (size_t)((4 * k * 4 + 63) / 64 * 64));
        if (scratch == NULL) {
            failed = 1;
        } else {
            /* contiguous row ranges per thread: each reads its own stretch of the weight once */
#pragma omp for schedule(static)
            for (int64_t tile = 0; tile < (n_rows + 15) / 16; tile++) {
                int64_t start = tile * 16, end = start + 16 < n_rows ? start + 16 : n_rows;
                if (vectorized) tm_rows_avx512(w, row_bytes, ggml_type, start, end, n_rows, k, x, packed, m, y, scratch);
                else rows_times_x(w, row_bytes, &kind, start, end, n_rows, k, x, m, y, scratch);
            }
            free(scratch);
        }
    }
    free(packed);
    return failed ? -2 : 0;
}

/* out[i, :] = dequantized row ids[i] of W (ids == NULL: rows 0..n-1); out is [n, k] float32. */
int tm_dequant_rows(const uint8_t *w, int64_t row_bytes, int ggml_type, int64_t k, const int64_t *ids,
                    int64_t n, float *out, int threads) {
    block_kind kind;
    if (!kind_of(ggml_type, &kind)) return -1;
#pragma omp parallel for num_threads(threads) schedule(static) if (n * k > 65536)
    for (int64_t i = 0; i < n; i++) {
        int64_t row = ids == NULL ? i : ids[i];
        dequant_row(w + row * row_bytes, &kind, k, out + i * k);
    }
    return 0;
}
