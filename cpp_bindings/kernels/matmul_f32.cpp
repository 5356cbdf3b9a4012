// matmul_f32_impl.hpp for the target's baseline (SSE2 on x86-64, NEON on aarch64: 8 floats per vector are two
// registers there, a 4 x 8 register tile), and the choice between it and the AVX-512 build.
#define EVK_F32_NAME matmul_f32_portable
#define EVK_F32_WIDTH 8
#define EVK_F32_MR 4
#define EVK_F32_NV 1
#include "matmul_f32_impl.hpp"

#include "cpu.hpp"

namespace evk {

int matmul_f32_level() {
#ifdef EVK_F32_AVX512
    if (avx512_allowed()) return 2;
#endif
    return 1;
}

void matmul_f32(const F32Shape &shape, const float *x, const float *w, float *out, const ParallelFor &parallel_for) {
    if (matmul_f32_level() == 2)
        matmul_f32_avx512(shape, x, w, out, parallel_for);
    else
        matmul_f32_portable(shape, x, w, out, parallel_for);
}

}  // namespace evk
