// gqa_impl.hpp on 8-float vectors, built with AVX2 and FMA for this file alone (gqa.cpp calls it only where the CPU
// has them and no AVX-512 build runs).
#define EVK_GQA_NAME gqa_avx2
#define EVK_GQA_WIDTH 8
#include "gqa_impl.hpp"
