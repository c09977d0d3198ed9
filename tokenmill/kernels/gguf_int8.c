/* precision="fast": integer dot products of GGUF block weights with int8 activations (issue 21).
 *
 * Activations are quantized per 32-element block to int8 with one float scale (d = amax / 127, q = round(x / d)
 * taken as nearbyint(x * (1 / d)) in float32), as llama.cpp's Q8_0 activations are; each weight block's dot with
 * them is an exact int32 sum, scaled once by d_w * d_x in float. Integer sums run on AVX-512 VNNI
 * (dpbusd) where the build targets it, AVX2 (maddubs + madd) otherwise, and portable C on other CPUs.
 * Served weight types: Q4_0, Q4_1, Q8_0 (tm_int8_supports).
 *
 * digits = 2 adds a second int8 digit per value: low = round((x / d - q) * 128) in -64..64, so the block holds
 * the integers 128 q + low at scale d / 128 (16-bit resolution, 1/128 of one digit's rounding error). The dot
 * products stay int8 x uint8 (two per block, the first shifted by 7 bits); every sum is still exact in int32.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "exports.h"
#include "target.h"

#if defined(TM_AVX512) || defined(TM_AVX2)
#include <immintrin.h>
#endif

#define INT8_TILE 4 /* activation rows sharing one unpacked weight block */

/* float16 bits -> float through float32 arithmetic: exact for every finite half (subnormals included) */
static inline float half_to_float(const uint8_t *p) {
    uint32_t h = (uint32_t)p[0] | ((uint32_t)p[1] << 8);
    uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    float magnitude = exponent == 0 ? (float)mantissa * 5.9604644775390625e-08f
                                    : ldexpf((float)(mantissa | 0x400u), (int)exponent - 25);
    if (exponent == 31) magnitude = mantissa ? NAN : INFINITY;
    return (h & 0x8000u) ? -magnitude : magnitude;
}

int tm_int8_supports(int ggml_type) { return ggml_type == 2 || ggml_type == 3 || ggml_type == 8; }

#if defined(TM_AVX512)
/* one 32-value block as the scalar loop below quantizes it: the same float32 operations lane by lane
 * (roundscale to nearest even is nearbyintf under the default rounding mode), so the same bytes */
static void quantize_block_avx512(const float *xb, int8_t *q, int8_t *q_low, float *scale, int32_t *sum) {
    const __m512 x0 = _mm512_loadu_ps(xb), x1 = _mm512_loadu_ps(xb + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
    const float d = amax / 127.0f, inverse = d > 0.0f ? 1.0f / d : 0.0f;
    const int nearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    __m512i total = _mm512_setzero_si512();
    for (int half = 0; half < 2; half++) {
        const __m512 scaled = _mm512_mul_ps(half ? x1 : x0, _mm512_set1_ps(inverse));
        const __m512 high = _mm512_roundscale_ps(scaled, nearest);
        __m512i integers = _mm512_cvtps_epi32(high);
        _mm_storeu_si128((__m128i *)(q + 16 * half), _mm512_cvtepi32_epi8(integers));
        if (q_low) {
            const __m512 low = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_sub_ps(scaled, high), _mm512_set1_ps(128.0f)),
                                                    nearest);
            const __m512i low_integers = _mm512_cvtps_epi32(low);
            _mm_storeu_si128((__m128i *)(q_low + 16 * half), _mm512_cvtepi32_epi8(low_integers));
            integers = _mm512_add_epi32(_mm512_slli_epi32(integers, 7), low_integers);
        }
        total = _mm512_add_epi32(total, integers);
    }
    *scale = q_low ? d * 0.0078125f : d;
    *sum = _mm512_reduce_add_epi32(total);
}
#endif

/* q_low: the second digits (digits = 2), or NULL for one digit; scales and sums are those of the block's
 * integers (q, or 128 q + q_low) */
int tm_quantize_int8(const float *x, int64_t rows, int64_t k, int8_t *q, int8_t *q_low, float *scales,
                     int32_t *sums) {
    if (k % 32) return -1;
#if defined(TM_AVX512)
    for (int64_t b = 0; b < rows * k / 32; b++)
        quantize_block_avx512(x + b * 32, q + b * 32, q_low ? q_low + b * 32 : NULL, scales + b, sums + b);
#else
    for (int64_t b = 0; b < rows * k / 32; b++) {
        const float *xb = x + b * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fabsf(xb[j]) > amax ? fabsf(xb[j]) : amax;
        const float d = amax / 127.0f, inverse = d > 0.0f ? 1.0f / d : 0.0f;
        int32_t total = 0;
        for (int j = 0; j < 32; j++) {
            const float scaled = xb[j] * inverse, high = nearbyintf(scaled);
            q[b * 32 + j] = (int8_t)high;
            if (q_low) {  /* scaled - high is exact (same binade), and so is its product with 128 */
                q_low[b * 32 + j] = (int8_t)nearbyintf((scaled - high) * 128.0f);
                total += 128 * (int32_t)high + q_low[b * 32 + j];
            } else {
                total += (int32_t)high;
            }
        }
        scales[b] = q_low ? d * 0.0078125f : d;
        sums[b] = total;
    }
#endif
    return 0;
}

/* the 32 weight values of a 4-bit block, unsigned 0..15, element order (low nibbles then high nibbles) */
#if defined(TM_AVX512) || defined(TM_AVX2)
static inline __m256i nibbles(const uint8_t *qs) {
    const __m128i packed = _mm_loadu_si128((const __m128i *)qs), low4 = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), low4), _mm_and_si128(packed, low4));
}
#endif

#if !defined(TM_AVX512) && !defined(TM_AVX2)
/* sum over the block of the unsigned 4-bit weight values times the int8 activations */
static inline int32_t nibble_dot(const uint8_t *qs, const int8_t *xq) {
    int32_t total = 0;
    for (int j = 0; j < 16; j++) total += (qs[j] & 0x0F) * xq[j] + (qs[j] >> 4) * xq[j + 16];
    return total;
}

static inline int32_t int8_dot(const int8_t *wq, const int8_t *xq) {
    int32_t total = 0;
    for (int j = 0; j < 32; j++) total += wq[j] * xq[j];
    return total;
}

/* the block's dot with its activation integers: q, or 128 q + q_low with a second digit */
static inline int32_t nibble_dots(const uint8_t *qs, const int8_t *xq, const int8_t *xq_low) {
    return xq_low ? 128 * nibble_dot(qs, xq) + nibble_dot(qs, xq_low) : nibble_dot(qs, xq);
}

static inline int32_t int8_dots(const int8_t *wq, const int8_t *xq, const int8_t *xq_low) {
    return xq_low ? 128 * int8_dot(wq, xq) + int8_dot(wq, xq_low) : int8_dot(wq, xq);
}
#endif

#if defined(TM_AVX512) || defined(TM_AVX2)
/* the int32 lanes of unsigned a[j] * signed b[j] over 32 bytes (a <= 128 keeps maddubs' int16 pairs exact) */
static inline __m256i lanes_u8_s8(__m256i a, __m256i b) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
#endif
}

static inline float half_fast(const uint8_t *p) { return _cvtsh_ss((uint16_t)(p[0] | (p[1] << 8))); }

/* activations as the second operand: signed by the weights' signs where the first operand is |w| (Q8_0) */
static inline __m256i activations(const int8_t *xq, int signed_weights, __m256i w) {
    const __m256i x = _mm256_loadu_si256((const __m256i *)xq);
    return signed_weights ? _mm256_sign_epi8(x, w) : x;
}

/* the block's int32 lanes of unsigned a times the activation integers: q, or 128 q + q_low with a second digit */
static inline __m256i block_lanes(__m256i a, int signed_weights, __m256i w, const int8_t *xq, const int8_t *xq_low) {
    const __m256i high = lanes_u8_s8(a, activations(xq, signed_weights, w));
    if (!xq_low) return high;
    const __m256i low = lanes_u8_s8(a, activations(xq_low, signed_weights, w));
    return _mm256_add_epi32(_mm256_slli_epi32(high, 7), low);
}

/* vector form: `count` (1..INT8_TILE) activation rows against one weight row, each weight block unpacked once
 * for all of them; per row, int32 lanes scaled and summed in eight float lanes and reduced once. Each row's sums
 * run in the same order whatever `count` is, so a row's result does not depend on the rows beside it. */
static inline __attribute__((always_inline)) void rows_dot_n(
        const uint8_t *row, int ggml_type, int64_t blocks, int64_t k, const int8_t *xq, const int8_t *xq_low,
        const float *scales, const int32_t *sums, const int count, float *out) {
    __m256 acc[INT8_TILE];
    float offsets[INT8_TILE];  /* Q4_0's -8 and Q4_1's minimum, times the block's activation sum */
    for (int i = 0; i < INT8_TILE; i++) {
        acc[i] = _mm256_setzero_ps();
        offsets[i] = 0.0f;
    }
    for (int64_t b = 0; b < blocks; b++) {
        __m256i a, w = _mm256_setzero_si256();
        float weight_scale, weight_min = 0.0f;
        int signed_weights = 0;
        if (ggml_type == 2) {
            const uint8_t *block = row + b * 18;
            weight_scale = half_fast(block);
            a = nibbles(block + 2);
        } else if (ggml_type == 3) {
            const uint8_t *block = row + b * 20;
            weight_scale = half_fast(block);
            weight_min = half_fast(block + 2);
            a = nibbles(block + 4);
        } else {
            const uint8_t *block = row + b * 34;
            w = _mm256_loadu_si256((const __m256i *)(block + 2));
            weight_scale = half_fast(block);
            a = _mm256_sign_epi8(w, w);
            signed_weights = 1;
        }
        for (int i = 0; i < INT8_TILE && i < count; i++) {
            const int64_t at = i * k + b * 32, block_at = i * blocks + b;
            const float scale = weight_scale * scales[block_at];
            const __m256i lanes = block_lanes(a, signed_weights, w, xq + at, xq_low ? xq_low + at : NULL);
            if (ggml_type == 2) offsets[i] += scale * (float)(-8 * sums[block_at]);
            if (ggml_type == 3) offsets[i] += weight_min * scales[block_at] * (float)sums[block_at];
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), _mm256_set1_ps(scale), acc[i]);
        }
    }
    for (int i = 0; i < count; i++) {
        __m128 half = _mm_add_ps(_mm256_castps256_ps128(acc[i]), _mm256_extractf128_ps(acc[i], 1));
        half = _mm_add_ps(half, _mm_movehl_ps(half, half));
        half = _mm_add_ss(half, _mm_movehdup_ps(half));
        out[i] = _mm_cvtss_f32(half) + offsets[i];
    }
}

/* one activation row (a decode step): the same sums in the same order as rows_dot_n's, without its tiling */
static float row_dot(const uint8_t *row, int ggml_type, int64_t blocks, const int8_t *xq, const int8_t *xq_low,
                     const float *scales, const int32_t *sums) {
    const __m256i unused = _mm256_setzero_si256();
    __m256 acc = _mm256_setzero_ps();
    float offsets = 0.0f;
    for (int64_t b = 0; b < blocks; b++, xq += 32, xq_low = xq_low ? xq_low + 32 : NULL) {
        __m256i lanes;
        float scale;
        if (ggml_type == 2) {
            const uint8_t *block = row + b * 18;
            scale = half_fast(block) * scales[b];
            lanes = block_lanes(nibbles(block + 2), 0, unused, xq, xq_low);
            offsets += scale * (float)(-8 * sums[b]);
        } else if (ggml_type == 3) {
            const uint8_t *block = row + b * 20;
            scale = half_fast(block) * scales[b];
            lanes = block_lanes(nibbles(block + 4), 0, unused, xq, xq_low);
            offsets += half_fast(block + 2) * scales[b] * (float)sums[b];
        } else {
            const uint8_t *block = row + b * 34;
            const __m256i w = _mm256_loadu_si256((const __m256i *)(block + 2));
            scale = half_fast(block) * scales[b];
            lanes = block_lanes(_mm256_sign_epi8(w, w), 1, w, xq, xq_low);
        }
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), _mm256_set1_ps(scale), acc);
    }
    __m128 half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    half = _mm_add_ps(half, _mm_movehl_ps(half, half));
    half = _mm_add_ss(half, _mm_movehdup_ps(half));
    return _mm_cvtss_f32(half) + offsets;
}

/* rows_dot_n with `count` a constant in each copy, so its accumulators live in registers */
static void rows_dot(const uint8_t *row, int ggml_type, int64_t blocks, int64_t k, const int8_t *xq,
                     const int8_t *xq_low, const float *scales, const int32_t *sums, int count, float *out) {
    switch (count) {
        case 1: out[0] = row_dot(row, ggml_type, blocks, xq, xq_low, scales, sums); break;
        case 2: rows_dot_n(row, ggml_type, blocks, k, xq, xq_low, scales, sums, 2, out); break;
        case 3: rows_dot_n(row, ggml_type, blocks, k, xq, xq_low, scales, sums, 3, out); break;
        default: rows_dot_n(row, ggml_type, blocks, k, xq, xq_low, scales, sums, INT8_TILE, out); break;
    }
}
#else
/* one weight row against one quantized activation row: sum over blocks of float(block scale) * int dot */
static float row_dot(const uint8_t *row, int ggml_type, int64_t blocks, const int8_t *xq, const int8_t *xq_low,
                     const float *scales, const int32_t *sums) {
    float total = 0.0f;
    for (int64_t b = 0; b < blocks; b++, xq += 32, xq_low = xq_low ? xq_low + 32 : NULL) {
        if (ggml_type == 2) {  /* Q4_0: (u - 8) * d */
            const uint8_t *block = row + b * 18;
            total += half_to_float(block) * scales[b] * (float)(nibble_dots(block + 2, xq, xq_low) - 8 * sums[b]);
        } else if (ggml_type == 3) {  /* Q4_1: u * d + m */
            const uint8_t *block = row + b * 20;
            total += half_to_float(block) * scales[b] * (float)nibble_dots(block + 4, xq, xq_low);
            total += half_to_float(block + 2) * scales[b] * (float)sums[b];
        } else {  /* Q8_0: q * d */
            const uint8_t *block = row + b * 34;
            total += half_to_float(block) * scales[b] * (float)int8_dots((const int8_t *)(block + 2), xq, xq_low);
        }
    }
    return total;
}

static void rows_dot(const uint8_t *row, int ggml_type, int64_t blocks, int64_t k, const int8_t *xq,
                     const int8_t *xq_low, const float *scales, const int32_t *sums, int count, float *out) {
    for (int i = 0; i < count; i++)
        out[i] = row_dot(row, ggml_type, blocks, xq + i * k, xq_low ? xq_low + i * k : NULL, scales + i * blocks,
                         sums + i * blocks);
}
#endif

/* xq_low: the second digits of tm_quantize_int8, or NULL for one digit */
int tm_matmul_int8(const uint8_t *w, int64_t row_bytes, int ggml_type, int64_t n_rows, int64_t k, const int8_t *xq,
                   const int8_t *xq_low, const float *scales, const int32_t *sums, int64_t m, float *y, int threads) {
    if (!tm_int8_supports(ggml_type) || k % 32) return -1;
    const int64_t blocks = k / 32;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < n_rows; n++)
        for (int64_t r = 0; r < m; r += INT8_TILE) {
            const int count = m - r < INT8_TILE ? (int)(m - r) : INT8_TILE;
            float out[INT8_TILE];
            rows_dot(w + n * row_bytes, ggml_type, blocks, k, xq + r * k, xq_low ? xq_low + r * k : NULL,
                     scales + r * blocks, sums + r * blocks, count, out);
            for (int i = 0; i < count; i++) y[(r + i) * n_rows + n] = out[i];
        }
    return 0;
}
