// Attention in bf16, accumulated in fp32, two ways: AVX-512 BF16 dot products (vdpbf16ps: two bf16 products per
// fp32 lane) and AMX tiles (tdpbf16ps: a 16 x 16 block of fp32 sums per instruction, 32 bf16 deep). This file alone
// is compiled with AVX-512 BF16 (and AMX where the compiler has it) enabled; attention.cpp calls each only on CPUs
// that have it.
//
// Per (image, head): K and V are converted to bf16 once and laid out for both (K as 64-key panels of key pairs, V
// as pairs of consecutive keys: the "VNNI" layout of a tile's B operand, and what vdpbf16ps broadcasts against),
// then each task takes 32 query rows: S = Q Kᵀ (AVX-512: one 64-key panel at a time, 8 KB, in L1 across the 32
// rows; AMX: 32 x 32 blocks on 4 accumulator tiles), an exact softmax per row in fp32 (the probabilities rounded to
// bf16 for P V, the sum kept in fp32), and O = P V. Inputs are rounded to bf16 with round-to-nearest-even;
// accumulation and the softmax stay fp32, so both give the same numbers up to summation order.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

#include "attention.hpp"
#ifdef EVK_AMX_KERNEL
#include "amx_tiles.hpp"
#endif

namespace evk {
namespace {

constexpr size_t MR = 4;     // rows per micro-kernel: 4 x 4 zmm accumulators
constexpr size_t RG = 32;    // query rows per task
constexpr size_t NB = 64;    // keys per K panel
constexpr size_t JC = 64;    // key pairs per V chunk

struct AlignedFree {
    void operator()(void *p) const { std::free(p); }
};
using Buffer = std::unique_ptr<uint32_t[], AlignedFree>;

Buffer aligned_words(size_t words) {
    void *p = std::aligned_alloc(64, (words * 4 + 63) / 64 * 64);
    if (!p) throw std::bad_alloc();
    return Buffer(static_cast<uint32_t *>(p));
}

// Packed K/V buffers are a few MB per call: kept between calls (no page faults per layer), one per concurrent call.
class Pool {
  public:
    struct Lease {
        Pool *pool;
        Buffer buf;
        size_t words;
        ~Lease() { pool->give_back(std::move(buf), words); }
    };
    Lease take(size_t words) {
        std::lock_guard<std::mutex> lock(mu_);
        for (size_t i = 0; i < free_.size(); ++i)
            if (free_[i].second >= words) {
                auto found = std::move(free_[i]);
                free_.erase(free_.begin() + long(i));
                return Lease{this, std::move(found.first), found.second};
            }
        return Lease{this, aligned_words(words), words};
    }

  private:
    void give_back(Buffer buf, size_t words) {
        std::lock_guard<std::mutex> lock(mu_);
        if (free_.size() < 4) free_.emplace_back(std::move(buf), words);
    }
    std::mutex mu_;
    std::vector<std::pair<Buffer, size_t>> free_;
};

Pool &pool() {
    static Pool p;
    return p;
}

// 2^x for x <= 0: x = n + r with |r| <= 1/2, 2^r by a degree-3 polynomial fitted for relative error (1.0e-4 at
// most: 20 times below the bf16 rounding of the probabilities, and a common factor of a row's values cancels in
// its normalization), times 2^n: seven vector operations where e^x by Cephes' reduction took fifteen (the softmax
// is half of the AMX kernel's time, and bound by these operations). The softmax multiplies its scores by log2(e)
// first: folding that factor into Q instead changes Q's bf16 rounding, measured 4x further from fp32 on one shape.
inline __m512 exp2_512(__m512 x) {
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(5.50813651e-2f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(2.42210872e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(6.93268095e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

// The lanes of a 16-float vector starting at column c that are inside a row of D (the rest read as zero).
template <size_t D>
constexpr __mmask16 lanes(size_t c) {
    return c >= D ? __mmask16(0) : c + 16 <= D ? __mmask16(0xFFFF) : __mmask16((1u << (D - c)) - 1);
}

// Head sizes that are not a multiple of 16 (SigLIP so400m's 72) are padded with zeros: DR words per converted
// row (whole 32-float chunks), DV floats per V / output row (whole vectors).
template <size_t D>
struct Dims {
    static constexpr size_t DP = D / 2, DR = (D + 31) / 32 * 16, DV = (D + 15) / 16 * 16, T = DV / 16;
};

// D floats (+ bias, times scale) -> D/2 bf16 pairs (and zero pairs up to DR).
template <size_t D>
inline void row_pairs(const float *x, const float *bias, float scale, uint32_t *out) {
    const __m512 s = _mm512_set1_ps(scale);
    for (size_t c = 0; c < D; c += 32) {
        const __mmask16 m0 = lanes<D>(c), m1 = lanes<D>(c + 16);
        __m512 v0 = _mm512_maskz_loadu_ps(m0, x + c), v1 = _mm512_maskz_loadu_ps(m1, x + c + 16);
        if (bias) {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, bias + c));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, bias + c + 16));
        }
        _mm512_store_si512(out + c / 2, (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(v1, s), _mm512_mul_ps(v0, s)));
    }
}

struct HeadLayout {
    size_t tokens, keys;  // keys: tokens rounded up to NB (the extra keys are zero and masked)
    size_t stride;        // floats between consecutive tokens of the inputs and the output
};

// kp: [keys / NB][DR][NB] pairs (K[j][2c], K[j][2c+1]), zero pairs past D / 2 (AMX takes 16 pairs per step);
// vp: [keys / 2][DV] pairs (V[2j][c], V[2j+1][c]).
template <size_t D>
void pack_head(const HeadLayout &L, const float *k, const float *v, const float *kbias, const float *vbias,
               uint32_t *kp, uint32_t *vp) {
    constexpr size_t DR = Dims<D>::DR, DV = Dims<D>::DV;
    alignas(64) uint32_t rows[16][DR];
    const __m512i lane = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32(int(DR)));
    for (size_t j0 = 0; j0 < L.keys; j0 += 16) {
        for (size_t r = 0; r < 16; ++r) {
            if (j0 + r < L.tokens)
                row_pairs<D>(k + (j0 + r) * L.stride, kbias, 1.0f, rows[r]);
            else
                std::memset(rows[r], 0, sizeof rows[r]);
        }
        uint32_t *panel = kp + (j0 / NB) * NB * DR + j0 % NB;
        for (size_t c = 0; c < DR; ++c)
            _mm512_store_si512(panel + c * NB, _mm512_i32gather_epi32(lane, &rows[0][c], 4));
    }
    for (size_t jj = 0; jj < L.keys / 2; ++jj) {
        for (size_t c = 0; c < DV; c += 16) {
            const __mmask16 m = lanes<D>(c);
            __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps();
            if (2 * jj < L.tokens) {
                a = _mm512_maskz_loadu_ps(m, v + 2 * jj * L.stride + c);
                if (vbias) a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(m, vbias + c));
            }
            if (2 * jj + 1 < L.tokens) {
                b = _mm512_maskz_loadu_ps(m, v + (2 * jj + 1) * L.stride + c);
                if (vbias) b = _mm512_add_ps(b, _mm512_maskz_loadu_ps(m, vbias + c));
            }
            __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(a));
            __m512i hi = _mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(b)), 16);
            _mm512_store_si512(vp + jj * DV + c, _mm512_or_si512(lo, hi));
        }
    }
}

// Row strides of the scores (floats) and probabilities (bf16) one cache line longer than a row: 1024 keys make
// rows of exactly 4 KB (2 KB), and a tile's 16 rows at such a stride all fall in one set of the L1 cache, which
// holds 12 (measured: the kernel 3.7-3.9 -> 3.4-3.7 ms per SigLIP-B layer on AMX).
constexpr size_t score_stride(size_t keys) { return keys + 16; }
constexpr size_t probability_stride(size_t keys) { return keys + 32; }

struct Scratch {
    Buffer s, p, o;
    size_t keys = 0;
    void fit(size_t k) {
        if (k <= keys) return;
        s = aligned_words(RG * score_stride(k));          // fp32 scores
        p = aligned_words(RG * probability_stride(k) / 2);  // bf16 probabilities
        o = aligned_words(RG * 128);    // fp32 output sums (head_dim <= 128)
        keys = k;
    }
};

// S = Q Kᵀ for the RG rows of qp: s[RG][score_stride(keys)], fp32.
template <size_t D>
void scores_avx512(const uint32_t (*qp)[Dims<D>::DR], const uint32_t *kp, size_t keys, float *s) {
    constexpr size_t DP = Dims<D>::DP, DR = Dims<D>::DR;
    const size_t ls = score_stride(keys);
    for (size_t j0 = 0; j0 < keys; j0 += NB) {
        const uint32_t *panel = kp + j0 * DR;
        for (size_t m = 0; m < RG; m += MR) {
            __m512 acc[MR][4];
            for (size_t r = 0; r < MR; ++r)
                for (int t = 0; t < 4; ++t) acc[r][t] = _mm512_setzero_ps();
            for (size_t c = 0; c < DP; ++c) {
                const uint32_t *b = panel + c * NB;
                __m512bh b0 = (__m512bh)_mm512_load_si512(b), b1 = (__m512bh)_mm512_load_si512(b + 16);
                __m512bh b2 = (__m512bh)_mm512_load_si512(b + 32), b3 = (__m512bh)_mm512_load_si512(b + 48);
                for (size_t r = 0; r < MR; ++r) {
                    __m512bh a = (__m512bh)_mm512_set1_epi32(int(qp[m + r][c]));
                    acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
                    acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
                    acc[r][2] = _mm512_dpbf16_ps(acc[r][2], a, b2);
                    acc[r][3] = _mm512_dpbf16_ps(acc[r][3], a, b3);
                }
            }
            for (size_t r = 0; r < MR; ++r)
                for (int t = 0; t < 4; ++t) _mm512_store_ps(s + (m + r) * ls + j0 + 16 * t, acc[r][t]);
        }
    }
}

// o[RG][DV] = P V (unnormalized), P the bf16 probabilities p[RG][probability_stride(keys)].
template <size_t D>
void values_avx512(const uint16_t *p, const uint32_t *vp, size_t keys, float *o) {
    constexpr size_t DV = Dims<D>::DV, T = Dims<D>::T;
    const size_t lp = probability_stride(keys);
    std::memset(o, 0, sizeof(float) * RG * DV);
    for (size_t jc = 0; jc < keys / 2; jc += JC) {
        const size_t jend = std::min(jc + JC, keys / 2);
        for (size_t m = 0; m < RG; m += MR) {
            __m512 acc[MR][T];
            for (size_t r = 0; r < MR; ++r)
                for (size_t t = 0; t < T; ++t) acc[r][t] = _mm512_load_ps(o + (m + r) * DV + 16 * t);
            for (size_t jj = jc; jj < jend; ++jj) {
                const uint32_t *b = vp + jj * DV;
                __m512bh bv[T];
                for (size_t t = 0; t < T; ++t) bv[t] = (__m512bh)_mm512_load_si512(b + 16 * t);
                for (size_t r = 0; r < MR; ++r) {
                    uint32_t pair;
                    std::memcpy(&pair, p + (m + r) * lp + 2 * jj, 4);
                    __m512bh a = (__m512bh)_mm512_set1_epi32(int(pair));
                    for (size_t t = 0; t < T; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], a, bv[t]);
                }
            }
            for (size_t r = 0; r < MR; ++r)
                for (size_t t = 0; t < T; ++t) _mm512_store_ps(o + (m + r) * DV + 16 * t, acc[r][t]);
        }
    }
}

#ifdef EVK_AMX_KERNEL
// Tiles: 0-3 accumulate a 32 x 32 block of C (0: rows 0-15 x columns 0-15, 1: x 16-31, 2 and 3 rows 16-31),
// 4 and 5 hold A's two 16-row halves, 6 and 7 B's two 16-column halves; one step is 32 bf16 of the inner dimension.
template <size_t D>
void scores_amx(const uint32_t (*qp)[Dims<D>::DR], const uint32_t *kp, size_t keys, float *s) {
    constexpr size_t DR = Dims<D>::DR;
    const size_t ls = score_stride(keys), ld = ls * 4;
    for (size_t j0 = 0; j0 < keys; j0 += 32) {
        const uint32_t *panel = kp + (j0 / NB) * NB * DR + j0 % NB;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (size_t c = 0; c < DR; c += 16) {
            _tile_loadd(4, &qp[0][c], DR * 4);
            _tile_loadd(5, &qp[16][c], DR * 4);
            _tile_loadd(6, panel + c * NB, NB * 4);
            _tile_loadd(7, panel + c * NB + 16, NB * 4);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(0, s + j0, ld);
        _tile_stored(1, s + j0 + 16, ld);
        _tile_stored(2, s + 16 * ls + j0, ld);
        _tile_stored(3, s + 16 * ls + j0 + 16, ld);
    }
}

template <size_t D>
void values_amx(const uint16_t *p, const uint32_t *vp, size_t keys, float *o) {
    constexpr size_t DV = Dims<D>::DV, T = Dims<D>::T;
    const size_t rows_p = probability_stride(keys), lp = rows_p * 2;
    for (size_t t = 0; t < T; t += 2) {
        const bool two = t + 1 < T;  // head sizes of an odd number of 16-float vectors end on one
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (size_t j = 0; j < keys; j += 32) {
            _tile_loadd(4, p + j, lp);
            _tile_loadd(5, p + 16 * rows_p + j, lp);
            _tile_loadd(6, vp + j / 2 * DV + 16 * t, DV * 4);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(2, 5, 6);
            if (two) {
                _tile_loadd(7, vp + j / 2 * DV + 16 * t + 16, DV * 4);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(3, 5, 7);
            }
        }
        _tile_stored(0, o + 16 * t, DV * 4);
        _tile_stored(2, o + 16 * DV + 16 * t, DV * 4);
        if (two) {
            _tile_stored(1, o + 16 * t + 16, DV * 4);
            _tile_stored(3, o + 16 * DV + 16 * t + 16, DV * 4);
        }
    }
}
#endif

// Scores to bf16 probabilities, row by row (exact softmax in fp32); returns each row's 1 / sum in inv.
void softmax_rows(const HeadLayout &L, float *s, uint16_t *p, float *inv) {
    const size_t keys = L.keys, ls = score_stride(keys), lp = probability_stride(keys);
    for (size_t r = 0; r < RG; ++r) {
        float *sr = s + r * ls;
        for (size_t j = L.tokens; j < keys; ++j) sr[j] = -1e30f;  // padding keys: 2^(-1e30) is 0 (-inf: r is NaN)
        __m512 mx = _mm512_set1_ps(-INFINITY);
        for (size_t j = 0; j < keys; j += 16) mx = _mm512_max_ps(mx, _mm512_load_ps(sr + j));
        const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(mx)), log2e = _mm512_set1_ps(1.44269504088896341f);
        __m512 sum = _mm512_setzero_ps();
        for (size_t j = 0; j < keys; j += 32) {
            __m512 e0 = exp2_512(_mm512_mul_ps(_mm512_sub_ps(_mm512_load_ps(sr + j), top), log2e));
            __m512 e1 = exp2_512(_mm512_mul_ps(_mm512_sub_ps(_mm512_load_ps(sr + j + 16), top), log2e));
            sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
            _mm512_store_si512(p + r * lp + j, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
        }
        inv[r] = 1.0f / _mm512_reduce_add_ps(sum);
    }
}

// Rows [m0, m0 + RG) of one head (fewer at the end: missing rows are computed on zeros and not stored).
template <size_t D, bool Amx>
void rows_group(const HeadLayout &L, size_t m0, const float *q, const float *qbias, float scale, const uint32_t *kp,
                const uint32_t *vp, float *out, Scratch &sc) {
    constexpr size_t DR = Dims<D>::DR, DV = Dims<D>::DV, T = Dims<D>::T;
    const size_t rows = std::min(RG, L.tokens - m0);
    alignas(64) uint32_t qp[RG][DR];
    for (size_t r = 0; r < RG; ++r) {
        if (r < rows)
            row_pairs<D>(q + (m0 + r) * L.stride, qbias, scale, qp[r]);
        else
            std::memset(qp[r], 0, sizeof qp[r]);
    }
    float *s = reinterpret_cast<float *>(sc.s.get());
    uint16_t *p = reinterpret_cast<uint16_t *>(sc.p.get());
    float *o = reinterpret_cast<float *>(sc.o.get());
    float inv[RG];
#ifdef EVK_AMX_KERNEL
    if constexpr (Amx) {
        load_tiles();
        scores_amx<D>(qp, kp, L.keys, s);
        softmax_rows(L, s, p, inv);
        values_amx<D>(p, vp, L.keys, o);
    } else
#endif
    {
        scores_avx512<D>(qp, kp, L.keys, s);
        softmax_rows(L, s, p, inv);
        values_avx512<D>(p, vp, L.keys, o);
    }
    for (size_t r = 0; r < rows; ++r) {
        __m512 iv = _mm512_set1_ps(inv[r]);
        for (size_t t = 0; t < T; ++t)
            _mm512_mask_storeu_ps(out + (m0 + r) * L.stride + 16 * t, lanes<D>(16 * t),
                                  _mm512_mul_ps(_mm512_load_ps(o + r * DV + 16 * t), iv));
    }
}

template <size_t D, bool Amx>
void run(const AttentionShape &shape, const float *q, const float *k, const float *v, const float *bias, float *out,
         const ParallelFor &parallel_for) {
    const size_t hidden = shape.heads * D, heads = shape.batch * shape.heads;
    const HeadLayout L{shape.tokens, (shape.tokens + NB - 1) / NB * NB, hidden};
    const float scale = shape.scale != 0 ? shape.scale : 1.0f / std::sqrt(float(D));
    const size_t k_words = L.keys * Dims<D>::DR, v_words = L.keys / 2 * Dims<D>::DV;  // one head's kp, vp
    Pool::Lease kp = pool().take(heads * k_words), vp = pool().take(heads * v_words);
    auto base = [&](size_t bh) { return (bh / shape.heads) * shape.tokens * hidden + (bh % shape.heads) * D; };
    auto b = [&](size_t part, size_t bh) { return bias ? bias + part * hidden + (bh % shape.heads) * D : nullptr; };
    parallel_for(heads, [&](size_t bh) {
        pack_head<D>(L, k + base(bh), v + base(bh), b(1, bh), b(2, bh), kp.buf.get() + bh * k_words,
                     vp.buf.get() + bh * v_words);
    });
    const size_t groups = (shape.tokens + RG - 1) / RG;
    parallel_for(heads * groups, [&](size_t t) {
        thread_local Scratch scratch;
        scratch.fit(L.keys);
        const size_t bh = t / groups;
        rows_group<D, Amx>(L, (t % groups) * RG, q + base(bh), b(0, bh), scale, kp.buf.get() + bh * k_words,
                           vp.buf.get() + bh * v_words, out + base(bh), scratch);
    });
}

template <bool Amx>
void run_images(const AttentionShape &shape, const float *q, const float *k, const float *v, const float *bias,
                float *out, const ParallelFor &parallel_for) {
    // One image (tile) at a time: the packed K/V buffers the pool keeps are then one image's (3 MB at SigLIP-B
    // 512 px), not those of a 17-tile photo (54 MB), and each image still has heads x 32 tasks for the threads.
    AttentionShape one = shape;
    one.batch = 1;
    const size_t step = shape.tokens * shape.heads * shape.head_dim;
    for (size_t b = 0; b < shape.batch; ++b) {
        const size_t o = b * step;
        if (shape.head_dim == 64)
            run<64, Amx>(one, q + o, k + o, v + o, bias, out + o, parallel_for);
        else if (shape.head_dim == 72)  // SigLIP so400m (2.2B)
            run<72, Amx>(one, q + o, k + o, v + o, bias, out + o, parallel_for);
        else
            run<32, Amx>(one, q + o, k + o, v + o, bias, out + o, parallel_for);
    }
}

}  // namespace

bool bf16_supported_shape(const AttentionShape &shape) {
    return (shape.head_dim == 32 || shape.head_dim == 64 || shape.head_dim == 72) && shape.tokens > 0;
}

void attention_bf16(const AttentionShape &shape, const float *q, const float *k, const float *v, const float *bias,
                    float *out, const ParallelFor &parallel_for) {
    run_images<false>(shape, q, k, v, bias, out, parallel_for);
}

#ifdef EVK_AMX_KERNEL
void attention_amx(const AttentionShape &shape, const float *q, const float *k, const float *v, const float *bias,
                   float *out, const ParallelFor &parallel_for) {
    run_images<true>(shape, q, k, v, bias, out, parallel_for);
}
#endif

}  // namespace evk
