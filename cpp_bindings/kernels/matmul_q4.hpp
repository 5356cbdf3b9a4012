// The decoder's 4-bit matrix product with HQQ's float zero points folded in, in one operator:
//   y[m, n] = sum_b s[n, b] * sum_i (q[n, b, i] - 8) * x[m, 32 b + i]  +  sum_b c[b, n] * sum_i x[m, 32 b + i]
// which is exactly what the standard graph computes with three operators and a block sum (MatMulNBits with its
// default zero point, a MatMul of the block sums by the correction c = s (8 - z), an Add; export/
// zero_point_correction.py). The weights are read where MatMulNBits keeps them: codes (N, K/32, 16) with element
// 2j in the low nibble of byte j, scales (N, K/32), and the correction (K/32, N).
//
// Like ONNX Runtime's int8-compute path (accuracy_level 4), x is quantized to int8 per block of 32 (scale
// max|x| / 127) for the first term; the block sums of the second term are exact fp32. Two implementations behind
// one signature give the same integers: AVX-512 VNNI (vpdpbusd) or AVX2 (vpmaddubsw) and portable loops. Where the CPU has AVX-512 BF16,
// prompts of BF16_MIN_ROWS rows or more take a third: the weights dequantized to bf16 per task and multiplied on
// AMX tiles, or with vdpbf16ps where there is no AMX (matmul_q4_bf16.cpp), as close to the exact product but not
// the same integers.
//
// `silu_mul`: the product's columns are [gate | up] and the output is silu(gate) * up (N/2 columns), which saves
// the Split, Sigmoid and two Muls of the MLP.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "attention.hpp"  // ParallelFor

namespace evk {

struct Q4Shape {
    size_t rows = 0, k = 0, n = 0;  // x is (rows, k); the product has n columns
    bool silu_mul = false;
};

// amx_bf16 and avx512_bf16: prompts in bf16 on AMX tiles or vdpbf16ps, single rows on AVX-512 VNNI. avx2: the
// VNNI kernel's integers on AVX2 (matmul_q4_avx2.cpp), for CPUs without AVX-512.
enum class Q4Level { portable = 1, avx512_vnni = 2, amx_bf16 = 3, avx512_bf16 = 4, avx2 = 5 };

// Fewer rows than this (decode, short prompts) stay on the VNNI path at the bf16 levels: dequantizing the weights
// costs more than it saves.
constexpr size_t BF16_MIN_ROWS = 16;

// The best implementation for this CPU and shape, capped by EDGEVLM_KERNELS (cpu.hpp).
Q4Level q4_best_level(const Q4Shape &shape);

// x: (rows, k) fp32; out: (rows, n) or (rows, n / 2) with silu_mul. decode_table (optional): q4_decode_table's,
// which single rows on AVX-512 VNNI read in one pass with the codes instead of the scales and correction.
void matmul_q4(Q4Level level, const Q4Shape &shape, const float *x, const uint8_t *codes, const float *scales,
               const float *correction, const uint16_t *decode_table, float *out, const ParallelFor &parallel_for);

// Decode's copy of the scales and correction: per column, per group of 4 blocks s0..s3 c0..c3 as fp16 (the 2-block
// tail s0 s1 c0 c1), 4 bytes a block where the two stored floats take 8 and the correction's (K/32, N) layout
// cost decode a strided pass of its own. Each value within 2^-11 of itself (3e-8 below fp16's normal range, where
// a block adds as little); empty where one is beyond fp16's range (65504): decode then reads them as stored.
std::vector<uint16_t> q4_decode_table(size_t k, size_t n, const float *scales, const float *correction);

// x quantized per block of 32, shared by both implementations: int8 codes, their scale, their sum, and the block
// sums of x itself.
struct Q4Input {
    size_t rows = 0, blocks = 0;
    int8_t *codes = nullptr;     // rows x blocks x 32
    float *scale = nullptr;      // rows x blocks
    int32_t *code_sum = nullptr; // rows x blocks
    float *sum = nullptr;        // rows x blocks: the fp32 block sums
};

// A buffer that keeps its memory between calls of the same thread: a prompt of a thousand tokens would otherwise
// fault in megabytes of fresh pages in every product (measured: the long prompt's prefill 20 % slower).
template <typename T>
T *scratch(std::vector<T> &buffer, size_t count) {
    if (buffer.size() < count) buffer.resize(count);
    return buffer.data();
}

// A float read from a weight: kernel graphs map their initializers from inside the standard file's protobuf, at
// any byte offset, so a plain `float` load of one is misaligned (undefined; UBSan stops on it).
inline float load_float(const float *p) {
    float v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// The MLP's activation, as every implementation applies it to the gate half.
inline float silu(float g) { return g / (1.0f + std::exp(-g)); }

// One output row of the MLP: silu(gate) * up, from the product's row [gate | up].
inline void silu_mul(const float *y, size_t width, float *out) {
    for (size_t c = 0; c < width; ++c) out[c] = silu(y[c]) * y[width + c];
}

bool q4_bf16_supported(const Q4Shape &shape);
void matmul_q4_bf16(const Q4Shape &shape, const float *x, const uint8_t *codes, const float *scales,
                    const float *correction, float *out, const ParallelFor &parallel_for);
void matmul_q4_amx(const Q4Shape &shape, const float *x, const uint8_t *codes, const float *scales,
                   const float *correction, float *out, const ParallelFor &parallel_for);

bool q4_vnni_supported(const Q4Shape &shape);
void matmul_q4_vnni(const Q4Shape &shape, const Q4Input &in, const uint8_t *codes, const float *scales,
                    const float *correction, const uint16_t *decode_table, float *out,
                    const ParallelFor &parallel_for);

// Needs the decode table (and q4_vnni_supported's shapes): its scales and correction are read from it alone. It
// quantizes x itself (the same codes as q4_quantize_row), straight into the layout its products read.
void matmul_q4_avx2(const Q4Shape &shape, const float *x, const uint8_t *codes, const uint16_t *decode_table,
                    float *out, const ParallelFor &parallel_for);

// Quantizes row m of x into `in` (its buffers sized by the caller); `grouped`: the blocks in groups of 4 (the last group
// smaller), each group the 16 even elements of every block first, then the 16 odd ones: the order in which a
// 64-byte load of 4 blocks' packed codes splits into low and high nibbles (matmul_q4_vnni.cpp).
void q4_quantize_row(const float *x, size_t m, size_t k, bool grouped, Q4Input &in);

}  // namespace evk
