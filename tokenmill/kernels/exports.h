/* Every function the kernels library exports: the C files include this (so the compiler checks each
 * definition against it) and tokenmill/kernels/build.py parses it into the ctypes signatures. Keep one
 * prototype per declaration ending in ");", with parameter types from: int, int64_t, float, pointers.
 * Status-returning functions return 0 on success. */
#ifndef TOKENMILL_EXPORTS_H
#define TOKENMILL_EXPORTS_H

#include <stdint.h>

/* what the build targeted: "avx512", "avx2" or "scalar" (target.h) */
const char *tm_build_isa(void);

/* the GGUF type table (gguf_types.h): block size in bytes and in elements, 0 for an unknown type id */
int tm_block_bytes(int ggml_type);
int tm_block_elements(int ggml_type);
/* 1 if tm_matmul / tm_dequant_rows take this type; tm_has_avx512: 1 if this build has its AVX-512 path */
int tm_supports(int ggml_type);
int tm_has_avx512(int ggml_type);

int tm_matmul(const uint8_t *w, int64_t row_bytes, int ggml_type, int64_t n_rows, int64_t k, const float *x,
              int64_t m, float *y, int threads);
int tm_dequant_rows(const uint8_t *w, int64_t row_bytes, int ggml_type, int64_t k, const int64_t *ids,
                    int64_t n, float *out, int threads);
/* rows [start, end) of tm_matmul on the AVX-512 path (gguf_avx512.c); -1 where this type or build has none */
int tm_rows_avx512(const uint8_t *w, int64_t row_bytes, int ggml_type, int64_t start, int64_t end,
                   int64_t n_rows, int64_t k, const float *x, const float *xp, int64_t m, float *y, float *scratch);

/* precision="fast" (gguf_int8.c): x [rows, k] -> int8 q (and second digits q_low, or NULL for one digit),
 * per-32-block scales and int sums of the block integers; then W x from those in integer dot products.
 * tm_int8_supports: 1 for the weight types tm_matmul_int8 takes. */
int tm_int8_supports(int ggml_type);
int tm_quantize_int8(const float *x, int64_t rows, int64_t k, int8_t *q, int8_t *q_low, float *scales,
                     int32_t *sums);
int tm_matmul_int8(const uint8_t *w, int64_t row_bytes, int ggml_type, int64_t n_rows, int64_t k, const int8_t *xq,
                   const int8_t *xq_low, const float *scales, const int32_t *sums, int64_t m, float *y, int threads);
/* precision="fast" over weights repacked once (gguf_int8_packed.c, AVX-512 VNNI builds): tm_int8_packs 1 where
 * this build has it for the type; tm_int8_group_block_bytes: packed bytes per 16 rows and 32-value block (the
 * packed size is ceil(n_rows / 16) * k / 32 times it); tm_matmul_int8_packed quantizes x itself (as
 * tm_quantize_int8, `digits` 1 or 2) */
int tm_int8_packs(int ggml_type);
int tm_int8_group_block_bytes(int ggml_type);
int tm_int8_pack(const uint8_t *w, int64_t row_bytes, int ggml_type, int64_t n_rows, int64_t k, uint8_t *out,
                 int threads);
int tm_matmul_int8_packed(const uint8_t *packed, int ggml_type, int64_t n_rows, int64_t k, const float *x,
                          int64_t m, int digits, float *y, int threads);

int tm_rms_norm(const float *x, int64_t rows, int64_t dim, const float *w, float eps, int unit_offset, float *out,
                int threads);
int tm_argmax_rows(const float *x, int64_t rows, int64_t n, int64_t *out, int threads);
int tm_rotary(const float *x, const int64_t *xs, int64_t batch, int64_t heads, int64_t seq, int64_t dim,
              const float *cos, const float *signed_sin, int64_t cs_b, int64_t cs_l, float *out, int threads);
int tm_silu_mul(const float *gate_up, int64_t rows, int64_t inter, float *out, int threads);

int tm_attention(const float *q, int64_t q_sb, int64_t q_sh, int64_t q_sq, const float *keys, const float *values,
                 const int64_t *k_strides, const int64_t *v_strides, const int64_t *slots, const uint8_t *visible,
                 const int64_t *mask_strides, int causal, int64_t batch, int64_t heads, int64_t kv_heads,
                 int64_t queries, int64_t columns, int64_t dim, float scale, float *out, int threads);

#endif
