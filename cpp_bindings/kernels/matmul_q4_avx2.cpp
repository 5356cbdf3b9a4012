// The 4-bit product on AVX2 (built with AVX2, FMA and F16C for this file alone; matmul_q4.cpp calls it only where
// the CPU has them), for CPUs without AVX-512 (Haswell to Alder Lake's P-cores, AMD Zen 1-3). The integers are the
// VNNI kernel's: vpmaddubsw multiplies a block's nibbles by x's int8 codes (pairs summed into int16, at most
// 2 * 15 * 127: no saturation), and 4 blocks' sums are packed into one vector (vphaddw, then vpmaddwd by ones: 2
// int32 lanes per block, in the order 0 2 1 3), so each group of 4 blocks is converted and scaled once. The zero
// point's -8 * sum(x codes) * scale(x) * s and the correction's sum(x) * c are one pass beside the products: 8 lanes,
// 4 blocks' s by their -8 scale(x) code sums and 4 blocks' c by their sums of x. (Per half of 2 blocks, with the zero
// point in the integers as the VNNI kernel adds it, a prompt ran 1.1-1.4x slower than ONNX Runtime's MLAS here.)
// It runs only from the decode table (q4_decode_table: the scales and correction as fp16 beside the codes;
// matmul_q4.cpp takes the portable loops without one), and gives a batch's rows bitwise what each gives alone: one
// row and prompts sum every column in the same order.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "matmul_q4.hpp"

namespace evk {
namespace {

constexpr size_t BLOCK = 32;
constexpr size_t COLS = 16;             // columns of a prompt's tile, unpacked once (Unpacked)
constexpr size_t PANEL = 32;            // columns per task of a prompt's products: 2 tiles
constexpr size_t ROW_RANGE = 128;       // rows per task of a prompt's products
constexpr size_t ROW_CHUNK = 32;        // rows whose x stays in cache while a panel's tiles pass over it
constexpr size_t CORRECTION_RUN = 32;   // columns per task of a prompt's zero-point and correction terms
constexpr size_t DECODE_RUN = 64;       // columns per task of one row
constexpr size_t PREFETCH = 1024;       // decode reads each column's codes once: asked for 1 KB ahead
// Which pair of int32 lanes holds block j of a group after vphaddw + vpmaddwd (0 2 1 3: the 128-bit halves).
constexpr size_t PAIR[4] = {0, 2, 1, 3};

inline __m256i load(const uint8_t *p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)); }
inline __m256 load_ps(const uint8_t *p) { return _mm256_loadu_ps(reinterpret_cast<const float *>(p)); }

// x as these kernels read it, quantized per block of 32 as q4_quantize_row does (scale max|x| / 127, codes rounded
// to nearest even): per row, per group of 4 blocks 160 bytes: the codes of the even elements (16 per block, 64) and
// of the odd ones (64), and scale(x) twice per block in PAIR's lanes (8 floats); then the 2-block tail, if any, in
// 96 bytes (zeros in the missing blocks' lanes). Apart from them, compact for the correction pass, each row's terms
// per group: the zero point's -8 * scale(x) * sum of codes (4), then the block sums of x (4).
struct Rows {
    size_t blocks, quads, tail, stride, groups;
    uint8_t *data;
    float *term_data;

    Rows(const Q4Shape &shape, const float *x, const ParallelFor &parallel_for)
        : blocks(shape.k / BLOCK), quads(blocks / 4), tail(blocks % 4), stride(quads * 160 + (tail ? 96 : 0)),
          groups(quads + (tail ? 1 : 0)), data(scratch(storage(), shape.rows * stride)),
          term_data(scratch(term_storage(), shape.rows * groups * 8)) {
        if (shape.rows == 1)  // decode: no hand-off to the pool for one row
            quantize(x, 0);
        else
            parallel_for(shape.rows, [&](size_t m) { quantize(x + m * shape.k, m); });
    }
    uint8_t *row(size_t m) { return data + m * stride; }
    const uint8_t *row(size_t m) const { return data + m * stride; }
    const float *terms(size_t m) const { return term_data + m * groups * 8; }
    static std::vector<uint8_t> &storage() {
        thread_local std::vector<uint8_t> bytes;
        return bytes;
    }
    static std::vector<float> &term_storage() {
        thread_local std::vector<float> floats;
        return floats;
    }

  private:
    void quantize(const float *x, size_t m) {
        const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        for (size_t b0 = 0; b0 < blocks; b0 += 4) {
            const size_t g = std::min<size_t>(4, blocks - b0);
            uint8_t *at = row(m) + (b0 / 4) * 160;
            float scale[8] = {}, terms[8] = {};
            for (size_t j = 0; j < g; ++j) {
                const float *xb = x + (b0 + j) * BLOCK;
                const __m256 a0 = _mm256_loadu_ps(xb), a1 = _mm256_loadu_ps(xb + 8), a2 = _mm256_loadu_ps(xb + 16),
                             a3 = _mm256_loadu_ps(xb + 24);
                const __m256 top = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(a0, magnitude), _mm256_and_ps(a1, magnitude)),
                                                 _mm256_max_ps(_mm256_and_ps(a2, magnitude), _mm256_and_ps(a3, magnitude)));
                __m128 t = _mm_max_ps(_mm256_castps256_ps128(top), _mm256_extractf128_ps(top, 1));
                t = _mm_max_ps(t, _mm_movehl_ps(t, t));
                const float amax = _mm_cvtss_f32(_mm_max_ss(t, _mm_movehdup_ps(t)));
                const __m256 inv = _mm256_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
                // Even and odd elements apart, each in order.
                auto ordered = [](__m256 v) {  // 0 2 8 10 | 4 6 12 14 -> 0 2 4 6 8 10 12 14
                    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0xd8));
                };
                auto codes = [&](__m256 v) { return _mm256_cvtps_epi32(_mm256_mul_ps(v, inv)); };  // (ties to even)
                const __m256i qe0 = codes(ordered(_mm256_shuffle_ps(a0, a1, 0x88))),
                              qe1 = codes(ordered(_mm256_shuffle_ps(a2, a3, 0x88))),
                              qo0 = codes(ordered(_mm256_shuffle_ps(a0, a1, 0xdd))),
                              qo1 = codes(ordered(_mm256_shuffle_ps(a2, a3, 0xdd)));
                const __m256i q32 = _mm256_add_epi32(_mm256_add_epi32(qe0, qe1), _mm256_add_epi32(qo0, qo1));
                __m128i c = _mm_add_epi32(_mm256_castsi256_si128(q32), _mm256_extracti128_si256(q32, 1));
                c = _mm_add_epi32(c, _mm_shuffle_epi32(c, 0x4e));
                const int32_t code_sum = _mm_cvtsi128_si32(_mm_add_epi32(c, _mm_shuffle_epi32(c, 0xb1)));
                // int32 -> int8: [e0 0-3, e1 0-3, o0 0-3, o1 0-3 | e0 4-7, e1 4-7, o0 4-7, o1 4-7], then in order.
                const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(qe0, qe1), _mm256_packs_epi32(qo0, qo1));
                const __m256i split = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
                _mm_storeu_si128(reinterpret_cast<__m128i *>(at + j * 16), _mm256_castsi256_si128(split));
                _mm_storeu_si128(reinterpret_cast<__m128i *>(at + g * 16 + j * 16), _mm256_extracti128_si256(split, 1));
                const __m256 s8 = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
                __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
                s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
                scale[2 * PAIR[j]] = scale[2 * PAIR[j] + 1] = amax / 127.0f;
                terms[j] = -8.0f * (amax / 127.0f) * float(code_sum);
                terms[4 + j] = _mm_cvtss_f32(_mm_add_ss(s4, _mm_movehdup_ps(s4)));
            }
            std::memcpy(at + g * BLOCK, scale, sizeof scale);
            std::memcpy(term_data + (m * groups + b0 / 4) * 8, terms, sizeof terms);
        }
    }
};

// A group of 4 blocks: the dot products of its nibbles (low: blocks 0-1 and 2-3, high likewise) with x's codes at
// `x` (Rows' order), 2 int32 lanes per block in PAIR's order.
inline __m256i quad_dot(__m256i lo0, __m256i lo1, __m256i hi0, __m256i hi1, const uint8_t *x) {
    const __m256i p0 = _mm256_add_epi16(_mm256_maddubs_epi16(lo0, load(x)), _mm256_maddubs_epi16(hi0, load(x + 64)));
    const __m256i p1 = _mm256_add_epi16(_mm256_maddubs_epi16(lo1, load(x + 32)), _mm256_maddubs_epi16(hi1, load(x + 96)));
    return _mm256_madd_epi16(_mm256_hadd_epi16(p0, p1), _mm256_set1_epi16(1));
}

// The 2-block tail: lanes 0-1 block 0, 4-5 block 1, the rest 0.
inline __m256i pair_dot(__m256i lo, __m256i hi, const uint8_t *x) {
    const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, load(x)), _mm256_maddubs_epi16(hi, load(x + 32)));
    return _mm256_madd_epi16(_mm256_hadd_epi16(p, _mm256_setzero_si256()), _mm256_set1_epi16(1));
}

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// The zero-point and correction lanes (s-terms 0-3, c-terms 4-7 by block within a group) summed: (t0 + t4) and so
// on, then ((u0 + u1) + (u2 + u3)); correction_terms sums in the same order.
inline float term_sum(__m256 t) {
    const __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    return (u[0] + u[1]) + (u[2] + u[3]);
}

// Column n of row m (decode), in one pass over its codes and its decode-table entries (per group s0..s3 c0..c3 as
// fp16, the tail s0 s1 c0 c1); y is set.
inline void column_decode(const Rows &r, size_t m, size_t n, const uint8_t *codes, const uint16_t *table, float *y) {
    const uint8_t *x = r.row(m);
    const uint8_t *at = codes + n * r.blocks * 16;
    const uint16_t *t = table + n * r.blocks * 2;
    const float *terms = r.terms(m);
    const __m256i low = _mm256_set1_epi8(15);
    const __m256i spread = _mm256_setr_epi32(0, 0, 2, 2, 1, 1, 3, 3);
    __m256 acc = _mm256_setzero_ps(), term = _mm256_setzero_ps();
    for (size_t q = 0; q < r.quads; ++q, x += 160, at += 64, t += 8, terms += 8) {
        _mm_prefetch(reinterpret_cast<const char *>(at + PREFETCH), _MM_HINT_T0);
        const __m256 sc = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(t)));
        term = _mm256_fmadd_ps(sc, _mm256_loadu_ps(terms), term);
        const __m256i v0 = load(at), v1 = load(at + 32);
        const __m256i dot = quad_dot(_mm256_and_si256(v0, low), _mm256_and_si256(v1, low),
                                     _mm256_and_si256(_mm256_srli_epi16(v0, 4), low),
                                     _mm256_and_si256(_mm256_srli_epi16(v1, 4), low), x);
        const __m256 s = _mm256_mul_ps(_mm256_permutevar8x32_ps(sc, spread), load_ps(x + 128));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, acc);
    }
    if (r.tail) {
        const __m256 sc4 = _mm256_castps128_ps256(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(t))));
        // s0 s1 s0 s1 c0 c1 c0 c1: lanes 2, 3, 6 and 7 meet zeros in x's terms.
        term = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(sc4, _mm256_setr_epi32(0, 1, 0, 1, 2, 3, 2, 3)),
                               _mm256_loadu_ps(terms), term);
        const __m256i v = load(at);
        const __m256i dot = pair_dot(_mm256_and_si256(v, low), _mm256_and_si256(_mm256_srli_epi16(v, 4), low), x);
        const __m256 s = _mm256_mul_ps(_mm256_permutevar8x32_ps(sc4, _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1)),
                                       load_ps(x + 64));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, acc);
    }
    *y = hsum(acc) + term_sum(term);
}

// A tile of a prompt's columns, unpacked once for all its rows: per column, per group of 4 blocks 160 bytes (low
// nibbles 64, high nibbles 64, s twice per block in PAIR's lanes 32), then the tail's 96 (zeros for the missing
// blocks). The scales from the decode table, as column_decode reads them.
struct Unpacked {
    size_t stride;
    std::vector<uint8_t> data;

    Unpacked(const Rows &r, size_t nb, size_t n0, size_t count, const uint8_t *codes, const uint16_t *table)
        : stride(r.quads * 160 + (r.tail ? 96 : 0)), data(count * stride) {
        const __m256i low = _mm256_set1_epi8(15);
        for (size_t c = 0; c < count; ++c) {
            for (size_t b0 = 0; b0 < nb; b0 += 4) {
                const size_t g = std::min<size_t>(4, nb - b0);
                const uint8_t *v = codes + ((n0 + c) * nb + b0) * 16;
                uint8_t *at = col(c) + (b0 / 4) * 160;
                for (size_t i = 0; i < g * 16; i += 32) {
                    const __m256i x = load(v + i);
                    _mm256_storeu_si256(reinterpret_cast<__m256i *>(at + i), _mm256_and_si256(x, low));
                    _mm256_storeu_si256(reinterpret_cast<__m256i *>(at + g * 16 + i),
                                        _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
                }
                alignas(32) float group[8];  // s0..s3 c0..c3 (or s0 s1 c0 c1 for the tail)
                const uint16_t *t = table + (n0 + c) * nb * 2 + 2 * b0;
                _mm256_store_ps(group, _mm256_cvtph_ps(g == 4 ? _mm_loadu_si128(reinterpret_cast<const __m128i *>(t))
                                                               : _mm_loadl_epi64(reinterpret_cast<const __m128i *>(t))));
                float spread[8] = {};
                for (size_t j = 0; j < g; ++j) spread[2 * PAIR[j]] = spread[2 * PAIR[j] + 1] = group[j];
                std::memcpy(at + g * 32, spread, sizeof spread);
            }
        }
    }
    const uint8_t *col(size_t c) const { return data.data() + c * stride; }
    uint8_t *col(size_t c) { return data.data() + c * stride; }
};

// R rows by C columns of a prompt, added to y, each column summed in column_decode's order.
template <size_t R, size_t C>
inline void block(const Rows &r, const Unpacked &u, size_t m0, size_t c0, size_t ld, float *y) {
    const uint8_t *x[R], *w[C];
    for (size_t i = 0; i < R; ++i) x[i] = r.row(m0 + i);
    for (size_t c = 0; c < C; ++c) w[c] = u.col(c0 + c);
    __m256 acc[R][C];
    for (size_t i = 0; i < R; ++i)
        for (size_t c = 0; c < C; ++c) acc[i][c] = _mm256_setzero_ps();
    for (size_t q = 0; q < r.quads; ++q) {
        for (size_t c = 0; c < C; ++c) {
            const uint8_t *at = w[c] + q * 160;
            const __m256i lo0 = load(at), lo1 = load(at + 32), hi0 = load(at + 64), hi1 = load(at + 96);
            for (size_t i = 0; i < R; ++i) {
                const uint8_t *xi = x[i] + q * 160;
                const __m256 s = _mm256_mul_ps(load_ps(at + 128), load_ps(xi + 128));
                acc[i][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(quad_dot(lo0, lo1, hi0, hi1, xi)), s, acc[i][c]);
            }
        }
    }
    if (r.tail) {
        for (size_t c = 0; c < C; ++c) {
            const uint8_t *at = w[c] + r.quads * 160;
            const __m256i lo = load(at), hi = load(at + 32);
            for (size_t i = 0; i < R; ++i) {
                const uint8_t *xi = x[i] + r.quads * 160;
                const __m256 s = _mm256_mul_ps(load_ps(at + 64), load_ps(xi + 64));
                acc[i][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pair_dot(lo, hi, xi)), s, acc[i][c]);
            }
        }
    }
    for (size_t i = 0; i < R; ++i)
        for (size_t c = 0; c < C; ++c) y[(m0 + i) * ld + c0 + c] += hsum(acc[i][c]);
}

// Rows [m0, m1) of a tile (its columns from 0 in u), added to y (rows x ld, starting at the tile's first column).
void rows_tile(const Rows &r, const Unpacked &u, size_t m0, size_t m1, size_t count, size_t ld, float *y) {
    size_t m = m0;
    for (; m + 4 <= m1; m += 4)
        for (size_t c = 0; c < count; ++c) block<4, 1>(r, u, m, c, ld, y);
    for (; m < m1; ++m)
        for (size_t c = 0; c < count; ++c) block<1, 1>(r, u, m, c, ld, y);
}

// A prompt's products for columns [n0, n1) and rows [m0, m1), added to y: the panel's tiles unpacked once, then each
// chunk of rows passed over by all of them while its x is in cache.
void panel(const Rows &r, size_t nb, size_t n0, size_t n1, size_t m0, size_t m1, const uint8_t *codes,
           const uint16_t *table, size_t ld, float *y) {
    std::vector<Unpacked> tiles;
    tiles.reserve((n1 - n0 + COLS - 1) / COLS);
    for (size_t n = n0; n < n1; n += COLS) tiles.emplace_back(r, nb, n, std::min(COLS, n1 - n), codes, table);
    for (size_t m = m0; m < m1; m += ROW_CHUNK)
        for (size_t t = 0; t < tiles.size(); ++t)
            rows_tile(r, tiles[t], m, std::min(m1, m + ROW_CHUNK), std::min(COLS, n1 - n0 - t * COLS), ld,
                      y + n0 + t * COLS);
}

// The zero-point and correction terms of every row for columns [n0, n1), into y (rows x n), in column_decode's order
// (per lane of a group: block j's s-term and c-term accumulated apart over the groups, the tail's 2 into lanes 0 and
// 1; then term_sum's order): 8 columns on 8 lanes, their s and c taken out of the table once for every row.
void correction_terms(const Q4Shape &shape, const Rows &r, size_t n0, size_t n1, const uint16_t *table, float *y) {
    const size_t nb = r.blocks, groups = (n1 - n0 + 7) / 8, per = nb * 16;
    thread_local std::vector<float> column_major;  // per 8 columns, per block: their s, then their c
    float *sc = scratch(column_major, groups * per);
    std::fill(sc, sc + groups * per, 0.0f);  // (the last group's missing columns)
    for (size_t n = n0; n < n1; ++n) {
        float *at = sc + (n - n0) / 8 * per + (n - n0) % 8;
        const uint16_t *t = table + n * nb * 2;
        alignas(32) float group[8];
        for (size_t b0 = 0; b0 < nb; b0 += 4) {
            const size_t g = std::min<size_t>(4, nb - b0);
            _mm256_store_ps(group, _mm256_cvtph_ps(g == 4 ? _mm_loadu_si128(reinterpret_cast<const __m128i *>(t + 2 * b0))
                                                           : _mm_loadl_epi64(reinterpret_cast<const __m128i *>(t + 2 * b0))));
            for (size_t i = 0; i < g; ++i) {
                at[(b0 + i) * 16] = group[i];
                at[(b0 + i) * 16 + 8] = group[g + i];
            }
        }
    }
    for (size_t m = 0; m < shape.rows; ++m) {
        const float *row_terms = r.terms(m);
        for (size_t c = 0; c < groups; ++c) {
            // 4 blocks at a time, so the 8 sums stay in registers (indexed by b % 4 they went through memory).
            __m256 ts[4], tc[4];
            for (size_t j = 0; j < 4; ++j) ts[j] = tc[j] = _mm256_setzero_ps();
            const float *w = sc + c * per, *terms = row_terms;
            for (size_t q = 0; q < r.quads; ++q, w += 64, terms += 8)
                for (size_t j = 0; j < 4; ++j) {
                    ts[j] = _mm256_fmadd_ps(_mm256_loadu_ps(w + j * 16), _mm256_broadcast_ss(terms + j), ts[j]);
                    tc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(w + j * 16 + 8), _mm256_broadcast_ss(terms + 4 + j), tc[j]);
                }
            for (size_t j = 0; j < (r.tail ? 2 : 0); ++j) {
                ts[j] = _mm256_fmadd_ps(_mm256_loadu_ps(w + j * 16), _mm256_broadcast_ss(terms + j), ts[j]);
                tc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(w + j * 16 + 8), _mm256_broadcast_ss(terms + 4 + j), tc[j]);
            }
            __m256 u[4];
            for (size_t j = 0; j < 4; ++j) u[j] = _mm256_add_ps(ts[j], tc[j]);
            alignas(32) float sum[8];
            _mm256_store_ps(sum, _mm256_add_ps(_mm256_add_ps(u[0], u[1]), _mm256_add_ps(u[2], u[3])));
            const size_t n = n0 + c * 8;
            std::copy(sum, sum + std::min<size_t>(8, n1 - n), y + m * shape.n + n);
        }
    }
}

}  // namespace

void matmul_q4_avx2(const Q4Shape &shape, const float *x, const uint8_t *codes, const uint16_t *decode_table,
                    float *out, const ParallelFor &parallel_for) {
    const Rows r(shape, x, parallel_for);
    thread_local std::vector<float> before;  // the product before the MLP's activation
    float *y = shape.silu_mul ? scratch(before, shape.rows * shape.n) : out;
    if (shape.rows < 4) {
        parallel_for((shape.n + DECODE_RUN - 1) / DECODE_RUN, [&](size_t t) {
            const size_t n0 = t * DECODE_RUN, n1 = std::min(shape.n, n0 + DECODE_RUN);
            for (size_t m = 0; m < shape.rows; ++m)
                for (size_t n = n0; n < n1; ++n)
                    column_decode(r, m, n, codes, decode_table, y + m * shape.n + n);
        });
    } else {
        parallel_for((shape.n + CORRECTION_RUN - 1) / CORRECTION_RUN, [&](size_t t) {
            correction_terms(shape, r, t * CORRECTION_RUN, std::min(shape.n, (t + 1) * CORRECTION_RUN), decode_table,
                             y);
        });
        const size_t panels = (shape.n + PANEL - 1) / PANEL, ranges = (shape.rows + ROW_RANGE - 1) / ROW_RANGE;
        parallel_for(panels * ranges, [&](size_t t) {
            const size_t n0 = (t % panels) * PANEL, m0 = (t / panels) * ROW_RANGE;
            panel(r, r.blocks, n0, std::min(shape.n, n0 + PANEL), m0, std::min(shape.rows, m0 + ROW_RANGE), codes,
                  decode_table, shape.n, y);
        });
    }
    if (!shape.silu_mul) return;
    const size_t width = shape.n / 2;
    if (shape.rows == 1)
        silu_mul(y, width, out);
    else
        parallel_for(shape.rows, [&](size_t m) { silu_mul(y + m * shape.n, width, out + m * width); });
}

}  // namespace evk
