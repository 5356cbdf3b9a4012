// The decoder's causal attention with its KV cache, as com.microsoft GroupQueryAttention computes it on a CPU
// (packed QKV, rotary embedding of the half-split kind, query heads sharing each KV head, past and present in one
// buffer), in fp32. ONNX Runtime's CPU kernel computes the full score matrix with a GEMM per head and a scalar
// softmax: 36-41 % of a 1,143-token prefill and ~1 ms per decoded token on the 256M decoder (docs/benchmarks.md).
// Here each query row streams its keys once, its scores and softmax on vectors. One implementation, compiled for
// the target's baseline (gqa.cpp) and again for AVX-512 (gqa_avx512.cpp) and AVX2 (gqa_avx2.cpp) from gqa_impl.hpp.
#pragma once

#include <cstddef>
#include <cstdint>

#include "attention.hpp"  // ParallelFor

namespace evk {

struct GqaShape {
    size_t batch = 1, tokens = 0;     // the new positions of each row
    size_t heads = 0, kv_heads = 0, head_dim = 0;
    size_t capacity = 0;              // positions the present buffers hold
    size_t rotary_half = 0;           // cos/sin values per position (head_dim / 2), 0 without rotary
    bool first_prompt = false;        // total_sequence_length == tokens: every row starts at position 0
    float scale = 0;                  // 0: 1/sqrt(head_dim)
};

// qkv: (batch, tokens, (heads + 2 kv_heads) * head_dim); past_len[b]: the positions already in row b's cache
// (seqlens_k + 1 - tokens, or 0 for a first prompt); present_key/value: (batch, kv_heads, capacity, head_dim),
// where the new keys (rotated) and values are written at past_len[b]...; cos/sin: (positions, rotary_half);
// out: (batch, tokens, heads * head_dim).
void gqa_portable(const GqaShape &shape, const float *qkv, const int32_t *past_len, const int32_t *valid_len,
                  float *present_key, float *present_value, const float *cos, const float *sin, float *out,
                  const ParallelFor &parallel_for);
void gqa_avx512(const GqaShape &shape, const float *qkv, const int32_t *past_len, const int32_t *valid_len,
                float *present_key, float *present_value, const float *cos, const float *sin, float *out,
                const ParallelFor &parallel_for);
void gqa_avx2(const GqaShape &shape, const float *qkv, const int32_t *past_len, const int32_t *valid_len,
              float *present_key, float *present_value, const float *cos, const float *sin, float *out,
              const ParallelFor &parallel_for);

// The AVX-512 build where the CPU has AVX-512 F, else the AVX2 build where it has AVX2 (capped by EDGEVLM_KERNELS,
// cpu.hpp), else the portable one.
void gqa(const GqaShape &shape, const float *qkv, const int32_t *past_len, const int32_t *valid_len,
         float *present_key, float *present_value, const float *cos, const float *sin, float *out,
         const ParallelFor &parallel_for);

}  // namespace evk
