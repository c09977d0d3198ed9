/* The GGUF tensor types: the one table of type ids and block sizes, read by the C kernels (X-macro) and by
 * Python (tokenmill/kernels/gguf_types.py parses the rows below, so keep one X(...) per line).
 *
 * X(NAME, TYPE_ID, BLOCK_BYTES, BLOCK_ELEMENTS, KERNELS)
 *   KERNELS: NONE (no kernel: dequantized in torch), BLOCKS (scalar dequantizer and matmul in gguf_blocks.c),
 *   BLOCKS_AVX512 (also a register-tiled AVX-512 matmul in gguf_avx512.c).
 * Ids from 1000 are tokenmill's own block types, made only by quantizing at load (assembly/quantize.py) and
 * never read from a GGUF file: NF4 and FP4 are IQ4_NL's layout (a float16 scale, 32 nibbles) over
 * bitsandbytes' 16-value tables (tables.h).
 */
#ifndef TOKENMILL_GGUF_TYPES_H
#define TOKENMILL_GGUF_TYPES_H

#define TM_GGUF_TYPES(X)                  \
    X(F32, 0, 4, 1, NONE)                 \
    X(F16, 1, 2, 1, NONE)                 \
    X(Q4_0, 2, 18, 32, BLOCKS_AVX512)     \
    X(Q4_1, 3, 20, 32, BLOCKS_AVX512)     \
    X(Q5_0, 6, 22, 32, BLOCKS_AVX512)     \
    X(Q5_1, 7, 24, 32, BLOCKS_AVX512)     \
    X(Q8_0, 8, 34, 32, BLOCKS_AVX512)     \
    X(Q8_1, 9, 36, 32, NONE)              \
    X(Q2_K, 10, 84, 256, BLOCKS)          \
    X(Q3_K, 11, 110, 256, BLOCKS)         \
    X(Q4_K, 12, 144, 256, BLOCKS_AVX512)  \
    X(Q5_K, 13, 176, 256, BLOCKS)         \
    X(Q6_K, 14, 210, 256, BLOCKS_AVX512)  \
    X(Q8_K, 15, 292, 256, NONE)           \
    X(IQ2_XXS, 16, 66, 256, NONE)         \
    X(IQ2_XS, 17, 74, 256, NONE)          \
    X(IQ3_XXS, 18, 98, 256, NONE)         \
    X(IQ1_S, 19, 50, 256, NONE)           \
    X(IQ4_NL, 20, 18, 32, BLOCKS)         \
    X(IQ3_S, 21, 110, 256, NONE)          \
    X(IQ2_S, 22, 82, 256, NONE)           \
    X(IQ4_XS, 23, 136, 256, BLOCKS)       \
    X(I8, 24, 1, 1, NONE)                 \
    X(I16, 25, 2, 1, NONE)                \
    X(I32, 26, 4, 1, NONE)                \
    X(I64, 27, 8, 1, NONE)                \
    X(F64, 28, 8, 1, NONE)                \
    X(IQ1_M, 29, 56, 256, NONE)           \
    X(BF16, 30, 2, 1, NONE)               \
    X(TQ1_0, 34, 54, 256, NONE)           \
    X(TQ2_0, 35, 66, 256, NONE)           \
    X(MXFP4, 39, 17, 32, NONE)            \
    X(NF4, 1000, 18, 32, BLOCKS_AVX512)   \
    X(FP4, 1001, 18, 32, BLOCKS_AVX512)

/* TM_IF_<KERNELS>_BLOCKS(code) / TM_IF_<KERNELS>_AVX512(code): `code` where that kernel exists, else nothing */
#define TM_IF_BLOCKS_NONE(...)
#define TM_IF_BLOCKS_BLOCKS(...) __VA_ARGS__
#define TM_IF_BLOCKS_BLOCKS_AVX512(...) __VA_ARGS__
#define TM_IF_AVX512_NONE(...)
#define TM_IF_AVX512_BLOCKS(...)
#define TM_IF_AVX512_BLOCKS_AVX512(...) __VA_ARGS__

#endif
