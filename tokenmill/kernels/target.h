/* What the compiler was told to target (tokenmill/kernels/build.py picks the flags from TOKENMILL_KERNEL_ISA):
 * every vector path is guarded by these macros, so a build for an older CPU keeps only the portable C. */
#ifndef TOKENMILL_TARGET_H
#define TOKENMILL_TARGET_H

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__F16C__)
#define TM_AVX512 1
#define TM_BUILD_ISA "avx512"
#elif defined(__AVX2__) && defined(__FMA__)
#define TM_AVX2 1
#define TM_BUILD_ISA "avx2"
#else
#define TM_BUILD_ISA "scalar"
#endif

/* a * b + c, rounded once where the CPU fuses it; without FMA hardware fmaf is a slow libm call, so the
 * product and the sum round separately (still within the kernels' float32 summation-order contract) */
#if defined(__FMA__) || defined(__aarch64__)
#define TM_FMA(a, b, c) __builtin_fmaf((a), (b), (c))
#else
#define TM_FMA(a, b, c) ((a) * (b) + (c))
#endif

#endif
