/* AVX-512 paths of tm_matmul for the common GGUF types (the scalar code in gguf_blocks.c covers the rest).
 *
 * Per block, the weights are dequantized into zmm registers with the same float32 operations, in the same
 * order, as loading/dequant.py (a multiply, then an add or subtract: bit-identical values), then multiplied
 * into several rows of x at once (register tiles of up to 16 outputs; see rows_of). Each output is
 * accumulated in the same order whatever the tile: results do not depend on the batch size.
 */
#include <stdint.h>

#include "exports.h"
#include "gguf_types.h"
#include "tables.h"
#include "target.h"

#if defined(TM_AVX512)
#include <immintrin.h>

#include "vector_math.h"

#define TILE_N 4 /* weight rows per register tile, at most */
#define TILE_M 8 /* activation rows per register tile, at most (with 2 weight rows) */
#ifndef PREFETCH_ROWS
#define PREFETCH_ROWS 8
#endif

static inline __m512 broadcast_half(const uint8_t *p) {
    uint16_t bits = (uint16_t)(p[0] | (p[1] << 8));
    return _mm512_set1_ps(_cvtsh_ss(bits));
}

/* the two float16 fields at p (d, then m) broadcast to all lanes */
static inline void broadcast_two_halves(const uint8_t *p, __m512 *d, __m512 *m) {
    int32_t word;
    __builtin_memcpy(&word, p, 4);
    __m128 both = _mm_cvtph_ps(_mm_cvtsi32_si128(word));
    *d = _mm512_broadcastss_ps(both);
    *m = _mm512_broadcastss_ps(_mm_movehdup_ps(both));
}

/* 16 bytes -> their low nibbles and their high nibbles, each as 16 int32 lanes */
static inline void nibbles32(const uint8_t *p, __m512i *low, __m512i *high) {
    __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
    *low = _mm512_and_si512(bytes, _mm512_set1_epi32(0x0F));
    *high = _mm512_srli_epi32(bytes, 4);
}

/* five-bit values: nibbles plus 16 where the qh mask has a bit */
static inline __m512 with_high_bit(__m512i nibbles, __mmask16 high) {
    return _mm512_cvtepi32_ps(_mm512_mask_or_epi32(nibbles, high, nibbles, _mm512_set1_epi32(16)));
}

static inline uint32_t word_at(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* Each dequant_* writes the block's weights as 16-float vectors into w; returns the vector count. */
/* The 16 values a 4-bit block can hold, table[q] = the dequantized weight of q, computed with the very
 * operations dequant.py applies per weight (so bit-identical); each weight is then one lane permute of the
 * table by its nibble (vpermps reads only the index's low 4 bits: no masking of the low nibbles). */
static inline void lookup_nibbles(__m512 table, const uint8_t *p, __m512 *w) {
    __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
    w[0] = _mm512_permutexvar_ps(bytes, table);
    w[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), table);
}

static inline __m512 nibble_values(void) {
    return _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
}

static inline int dequant_Q4_0(const uint8_t *b, __m512 *w) {
    __m512 d = broadcast_half(b);
    lookup_nibbles(_mm512_mul_ps(_mm512_sub_ps(nibble_values(), _mm512_set1_ps(8.0f)), d), b + 2, w);
    return 2;
}

static inline int dequant_Q4_1(const uint8_t *b, __m512 *w) {
    __m512 d, m;
    broadcast_two_halves(b, &d, &m);
    lookup_nibbles(_mm512_add_ps(_mm512_mul_ps(nibble_values(), d), m), b + 4, w);
    return 2;
}

static inline int dequant_Q5_0(const uint8_t *b, __m512 *w) {
    __m512 d = broadcast_half(b), sixteen = _mm512_set1_ps(16.0f);
    uint32_t qh = word_at(b + 2);
    __m512i low, high;
    nibbles32(b + 6, &low, &high);
    w[0] = _mm512_mul_ps(_mm512_sub_ps(with_high_bit(low, (__mmask16)(qh & 0xFFFF)), sixteen), d);
    w[1] = _mm512_mul_ps(_mm512_sub_ps(with_high_bit(high, (__mmask16)(qh >> 16)), sixteen), d);
    return 2;
}

static inline int dequant_Q5_1(const uint8_t *b, __m512 *w) {
    __m512 d, m;
    broadcast_two_halves(b, &d, &m);
    uint32_t qh = word_at(b + 4);
    __m512i low, high;
    nibbles32(b + 8, &low, &high);
    w[0] = _mm512_add_ps(_mm512_mul_ps(with_high_bit(low, (__mmask16)(qh & 0xFFFF)), d), m);
    w[1] = _mm512_add_ps(_mm512_mul_ps(with_high_bit(high, (__mmask16)(qh >> 16)), d), m);
    return 2;
}

static inline int dequant_Q8_0(const uint8_t *b, __m512 *w) {
    __m512 d = broadcast_half(b);
    for (int v = 0; v < 2; v++) {
        __m128i q = _mm_loadu_si128((const __m128i *)(b + 2 + 16 * v));
        w[v] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), d);
    }
    return 2;
}

/* NF4 / FP4: the block's table is the code book times its scale, each weight one permute of it */
static inline int dequant_code_book(const float *code_book, const uint8_t *b, __m512 *w) {
    lookup_nibbles(_mm512_mul_ps(_mm512_loadu_ps(code_book), broadcast_half(b)), b + 2, w);
    return 2;
}

static const float NF4_VALUES[16] = TM_NF4_VALUES;
static const float FP4_VALUES[16] = TM_FP4_VALUES;

static inline int dequant_NF4(const uint8_t *b, __m512 *w) { return dequant_code_book(NF4_VALUES, b, w); }

static inline int dequant_FP4(const uint8_t *b, __m512 *w) { return dequant_code_book(FP4_VALUES, b, w); }

static inline int dequant_Q4_K(const uint8_t *b, __m512 *w) {
    const float d = _cvtsh_ss((uint16_t)(b[0] | (b[1] << 8))), dmin = _cvtsh_ss((uint16_t)(b[2] | (b[3] << 8)));
    const uint8_t *p = b + 4, *qs = b + 16;
    for (int sub = 0; sub < 8; sub++) {
        int j = sub & 3;
        int scale = sub < 4 ? (p[j] & 0x3F) : ((p[8 + j] & 0x0F) | ((p[j] >> 2) & 0x30));
        int minimum = sub < 4 ? (p[4 + j] & 0x3F) : ((p[8 + j] >> 4) | ((p[4 + j] >> 2) & 0x30));
        __m512 dl = _mm512_set1_ps(d * (float)scale), ml = _mm512_set1_ps(dmin * (float)minimum);
        const __m512 table = _mm512_sub_ps(_mm512_mul_ps(nibble_values(), dl), ml);
        const uint8_t *chunk = qs + (sub / 2) * 32;
        for (int half = 0; half < 2; half++) {
            __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(chunk + 16 * half)));
            if (sub & 1) bytes = _mm512_srli_epi32(bytes, 4);
            w[sub * 2 + half] = _mm512_permutexvar_ps(bytes, table);
        }
    }
    return 16;
}

static inline int dequant_Q6_K(const uint8_t *b, __m512 *w) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *scales = (const int8_t *)(b + 192);
    const float d = _cvtsh_ss((uint16_t)(b[208] | (b[209] << 8)));
    for (int group = 0; group < 16; group++) {
        int e = group * 16, half = e / 128, rest = e % 128;
        __m128i low = _mm_loadu_si128((const __m128i *)(ql + half * 64 + rest % 64));
        __m128i high = _mm_loadu_si128((const __m128i *)(qh + half * 32 + rest % 32));
        low = _mm_and_si128(_mm_srl_epi16(low, _mm_cvtsi32_si128(4 * (rest / 64))), _mm_set1_epi8(0x0F));
        high = _mm_and_si128(_mm_srl_epi16(high, _mm_cvtsi32_si128(2 * (rest / 32))), _mm_set1_epi8(3));
        __m128i q = _mm_sub_epi8(_mm_or_si128(low, _mm_slli_epi16(high, 4)), _mm_set1_epi8(32));
        __m512 values = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
        w[group] = _mm512_mul_ps(values, _mm512_set1_ps(d * (float)scales[group]));
    }
    return 16;
}

#define DEQUANT_CASE(NAME, ID, BYTES, ELEMENTS, KERNELS) TM_IF_AVX512_##KERNELS(case ID: return dequant_##NAME(b, w);)

/* The block's weights as 16-float vectors (dequant_<TYPE> for each AVX512 row of gguf_types.h); `type` is a
 * compile-time constant at every call site, so the switch folds away. */
static inline __attribute__((always_inline)) int dequant_block(int type, const uint8_t *b, __m512 *w) {
    switch (type) {
    TM_GGUF_TYPES(DEQUANT_CASE)
    default: return 0;
    }
}

/* y[(r0 + r) * ldy + n0 + i] = the sum of acc[i][r]'s lanes, 16 outputs at a time where the tile has them */
#define STORE_TILE(acc, nb, mb)                                                                             \
    do {                                                                                                    \
        if ((nb) * (mb) == 16) {                                                                            \
            float sums[16];                                                                                 \
            _mm512_storeu_ps(sums, reduce16(acc));                                                          \
            for (int i = 0; i < (nb); i++)                                                                  \
                for (int r = 0; r < (mb); r++) y[(r0 + r) * ldy + n0 + i] = sums[i * (mb) + r];             \
        } else {                                                                                            \
            for (int i = 0; i < (nb); i++)                                                                  \
                for (int r = 0; r < (mb); r++)                                                              \
                    y[(r0 + r) * ldy + n0 + i] = _mm512_reduce_add_ps(acc[i * (mb) + r]);                  \
        }                                                                                                   \
    } while (0)

/* Row r0 + r of x at column e (a multiple of 16): x as [m][k], or (packed) x is the tile's group of mb rows
 * laid out [k / 16][mb][16] (see pack_rows), read from one base with constant offsets. */
static inline const float *x_at(const float *x, const int packed, int64_t k, int64_t r0, const int mb, int r,
                                int64_t e) {
    return packed ? x + (e / 16 * mb + r) * 16 : x + (r0 + r) * k + e;
}

#include "gguf_ktiles.h" /* tile_q4k, tile_q6k */

#define Q4_K_ID 12 /* gguf_types.h */
#define Q6_K_ID 14

/* y[(r0 + r) * ldy + n0 + i] = x[r0 + r] . W[n0 + i] for a tile of `nb` weight rows by `mb` activation rows
 * (both compile-time constants). One accumulator per output, fed block by block and vector by vector in the
 * same order whatever the tile: results do not depend on how many rows are computed together. */
static inline __attribute__((always_inline)) void tile_dot(int type, int block_elements, int block_bytes,
                                                          const uint8_t *w, int64_t row_bytes, int64_t n0,
                                                          const int nb, const float *x, int64_t k, int64_t r0,
                                                          const int mb, const int packed, float *y, int64_t ldy) {
    if (type == Q4_K_ID) { /* super-blocks: tiles that unpack a few vectors of each row at a time */
        tile_q4k(w, row_bytes, n0, nb, x, k, r0, mb, packed, y, ldy);
        return;
    }
    if (type == Q6_K_ID) {
        tile_q6k(w, row_bytes, n0, nb, x, k, r0, mb, packed, y, ldy);
        return;
    }
    __m512 acc[16]; /* acc[i * mb + r], nb * mb <= 16: packed, so all stay in registers */
    for (int i = 0; i < nb; i++)
        for (int r = 0; r < mb; r++) acc[i * mb + r] = _mm512_setzero_ps();
    const uint8_t *row = w + n0 * row_bytes;
    const int blocks_per_line = block_bytes >= 64 ? 1 : 64 / block_bytes;
    for (int64_t e = 0; e < k; e += block_elements, row += block_bytes) {
        __m512 weights[TILE_N][16];
        int vectors = 0;
        /* the same columns PREFETCH_ROWS rows ahead, a cache line at a time: several weight rows stream at
         * once, which the hardware prefetcher alone follows at about half the memory bandwidth. Near the end
         * of the matrix the address runs past it: harmless, a prefetch never faults. */
        if ((e / block_elements) % blocks_per_line == 0)
            for (int i = 0; i < nb; i++)
                for (int offset = 0; offset < block_bytes; offset += 64)
                    _mm_prefetch((const char *)(row + (PREFETCH_ROWS + i) * row_bytes + offset), _MM_HINT_T0);
        for (int i = 0; i < nb; i++) vectors = dequant_block(type, row + i * row_bytes, weights[i]);
        for (int v = 0; v < vectors; v++)
            for (int r = 0; r < mb; r++) {
                __m512 xv = _mm512_loadu_ps(x_at(x, packed, k, r0, mb, r, e + 16 * v));
                for (int i = 0; i < nb; i++) acc[i * mb + r] = _mm512_fmadd_ps(weights[i][v], xv, acc[i * mb + r]);
            }
    }
    STORE_TILE(acc, nb, mb);
}

/* the same tile, reading weight rows already dequantized into `scratch` ([nb][k] floats); same sum order */
static inline __attribute__((always_inline)) void tile_dot_dense(const float *scratch, int64_t n0, const int nb,
                                                                const float *x, int64_t k, int64_t r0,
                                                                const int mb, const int packed, float *y,
                                                                int64_t ldy) {
    __m512 acc[16]; /* acc[i * mb + r], nb * mb <= 16: packed, so all stay in registers */
    for (int i = 0; i < nb; i++)
        for (int r = 0; r < mb; r++) acc[i * mb + r] = _mm512_setzero_ps();
    for (int64_t e = 0; e < k; e += 16) {
        __m512 weights[TILE_N];
        for (int i = 0; i < nb; i++) weights[i] = _mm512_loadu_ps(scratch + i * k + e);
        for (int r = 0; r < mb; r++) {
            __m512 xv = _mm512_loadu_ps(x_at(x, packed, k, r0, mb, r, e));
            for (int i = 0; i < nb; i++) acc[i * mb + r] = _mm512_fmadd_ps(weights[i], xv, acc[i * mb + r]);
        }
    }
    STORE_TILE(acc, nb, mb);
}

static inline __attribute__((always_inline)) void dequant_rows_to(int type, int block_elements, int block_bytes,
                                                                 const uint8_t *row, int64_t row_bytes, int nb,
                                                                 int64_t k, float *scratch) {
    const int blocks_per_line = block_bytes >= 64 ? 1 : 64 / block_bytes;
    for (int i = 0; i < nb; i++, row += row_bytes)
        for (int64_t e = 0; e < k; e += block_elements) {
            __m512 weights[16];
            const int64_t block = e / block_elements;
            if (block % blocks_per_line == 0)  /* as in tile_dot: the rows PREFETCH_ROWS ahead, a line at a time */
                for (int offset = 0; offset < block_bytes; offset += 64)
                    _mm_prefetch((const char *)(row + PREFETCH_ROWS * row_bytes + block * block_bytes + offset),
                                 _MM_HINT_T0);
            int vectors = dequant_block(type, row + (e / block_elements) * block_bytes, weights);
            for (int v = 0; v < vectors; v++) _mm512_storeu_ps(scratch + i * k + e + 16 * v, weights[v]);
        }
}

#define TILE(NB, MB)                                                                                        \
    (dense ? tile_dot_dense(scratch, n0, NB, x, k, r0, MB, 0, y, n_rows)                                  \
           : tile_dot(type, block_elements, block_bytes, w, row_bytes, n0, NB, x, k, r0, MB, 0, y, n_rows))

#define PACKED_REGISTER(MB) tile_dot(type, block_elements, block_bytes, w, row_bytes, n0, 2, xp, k, 0, MB, 1, y, n_rows)
#define PACKED_DENSE(MB) tile_dot_dense(scratch, n0, TILE_N, xp + r0 * k, k, r0, MB, 1, y, n_rows)

/* weight rows [start, end) against every row of x, in register tiles of 16 outputs where the shape allows:
 *   1..4 rows of x: 4 weight rows x all of x, each block dequantized in registers;
 *   5..8 rows: 2 weight rows x all of x, read from x packed as one group (xp);
 *   more: 4 weight rows dequantized once into L1 scratch, then 4 x 4 tiles over x packed in groups of 4.
 * Leftover weight rows (fewer than a tile) go one at a time. Every path sums each output in the same order. */
static inline __attribute__((always_inline)) void rows_of(int type, int block_elements, int block_bytes,
                                                         const uint8_t *w, int64_t row_bytes, int64_t start,
                                                         int64_t end, int64_t n_rows, int64_t k,
                                                         const float *x, const float *xp, int64_t m, float *y,
                                                         float *scratch) {
    const int dense = m > 8, nb = m > 4 && m <= 8 ? 2 : TILE_N;
    for (int64_t n0 = start; n0 < end;) {
        if (end - n0 < nb) {
            if (dense) dequant_rows_to(type, block_elements, block_bytes, w + n0 * row_bytes, row_bytes, 1, k, scratch);
            for (int64_t r0 = 0; r0 < m; r0 += 4)
                switch (m - r0 < 4 ? (int)(m - r0) : 4) {
                case 1: TILE(1, 1); break;
                case 2: TILE(1, 2); break;
                case 3: TILE(1, 3); break;
                default: TILE(1, 4); break;
                }
            n0 += 1;
            continue;
        }
        if (m <= 4) {
            const int64_t r0 = 0;
            switch (m) {
            case 1: TILE(TILE_N, 1); break;
            case 2: TILE(TILE_N, 2); break;
            case 3: TILE(TILE_N, 3); break;
            default: TILE(TILE_N, 4); break;
            }
        } else if (!dense) {
            switch (m) {
            case 5: PACKED_REGISTER(5); break;
            case 6: PACKED_REGISTER(6); break;
            case 7: PACKED_REGISTER(7); break;
            default: PACKED_REGISTER(8); break;
            }
        } else {
            dequant_rows_to(type, block_elements, block_bytes, w + n0 * row_bytes, row_bytes, TILE_N, k, scratch);
            for (int64_t r0 = 0; r0 < m; r0 += 4)
                switch (m - r0 < 4 ? (int)(m - r0) : 4) {
                case 1: PACKED_DENSE(1); break;
                case 2: PACKED_DENSE(2); break;
                case 3: PACKED_DENSE(3); break;
                default: PACKED_DENSE(4); break;
                }
        }
        n0 += nb;
    }
}

#define ROWS_CASE(NAME, ID, BYTES, ELEMENTS, KERNELS) \
    TM_IF_AVX512_##KERNELS(case ID: rows_of(ID, ELEMENTS, BYTES, w, row_bytes, start, end, n_rows, k, x, xp, m, y, \
                                            scratch); return 0;)
#define HAS_CASE(NAME, ID, BYTES, ELEMENTS, KERNELS) TM_IF_AVX512_##KERNELS(case ID: return 1;)

/* Returns 0 if it computed rows [start, end), -1 if this type has no AVX-512 path. */
int tm_rows_avx512(const uint8_t *w, int64_t row_bytes, int ggml_type, int64_t start, int64_t end,
                   int64_t n_rows, int64_t k, const float *x, const float *xp, int64_t m, float *y, float *scratch) {
    switch (ggml_type) {
    TM_GGUF_TYPES(ROWS_CASE)
    default: return -1;
    }
}

int tm_has_avx512(int ggml_type) {
    switch (ggml_type) {
    TM_GGUF_TYPES(HAS_CASE)
    default: return 0;
    }
}

#else

int tm_rows_avx512(const uint8_t *w, int64_t row_bytes, int ggml_type, int64_t start, int64_t end,
                   int64_t n_rows, int64_t k, const float *x, const float *xp, int64_t m, float *y, float *scratch) {
    (void)xp;
    (void)w; (void)row_bytes; (void)ggml_type; (void)start; (void)end; (void)n_rows; (void)k; (void)x;
    (void)m; (void)y; (void)scratch;
    return -1;
}

int tm_has_avx512(int ggml_type) {
    (void)ggml_type;
    return 0;
}

#endif
