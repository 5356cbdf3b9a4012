// Which 4-bit product runs, the input quantization both share, and the portable implementation: plain loops any
// C++17 compiler builds for its target (NEON on ARM), giving the VNNI kernel's integers.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cpu.hpp"
#include "matmul_q4.hpp"

namespace evk {
namespace {

constexpr size_t BLOCK = 32;
constexpr size_t COLS = 16;  // output columns per task

float column_portable(const Q4Input &in, size_t m, size_t n, size_t n_total, const uint8_t *codes,
                      const float *scales, const float *correction) {
    const size_t nb = in.blocks;
    const int8_t *xq = in.codes + m * nb * BLOCK;
    float acc = 0;
    for (size_t b = 0; b < nb; ++b) {
        const uint8_t *q = codes + (n * nb + b) * (BLOCK / 2);
        const int8_t *xb = xq + b * BLOCK;
        int32_t dot = 0;
        for (size_t j = 0; j < BLOCK / 2; ++j) dot += int32_t(q[j] & 15) * xb[2 * j] + int32_t(q[j] >> 4) * xb[2 * j + 1];
        acc += load_float(scales + n * nb + b) * in.scale[m * nb + b] * float(dot - 8 * in.code_sum[m * nb + b]);
        acc += load_float(correction + b * n_total + n) * in.sum[m * nb + b];
    }
    return acc;
}

// nearbyint for |v| <= 127 in the default rounding mode (to nearest, ties to even), without libm: x86-64's baseline
// has no rounding instruction, so std::nearbyint was a call per element (a quarter of a long prompt's quantization).
// Adding and taking away 1.5 * 2^23 leaves v rounded to an integer (exact below 2^22; -ffast-math would fold it).
inline float round_even(float v) {
    constexpr float magic = 12582912.0f;
    return (v + magic) - magic;
}

}  // namespace

// The vector builds' grouped layout (4 blocks per group, then a 2-block tail): a plain shape check, built everywhere.
bool q4_vnni_supported(const Q4Shape &shape) {
    const size_t nb = shape.k / BLOCK;
    return shape.k % BLOCK == 0 && nb % 4 != 1 && nb % 4 != 3 && (!shape.silu_mul || shape.n % 2 == 0);
}

Q4Level q4_best_level(const Q4Shape &shape) {
    const Cap cap = kernel_cap();
    if (cap == Cap::portable) return Q4Level::portable;
#ifdef EVK_BF16_Q4_KERNEL
    // (Fewer rows than BF16_MIN_ROWS then take the VNNI path, which every CPU with AVX-512 BF16 also has.)
    static const bool bf16 = cpu_has_avx512_bf16() && cpu_has_avx512_vnni();
    if (bf16 && cap != Cap::vnni && cap != Cap::avx2 && q4_bf16_supported(shape)) {
#ifdef EVK_AMX_Q4_KERNEL
        static const bool amx = cpu_has_amx_bf16();
        if (amx && cap == Cap::none) return Q4Level::amx_bf16;
#endif
        return Q4Level::avx512_bf16;
    }
#endif
    if (!q4_vnni_supported(shape)) return Q4Level::portable;  // (the vector builds' grouped layout)
#ifdef EVK_VNNI_KERNEL
    static const bool vnni = cpu_has_avx512_vnni();
    if (vnni && cap != Cap::avx2) return Q4Level::avx512_vnni;
#endif
#ifdef EVK_AVX2_Q4_KERNEL
    if (avx2_allowed()) return Q4Level::avx2;
#endif
    return Q4Level::portable;
}

void q4_quantize_row(const float *x, size_t m, size_t k, bool grouped, Q4Input &in) {
    const size_t nb = k / BLOCK, whole = nb / 4 * 4;
    {
        for (size_t b = 0; b < nb; ++b) {
            const float *xb = x + m * k + b * BLOCK;
            float amax = 0, sum = 0;
            for (size_t i = 0; i < BLOCK; ++i) {
                amax = std::max(amax, std::fabs(xb[i]));
                sum += xb[i];
            }
            const float inv = amax > 0 ? 127.0f / amax : 0.0f;
            // grouped: blocks go in groups of 4 (the last group 2 or 1 where the count is not a multiple of 4);
            // a group of g blocks holds the even elements of each block, 16 bytes per block, then the odd ones.
            const size_t first = b < whole ? b / 4 * 4 : whole, g = b < whole ? 4 : nb - whole;
            int8_t *row = in.codes + m * nb * BLOCK;
            int32_t code_sum = 0;
            for (size_t i = 0; i < BLOCK; ++i) {
                const int8_t q = int8_t(round_even(xb[i] * inv));
                code_sum += q;
                if (grouped)
                    row[first * BLOCK + (i % 2) * 16 * g + (b - first) * 16 + i / 2] = q;
                else
                    row[b * BLOCK + i] = q;
            }
            in.scale[m * nb + b] = amax / 127.0f;
            in.code_sum[m * nb + b] = code_sum;
            in.sum[m * nb + b] = sum;
        }
    }
}

void matmul_q4(Q4Level level, const Q4Shape &shape, const float *x, const uint8_t *codes, const float *scales,
               const float *correction, const uint16_t *decode_table, float *out, const ParallelFor &parallel_for) {
    const size_t nb = shape.k / BLOCK, rows = shape.rows;
    (void)decode_table;  // read by the vector builds only (a portable-only build, as on aarch64, has none)
#ifdef EVK_BF16_Q4_KERNEL
    if ((level == Q4Level::amx_bf16 || level == Q4Level::avx512_bf16) && rows >= BF16_MIN_ROWS &&
        q4_bf16_supported(shape)) {
#ifdef EVK_AMX_Q4_KERNEL
        if (level == Q4Level::amx_bf16) return matmul_q4_amx(shape, x, codes, scales, correction, out, parallel_for);
#endif
        return matmul_q4_bf16(shape, x, codes, scales, correction, out, parallel_for);
    }
#endif
#ifdef EVK_AVX2_Q4_KERNEL
    // AVX2 quantizes x itself, into its own layout; only from the decode table (portable loops without one).
    if (level == Q4Level::avx2 && decode_table && q4_vnni_supported(shape))
        return matmul_q4_avx2(shape, x, codes, decode_table, out, parallel_for);
#endif
    // The VNNI kernel reads x in its grouped order.
    const bool vnni = level == Q4Level::avx512_vnni || level == Q4Level::amx_bf16 || level == Q4Level::avx512_bf16;
    const bool grouped = vnni && q4_vnni_supported(shape);
    thread_local std::vector<int8_t> xq;
    thread_local std::vector<float> scale, sum;
    thread_local std::vector<int32_t> code_sum;
    Q4Input in{rows, nb, scratch(xq, rows * nb * BLOCK), scratch(scale, rows * nb), scratch(code_sum, rows * nb),
               scratch(sum, rows * nb)};
    if (rows == 1)  // decode, 120 products a token: no hand-off to the pool for one row
        q4_quantize_row(x, 0, shape.k, grouped, in);
    else
        parallel_for(rows, [&](size_t m) { q4_quantize_row(x, m, shape.k, grouped, in); });
#ifdef EVK_VNNI_KERNEL
    if (grouped) {
        matmul_q4_vnni(shape, in, codes, scales, correction, decode_table, out, parallel_for);
        return;
    }
#endif
    const size_t width = shape.silu_mul ? shape.n / 2 : shape.n;
    parallel_for((width + COLS - 1) / COLS, [&](size_t t) {
        for (size_t m = 0; m < rows; ++m) {
            for (size_t n = t * COLS; n < std::min(width, (t + 1) * COLS); ++n) {
                float y = column_portable(in, m, n, shape.n, codes, scales, correction);
                if (shape.silu_mul) y = silu(y) * column_portable(in, m, n + width, shape.n, codes, scales, correction);
                out[m * width + n] = y;
            }
        }
    });
}

// fp32 -> fp16 bits, rounded to nearest even (by hand: C++ compilers differ on a half type, aarch64 GCC 12 has none).
static uint16_t to_half(float f) {
    uint32_t x;
    std::memcpy(&x, &f, sizeof x);
    const uint32_t sign = (x >> 16) & 0x8000u, mant = x & 0x7fffffu;
    const int32_t exp = int32_t((x >> 23) & 0xffu) - 127 + 15;
    if (exp >= 31) return uint16_t(sign | 0x7c00u);  // (beyond the range: the caller refuses those)
    if (exp <= 0) {                                  // below the normal range: a subnormal half, or zero
        if (exp < -10) return uint16_t(sign);
        const uint32_t full = mant | 0x800000u, shift = uint32_t(14 - exp);
        uint32_t h = full >> shift;
        const uint32_t rest = full & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rest > halfway || (rest == halfway && (h & 1u))) ++h;
        return uint16_t(sign | h);
    }
    uint32_t h = sign | (uint32_t(exp) << 10) | (mant >> 13);
    const uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is the right result
    return uint16_t(h);
}

std::vector<uint16_t> q4_decode_table(size_t k, size_t n, const float *scales, const float *correction) {
    const size_t nb = k / BLOCK;
    std::vector<uint16_t> table(n * nb * 2);
    auto half = [](float v, uint16_t &out) {
        // Within 2^-11 of v, or 3e-8 where v is below fp16's normal range (a block that small adds as little).
        if (!(std::fabs(v) <= 65504.0f)) return false;
        out = to_half(v);
        return true;
    };
    for (size_t col = 0; col < n; ++col) {
        uint16_t *t = table.data() + col * nb * 2;
        for (size_t b0 = 0; b0 < nb; b0 += 4) {
            const size_t g = std::min<size_t>(4, nb - b0);  // blocks in this group: its s, then its c
            for (size_t j = 0; j < g; ++j)
                if (!half(load_float(scales + col * nb + b0 + j), t[2 * b0 + j]) ||
                    !half(load_float(correction + (b0 + j) * n + col), t[2 * b0 + g + j]))
                    return {};
        }
    }
    return table;
}

}  // namespace evk
