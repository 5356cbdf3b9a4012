// What this CPU and its OS let the kernels use, and the cap EDGEVLM_KERNELS puts on it: one place for both, so
// every operator dispatches by the same rule.
#pragma once

namespace evk {

bool cpu_has_avx512();       // AVX-512 F/BW/VL
bool cpu_has_avx512_bf16();  // AVX-512 F/BW/VL + BF16 (vdpbf16ps)
bool cpu_has_avx512_vnni();  // AVX-512 F/BW/VL + VNNI (vpdpbusd)
bool cpu_has_amx_bf16();     // AMX tiles with bf16, and Linux's permission for this process to use them
bool cpu_has_avx2();         // AVX2 + FMA + F16C (Haswell, Zen and later)

// EDGEVLM_KERNELS=portable caps every operator to its portable loops, =avx512 to AVX-512 (no AMX), =vnni to AVX-512
// VNNI's integer products (no bf16: the 4-bit product's prompts as on a CPU without AVX-512 BF16, the attention's
// portable loops), =avx2 to the AVX2 builds (as on a CPU without AVX-512): for tests, and to compare. Read at each
// call, so a test can change it between runs of one session.
enum class Cap { none, avx512, vnni, avx2, portable };
Cap kernel_cap();

// Whether an operator's AVX-512 build (F/BW/VL) may run: the CPU has it and EDGEVLM_KERNELS does not cap the library
// to its portable loops. The one rule of the fp32 operators (GroupQueryAttention, MatMulF32, FastGelu).
bool avx512_allowed();

// Whether an operator's AVX2 build (AVX2 + FMA + F16C) may run: the CPU has it and EDGEVLM_KERNELS does not cap the
// library to its portable loops. Operators with an AVX-512 build try that first.
bool avx2_allowed();

}  // namespace evk
