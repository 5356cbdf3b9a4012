// Which attention kernel runs, and the portable one: plain fp32 loops that any C++17 compiler vectorizes for its
// target (SSE/AVX2 on x86, NEON on ARM), so a graph rewritten to use this library runs everywhere, if slower than
// the bf16 kernel where that one exists.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "attention.hpp"
#include "cpu.hpp"

namespace evk {
namespace {

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
    const Cap cap = kernel_cap();
    if (cap == Cap::portable || cap == Cap::vnni || cap == Cap::avx2) return Level::portable;  // (no integer path)
#ifdef EVK_BF16_KERNEL
    static const bool bf16 = cpu_has_avx512_bf16();
    if (!bf16 || !bf16_supported_shape(shape)) return Level::portable;
#ifdef EVK_AMX_KERNEL
    static const bool amx = cpu_has_amx_bf16();
    if (amx && cap == Cap::none) return Level::amx_bf16;
#endif
    return Level::avx512_bf16;
#else
    (void)shape;
    return Level::portable;
#endif
}

void attention(Level level, const AttentionShape &shape, const float *q, const float *k, const float *v,
               const float *bias, float *out, const ParallelFor &parallel_for) {
#ifdef EVK_AMX_KERNEL
    if (level == Level::amx_bf16 && bf16_supported_shape(shape)) {
        attention_amx(shape, q, k, v, bias, out, parallel_for);
        return;
    }
#endif
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
