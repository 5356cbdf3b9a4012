// The body of gqa.hpp's kernel, included once per instruction set with EVK_GQA_NAME (the function's name) and
// EVK_GQA_WIDTH (floats per vector) defined: GCC/Clang vector extensions, so one source becomes SSE/AVX2/NEON
// code in the portable build and AVX-512 in gqa_avx512.cpp.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "gqa.hpp"

namespace evk {
namespace {

constexpr size_t W = EVK_GQA_WIDTH;
typedef float vf __attribute__((vector_size(W * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(W * sizeof(int32_t))));
constexpr size_t ROWS = 16;  // query rows per task of a prompt

inline vf load(const float *p) {
    vf v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline void store(float *p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float x) { return vf{} + x; }
inline float hsum(vf v) {
#if defined(__AVX512F__)
    if constexpr (W == 16) return _mm512_reduce_add_ps(reinterpret_cast<__m512 &>(v));
#endif
#if defined(__AVX2__)
    if constexpr (W == 8) {  // (the loop below compiles to 8 scalar extracts: a third of a long prompt's scores)
        const __m256 x = reinterpret_cast<__m256 &>(v);
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
    }
#endif
    float s = 0;
    for (size_t i = 0; i < W; ++i) s += v[i];
    return s;
}

// e^x for x <= 0 (scores minus their maximum), Cephes' expf on vectors: 2^n * p(r), r = x - n ln 2, |r| <= ln2 / 2.
inline vf exp_nonpositive(vf x) {
    for (size_t i = 0; i < W; ++i) x[i] = x[i] < -87.0f ? -87.0f : x[i];
    const vf t = x * 1.44269504088896341f - 0.5f;  // <= -0.5: truncation toward zero rounds t + 0.5 to nearest
    const vi n = __builtin_convertvector(t, vi);
    const vf nf = __builtin_convertvector(n, vf);
    const vf r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    vf p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const vi bits = (n + 127) << 23;
    vf scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

// y = rotate(x) at position pos (the half-split rotary: pairs (i, i + half)), times `scale`.
void rotate(const float *x, size_t dim, size_t half, const float *cos, const float *sin, size_t pos, float scale,
            float *y) {
    if (!half) {
        for (size_t i = 0; i < dim; ++i) y[i] = x[i] * scale;
        return;
    }
    // (The tables are graph initializers, which a kernel graph maps at any byte offset: read through memcpy.)
    const float *c = cos + pos * half, *s = sin + pos * half;
    for (size_t i = 0; i < half; ++i) {
        float ci, si;
        std::memcpy(&ci, c + i, sizeof ci);
        std::memcpy(&si, s + i, sizeof si);
        y[i] = (x[i] * ci - x[i + half] * si) * scale;
        y[i + half] = (x[i + half] * ci + x[i] * si) * scale;
    }
    for (size_t i = 2 * half; i < dim; ++i) y[i] = x[i] * scale;
}

inline size_t position(const GqaShape &s, const int32_t *past_len, const int32_t *valid_len, size_t b, size_t t) {
    // As ONNX Runtime numbers them: a first prompt's padding (beyond the row's length) at position 1.
    if (s.first_prompt) return t < size_t(valid_len[b]) ? t : 1;
    return size_t(past_len[b]) + t;
}

#if defined(__AVX2__)
// AVX2 (8-float vectors, 16 registers): G heads' query vectors and accumulators do not fit the registers together
// (G x NV = 24 for SmolLM2), and a horizontal sum per key and head cost as much as its products. So the scores go 8
// keys at a time, each head's 8 dot products in 8 accumulators summed across lanes together (vhaddps), the block's
// keys read from memory once for all heads; and the values' weighted sum half a head at a time for all heads
// (G x NV / 2 accumulators), each value row read once. The same sums in the same order for every query and batch row.
inline __m256 dots8(const float *q, size_t nv, const float *k, size_t dim) {
    __m256 acc[8];
    const __m256 q0 = _mm256_loadu_ps(q);
    for (size_t j = 0; j < 8; ++j) acc[j] = _mm256_mul_ps(q0, _mm256_loadu_ps(k + j * dim));
    for (size_t i = 1; i < nv; ++i) {
        const __m256 qi = _mm256_loadu_ps(q + i * 8);
        for (size_t j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(qi, _mm256_loadu_ps(k + j * dim + i * 8), acc[j]);
    }
    const __m256 h0 = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
    const __m256 h1 = _mm256_hadd_ps(_mm256_hadd_ps(acc[4], acc[5]), _mm256_hadd_ps(acc[6], acc[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20), _mm256_permute2f128_ps(h0, h1, 0x31));
}

template <size_t NV, size_t G>
void group_attention_avx2(const float *q, const float *k, const float *v, size_t keys, size_t dim, float *scores,
                          size_t stride, float *out) {
    __m256 top8[G];
    for (size_t g = 0; g < G; ++g) top8[g] = _mm256_set1_ps(-INFINITY);
    size_t j = 0;
    for (; j + 8 <= keys; j += 8)
        for (size_t g = 0; g < G; ++g) {
            const __m256 s = dots8(q + g * dim, NV, k + j * dim, dim);
            _mm256_storeu_ps(scores + g * stride + j, s);
            top8[g] = _mm256_max_ps(top8[g], s);
        }
    float inv[G];
    for (size_t g = 0; g < G; ++g) {
        float *sg = scores + g * stride;
        alignas(32) float tops[8];
        _mm256_store_ps(tops, top8[g]);
        float top = *std::max_element(tops, tops + 8);
        for (size_t t = j; t < keys; ++t) {  // the last keys one at a time
            __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(q + g * dim), _mm256_loadu_ps(k + t * dim));
            for (size_t i = 1; i < NV; ++i)
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * dim + i * 8), _mm256_loadu_ps(k + t * dim + i * 8), acc);
            sg[t] = hsum(reinterpret_cast<vf &>(acc));
            top = std::max(top, sg[t]);
        }
        vf total = vf{};
        size_t e = 0;
        for (; e + W <= keys; e += W) {
            const vf x = exp_nonpositive(load(sg + e) - top);
            store(sg + e, x);
            total += x;
        }
        float sum = hsum(total);
        for (; e < keys; ++e) sum += (sg[e] = std::exp(sg[e] - top));
        inv[g] = 1.0f / sum;
    }
    constexpr size_t H = NV > 1 ? NV / 2 : 1;  // vectors of a head per pass
    for (size_t h0 = 0; h0 < NV; h0 += H) {
        __m256 acc[G][H];
        for (size_t g = 0; g < G; ++g)
            for (size_t i = 0; i < H; ++i) acc[g][i] = _mm256_setzero_ps();
        for (size_t t = 0; t < keys; ++t) {
            const float *vt = v + t * dim + h0 * 8;
            for (size_t g = 0; g < G; ++g) {
                const __m256 p = _mm256_broadcast_ss(scores + g * stride + t);
                for (size_t i = 0; i < H; ++i) acc[g][i] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vt + i * 8), acc[g][i]);
            }
        }
        for (size_t g = 0; g < G; ++g)
            for (size_t i = 0; i < H; ++i)
                _mm256_storeu_ps(out + g * dim + (h0 + i) * 8, _mm256_mul_ps(acc[g][i], _mm256_set1_ps(inv[g])));
    }
}
#endif

// The G query heads of one KV head at one position against keys [0, keys): out[g] = softmax(q[g] . K) V, with q
// already rotated and scaled; each key and value row is loaded once for all G heads. NV vectors per head
// (head_dim = NV * W); the scores go through `scores` (G x stride floats).
template <size_t NV, size_t G>
void group_attention(const float *q, const float *k, const float *v, size_t keys, size_t dim, float *scores,
                     size_t stride, float *out) {
    vf qv[G][NV];
    for (size_t g = 0; g < G; ++g)
        for (size_t i = 0; i < NV; ++i) qv[g][i] = load(q + g * dim + i * W);
    float top[G];
    for (size_t g = 0; g < G; ++g) top[g] = -INFINITY;
    for (size_t j = 0; j < keys; ++j) {
        vf kj[NV];
        for (size_t i = 0; i < NV; ++i) kj[i] = load(k + j * dim + i * W);
        for (size_t g = 0; g < G; ++g) {
            vf acc = qv[g][0] * kj[0];
            for (size_t i = 1; i < NV; ++i) acc += qv[g][i] * kj[i];
            const float dot = hsum(acc);
            scores[g * stride + j] = dot;
            top[g] = std::max(top[g], dot);
        }
    }
    float inv[G];
    for (size_t g = 0; g < G; ++g) {
        float *sg = scores + g * stride;
        vf total = vf{};
        size_t j = 0;
        for (; j + W <= keys; j += W) {
            const vf e = exp_nonpositive(load(sg + j) - top[g]);
            store(sg + j, e);
            total += e;
        }
        float sum = hsum(total);
        for (; j < keys; ++j) sum += (sg[j] = std::exp(sg[j] - top[g]));
        inv[g] = 1.0f / sum;
    }
    vf acc[G][NV];
    for (size_t g = 0; g < G; ++g)
        for (size_t i = 0; i < NV; ++i) acc[g][i] = vf{};
    for (size_t j = 0; j < keys; ++j) {
        vf vj[NV];
        for (size_t i = 0; i < NV; ++i) vj[i] = load(v + j * dim + i * W);
        for (size_t g = 0; g < G; ++g) {
            const vf p = splat(scores[g * stride + j]);
            for (size_t i = 0; i < NV; ++i) acc[g][i] += p * vj[i];
        }
    }
    for (size_t g = 0; g < G; ++g)
        for (size_t i = 0; i < NV; ++i) store(out + g * dim + i * W, acc[g][i] * inv[g]);
}

// One head for any head_dim, on scalars.
void row_attention_any(const float *q, const float *k, const float *v, size_t keys, size_t dim, float *scores,
                       float *out) {
    float top = -INFINITY;
    for (size_t j = 0; j < keys; ++j) {
        float dot = 0;
        for (size_t c = 0; c < dim; ++c) dot += q[c] * k[j * dim + c];
        scores[j] = dot;
        top = std::max(top, dot);
    }
    float sum = 0;
    for (size_t j = 0; j < keys; ++j) sum += (scores[j] = std::exp(scores[j] - top));
    std::fill(out, out + dim, 0.0f);
    for (size_t j = 0; j < keys; ++j)
        for (size_t c = 0; c < dim; ++c) out[c] += scores[j] * v[j * dim + c];
    for (size_t c = 0; c < dim; ++c) out[c] /= sum;
}

// The heads of one KV head (`group` of them, consecutive in q and out) at one position.
using GroupFn = void (*)(const float *, const float *, const float *, size_t, size_t, float *, size_t, float *);

template <size_t NV>
GroupFn group_function(size_t group) {
#if defined(__AVX2__) && !defined(__AVX512F__)
    if constexpr (W == 8) {
        switch (group) {
            case 1: return group_attention_avx2<NV, 1>;
            case 2: return group_attention_avx2<NV, 2>;
            case 3: return group_attention_avx2<NV, 3>;
            case 4: return group_attention_avx2<NV, 4>;
            default: return nullptr;
        }
    }
#endif
    switch (group) {
        case 1: return group_attention<NV, 1>;
        case 2: return group_attention<NV, 2>;
        case 3: return group_attention<NV, 3>;  // SmolLM2-135M and -360M: 9 or 15 heads over 3 or 5
        case 4: return group_attention<NV, 4>;
        default: return nullptr;
    }
}

void attend(size_t group, const float *q, const float *k, const float *v, size_t keys, size_t dim, float *scores,
            size_t stride, float *out) {
    GroupFn fn = nullptr;
    if (dim == 4 * W) fn = group_function<4>(group);  // head_dim 64 on AVX-512 (every SmolLM2)
    else if (dim == 8 * W) fn = group_function<8>(group);  // 64 on 8-float vectors
    else if (dim == 2 * W) fn = group_function<2>(group);
    else if (dim == W) fn = group_function<1>(group);
    if (fn) return fn(q, k, v, keys, dim, scores, stride, out);
    for (size_t g = 0; g < group; ++g) row_attention_any(q + g * dim, k, v, keys, dim, scores, out + g * dim);
}

}  // namespace

void EVK_GQA_NAME(const GqaShape &s, const float *qkv, const int32_t *past_len, const int32_t *valid_len,
                  float *present_key, float *present_value, const float *cos, const float *sin, float *out,
                  const ParallelFor &parallel_for) {
    const size_t dim = s.head_dim, group = s.heads / s.kv_heads, width = (s.heads + 2 * s.kv_heads) * dim;
    const float scale = s.scale != 0 ? s.scale : 1.0f / std::sqrt(float(dim));
    // The new keys (rotated) and values into the cache first: every query row of the prompt reads them.
    for (size_t b = 0; b < s.batch; ++b)
        for (size_t t = 0; t < s.tokens; ++t) {
            const float *x = qkv + (b * s.tokens + t) * width;
            const size_t pos = position(s, past_len, valid_len, b, t), at = size_t(past_len[b]) + t;
            for (size_t g = 0; g < s.kv_heads; ++g) {
                const size_t cell = ((b * s.kv_heads + g) * s.capacity + at) * dim;
                rotate(x + (s.heads + g) * dim, dim, s.rotary_half, cos, sin, pos, 1.0f, present_key + cell);
                std::memcpy(present_value + cell, x + (s.heads + s.kv_heads + g) * dim, dim * sizeof(float));
            }
        }
    const size_t chunks = (s.tokens + ROWS - 1) / ROWS;
    auto task = [&](size_t i) {
        // One KV head of one row of the batch, ROWS positions: its `group` query heads together.
        const size_t b = i / (s.kv_heads * chunks), g = (i / chunks) % s.kv_heads, t0 = (i % chunks) * ROWS;
        const size_t past = size_t(past_len[b]), stride = past + s.tokens;
        const float *k = present_key + (b * s.kv_heads + g) * s.capacity * dim;
        const float *v = present_value + (b * s.kv_heads + g) * s.capacity * dim;
        thread_local std::vector<float> scores, q;
        if (scores.size() < group * stride) scores.resize(group * stride);
        if (q.size() < group * dim) q.resize(group * dim);
        for (size_t t = t0; t < std::min(s.tokens, t0 + ROWS); ++t) {
            const size_t pos = position(s, past_len, valid_len, b, t);
            const float *x = qkv + (b * s.tokens + t) * width + g * group * dim;
            for (size_t h = 0; h < group; ++h)
                rotate(x + h * dim, dim, s.rotary_half, cos, sin, pos, scale, q.data() + h * dim);
            attend(group, q.data(), k, v, past + t + 1, dim, scores.data(), stride,
                   out + (b * s.tokens + t) * s.heads * dim + g * group * dim);
        }
    };
    const size_t tasks = s.batch * s.kv_heads * chunks;
    // One token against a short cache is a few microseconds of work: a hand-off to the pool costs as much.
    if (s.tokens == 1 && s.batch * s.heads * (past_len[0] + 1) * dim < (size_t(1) << 16)) {
        for (size_t i = 0; i < tasks; ++i) task(i);
        return;
    }
    parallel_for(tasks, task);
}

}  // namespace evk
