// The fp32 variant's products, y = x W with W a constant (K, N) matrix, read where the graph keeps it.
//
// ONNX Runtime's MatMul copies every fp32 weight into MLAS's packed layout when a session opens: 6.5 GB for the
// 2.2B decoder, 12-17 s of a 16 s load() on one thread, and the process then holds that copy as anonymous memory
// beside the file (docs/benchmarks.md, "load()"). This kernel packs nothing at load: a single row (decode) streams
// W's rows as they lie in the file, and a prompt packs one block of W at a time into a per-thread buffer, as every
// BLAS does inside a call. So a kernel graph of the fp32 variant opens in about the time its graph takes to parse,
// and its weights stay the file's pages, shared and evictable.
//
// Every output sums each block of 256 rows of W as one chain of multiply-adds in k order and adds the blocks in
// order, in every path, so a row gives the same bits alone or in a batch of any size (the prompt and the decode
// paths agree bit for bit). One implementation in GCC/Clang vector extensions (matmul_f32_impl.hpp), built for the target's baseline (SSE2, NEON) in
// matmul_f32.cpp and again for AVX-512 in matmul_f32_avx512.cpp.
#pragma once

#include <cstddef>

#include "attention.hpp"  // ParallelFor

namespace evk {

struct F32Shape {
    size_t rows = 0, k = 0, n = 0;  // x is (rows, k), W (k, n), y (rows, n)
};

// x: (rows, k) fp32; w: (k, n) fp32 at any byte address (a kernel graph maps its weights at the offsets they have
// inside the standard file); out: (rows, n).
void matmul_f32_portable(const F32Shape &shape, const float *x, const float *w, float *out,
                         const ParallelFor &parallel_for);
void matmul_f32_avx512(const F32Shape &shape, const float *x, const float *w, float *out,
                       const ParallelFor &parallel_for);

// 2: the AVX-512 build runs (the CPU has AVX-512 F and EDGEVLM_KERNELS is not "portable"), 1: the portable one.
// The runtimes put the fp32 variant on MatMulF32 by default only at 2, where it was measured (docs/design.md).
int matmul_f32_level();

// The AVX-512 build at level 2, else the portable one.
void matmul_f32(const F32Shape &shape, const float *x, const float *w, float *out, const ParallelFor &parallel_for);

}  // namespace evk
