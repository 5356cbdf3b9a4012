// The 4-bit product for prompts (several rows) in bf16, on AMX tiles or on AVX-512 BF16's vdpbf16ps (built with
// those flags for this file alone; matmul_q4.cpp calls it only where the CPU has them and the prompt has enough rows
// to pay for it).
//
// The per-block int8 path of the VNNI implementation scales every block of every row by its own pair of scales;
// in bf16 that per-block work would cost more than the products themselves. Here instead each task dequantizes its
// 32 columns once, w = s (q - 8) + c (the correction c = s (8 - z) is HQQ's float zero point, so it folds into the
// weight), rounded to bf16 and laid out as a tile's B operand (pairs of rows of w in 32-bit words, 16 columns per
// row of words), and x is rounded to bf16 once per call. The two paths then read the same operands: AMX multiplies
// 32 x 32 blocks of the output on 4 tile accumulators; AVX-512 BF16 broadcasts one word of x (a pair of elements) of
// each of 12 rows against the two 16-column words of w, 24 accumulators in registers. bf16 keeps 8 bits of
// mantissa, more than the int8 activations of the VNNI path, so the result is as close to the exact product,
// though not the same integers (tests/test_kernels.py holds every path to the exact product).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#ifdef __AMX_BF16__
#include "amx_tiles.hpp"
#endif
#include "matmul_q4.hpp"
#include "vector512.hpp"

namespace evk {
namespace {

constexpr size_t BLOCK = 32;
constexpr size_t COLS = 32;  // output columns per task: two 16-column words of w
constexpr size_t ROWS = 32;  // AMX: output rows per step, two 16-row tiles
constexpr size_t VROWS = 12; // AVX-512 BF16: rows per step (24 accumulators + 2 words of w + 1 of x)
constexpr size_t VROWS_TAIL = 4;  // its last step's rows: 4, 8 or 12

// Row m of x as bf16 (k is a multiple of 32).
void row_to_bf16(const float *x, size_t k, uint16_t *out) {
    for (size_t c = 0; c < k; c += 32)
        _mm512_storeu_si512(out + c, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + c + 16), _mm512_loadu_ps(x + c)));
}

// 16 x 16 32-bit words transposed in registers: r[c] lane j becomes r[j] lane c.
inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    // Now 128-bit lane L of r[4 G + e] holds word 4 L + e of rows 4 G .. 4 G + 3: a 4 x 4 transpose of 128-bit lanes
    // over G and L for each e finishes it.
    for (int i = 0; i < 4; ++i) {
        const __m512i a = _mm512_shuffle_i32x4(r[i], r[4 + i], 0x88), b = _mm512_shuffle_i32x4(r[i], r[4 + i], 0xDD);
        const __m512i c = _mm512_shuffle_i32x4(r[8 + i], r[12 + i], 0x88),
                      d = _mm512_shuffle_i32x4(r[8 + i], r[12 + i], 0xDD);
        t[i] = _mm512_shuffle_i32x4(a, c, 0x88);
        t[8 + i] = _mm512_shuffle_i32x4(a, c, 0xDD);
        t[4 + i] = _mm512_shuffle_i32x4(b, d, 0x88);
        t[12 + i] = _mm512_shuffle_i32x4(b, d, 0xDD);
    }
    for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// Columns [n0, n0 + 16) (those past n are zero), dequantized to bf16 pairs: out[i * 16 + c] holds (w[2i][n0 + c],
// w[2i + 1][n0 + c]), the layout of a tile's B operand. Byte j of a block holds elements 2j (low nibble) and 2j + 1
// (high), so one byte is one pair: each column's 16 bytes of a block become its 16 words in one register, and the
// 16 columns' registers are transposed (gathers of 4 bytes from 16 columns measured a fifth of a prompt on AMD).
void dequantize16(const uint8_t *codes, const float *scales, const float *correction, size_t nb, size_t n,
                  size_t n0, uint32_t *out) {
    const size_t count = std::min<size_t>(16, n - n0);
    alignas(64) uint16_t order[32];
    for (int c = 0; c < 16; ++c) order[2 * c] = uint16_t(c), order[2 * c + 1] = uint16_t(16 + c);
    const __m512i pairs = _mm512_load_si512(order);
    const __m512i nibble = _mm512_set1_epi32(15);
    for (size_t b = 0; b < nb; ++b) {
        __m512i r[16];
        const float *z = correction + b * n + n0;
        for (size_t c = 0; c < 16; ++c) {
            if (c >= count) {
                r[c] = _mm512_setzero_si512();
                continue;
            }
            const float s = load_float(scales + (n0 + c) * nb + b);
            const __m512 sv = _mm512_set1_ps(s);
            const __m512 offset = _mm512_set1_ps(load_float(z + c) - 8.0f * s);  // w = s q + (c - 8 s)
            const __m512i bytes = _mm512_cvtepu8_epi32(
                _mm_loadu_si128(reinterpret_cast<const __m128i *>(codes + ((n0 + c) * nb + b) * 16)));
            const __m512 lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(bytes, nibble)), sv, offset);
            const __m512 hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(bytes, 4)), sv, offset);
            // [lo 0..15 | hi 0..15] as bf16, then interleaved: word j = (lo j, hi j)
            r[c] = _mm512_permutexvar_epi16(pairs, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
        transpose16(r);
        for (size_t j = 0; j < 16; ++j) _mm512_store_si512(out + (b * 16 + j) * 16, r[j]);
    }
}

#ifdef __AMX_BF16__
// y[m0..m0+32) x [n0..n0+32) for every 32 rows of xb (rows padded to 32 with zeros), from the task's two
// dequantized tiles w0, w1.
void tiles(const uint16_t *xb, size_t rows, size_t k, const uint32_t *w0, const uint32_t *w1, float *y, size_t ld,
           size_t width) {
    load_tiles();
    alignas(64) float part[ROWS][COLS];
    const size_t lx = k * 2;
    for (size_t m0 = 0; m0 < rows; m0 += ROWS) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        const uint16_t *a = xb + m0 * k;
        for (size_t kk = 0; kk < k; kk += 32) {
            _tile_loadd(4, a + kk, lx);
            _tile_loadd(5, a + 16 * k + kk, lx);
            _tile_loadd(6, w0 + kk / 2 * 16, 64);
            _tile_loadd(7, w1 + kk / 2 * 16, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        const size_t live_rows = std::min(ROWS, rows - m0);
        float *at = y + m0 * ld;
        if (live_rows == ROWS && width == COLS) {
            _tile_stored(0, at, ld * 4);
            _tile_stored(1, at + 16, ld * 4);
            _tile_stored(2, at + 16 * ld, ld * 4);
            _tile_stored(3, at + 16 * ld + 16, ld * 4);
            continue;
        }
        _tile_stored(0, &part[0][0], COLS * 4);
        _tile_stored(1, &part[0][16], COLS * 4);
        _tile_stored(2, &part[16][0], COLS * 4);
        _tile_stored(3, &part[16][16], COLS * 4);
        for (size_t r = 0; r < live_rows; ++r) std::memcpy(at + r * ld, part[r], width * 4);
    }
}
#endif

// The same block of the output with vdpbf16ps: for each pair of x's elements, R rows' words broadcast against the
// two words of w (32 columns), 2 R accumulators in registers.
template <size_t R>
void vector_step(const uint32_t *a, size_t pairs, const uint32_t *w0, const uint32_t *w1, float *y, size_t ld,
                 size_t live_rows, __mmask16 lo, __mmask16 hi) {
    __m512 acc[R][2];
    for (size_t r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (size_t i = 0; i < pairs; ++i) {
        const __m512bh b0 = (__m512bh)_mm512_load_si512(w0 + i * 16);
        const __m512bh b1 = (__m512bh)_mm512_load_si512(w1 + i * 16);
        for (size_t r = 0; r < R; ++r) {
            const __m512bh x = (__m512bh)_mm512_set1_epi32(int(a[r * pairs + i]));
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, b1);
        }
    }
    for (size_t r = 0; r < std::min(R, live_rows); ++r) {
        _mm512_mask_storeu_ps(y + r * ld, lo, acc[r][0]);
        _mm512_mask_storeu_ps(y + r * ld + 16, hi, acc[r][1]);
    }
}

// Every row of xw (padded with zero rows to a multiple of VROWS_TAIL): steps of VROWS rows, the last one of 4 or 8
// where fewer are left (an 88-token prompt is 7 steps of 12 and one of 4, not 8 of 12).
void vector_rows(const uint32_t *xw, size_t rows, size_t k, const uint32_t *w0, const uint32_t *w1, float *y,
                 size_t ld, size_t width) {
    const size_t pairs = k / 2;
    const __mmask16 lo = __mmask16(width >= 16 ? 0xFFFF : (1u << width) - 1);
    const __mmask16 hi = __mmask16(width >= 32 ? 0xFFFF : width > 16 ? (1u << (width - 16)) - 1 : 0);
    for (size_t m0 = 0; m0 < rows; m0 += VROWS) {
        const size_t left = rows - m0;
        const uint32_t *a = xw + m0 * pairs;
        if (left > 8)
            vector_step<VROWS>(a, pairs, w0, w1, y + m0 * ld, ld, left, lo, hi);
        else if (left > 4)
            vector_step<8>(a, pairs, w0, w1, y + m0 * ld, ld, left, lo, hi);
        else
            vector_step<4>(a, pairs, w0, w1, y + m0 * ld, ld, left, lo, hi);
    }
}

// silu(gate) * up for one row of [gate | up] (width columns each): the scalar pass with std::exp took a quarter
// of an 88-row MLP product.
void silu_mul16(const float *y, size_t width, float *out) {
    for (size_t c = 0; c < width; c += 16) {
        const __mmask16 live = __mmask16(width - c >= 16 ? 0xFFFF : (1u << (width - c)) - 1);
        const __m512 g = _mm512_maskz_loadu_ps(live, y + c), u = _mm512_maskz_loadu_ps(live, y + width + c);
        const __m512 sig = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
        _mm512_mask_storeu_ps(out + c, live, _mm512_mul_ps(sig, u));
    }
}

// Rounds x to bf16 (rows padded with zeros to a multiple of `pad`), then has each task dequantize 32 columns and
// multiply them by every row with `block`.
template <typename Block>
void bf16_product(const Q4Shape &shape, const float *x, const uint8_t *codes, const float *scales,
                  const float *correction, float *out, const ParallelFor &parallel_for, size_t pad, Block block) {
    const size_t k = shape.k, n = shape.n, nb = k / BLOCK, rows = shape.rows;
    const size_t padded = (rows + pad - 1) / pad * pad;
    thread_local std::vector<uint16_t> xbuf;
    uint16_t *xb = scratch(xbuf, padded * k);
    parallel_for(padded, [&](size_t m) {
        if (m < rows)
            row_to_bf16(x + m * k, k, xb + m * k);
        else
            std::memset(xb + m * k, 0, k * 2);
    });
    thread_local std::vector<float> before;
    float *y = shape.silu_mul ? scratch(before, rows * n) : out;
    parallel_for((n + COLS - 1) / COLS, [&](size_t t) {
        const size_t n0 = t * COLS, width = std::min(COLS, n - n0);
        thread_local std::vector<uint32_t> wbuf;
        uint32_t *w = scratch(wbuf, k / 2 * COLS + 16);  // two operands of k / 2 rows x 16 words, 64-byte aligned
        uint32_t *w0 = reinterpret_cast<uint32_t *>((reinterpret_cast<uintptr_t>(w) + 63) & ~uintptr_t(63));
        uint32_t *w1 = w0 + k / 2 * 16;
        dequantize16(codes, scales, correction, nb, n, n0, w0);
        if (width > 16)
            dequantize16(codes, scales, correction, nb, n, n0 + 16, w1);
        else
            std::memset(w1, 0, k / 2 * 16 * 4);
        block(xb, rows, k, w0, w1, y + n0, n, width);
    });
    if (!shape.silu_mul) return;
    const size_t width = n / 2;
    parallel_for(rows, [&](size_t m) { silu_mul16(y + m * n, width, out + m * width); });
}

}  // namespace

bool q4_bf16_supported(const Q4Shape &shape) {
    return shape.k % BLOCK == 0 && shape.k > 0 && (!shape.silu_mul || shape.n % 2 == 0);
}

void matmul_q4_bf16(const Q4Shape &shape, const float *x, const uint8_t *codes, const float *scales,
                    const float *correction, float *out, const ParallelFor &parallel_for) {
    bf16_product(shape, x, codes, scales, correction, out, parallel_for, VROWS_TAIL,
                 [](const uint16_t *xb, size_t rows, size_t k, const uint32_t *w0, const uint32_t *w1, float *y,
                    size_t ld, size_t width) {
                     vector_rows(reinterpret_cast<const uint32_t *>(xb), rows, k, w0, w1, y, ld, width);
                 });
}

#ifdef __AMX_BF16__
void matmul_q4_amx(const Q4Shape &shape, const float *x, const uint8_t *codes, const float *scales,
                   const float *correction, float *out, const ParallelFor &parallel_for) {
    bf16_product(shape, x, codes, scales, correction, out, parallel_for, ROWS, tiles);
}
#endif

}  // namespace evk
