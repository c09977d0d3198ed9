/* precision="fast" on AVX-512 VNNI: block weights repacked once (by the layer, when fast mode first runs it)
 * into a layout whose int8 dot products need no per-block unpacking beyond a mask and a shift.
 *
 * Packed layout. Output rows go in groups of 16 (the last group padded with zero rows), one int32 lane per row.
 * A group holds, for each 32-value block b in order, the weights interleaved in 4-byte chunks: chunk j
 * (64 bytes) is bytes 4j..4j+3 of every row's block, row after row. Q8_0 keeps 8 chunks of unsigned bytes
 * q + 128; Q4_0 and Q4_1 keep their 16 nibble bytes as 4 chunks, each byte holding value i in its low nibble
 * and value i + 16 in its high one (GGUF's own order). After all blocks come the 16 rows' float16 scales d per
 * block, then (Q4_1) their float16 minimums m. The layout has exactly the GGUF bytes' size.
 *
 * One dpbusd of chunk j against 4 activation bytes broadcast to every lane adds 4 products to each of the 16
 * rows' sums: a block's 32 products per row take 8 dpbusd per int8 digit, with no horizontal reduction. The
 * block's integer sum, exact in int32, is Q4_0's sum(u - 8) x as sum(u x) - 8 sum(x) and Q8_0's sum(q x) as
 * sum((q + 128) x) - 128 sum(x) (sum(x): the activation block's integer sum, from tm_quantize_int8); Q4_1 adds
 * m d_x sum(x) in float. Each row accumulates, block after block, fma(float(sum), d_w * d_x, acc): the same
 * operations in the same order whatever the tile, so a row's result does not depend on the rows beside it.
 * A register tile is the 16 rows of one group against up to PACKED_TILE activation rows: the unpacked block
 * (8 registers) is shared by all of them.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exports.h"
#include "target.h"

#if defined(TM_AVX512) && defined(__AVX512VNNI__)
#define TM_INT8_PACKED 1
#include <immintrin.h>
#endif

#define GROUP_ROWS 16  /* output rows per packed group: one int32 lane each */
#define PACKED_TILE 8  /* activation rows per register tile, at most */

static int packed_type(int ggml_type) { return ggml_type == 2 || ggml_type == 3 || ggml_type == 8; }

/* bytes of one group's weights per block: 16 rows x 32 values, as nibbles or as bytes */
static int64_t chunk_bytes(int ggml_type) { return ggml_type == 8 ? 512 : 256; }

/* float16 fields per row and block: d, and Q4_1's m */
static int64_t half_fields(int ggml_type) { return ggml_type == 3 ? 2 : 1; }

int tm_int8_packs(int ggml_type) {
#if defined(TM_INT8_PACKED)
    return packed_type(ggml_type);
#else
    (void)ggml_type;
    return 0;
#endif
}

int tm_int8_group_block_bytes(int ggml_type) {
    return packed_type(ggml_type) ? (int)(chunk_bytes(ggml_type) + 32 * half_fields(ggml_type)) : 0;
}

/* GGUF block bytes: Q4_0 (d, 16 nibble bytes), Q4_1 (d, m, 16 nibble bytes), Q8_0 (d, 32 int8) */
static int64_t gguf_block_bytes(int ggml_type) { return ggml_type == 2 ? 18 : ggml_type == 3 ? 20 : 34; }

/* one group (rows first_row .. first_row + 15, those past n_rows zero) of the packed layout above */
static void pack_group(const uint8_t *w, int64_t row_bytes, int ggml_type, int64_t n_rows, int64_t blocks,
                       int64_t first_row, uint8_t *out) {
    const int64_t chunks = chunk_bytes(ggml_type), block_bytes = gguf_block_bytes(ggml_type);
    const int64_t payload_at = 2 * half_fields(ggml_type);
    uint8_t *halves = out + blocks * chunks;
    memset(out, 0, (size_t)(blocks * (chunks + 32 * half_fields(ggml_type))));
    for (int64_t r = 0; r < GROUP_ROWS && first_row + r < n_rows; r++)
        for (int64_t b = 0; b < blocks; b++) {
            const uint8_t *block = w + (first_row + r) * row_bytes + b * block_bytes;
            uint8_t *dest = out + b * chunks + r * 4;
            for (int64_t j = 0; j < chunks / 64; j++)
                for (int i = 0; i < 4; i++)
                    dest[j * 64 + i] = ggml_type == 8 ? (uint8_t)(block[payload_at + 4 * j + i] ^ 0x80u)
                                                      : block[payload_at + 4 * j + i];
            for (int64_t field = 0; field < half_fields(ggml_type); field++)
                memcpy(halves + (field * blocks + b) * 32 + r * 2, block + 2 * field, 2);
        }
}

int tm_int8_pack(const uint8_t *w, int64_t row_bytes, int ggml_type, int64_t n_rows, int64_t k, uint8_t *out,
                 int threads) {
    if (!packed_type(ggml_type) || k % 32 || row_bytes != k / 32 * gguf_block_bytes(ggml_type)) return -1;
    const int64_t blocks = k / 32, groups = (n_rows + GROUP_ROWS - 1) / GROUP_ROWS;
    const int64_t group_bytes = blocks * tm_int8_group_block_bytes(ggml_type);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t g = 0; g < groups; g++)
        pack_group(w, row_bytes, ggml_type, n_rows, blocks, g * GROUP_ROWS, out + g * group_bytes);
    return 0;
}

#if defined(TM_INT8_PACKED)
static inline __m512i broadcast_word(const int8_t *p) {
    int32_t word;
    memcpy(&word, p, 4);
    return _mm512_set1_epi32(word);
}

/* the 8 chunk registers of block b: unsigned bytes, chunk j against activation bytes 4j..4j+3 */
static inline void unpack_block(const uint8_t *chunks, int ggml_type, __m512i *u) {
    if (ggml_type == 8) {
        for (int j = 0; j < 8; j++) u[j] = _mm512_loadu_si512((const void *)(chunks + 64 * j));
        return;
    }
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    for (int j = 0; j < 4; j++) {
        const __m512i packed = _mm512_loadu_si512((const void *)(chunks + 64 * j));
        u[j] = _mm512_and_si512(packed, low4);
        u[j + 4] = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low4);
    }
}

/* sum over the block's 32 values of u * x per row lane, from `start` */
static inline __m512i chunk_dots(const __m512i *u, const int8_t *x, __m512i start) {
    __m512i even = start, odd = _mm512_setzero_si512();
    for (int j = 0; j < 8; j += 2) {
        even = _mm512_dpbusd_epi32(even, u[j], broadcast_word(x + 4 * j));
        odd = _mm512_dpbusd_epi32(odd, u[j + 1], broadcast_word(x + 4 * j + 4));
    }
    return _mm512_add_epi32(even, odd);
}

/* one group's 16 rows against `count` activation rows (a constant in each inlined copy) */
static inline __attribute__((always_inline)) void group_tile(
        const uint8_t *group, int ggml_type, int64_t blocks, int64_t k, const int8_t *xq, const int8_t *xq_low,
        const float *scales, const int32_t *sums, const int count, float *y, int64_t y_stride, __mmask16 valid) {
    const uint8_t *chunks = group, *d_halves = group + blocks * chunk_bytes(ggml_type);
    const uint8_t *m_halves = d_halves + blocks * 32;
    const int32_t offset = ggml_type == 2 ? -8 : ggml_type == 8 ? -128 : 0;
    __m512 acc[PACKED_TILE];
    for (int i = 0; i < count; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        __m512i u[8];
        unpack_block(chunks + b * chunk_bytes(ggml_type), ggml_type, u);
        const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(d_halves + b * 32)));
        const __m512 m = ggml_type == 3 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(m_halves + b * 32)))
                                        : _mm512_setzero_ps();
        for (int i = 0; i < count; i++) {
            const int64_t at = i * k + b * 32, block_at = i * blocks + b;
            const __m512i offsets = _mm512_set1_epi32(offset * sums[block_at]);
            __m512i lanes;
            if (xq_low) {
                const __m512i high = chunk_dots(u, xq + at, _mm512_setzero_si512());
                lanes = _mm512_add_epi32(_mm512_slli_epi32(high, 7), chunk_dots(u, xq_low + at, offsets));
            } else {
                lanes = chunk_dots(u, xq + at, offsets);
            }
            const __m512 x_scale = _mm512_set1_ps(scales[block_at]);
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lanes), _mm512_mul_ps(d, x_scale), acc[i]);
            if (ggml_type == 3)
                acc[i] = _mm512_fmadd_ps(m, _mm512_set1_ps(scales[block_at] * (float)sums[block_at]), acc[i]);
        }
    }
    for (int i = 0; i < count; i++) _mm512_mask_storeu_ps(y + i * y_stride, valid, acc[i]);
}

static void group_rows(const uint8_t *group, int ggml_type, int64_t blocks, int64_t k, const int8_t *xq,
                       const int8_t *xq_low, const float *scales, const int32_t *sums, int count, float *y,
                       int64_t y_stride, __mmask16 valid) {
#define TILE_CASE(n) \
    case n: group_tile(group, ggml_type, blocks, k, xq, xq_low, scales, sums, n, y, y_stride, valid); break;
    switch (count) {
        TILE_CASE(1) TILE_CASE(2) TILE_CASE(3) TILE_CASE(4) TILE_CASE(5) TILE_CASE(6) TILE_CASE(7)
        default: group_tile(group, ggml_type, blocks, k, xq, xq_low, scales, sums, PACKED_TILE, y, y_stride, valid);
    }
#undef TILE_CASE
}
#endif

/* x [m, k] float32 -> y [m, n_rows] = x W^T over the packed weights, x quantized as tm_quantize_int8 does
 * (digits 1 or 2) into scratch memory of this call */
int tm_matmul_int8_packed(const uint8_t *packed, int ggml_type, int64_t n_rows, int64_t k, const float *x,
                          int64_t m, int digits, float *y, int threads) {
#if defined(TM_INT8_PACKED)
    if (!packed_type(ggml_type) || k % 32 || (digits != 1 && digits != 2)) return -1;
    const int64_t blocks = k / 32, groups = (n_rows + GROUP_ROWS - 1) / GROUP_ROWS;
    const int64_t group_bytes = blocks * tm_int8_group_block_bytes(ggml_type);
    int8_t *xq = malloc((size_t)(m * k * digits));
    float *scales = malloc((size_t)(m * blocks) * sizeof(float));
    int32_t *sums = malloc((size_t)(m * blocks) * sizeof(int32_t));
    if (!xq || !scales || !sums) {
        free(xq), free(scales), free(sums);
        return -2;
    }
    int8_t *xq_low = digits == 2 ? xq + m * k : NULL;
    tm_quantize_int8(x, m, k, xq, xq_low, scales, sums);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t g = 0; g < groups; g++) {
        const int64_t rows_left = n_rows - g * GROUP_ROWS;
        const __mmask16 valid = rows_left >= GROUP_ROWS ? (__mmask16)0xFFFF : (__mmask16)((1u << rows_left) - 1);
        for (int64_t r = 0; r < m; r += PACKED_TILE) {
            const int count = m - r < PACKED_TILE ? (int)(m - r) : PACKED_TILE;
            group_rows(packed + g * group_bytes, ggml_type, blocks, k, xq + r * k, xq_low ? xq_low + r * k : NULL,
                       scales + r * blocks, sums + r * blocks, count, y + r * n_rows + g * GROUP_ROWS, n_rows, valid);
        }
    }
    free(xq), free(scales), free(sums);
    return 0;
#else
    (void)packed, (void)ggml_type, (void)n_rows, (void)k, (void)x, (void)m, (void)digits, (void)y, (void)threads;
    return -1;
#endif
}
