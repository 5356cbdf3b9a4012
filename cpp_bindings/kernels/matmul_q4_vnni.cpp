// The 4-bit product on AVX-512 VNNI (built with those flags for this file alone; matmul_q4.cpp calls it only where
// the CPU has them). It reads MatMulNBits' own layout, unpacked in registers: one 64-byte load holds 4 blocks of a
// column, whose low nibbles are the even elements of the 4 blocks and whose high nibbles the odd ones, so x is
// quantized in that order (q4_quantize_row, grouped) and two vpdpbusd leave each block's dot product in 4 int32
// lanes of its own. Those lanes are scaled by s * scale(x) of their block and accumulated in fp32; the zero point's
// -8 * sum(x codes) is the accumulator's starting value. A K with 2 blocks beyond a multiple of 4 (SmolLM2's 576
// and 960) ends with the same on 256-bit vectors. The correction term is a separate pass that reads c (K/32, N) row
// by row.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "matmul_q4.hpp"

namespace evk {
namespace {

constexpr size_t BLOCK = 32;
constexpr size_t COLS = 16;             // output columns per task of the products
constexpr size_t CORRECTION_RUN = 256;  // columns per task of the correction term: long contiguous reads
constexpr size_t DECODE_RUN = 64;       // columns per task of one row: correction term and products together
// Decode reads each column's codes once, from memory: asking for them 1 KB ahead measured 20-30 % faster on the
// AVX-512 machine (the hardware prefetcher alone left it at 10-15 GB/s on K = 1536).
constexpr size_t PREFETCH = 1024;

// What every column reads of a row, laid out in the order it is read (one pointer per row keeps the kernels' address
// arithmetic small enough for the registers): per group of 4 blocks, 256 bytes: x's codes for the even elements
// (64), the odd ones (64), the accumulator's start (16 int32: -8 * code sum in each block's first lane) and scale(x)
// spread over each block's 4 lanes (16 floats); then the 2-block tail, if any, the same in 128 bytes.
struct Rows {
    size_t quads, tail, stride;  // tail: 0 or 2 blocks after the quads
    uint8_t *data;

    explicit Rows(const Q4Input &in)
        : quads(in.blocks / 4), tail(in.blocks % 4), stride(quads * 256 + (tail ? 128 : 0)),
          data(scratch(storage(), in.rows * stride)) {
        for (size_t m = 0; m < in.rows; ++m) {
            for (size_t b0 = 0; b0 < in.blocks; b0 += 4) {
                const size_t g = std::min<size_t>(4, in.blocks - b0);  // blocks in this group
                uint8_t *at = row(m) + (b0 / 4) * 256;
                std::memcpy(at, in.codes + (m * in.blocks + b0) * BLOCK, g * BLOCK);  // evens, then odds
                int32_t start[16] = {};
                float scale[16];
                for (size_t j = 0; j < g; ++j) {
                    start[j * 4] = -8 * in.code_sum[m * in.blocks + b0 + j];
                    for (size_t lane = 0; lane < 4; ++lane) scale[j * 4 + lane] = in.scale[m * in.blocks + b0 + j];
                }
                std::memcpy(at + g * BLOCK, start, g * 16);
                std::memcpy(at + g * BLOCK + g * 16, scale, g * 16);
            }
        }
    }
    uint8_t *row(size_t m) { return data + m * stride; }
    const uint8_t *row(size_t m) const { return data + m * stride; }
    static std::vector<uint8_t> &storage() {
        thread_local std::vector<uint8_t> bytes;
        return bytes;
    }
};

inline __m512 spread4(const float *s) {  // s0 s0 s0 s0 s1 s1 s1 s1 s2 ... s3
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_loadu_ps(s)));
}

inline __m256 spread2(const float *s) {  // s0 s0 s0 s0 s1 s1 s1 s1
    const __m256i idx = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double *>(s)))), idx);
}

// Row m, C columns from n: sum over blocks of s * scale(x) * (dot - 8 * code sum), added to y.
template <size_t C>
inline void columns(const Q4Input &in, const Rows &r, size_t m, size_t n, const uint8_t *codes, const float *scales,
                    float *y) {
    const size_t nb = in.blocks;
    const uint8_t *x = r.row(m);
    const __m512i low = _mm512_set1_epi8(15);
    __m512 acc[C];
    for (size_t c = 0; c < C; ++c) acc[c] = _mm512_setzero_ps();
    for (size_t q = 0; q < r.quads; ++q, x += 256) {
        const __m512i even = _mm512_loadu_si512(x), odd = _mm512_loadu_si512(x + 64);
        const __m512i z = _mm512_loadu_si512(x + 128);
        const __m512 xs = _mm512_loadu_ps(x + 192);
        for (size_t c = 0; c < C; ++c) {
            const uint8_t *at = codes + ((n + c) * nb + 4 * q) * 16;
            _mm_prefetch(reinterpret_cast<const char *>(at + PREFETCH), _MM_HINT_T0);
            const __m512i v = _mm512_loadu_si512(at);
            const __m512i lo = _mm512_and_si512(v, low), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
            const __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, lo, even), hi, odd);
            const __m512 s = _mm512_mul_ps(spread4(scales + (n + c) * nb + 4 * q), xs);
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc[c]);
        }
    }
    if (r.tail) {  // the 2 blocks after the quads, on 256-bit vectors, into the low half of the accumulators
        const size_t b = r.quads * 4;
        const __m256i low8 = _mm256_set1_epi8(15);
        const __m256i even = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x));
        const __m256i odd = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x + 32));
        const __m256i z = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x + 64));
        const __m256 xs = _mm256_loadu_ps(reinterpret_cast<const float *>(x + 96));
        for (size_t c = 0; c < C; ++c) {
            const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(codes + ((n + c) * nb + b) * 16));
            const __m256i lo = _mm256_and_si256(v, low8), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low8);
            const __m256i dot = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(z, lo, even), hi, odd);
            const __m256 s = _mm256_mul_ps(spread2(scales + (n + c) * nb + b), xs);
            acc[c] = _mm512_add_ps(acc[c], _mm512_zextps256_ps512(_mm256_mul_ps(_mm256_cvtepi32_ps(dot), s)));
        }
    }
    for (size_t c = 0; c < C; ++c) y[c] += _mm512_reduce_add_ps(acc[c]);
}

// Column n of one row (decode) with its scales and correction from the decode table (q4_decode_table: per group
// of 4 blocks s0..s3 c0..c3 as fp16, the 2-block tail s0 s1 c0 c1): one pass over the column, the correction's
// term sum_b c[b] * sum(x in block b) beside the products; y is set.
inline void column_decode(const Q4Input &in, const Rows &r, size_t m, size_t n, const uint8_t *codes,
                          const uint16_t *table, float *y) {
    const size_t nb = in.blocks;
    const uint8_t *x = r.row(m);
    const uint8_t *at = codes + n * nb * 16;
    const uint16_t *t = table + n * nb * 2;
    const float *sums = in.sum + m * nb;
    const __m512i low = _mm512_set1_epi8(15);
    const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    __m512 acc = _mm512_setzero_ps();
    __m128 term = _mm_setzero_ps();
    for (size_t q = 0; q < r.quads; ++q, x += 256, at += 64, t += 8) {
        _mm_prefetch(reinterpret_cast<const char *>(at + PREFETCH), _MM_HINT_T0);
        const __m256 sc = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(t)));
        term = _mm_fmadd_ps(_mm256_extractf128_ps(sc, 1), _mm_loadu_ps(sums + 4 * q), term);
        const __m512i v = _mm512_loadu_si512(at);
        const __m512i lo = _mm512_and_si512(v, low), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
        const __m512i dot = _mm512_dpbusd_epi32(
            _mm512_dpbusd_epi32(_mm512_loadu_si512(x + 128), lo, _mm512_loadu_si512(x)), hi, _mm512_loadu_si512(x + 64));
        const __m512 s = _mm512_mul_ps(_mm512_permutexvar_ps(spread, _mm512_castps256_ps512(sc)), _mm512_loadu_ps(x + 192));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc);
    }
    if (r.tail) {  // the 2 blocks after the quads, on 256-bit vectors
        const size_t b = r.quads * 4;
        const __m256i low8 = _mm256_set1_epi8(15);
        const __m128 sc = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(t)));  // s0 s1 c0 c1
        term = _mm_fmadd_ps(_mm_movehl_ps(sc, sc), _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double *>(sums + b))),
                            term);
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(at));
        const __m256i lo = _mm256_and_si256(v, low8), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low8);
        const __m256i dot = _mm256_dpbusd_epi32(
            _mm256_dpbusd_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(x + 64)), lo,
                                _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x))),
            hi, _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x + 32)));
        const __m256 s = _mm256_mul_ps(_mm256_permutevar8x32_ps(_mm256_castps128_ps256(sc), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1)),
                                       _mm256_loadu_ps(reinterpret_cast<const float *>(x + 96)));
        acc = _mm512_add_ps(acc, _mm512_zextps256_ps512(_mm256_mul_ps(_mm256_cvtepi32_ps(dot), s)));
    }
    // (In the tail, movehl put c0 c1 in lanes 0 and 1; load_sd left the sums' lanes 2 and 3 zero.)
    *y = _mm512_reduce_add_ps(acc) + ((term[0] + term[1]) + (term[2] + term[3]));
}

// Columns [n0, n0 + count) of one row (decode), added to y: codes read once, straight from memory, one column
// at a time (4 interleaved columns, 4 streams, measured slower).
void tile(const Q4Input &in, const Rows &r, size_t m, size_t n0, size_t count, const uint8_t *codes,
          const float *scales, float *y) {
    for (size_t c = 0; c < count; ++c) columns<1>(in, r, m, n0 + c, codes, scales, y + c);
}

// Several rows (prefill): a tile's codes are split into nibbles and its scales spread once, then every row reuses
// them, R rows by C columns at a time with their accumulators in registers. Per column, in the order read: per
// group of 4 blocks 192 bytes (low nibbles 64, high nibbles 64, s spread over 4 lanes per block 64), then the
// tail's 96.
struct Unpacked {
    size_t stride;
    std::vector<uint8_t> data;

    // The scales from `s`, or from the decode table where there is one (as column_decode reads them).
    Unpacked(const Rows &r, size_t nb, size_t n0, size_t count, const uint8_t *codes, const float *s,
             const uint16_t *table)
        : stride(r.quads * 192 + (r.tail ? 96 : 0)), data(count * stride) {
        const __m256i low = _mm256_set1_epi8(15);
        for (size_t c = 0; c < count; ++c) {
            for (size_t b0 = 0; b0 < nb; b0 += 4) {
                const size_t g = std::min<size_t>(4, nb - b0);
                const uint8_t *v = codes + ((n0 + c) * nb + b0) * 16;
                uint8_t *at = col(c) + (b0 / 4) * 192;
                for (size_t i = 0; i < g * 16; i += 32) {
                    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(v + i));
                    _mm256_storeu_si256(reinterpret_cast<__m256i *>(at + i), _mm256_and_si256(x, low));
                    _mm256_storeu_si256(reinterpret_cast<__m256i *>(at + g * 16 + i),
                                        _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
                }
                float spread[16], scale[4];
                if (table) {
                    alignas(32) float group[8];  // s0..s3 c0..c3 (or s0 s1 c0 c1 for the tail)
                    const uint16_t *t = table + (n0 + c) * nb * 2 + 2 * b0;
                    _mm256_store_ps(group, _mm256_cvtph_ps(g == 4 ? _mm_loadu_si128(reinterpret_cast<const __m128i *>(t))
                                                                   : _mm_loadl_epi64(reinterpret_cast<const __m128i *>(t))));
                    std::memcpy(scale, group, g * 4);
                } else {
                    std::memcpy(scale, s + (n0 + c) * nb + b0, g * 4);
                }
                for (size_t j = 0; j < g; ++j)
                    for (size_t lane = 0; lane < 4; ++lane) spread[j * 4 + lane] = scale[j];
                std::memcpy(at + g * 32, spread, g * 16);
            }
        }
    }
    uint8_t *col(size_t c) { return data.data() + c * stride; }
    const uint8_t *col(size_t c) const { return data.data() + c * stride; }
};

template <size_t R, size_t C>
inline void block(const Rows &r, const Unpacked &u, size_t m0, size_t c0, size_t ld, float *y) {
    const uint8_t *x[R], *w[C];
    for (size_t i = 0; i < R; ++i) x[i] = r.row(m0 + i);
    for (size_t c = 0; c < C; ++c) w[c] = u.col(c0 + c);
    __m512 acc[R][C];
    for (size_t i = 0; i < R; ++i)
        for (size_t c = 0; c < C; ++c) acc[i][c] = _mm512_setzero_ps();
    for (size_t q = 0; q < r.quads; ++q) {
        // x's codes stay in registers; the start and scale(x) are read where used (memory operands), which keeps
        // the R x C accumulators within the 32 registers.
        __m512i even[R], odd[R];
        for (size_t i = 0; i < R; ++i) {
            even[i] = _mm512_loadu_si512(x[i] + q * 256);
            odd[i] = _mm512_loadu_si512(x[i] + q * 256 + 64);
        }
        for (size_t c = 0; c < C; ++c) {
            const uint8_t *at = w[c] + q * 192;
            const __m512i lo = _mm512_loadu_si512(at), hi = _mm512_loadu_si512(at + 64);
            const __m512 s = _mm512_loadu_ps(at + 128);
            for (size_t i = 0; i < R; ++i) {
                const __m512i z = _mm512_loadu_si512(x[i] + q * 256 + 128);
                const __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, lo, even[i]), hi, odd[i]);
                const __m512 xs = _mm512_loadu_ps(x[i] + q * 256 + 192);
                acc[i][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(s, xs), acc[i][c]);
            }
        }
    }
    if (r.tail) {  // the 2 blocks after the quads, on 256-bit vectors, into the low half of the accumulators
        const size_t xo = r.quads * 256, wo = r.quads * 192;
        for (size_t c = 0; c < C; ++c) {
            const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(w[c] + wo));
            const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(w[c] + wo + 32));
            const __m256 s = _mm256_loadu_ps(reinterpret_cast<const float *>(w[c] + wo + 64));
            for (size_t i = 0; i < R; ++i) {
                const uint8_t *t = x[i] + xo;
                const __m256i even = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(t));
                const __m256i odd = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(t + 32));
                const __m256i z = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(t + 64));
                const __m256 xs = _mm256_loadu_ps(reinterpret_cast<const float *>(t + 96));
                const __m256i dot = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(z, lo, even), hi, odd);
                const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(s, xs));
                acc[i][c] = _mm512_add_ps(acc[i][c], _mm512_zextps256_ps512(v));
            }
        }
    }
    for (size_t i = 0; i < R; ++i)
        for (size_t c = 0; c < C; ++c) y[(m0 + i) * ld + c0 + c] += _mm512_reduce_add_ps(acc[i][c]);
}

// All rows of a tile (its columns from 0 in u), added to y (rows x ld, starting at the tile's first column).
void rows_tile(const Q4Input &in, const Rows &r, const Unpacked &u, size_t count, size_t ld, float *y) {
    size_t m = 0;
    for (; m + 4 <= in.rows; m += 4) {
        size_t c = 0;
        for (; c + 2 <= count; c += 2) block<4, 2>(r, u, m, c, ld, y);
        for (; c < count; ++c) block<4, 1>(r, u, m, c, ld, y);
    }
    for (; m < in.rows; ++m)
        for (size_t c = 0; c < count; ++c) block<1, 1>(r, u, m, c, ld, y);
}

// The correction term of every row for columns [n0, n1), into y (rows x n). One row (decode): c is read row by row,
// each a contiguous run (it is stored (K/32, N); read 16 columns at a time, its rows would be as many strided
// streams). Several rows: 64 columns at a time in registers over all blocks, c's run staying in cache for every row.
void correction_term(const Q4Shape &shape, const Q4Input &in, size_t n0, size_t n1, const float *correction,
                     float *y) {
    const size_t nb = in.blocks;
    if (shape.rows == 1) {
        std::fill(y + n0, y + n1, 0.0f);
        for (size_t b = 0; b < nb; ++b) {
            const float *c = correction + b * shape.n;
            const __m512 s = _mm512_set1_ps(in.sum[b]);
            size_t n = n0;
            for (; n + 16 <= n1; n += 16)
                _mm512_storeu_ps(y + n, _mm512_fmadd_ps(_mm512_loadu_ps(c + n), s, _mm512_loadu_ps(y + n)));
            for (; n < n1; ++n) y[n] += c[n] * in.sum[b];
        }
        return;
    }
    for (size_t m = 0; m < shape.rows; ++m) {
        const float *sums = in.sum + m * nb;
        float *row = y + m * shape.n;
        size_t n = n0;
        for (; n + 64 <= n1; n += 64) {
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (size_t b = 0; b < nb; ++b) {
                const float *c = correction + b * shape.n + n;
                const __m512 s = _mm512_set1_ps(sums[b]);
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(c), s, a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(c + 16), s, a1);
                a2 = _mm512_fmadd_ps(_mm512_loadu_ps(c + 32), s, a2);
                a3 = _mm512_fmadd_ps(_mm512_loadu_ps(c + 48), s, a3);
            }
            _mm512_storeu_ps(row + n, a0);
            _mm512_storeu_ps(row + n + 16, a1);
            _mm512_storeu_ps(row + n + 32, a2);
            _mm512_storeu_ps(row + n + 48, a3);
        }
        for (; n < n1; ++n) {
            float a = 0;
            for (size_t b = 0; b < nb; ++b) a += correction[b * shape.n + n] * sums[b];
            row[n] = a;
        }
    }
}

// The correction term of every row for columns [n0, n1) from the decode table, into y (rows x n), summed in
// column_decode's order (4 partial sums by block within each group of 4, the tail's 2 into the first two, then
// (t0 + t1) + (t2 + t3)), so a batch's rows come out bitwise as each would alone: 16 columns on 16 lanes, their
// corrections taken out of the table once for every row.
void correction_term_table(const Q4Shape &shape, const Q4Input &in, size_t n0, size_t n1, const uint16_t *table,
                           float *y) {
    const size_t nb = in.blocks;
    thread_local std::vector<float> column_major;
    float *c = scratch(column_major, nb * 16);
    for (size_t n = n0; n < n1; n += 16) {
        const size_t count = std::min<size_t>(16, n1 - n);
        const __mmask16 live = __mmask16((1u << count) - 1);
        if (count < 16) std::fill(c, c + nb * 16, 0.0f);
        for (size_t j = 0; j < count; ++j) {  // each group's 8 halves converted at once, its corrections stored
            const uint16_t *t = table + (n + j) * nb * 2;
            alignas(32) float group[8];
            for (size_t b0 = 0; b0 < nb; b0 += 4) {
                const size_t g = std::min<size_t>(4, nb - b0);
                _mm256_store_ps(group, _mm256_cvtph_ps(g == 4 ? _mm_loadu_si128(reinterpret_cast<const __m128i *>(t + 2 * b0))
                                                               : _mm_loadl_epi64(reinterpret_cast<const __m128i *>(t + 2 * b0))));
                for (size_t i = 0; i < g; ++i) c[(b0 + i) * 16 + j] = group[g + i];
            }
        }
        for (size_t m = 0; m < shape.rows; ++m) {
            const float *sums = in.sum + m * nb;
            __m512 t[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            for (size_t b = 0; b < nb; ++b)
                t[b % 4] = _mm512_fmadd_ps(_mm512_loadu_ps(c + b * 16), _mm512_set1_ps(sums[b]), t[b % 4]);
            _mm512_mask_storeu_ps(y + m * shape.n + n, live,
                                  _mm512_add_ps(_mm512_add_ps(t[0], t[1]), _mm512_add_ps(t[2], t[3])));
        }
    }
}

}  // namespace

void matmul_q4_vnni(const Q4Shape &shape, const Q4Input &in, const uint8_t *codes, const float *scales,
                    const float *correction, const uint16_t *decode_table, float *out,
                    const ParallelFor &parallel_for) {
    const Rows r(in);
    // The product before the activation, written first by the correction pass: straight into out without one.
    thread_local std::vector<float> before;
    float *y = shape.silu_mul ? scratch(before, shape.rows * shape.n) : out;
    if (decode_table && shape.rows < 4) {
        // Decode (and a batch of up to 3 rows) from the table: one pass over each column's codes, scales and
        // correction, 20 bytes per block instead of 24 (the (K/32, N) correction read 64 columns at a time was a
        // strided pass of its own).
        parallel_for((shape.n + DECODE_RUN - 1) / DECODE_RUN, [&](size_t t) {
            const size_t n0 = t * DECODE_RUN, n1 = std::min(shape.n, n0 + DECODE_RUN);
            for (size_t m = 0; m < shape.rows; ++m)
                for (size_t n = n0; n < n1; ++n)
                    column_decode(in, r, m, n, codes, decode_table, y + m * shape.n + n);
        });
    } else if (decode_table) {
        // More rows: the codes unpacked once per tile for all of them, the same scales and correction as one row
        // reads, in the same order.
        parallel_for((shape.n + CORRECTION_RUN - 1) / CORRECTION_RUN, [&](size_t t) {
            correction_term_table(shape, in, t * CORRECTION_RUN, std::min(shape.n, (t + 1) * CORRECTION_RUN),
                                  decode_table, y);
        });
        parallel_for((shape.n + COLS - 1) / COLS, [&](size_t t) {
            const size_t n0 = t * COLS, count = std::min(COLS, shape.n - n0);
            rows_tile(in, r, Unpacked(r, in.blocks, n0, count, codes, scales, decode_table), count, shape.n, y + n0);
        });
    } else if (shape.rows == 1) {
        // Decode (120 products a token): one hand-off to the pool per product, each task its run of columns'
        // correction term and then their products (two parallel regions measured 3-7 % fewer tokens/s).
        parallel_for((shape.n + DECODE_RUN - 1) / DECODE_RUN, [&](size_t t) {
            const size_t n0 = t * DECODE_RUN, n1 = std::min(shape.n, n0 + DECODE_RUN);
            correction_term(shape, in, n0, n1, correction, y);
            for (size_t n = n0; n < n1; n += COLS) tile(in, r, 0, n, std::min(COLS, n1 - n), codes, scales, y + n);
        });
    } else {
        parallel_for((shape.n + CORRECTION_RUN - 1) / CORRECTION_RUN, [&](size_t t) {
            correction_term(shape, in, t * CORRECTION_RUN, std::min(shape.n, (t + 1) * CORRECTION_RUN),
                            correction, y);
        });
        parallel_for((shape.n + COLS - 1) / COLS, [&](size_t t) {
            const size_t n0 = t * COLS, count = std::min(COLS, shape.n - n0);
            if (shape.rows < 4) {  // nothing to share between rows
                for (size_t m = 0; m < shape.rows; ++m)
                    tile(in, r, m, n0, count, codes, scales, y + m * shape.n + n0);
                return;
            }
            rows_tile(in, r, Unpacked(r, in.blocks, n0, count, codes, scales, nullptr), count, shape.n, y + n0);
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
