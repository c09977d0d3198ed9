/* Register tiles for the K-quants Q4_K and Q6_K (included by gguf_avx512.c, after x_at and STORE_TILE).
 *
 * A 256-value super-block dequantizes to 16 vectors per weight row: unpacking whole blocks for a tile of
 * 4 rows would need 64 registers, so these tiles unpack a few vectors of every row and multiply them in at
 * once. The per-block scales are decoded once per block, vectorized, into float arrays (one broadcast load
 * per sub-block afterwards). Values and summation order are those of tile_dot: each output's accumulator is
 * fed vector 0..15 of block 0, then of block 1, ..., so results equal the generic tile's bit for bit.
 */
#ifndef TOKENMILL_GGUF_KTILES_H
#define TOKENMILL_GGUF_KTILES_H

/* eight bytes (a uint64) -> eight floats */
static inline __m256 bytes_to_floats(uint64_t bytes) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)bytes)));
}

/* Q4_K header: dl[s] = d * scale[s], ml[s] = dmin * min[s] for the 8 sub-blocks, the very products the
 * dequantizer forms. The 12 bytes hold 8 six-bit scales and mins: bytes 0-3 scales 0-3 (low 6 bits), 4-7 mins
 * 0-3, 8-11 the low 4 bits of scales 4-7 (low nibble) and mins 4-7 (high nibble), whose top 2 bits are the top
 * bits of bytes 0-3 (scales) and 4-7 (mins). Decoded four at a time in 32-bit words. */
static inline void q4k_scales(const uint8_t *b, float *dl, float *ml) {
    uint32_t s03, m03, low47;
    __builtin_memcpy(&s03, b + 4, 4);
    __builtin_memcpy(&m03, b + 8, 4);
    __builtin_memcpy(&low47, b + 12, 4);
    const uint32_t six = 0x3F3F3F3Fu, nibble = 0x0F0F0F0Fu, top = 0x30303030u;
    const uint64_t scales = (uint64_t)(s03 & six) | (uint64_t)((low47 & nibble) | ((s03 >> 2) & top)) << 32;
    const uint64_t mins = (uint64_t)(m03 & six) | (uint64_t)(((low47 >> 4) & nibble) | ((m03 >> 2) & top)) << 32;
    __m512 d, dmin;
    broadcast_two_halves(b, &d, &dmin);
    _mm256_storeu_ps(dl, _mm256_mul_ps(_mm512_castps512_ps256(d), bytes_to_floats(scales)));
    _mm256_storeu_ps(ml, _mm256_mul_ps(_mm512_castps512_ps256(dmin), bytes_to_floats(mins)));
}

/* Q4_K sub-blocks 2p and 2p + 1 (64 values, 4 vectors): the low and the high nibbles of the same 32 bytes, each
 * a lane permute of its sub-block's 16-value table (q * dl - ml, as in dequant_Q4_K) */
static inline void q4k_pair(const uint8_t *b, const float *dl, const float *ml, int p, __m512 *w) {
    const __m512 even = _mm512_sub_ps(_mm512_mul_ps(nibble_values(), _mm512_set1_ps(dl[2 * p])),
                                      _mm512_set1_ps(ml[2 * p]));
    const __m512 odd = _mm512_sub_ps(_mm512_mul_ps(nibble_values(), _mm512_set1_ps(dl[2 * p + 1])),
                                     _mm512_set1_ps(ml[2 * p + 1]));
    const uint8_t *chunk = b + 16 + 32 * p;
    const __m512i first = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)chunk));
    const __m512i second = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(chunk + 16)));
    w[0] = _mm512_permutexvar_ps(first, even); /* vpermps reads the index's low 4 bits: no mask */
    w[1] = _mm512_permutexvar_ps(second, even);
    w[2] = _mm512_permutexvar_ps(_mm512_srli_epi32(first, 4), odd);
    w[3] = _mm512_permutexvar_ps(_mm512_srli_epi32(second, 4), odd);
}

/* Q4_K sub-block `sub` alone (2 vectors), as q4k_pair */
static inline void q4k_sub(const uint8_t *b, const float *dl, const float *ml, int sub, __m512 *w) {
    const __m512 table = _mm512_sub_ps(_mm512_mul_ps(nibble_values(), _mm512_set1_ps(dl[sub])),
                                       _mm512_set1_ps(ml[sub]));
    const uint8_t *chunk = b + 16 + 32 * (sub / 2);
    for (int half = 0; half < 2; half++) {
        __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(chunk + 16 * half)));
        w[half] = _mm512_permutexvar_ps(sub & 1 ? _mm512_srli_epi32(bytes, 4) : bytes, table);
    }
}

/* prefetch the same block PREFETCH_ROWS rows ahead, a cache line at a time (as tile_dot) */
#define PREFETCH_BLOCK(row, row_bytes, i, block_bytes)                                                      \
    for (int offset_ = 0; offset_ < (block_bytes); offset_ += 64)                                           \
    _mm_prefetch((const char *)((row) + (PREFETCH_ROWS + (i)) * (row_bytes) + offset_), _MM_HINT_T0)

/* acc[i * mb + r] += w[i][v] * x[r] at vector `first_vector + v` of the block (columns e + 16 * that on), for
 * v < count and all rows i < nb: each vector of x is loaded once for all weight rows */
#define MULTIPLY_IN(w, count, first_vector)                                                                 \
    for (int v_ = 0; v_ < (count); v_++)                                                                    \
        for (int r_ = 0; r_ < mb; r_++) {                                                                   \
            const __m512 xv_ = _mm512_loadu_ps(x_at(x, packed, k, r0, mb, r_, e + 16 * ((first_vector) + v_))); \
            for (int i_ = 0; i_ < nb; i_++) acc[i_ * mb + r_] = _mm512_fmadd_ps((w)[i_][v_], xv_, acc[i_ * mb + r_]); \
        }

/* tile_dot for Q4_K (same arguments, same results) */
static inline __attribute__((always_inline)) void tile_q4k(const uint8_t *w, int64_t row_bytes, int64_t n0,
                                                          const int nb, const float *x, int64_t k, int64_t r0,
                                                          const int mb, const int packed, float *y, int64_t ldy) {
    __m512 acc[16];
    for (int i = 0; i < nb * mb; i++) acc[i] = _mm512_setzero_ps();
    const uint8_t *row = w + n0 * row_bytes;
    float dl[TILE_N][8], ml[TILE_N][8];
    for (int64_t e = 0; e < k; e += 256, row += 144) {
        for (int i = 0; i < nb; i++) {
            PREFETCH_BLOCK(row, row_bytes, i, 144);
            q4k_scales(row + i * row_bytes, dl[i], ml[i]);
        }
        if (nb * (4 + mb) <= 28) { /* a sub-block pair of every row in registers with the accumulators */
            for (int p = 0; p < 4; p++) {
                __m512 values[TILE_N][4];
                for (int i = 0; i < nb; i++) q4k_pair(row + i * row_bytes, dl[i], ml[i], p, values[i]);
                MULTIPLY_IN(values, 4, 4 * p);
            }
        } else { /* 4 x 4 tiles: one sub-block at a time, the pair's bytes loaded twice */
            for (int sub = 0; sub < 8; sub++) {
                __m512 values[TILE_N][2];
                for (int i = 0; i < nb; i++) q4k_sub(row + i * row_bytes, dl[i], ml[i], sub, values[i]);
                MULTIPLY_IN(values, 2, 2 * sub);
            }
        }
    }
    STORE_TILE(acc, nb, mb);
}

/* Q6_K: the 128 six-bit values of half `h` of a block, as two vectors of int8 (q - 32): values 0-63 and
 * 64-127 of the half. The low 4 bits are ql's low (0-63) and high (64-127) nibbles; the top 2 bits come from
 * qh, whose byte j holds them for values j, j + 32, j + 64, j + 96 in bit pairs 0-1, 2-3, 4-5, 6-7. */
static inline void q6k_half(const uint8_t *b, int h, __m512i *first, __m512i *second) {
    const __m512i ql = _mm512_loadu_si512((const void *)(b + 64 * h));
    const __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
    /* bytes j and 32 + j: qh[j] and qh[j] >> 2, so bit pair 0-1 of each byte is the top of values j, 32 + j
     * and bit pair 4-5 that of values 64 + j, 96 + j */
    const __m512i top = _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1);
    const __m512i nibble = _mm512_set1_epi8(0x0F), bits45 = _mm512_set1_epi8(0x30), bias = _mm512_set1_epi8(32);
    /* A | (B & C): ternary-logic immediate 0xF8 */
    const __m512i low = _mm512_ternarylogic_epi32(_mm512_and_si512(ql, nibble), _mm512_slli_epi16(top, 4), bits45,
                                                  0xF8);
    const __m512i high = _mm512_ternarylogic_epi32(_mm512_and_si512(_mm512_srli_epi16(ql, 4), nibble), top, bits45,
                                                   0xF8);
    *first = _mm512_sub_epi8(low, bias);
    *second = _mm512_sub_epi8(high, bias);
}

/* Q6_K group scales: dl[g] = d * scale[g] for the 16 groups of 16 values (the dequantizer's product) */
static inline void q6k_scales(const uint8_t *b, float *dl) {
    const __m512 scales = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 192))));
    _mm512_storeu_ps(dl, _mm512_mul_ps(scales, broadcast_half(b + 208)));
}

/* the 16 values of lane `lane` of int8 vector q, as floats times the group's scale: (float)q * dl */
static inline __m512 q6k_group(__m512i q, const int lane, float dl) {
    const __m128i bytes = lane == 0 ? _mm512_castsi512_si128(q) : _mm512_extracti32x4_epi32(q, lane);
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)), _mm512_set1_ps(dl));
}

/* tile_dot for Q6_K (same arguments, same results) */
static inline __attribute__((always_inline)) void tile_q6k(const uint8_t *w, int64_t row_bytes, int64_t n0,
                                                          const int nb, const float *x, int64_t k, int64_t r0,
                                                          const int mb, const int packed, float *y, int64_t ldy) {
    __m512 acc[16];
    for (int i = 0; i < nb * mb; i++) acc[i] = _mm512_setzero_ps();
    const uint8_t *row = w + n0 * row_bytes;
    float dl[TILE_N][16];
    for (int64_t e = 0; e < k; e += 256, row += 210) {
        for (int i = 0; i < nb; i++) {
            PREFETCH_BLOCK(row, row_bytes, i, 210);
            q6k_scales(row + i * row_bytes, dl[i]);
        }
        for (int h = 0; h < 2; h++) {
            __m512i first[TILE_N], second[TILE_N];
            for (int i = 0; i < nb; i++) q6k_half(row + i * row_bytes, h, &first[i], &second[i]);
            for (int lane = 0; lane < 4; lane++) {
                __m512 values[TILE_N][1];
                for (int i = 0; i < nb; i++) values[i][0] = q6k_group(first[i], lane, dl[i][8 * h + lane]);
                MULTIPLY_IN(values, 1, 8 * h + lane);
            }
            for (int lane = 0; lane < 4; lane++) {
                __m512 values[TILE_N][1];
                for (int i = 0; i < nb; i++) values[i][0] = q6k_group(second[i], lane, dl[i][8 * h + 4 + lane]);
                MULTIPLY_IN(values, 1, 8 * h + 4 + lane);
            }
        }
    }
    STORE_TILE(acc, nb, mb);
}

#undef MULTIPLY_IN
#undef PREFETCH_BLOCK

#endif
