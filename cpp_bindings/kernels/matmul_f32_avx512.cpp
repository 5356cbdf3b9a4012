// matmul_f32_impl.hpp on 16-float vectors with an 8 x 32 register tile (16 of the 32 registers accumulate), built
// with AVX-512 flags for this file alone (matmul_f32.cpp calls it only where the CPU has AVX-512).
#define EVK_F32_NAME matmul_f32_avx512
#define EVK_F32_WIDTH 16
#define EVK_F32_MR 8
#define EVK_F32_NV 2
#include "matmul_f32_impl.hpp"
