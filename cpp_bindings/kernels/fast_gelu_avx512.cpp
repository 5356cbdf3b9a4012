// FastGelu on 16 lanes (fast_gelu.hpp): 0.5 v (1 + tanh(u)) = v sigmoid(2 u) = v / (1 + e^(-2u)), with
// 2u = 2 sqrt(2/pi) v (1 + 0.044715 v^2). Built with AVX-512 F for this file alone; fast_gelu.cpp calls it only
// where the CPU has it.
#include <immintrin.h>

#include <algorithm>

#include "fast_gelu.hpp"
#include "vector512.hpp"

namespace evk {

namespace {

constexpr size_t ROWS_PER_TASK = 16;

inline __m512 gelu16(__m512 v) {
    const __m512 v2 = _mm512_mul_ps(v, v);
    const __m512 inner = _mm512_fmadd_ps(v2, _mm512_set1_ps(0.044715f), _mm512_set1_ps(1.0f));
    const __m512 minus_2u = _mm512_mul_ps(_mm512_mul_ps(v, inner), _mm512_set1_ps(-1.5957691216057308f));
    return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(minus_2u)));
}

}  // namespace

void fast_gelu_avx512(const float *x, const float *bias, size_t rows, size_t width, float *out,
                      const ParallelFor &parallel_for) {
    parallel_for((rows + ROWS_PER_TASK - 1) / ROWS_PER_TASK, [&](size_t t) {
        for (size_t r = t * ROWS_PER_TASK; r < std::min(rows, (t + 1) * ROWS_PER_TASK); ++r) {
            const float *in = x + r * width;
            float *y = out + r * width;
            for (size_t c = 0; c < width; c += 16) {
                const __mmask16 live = __mmask16(width - c >= 16 ? 0xFFFF : (1u << (width - c)) - 1);
                __m512 v = _mm512_maskz_loadu_ps(live, in + c);
                if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(live, bias + c));
                _mm512_mask_storeu_ps(y + c, live, gelu16(v));
            }
        }
    });
}

}  // namespace evk
