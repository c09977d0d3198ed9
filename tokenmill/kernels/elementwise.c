/* Row-wise float32 kernels for the decode step, where one ATen op costs more in dispatch than in arithmetic.
 *
 * rms_norm: out = x * (1 / sqrt(mean(x^2) + eps)) * w, rounding after each product as torch does. The mean
 * is accumulated in double where torch sums in float32: the two differ by about 1 ulp of the scale.
 * Each row is computed alone, so a row's result never depends on the batch it is in.
 */
#include <math.h>
#include <stdint.h>

static void rms_norm_row(const float *x, int64_t dim, const float *w, float eps, int unit_offset, float *out) {
    double sums[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= dim; i += 8)
        for (int lane = 0; lane < 8; lane++) sums[lane] += (double)x[i + lane] * (double)x[i + lane];
    double total = 0;
    for (; i < dim; i++) total += (double)x[i] * (double)x[i];
    for (int lane = 0; lane < 8; lane++) total += sums[lane];
    const float scale = (float)(1.0 / sqrt(total / (double)dim + (double)eps));
    if (unit_offset) {
        for (i = 0; i < dim; i++) out[i] = (x[i] * scale) * (1.0f + w[i]);
    } else {
        for (i = 0; i < dim; i++) out[i] = (x[i] * scale) * w[i];
    }
}

int tm_rms_norm(const float *x, int64_t rows, int64_t dim, const float *w, float eps, int unit_offset, float *out,
                int threads) {
    if (rows < 0 || dim <= 0) return 1;
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * dim > 65536)
    for (int64_t row = 0; row < rows; row++) rms_norm_row(x + row * dim, dim, w, eps, unit_offset, out + row * dim);
    return 0;
}
