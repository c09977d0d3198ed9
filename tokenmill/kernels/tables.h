/* The 16-value code books of the 4-bit table types, as float32 (loading/dequant.py holds the same values):
 * llama.cpp's IQ4_NL/IQ4_XS table, and bitsandbytes' NF4 (normal quantiles) and FP4 (sign, 2-bit exponent,
 * 1-bit mantissa) tables sorted ascending, FP4's two zeros included. */
#ifndef TOKENMILL_TABLES_H
#define TOKENMILL_TABLES_H

#define TM_IQ4_VALUES {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}
#define TM_NF4_VALUES                                                                                       \
    {-1.0f, -0.696192801f, -0.525073051f, -0.394917488f, -0.284441382f, -0.18477343f, -0.0910500363f, 0.0f, \
     0.0795802996f, 0.160930201f, 0.246112302f, 0.337915242f, 0.440709829f, 0.562617004f, 0.722956836f, 1.0f}
#define TM_FP4_VALUES                                                                                       \
    {-1.0f, -0.666666687f, -0.5f, -0.333333343f, -0.25f, -0.166666672f, -0.00520833349f, -0.0f, 0.0f,       \
     0.00520833349f, 0.166666672f, 0.25f, 0.333333343f, 0.5f, 0.666666687f, 1.0f}

#endif
