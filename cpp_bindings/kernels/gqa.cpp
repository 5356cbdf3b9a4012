// gqa_impl.hpp for the target's baseline (SSE2 on x86-64, NEON on aarch64: 8 floats per vector are two registers
// there), and the choice between it and the AVX-512 and AVX2 builds.
#define EVK_GQA_NAME gqa_portable
#define EVK_GQA_WIDTH 8
#include "gqa_impl.hpp"

#include "cpu.hpp"

namespace evk {

void gqa(const GqaShape &shape, const float *qkv, const int32_t *past_len, const int32_t *valid_len,
         float *present_key, float *present_value, const float *cos, const float *sin, float *out,
         const ParallelFor &parallel_for) {
#ifdef EVK_GQA_AVX512
    if (avx512_allowed()) {
        gqa_avx512(shape, qkv, past_len, valid_len, present_key, present_value, cos, sin, out, parallel_for);
        return;
    }
#endif
#ifdef EVK_GQA_AVX2
    if (avx2_allowed()) {
        gqa_avx2(shape, qkv, past_len, valid_len, present_key, present_value, cos, sin, out, parallel_for);
        return;
    }
#endif
    gqa_portable(shape, qkv, past_len, valid_len, present_key, present_value, cos, sin, out, parallel_for);
}

}  // namespace evk
