// Which attention kernel runs, and the portable one: plain fp32 loops that any C++17 compiler vectorizes for its
// target (SSE/AVX2 on x86, NEON on ARM), so a graph rewritten to use this library runs everywhere, if slower than
// the bf16 kernel where that one exists.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "attention.hpp"

namespace evk {
namespace {

[[maybe_unused]] bool cpu_has_avx512_bf16() {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
#else
    return false;
#endif
}

constexpr size_t RG = 16;  // query rows per task

void rows_portable(const AttentionShape &s, size_t bh, size_t m0, const float *q, const float *k, const float *v,
                   const float *bias, float *out) {
    const size_t hd = s.head_dim, hidden = s.heads * hd, n = s.tokens, rows = std::min(RG, n - m0);
    const size_t head = bh % s.heads, base = (bh / s.heads) * n * hidden + head * hd;
    const float scale = s.scale != 0 ? s.scale : 1.0f / std::sqrt(float(hd));
    const float *qb = bias ? bias + head * hd : nullptr, *kb = bias ? bias + hidden + head * hd : nullptr,
                *vb = bias ? bias + 2 * hidden + head * hd : nullptr;
    std::vector<float> qr(hd), scores(n), acc(hd);
    for (size_t r = 0; r < rows; ++r) {
        const float *x = q + base + (m0 + r) * hidden;
        for (size_t c = 0; c < hd; ++c) qr[c] = (x[c] + (qb ? qb[c] : 0.0f)) * scale;
        float top = -INFINITY;
        for (size_t j = 0; j < n; ++j) {
            const float *y = k + base + j * hidden;
            float dot = 0;
            for (size_t c = 0; c < hd; ++c) dot += qr[c] * (y[c] + (kb ? kb[c] : 0.0f));
            scores[j] = dot;
            top = std::max(top, dot);
        }
        float sum = 0;
        for (size_t j = 0; j < n; ++j) sum += (scores[j] = std::exp(scores[j] - top));
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (size_t j = 0; j < n; ++j) {
            const float *y = v + base + j * hidden, w = scores[j];
            for (size_t c = 0; c < hd; ++c) acc[c] += w * (y[c] + (vb ? vb[c] : 0.0f));
        }
        float *o = out + base + (m0 + r) * hidden;
        for (size_t c = 0; c < hd; ++c) o[c] = acc[c] / sum;
    }
}

}  // namespace

Level best_level(const AttentionShape &shape) {
    const char *cap = std::getenv("EDGEVLM_KERNELS");
    if (cap && std::strcmp(cap, "portable") == 0) return Level::portable;
#ifdef EVK_BF16_KERNEL
    static const bool bf16 = cpu_has_avx512_bf16();
    return bf16 && bf16_supported_shape(shape) ? Level::avx512_bf16 : Level::portable;
#else
    (void)shape;
    return Level::portable;
#endif
}

void attention(Level level, const AttentionShape &shape, const float *q, const float *k, const float *v,
               const float *bias, float *out, const ParallelFor &parallel_for) {
#ifdef EVK_BF16_KERNEL
    if (level == Level::avx512_bf16 && bf16_supported_shape(shape)) {
        attention_bf16(shape, q, k, v, bias, out, parallel_for);
        return;
    }
#else
    (void)level;
#endif
    const size_t groups = (shape.tokens + RG - 1) / RG;
    parallel_for(shape.batch * shape.heads * groups, [&](size_t t) {
        rows_portable(shape, t / groups, (t % groups) * RG, q, k, v, bias, out);
    });
}

}  // namespace evk
