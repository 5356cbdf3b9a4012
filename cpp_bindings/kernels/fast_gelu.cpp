// FastGelu's portable loops and the choice between them and the AVX-512 build (fast_gelu.hpp).
#include "fast_gelu.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu.hpp"

namespace evk {
namespace {

constexpr size_t ROWS_PER_TASK = 16;

// The bias is a weight that kernel graphs map from inside the standard file, at any byte offset: a plain float
// load of it would be misaligned.
inline float bias_at(const float *bias, size_t c) {
    float v = 0.0f;
    if (bias) std::memcpy(&v, bias + c, sizeof v);
    return v;
}

}  // namespace

void fast_gelu(const float *x, const float *bias, size_t rows, size_t width, float *out,
               const ParallelFor &parallel_for) {
#ifdef EVK_GELU_AVX512
    if (avx512_allowed()) return fast_gelu_avx512(x, bias, rows, width, out, parallel_for);
#endif
    parallel_for((rows + ROWS_PER_TASK - 1) / ROWS_PER_TASK, [&](size_t t) {
        for (size_t r = t * ROWS_PER_TASK; r < std::min(rows, (t + 1) * ROWS_PER_TASK); ++r)
            for (size_t c = 0; c < width; ++c) {
                const float v = x[r * width + c] + bias_at(bias, c);
                out[r * width + c] = 0.5f * v * (1.0f + std::tanh(0.7978845608028654f * (v + 0.044715f * v * v * v)));
            }
    });
}

}  // namespace evk
