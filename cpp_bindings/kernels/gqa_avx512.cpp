// gqa_impl.hpp on 16-float vectors, built with AVX-512 flags for this file alone (gqa.cpp calls it only where the
// CPU has AVX-512).
#define EVK_GQA_NAME gqa_avx512
#define EVK_GQA_WIDTH 16
#include "gqa_impl.hpp"
