// Multi-head attention without a mask, for the vision encoder: out = softmax(scale * Q Kᵀ) V per head, where
// Q, K, V are the packed projections plus their bias (com.microsoft MultiHeadAttention's inputs). Three
// implementations behind one signature: bf16 products on AMX tiles or on AVX-512 BF16 vectors (both accumulating
// in fp32, same softmax) and a portable fp32 one that any C++ compiler builds.
#pragma once

#include <cstddef>
#include <functional>

namespace evk {

// Runs tasks 0..count-1, possibly on several threads; returns when all are done.
using ParallelFor = std::function<void(size_t count, const std::function<void(size_t)> &task)>;

struct AttentionShape {
    size_t batch = 1, tokens = 0, heads = 0, head_dim = 0;
    float scale = 0;  // 0: 1/sqrt(head_dim)
};

enum class Level { portable = 1, avx512_bf16 = 2, amx_bf16 = 3 };

// The best implementation this CPU runs for this shape, capped by EDGEVLM_KERNELS: "portable" caps it to the fp32
// loops, "avx512" to AVX-512 (no AMX).
Level best_level(const AttentionShape &shape);

// q, k, v: (batch, tokens, heads * head_dim); bias: 3 * heads * head_dim (q, k, v) or null.
void attention(Level level, const AttentionShape &shape, const float *q, const float *k, const float *v,
               const float *bias, float *out, const ParallelFor &parallel_for);

// The bf16 kernels (head_dim 32, 64 or 72; attention_bf16.cpp, built with AVX-512 BF16 and AMX enabled for that
// file alone). attention_amx needs the process's permission to use AMX tiles (best_level asks Linux for it).
bool bf16_supported_shape(const AttentionShape &shape);
void attention_bf16(const AttentionShape &shape, const float *q, const float *k, const float *v, const float *bias,
                    float *out, const ParallelFor &parallel_for);
void attention_amx(const AttentionShape &shape, const float *q, const float *k, const float *v, const float *bias,
                   float *out, const ParallelFor &parallel_for);

}  // namespace evk
