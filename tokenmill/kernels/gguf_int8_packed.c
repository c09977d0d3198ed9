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

enum { Q4_0 = 2, Q4_1 = 3, Q8_0 = 8, Q4_K = 12, Q6_K = 14 };

static int packed_type(int ggml_type) {
    return ggml_type == Q4_0 || ggml_type == Q4_1 || ggml_type == Q8_0 || ggml_type == Q4_K || ggml_type == Q6_K;
}

/* values per GGUF block (a super-block of 8 packed blocks for the K-quants) and its bytes */
static int64_t gguf_block_values(int ggml_type) { return ggml_type == Q4_K || ggml_type == Q6_K ? 256 : 32; }

static int64_t gguf_block_bytes(int ggml_type) {
    switch (ggml_type) {
        case Q4_0: return 18;
        case Q4_1: return 20;
        case Q8_0: return 34;
        case Q4_K: return 144;
        default: return 210;
    }
}

/* one group's weight bytes per 32-value block: 16 rows as nibbles (Q6_K: and their 2 high bits), or bytes */
static int64_t chunk_bytes(int ggml_type) { return ggml_type == Q8_0 ? 512 : ggml_type == Q6_K ? 384 : 256; }

/* one group's scale bytes per 32-value block (see pack_scales) */
static int64_t scale_bytes(int ggml_type) {
    switch (ggml_type) {
        case Q4_1: return 64;
        case Q4_K: return 40;
        case Q6_K: return 36;
        default: return 32;
    }
}

int tm_int8_packs(int ggml_type) {
#if defined(TM_INT8_PACKED)
    return packed_type(ggml_type);
#else
    (void)ggml_type;
    return 0;
#endif
}

int tm_int8_group_block_bytes(int ggml_type) {
    return packed_type(ggml_type) ? (int)(chunk_bytes(ggml_type) + scale_bytes(ggml_type)) : 0;
}

/* value v (0..255) of a Q6_K super-block, unsigned 0..63 (the weight is d * scale[v / 16] * (q - 32)) */
static uint8_t q6_value(const uint8_t *block, int v) {
    const int half = v / 128, group = v % 128 / 32, at = v % 32;
    const uint8_t low = block[64 * half + at + (group & 1) * 32];
    const uint8_t high = block[128 + 32 * half + at];
    return (uint8_t)(((group < 2 ? low : low >> 4) & 0x0F) | (((high >> (2 * group)) & 3) << 4));
}

/* block b's 32 values of one row, unsigned as the kernel multiplies them */
static void block_values(const uint8_t *row, int ggml_type, int64_t b, uint8_t *values) {
    const uint8_t *block = row + b * 32 / gguf_block_values(ggml_type) * gguf_block_bytes(ggml_type);
    const int first = (int)(b % (gguf_block_values(ggml_type) / 32)) * 32;  /* within a super-block */
    for (int i = 0; i < 32; i++) {
        const int v = first + i;
        switch (ggml_type) {
            case Q4_0: values[i] = (uint8_t)(block[2 + v % 16] >> (v / 16 * 4) & 0x0F); break;
            case Q4_1: values[i] = (uint8_t)(block[4 + v % 16] >> (v / 16 * 4) & 0x0F); break;
            case Q8_0: values[i] = (uint8_t)(block[2 + v] ^ 0x80u); break;  /* q + 128 */
            case Q4_K: values[i] = (uint8_t)(block[16 + v / 64 * 32 + v % 32] >> (v / 32 % 2 * 4) & 0x0F); break;
            default: values[i] = q6_value(block, v);
        }
    }
}

/* row r's weight bytes of one block in the group's chunks (layout in the header comment) */
static void pack_values(const uint8_t *values, int ggml_type, int64_t r, uint8_t *chunks) {
    for (int j = 0; j < 8; j++)
        for (int i = 0; i < 4; i++) {
            const int v = 4 * j + i;
            if (ggml_type == Q8_0) {
                chunks[64 * j + 4 * r + i] = values[v];
            } else if (j < 4) {
                chunks[64 * j + 4 * r + i] = (uint8_t)((values[v] & 0x0F) | (values[v + 16] & 0x0F) << 4);
            }
            if (ggml_type == Q6_K)  /* bits 4-5 of value v at bits 2 (j % 4) of high chunk j / 4 */
                chunks[256 + 64 * (j / 4) + 4 * r + i] |= (uint8_t)((values[v] >> 4) << (2 * (j % 4)));
        }
}

/* row r's scales of block b. Q4_0, Q8_0: float16 d per block, 16 rows (32 bytes); Q4_1: then the float16
 * minimums. Q4_K: per super-block the rows' float16 d, then dmin (64 bytes, 8 per block), and per block the
 * rows' 6-bit scale bytes, then minimum bytes. Q6_K: per super-block the rows' float16 d (32 bytes, 4 per
 * block), per block the rows' int8 scales of its first 16 values, then of its last 16. */
static void pack_scales(const uint8_t *row, int ggml_type, int64_t blocks, int64_t b, int64_t r, uint8_t *scales) {
    const uint8_t *block = row + b * 32 / gguf_block_values(ggml_type) * gguf_block_bytes(ggml_type);
    const int64_t sub = b % 8, super = b / 8, supers = blocks / 8;
    if (ggml_type == Q4_0 || ggml_type == Q8_0 || ggml_type == Q4_1) {
        memcpy(scales + b * 32 + 2 * r, block, 2);
        if (ggml_type == Q4_1) memcpy(scales + (blocks + b) * 32 + 2 * r, block + 2, 2);
    } else if (ggml_type == Q4_K) {
        const uint8_t *p = block + 4;
        const int64_t j = sub & 3;
        memcpy(scales + super * 64 + 2 * r, block, 2);
        memcpy(scales + super * 64 + 32 + 2 * r, block + 2, 2);
        uint8_t *bytes = scales + supers * 64 + b * 32;
        bytes[r] = (uint8_t)(sub < 4 ? p[j] & 63 : (p[8 + j] & 0x0F) | ((p[j] >> 2) & 0x30));
        bytes[16 + r] = (uint8_t)(sub < 4 ? p[4 + j] & 63 : (p[8 + j] >> 4) | ((p[4 + j] >> 2) & 0x30));
    } else {
        memcpy(scales + super * 32 + 2 * r, block + 208, 2);
        uint8_t *bytes = scales + supers * 32 + b * 32;
        bytes[r] = block[192 + 2 * sub];
        bytes[16 + r] = block[192 + 2 * sub + 1];
    }
}

/* one group (rows first_row .. first_row + 15, those past n_rows zero) of the packed layout above */
static void pack_group(const uint8_t *w, int64_t row_bytes, int ggml_type, int64_t n_rows, int64_t blocks,
                       int64_t first_row, uint8_t *out) {
    const int64_t chunks = chunk_bytes(ggml_type);
    memset(out, 0, (size_t)(blocks * tm_int8_group_block_bytes(ggml_type)));
    for (int64_t r = 0; r < GROUP_ROWS && first_row + r < n_rows; r++)
        for (int64_t b = 0; b < blocks; b++) {
            uint8_t values[32];
            block_values(w + (first_row + r) * row_bytes, ggml_type, b, values);
            pack_values(values, ggml_type, r, out + b * chunks);
            pack_scales(w + (first_row + r) * row_bytes, ggml_type, blocks, b, r, out + blocks * chunks);
        }
}

int tm_int8_pack(const uint8_t *w, int64_t row_bytes, int ggml_type, int64_t n_rows, int64_t k, uint8_t *out,
                 int threads) {
    if (!packed_type(ggml_type) || k % gguf_block_values(ggml_type)
        || row_bytes != k / gguf_block_values(ggml_type) * gguf_block_bytes(ggml_type))
        return -1;
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

/* bits 4-5 of the values whose 2 high bits sit at bits 2t of the bytes of h */
static inline __m512i high_bits(__m512i h, int t) {
    const __m512i mask = _mm512_set1_epi8(0x30);
    switch (t) {
        case 0: return _mm512_and_si512(_mm512_slli_epi16(h, 4), mask);
        case 1: return _mm512_and_si512(_mm512_slli_epi16(h, 2), mask);
        case 2: return _mm512_and_si512(h, mask);
        default: return _mm512_and_si512(_mm512_srli_epi16(h, 2), mask);
    }
}

/* the 8 chunk registers of a block: unsigned bytes, chunk j against activation bytes 4j..4j+3 */
static inline void unpack_block(const uint8_t *chunks, int ggml_type, __m512i *u) {
    if (ggml_type == Q8_0) {
        for (int j = 0; j < 8; j++) u[j] = _mm512_loadu_si512((const void *)(chunks + 64 * j));
        return;
    }
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    for (int j = 0; j < 4; j++) {
        const __m512i packed = _mm512_loadu_si512((const void *)(chunks + 64 * j));
        u[j] = _mm512_and_si512(packed, low4);
        u[j + 4] = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low4);
    }
    if (ggml_type == Q6_K)
        for (int j = 0; j < 8; j++)
            u[j] = _mm512_or_si512(u[j], high_bits(_mm512_loadu_si512((const void *)(chunks + 256 + 64 * (j / 4))),
                                                   j % 4));
}

/* the 16 rows' scales of block b (pack_scales' layout): float d and m (the weight is d u + m per block, the
 * offsets of Q4_0 and Q8_0 apart), and Q6_K's integer scales of the block's two halves (d u times them) */
static inline void block_scales(const uint8_t *scales, int ggml_type, int64_t blocks, int64_t b, __m512 *d, __m512 *m,
                                __m512i *first, __m512i *last) {
    const int64_t super = b / 8, supers = blocks / 8;
    *m = _mm512_setzero_ps();
    if (ggml_type == Q4_K) {
        const __m128i bytes = _mm_loadu_si128((const __m128i *)(scales + supers * 64 + b * 32));
        const __m128i minimums = _mm_loadu_si128((const __m128i *)(scales + supers * 64 + b * 32 + 16));
        const __m512 super_d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(scales + super * 64)));
        const __m512 super_m = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(scales + super * 64 + 32)));
        *d = _mm512_mul_ps(super_d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)));
        const __m512 minimum = _mm512_mul_ps(super_m, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(minimums)));
        *m = _mm512_sub_ps(_mm512_setzero_ps(), minimum);  /* exact mode's w = q (d sc) - dmin mn */
    } else if (ggml_type == Q6_K) {
        *d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(scales + super * 32)));
        *first = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(scales + supers * 32 + b * 32)));
        *last = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(scales + supers * 32 + b * 32 + 16)));
    } else {
        *d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(scales + b * 32)));
        if (ggml_type == Q4_1) *m = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(scales + (blocks + b) * 32)));
    }
}

/* sum over `count` chunks (4 values each) of u * x per row lane, from `start`, in two chains */
static inline __m512i chunk_dots(const __m512i *u, const int8_t *x, __m512i start, const int count) {
    __m512i even = start, odd = _mm512_setzero_si512();
    for (int j = 0; j < count; j += 2) {
        even = _mm512_dpbusd_epi32(even, u[j], broadcast_word(x + 4 * j));
        odd = _mm512_dpbusd_epi32(odd, u[j + 1], broadcast_word(x + 4 * j + 4));
    }
    return _mm512_add_epi32(even, odd);
}

/* the integers 128 sum(u high) + sum(u low) (sum(u high) + offset, for one digit) over `count` chunks */
static inline __m512i digit_dots(const __m512i *u, const int8_t *xq, const int8_t *xq_low, __m512i offset,
                                 const int count) {
    if (!xq_low) return chunk_dots(u, xq, offset, count);
    const __m512i high = chunk_dots(u, xq, _mm512_setzero_si512(), count);
    return _mm512_add_epi32(_mm512_slli_epi32(high, 7), chunk_dots(u, xq_low, offset, count));
}

/* one group's 16 rows against `count` activation rows; type and count are constants in each inlined copy.
 * half_sums (Q6_K): the activation integers' sums over the first 16 values of each block. */
static inline __attribute__((always_inline)) void group_tile(
        const uint8_t *group, const int ggml_type, int64_t blocks, int64_t k, const int8_t *xq, const int8_t *xq_low,
        const float *scales, const int32_t *sums, const int32_t *half_sums, const int count, float *y,
        int64_t y_stride, __mmask16 valid) {
    const uint8_t *block_scale_bytes = group + blocks * chunk_bytes(ggml_type);
    const int32_t offset = ggml_type == Q4_0 ? -8 : ggml_type == Q8_0 ? -128 : 0;  /* the stored values' zero */
    __m512 acc[PACKED_TILE];
    for (int i = 0; i < count; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        __m512i u[8], first = _mm512_setzero_si512(), last = _mm512_setzero_si512();
        __m512 d, m;
        unpack_block(group + b * chunk_bytes(ggml_type), ggml_type, u);
        block_scales(block_scale_bytes, ggml_type, blocks, b, &d, &m, &first, &last);
        for (int i = 0; i < count; i++) {
            const int64_t at = i * k + b * 32, block_at = i * blocks + b;
            const int8_t *low = xq_low ? xq_low + at : NULL;
            __m512i lanes;
            if (ggml_type == Q6_K) {  /* each half: sum (q - 32) x, times its scale */
                const int32_t first_sum = half_sums[block_at], last_sum = sums[block_at] - first_sum;
                const __m512i first_dots = digit_dots(u, xq + at, low, _mm512_set1_epi32(-32 * first_sum), 4);
                const __m512i last_dots = digit_dots(u + 4, xq + at + 16, low ? low + 16 : NULL,
                                                     _mm512_set1_epi32(-32 * last_sum), 4);
                lanes = _mm512_add_epi32(_mm512_mullo_epi32(first_dots, first), _mm512_mullo_epi32(last_dots, last));
            } else {
                lanes = digit_dots(u, xq + at, low, _mm512_set1_epi32(offset * sums[block_at]), 8);
            }
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lanes), _mm512_mul_ps(d, _mm512_set1_ps(scales[block_at])),
                                     acc[i]);
            if (ggml_type == Q4_1 || ggml_type == Q4_K)
                acc[i] = _mm512_fmadd_ps(m, _mm512_set1_ps(scales[block_at] * (float)sums[block_at]), acc[i]);
        }
    }
    for (int i = 0; i < count; i++) _mm512_mask_storeu_ps(y + i * y_stride, valid, acc[i]);
}

#define TILE_ARGS blocks, k, xq, xq_low, scales, sums, half_sums
#define TILE_CASE(type, n) \
    case n: group_tile(group, type, TILE_ARGS, n, y, y_stride, valid); break;
#define TYPE_TILES(type) \
    static void tiles_##type(const uint8_t *group, int64_t blocks, int64_t k, const int8_t *xq,                  \
                             const int8_t *xq_low, const float *scales, const int32_t *sums,                     \
                             const int32_t *half_sums, int count, float *y, int64_t y_stride, __mmask16 valid) { \
        switch (count) {                                                                                         \
            TILE_CASE(type, 1) TILE_CASE(type, 2) TILE_CASE(type, 3) TILE_CASE(type, 4) TILE_CASE(type, 5)     \
            TILE_CASE(type, 6) TILE_CASE(type, 7)                                                               \
            default: group_tile(group, type, TILE_ARGS, PACKED_TILE, y, y_stride, valid);                         \
        }                                                                                                        \
    }
TYPE_TILES(Q4_0)
TYPE_TILES(Q4_1)
TYPE_TILES(Q8_0)
TYPE_TILES(Q4_K)
TYPE_TILES(Q6_K)

typedef void (*tiles_fn)(const uint8_t *, int64_t, int64_t, const int8_t *, const int8_t *, const float *,
                         const int32_t *, const int32_t *, int, float *, int64_t, __mmask16);

static tiles_fn tiles_of(int ggml_type) {
    switch (ggml_type) {
        case Q4_0: return tiles_Q4_0;
        case Q4_1: return tiles_Q4_1;
        case Q8_0: return tiles_Q8_0;
        case Q4_K: return tiles_Q4_K;
        default: return tiles_Q6_K;
    }
}

/* Q6_K: per block, the sum of its first 16 activation integers (128 q + q_low, or q) */
static void first_half_sums(const int8_t *xq, const int8_t *xq_low, int64_t count, int32_t *out) {
    for (int64_t b = 0; b < count; b++) {
        int32_t total = 0;
        for (int i = 0; i < 16; i++) total += xq_low ? 128 * xq[32 * b + i] + xq_low[32 * b + i] : xq[32 * b + i];
        out[b] = total;
    }
}
#endif

/* x [m, k] float32 -> y [m, n_rows] = x W^T over the packed weights, x quantized as tm_quantize_int8 does
 * (digits 1 or 2) into scratch memory of this call */
int tm_matmul_int8_packed(const uint8_t *packed, int ggml_type, int64_t n_rows, int64_t k, const float *x,
                          int64_t m, int digits, float *y, int threads) {
#if defined(TM_INT8_PACKED)
    if (!packed_type(ggml_type) || k % gguf_block_values(ggml_type) || (digits != 1 && digits != 2)) return -1;
    const int64_t blocks = k / 32, groups = (n_rows + GROUP_ROWS - 1) / GROUP_ROWS;
    const int64_t group_bytes = blocks * tm_int8_group_block_bytes(ggml_type);
    const tiles_fn tiles = tiles_of(ggml_type);
    int8_t *xq = malloc((size_t)(m * k * digits));
    float *scales = malloc((size_t)(m * blocks) * sizeof(float));
    int32_t *sums = malloc((size_t)(2 * m * blocks) * sizeof(int32_t)), *half_sums = sums + m * blocks;
    if (!xq || !scales || !sums) {
        free(xq), free(scales), free(sums);
        return -2;
    }
    int8_t *xq_low = digits == 2 ? xq + m * k : NULL;
    tm_quantize_int8(x, m, k, xq, xq_low, scales, sums);
    if (ggml_type == Q6_K) first_half_sums(xq, xq_low, m * blocks, half_sums);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t g = 0; g < groups; g++) {
        const int64_t rows_left = n_rows - g * GROUP_ROWS;
        const __mmask16 valid = rows_left >= GROUP_ROWS ? (__mmask16)0xFFFF : (__mmask16)((1u << rows_left) - 1);
        for (int64_t r = 0; r < m; r += PACKED_TILE) {
            const int count = m - r < PACKED_TILE ? (int)(m - r) : PACKED_TILE;
            tiles(packed + g * group_bytes, blocks, k, xq + r * k, xq_low ? xq_low + r * k : NULL, scales + r * blocks,
                  sums + r * blocks, half_sums + r * blocks, count, y + r * n_rows + g * GROUP_ROWS, n_rows, valid);
        }
    }
    free(xq), free(scales), free(sums);
    return 0;
#else
    (void)packed, (void)ggml_type, (void)n_rows, (void)k, (void)x, (void)m, (void)digits, (void)y, (void)threads;
    return -1;
#endif
}
