#include "resample.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "parallel.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define EVLM_X86 1
#endif
// NEON (Advanced SIMD) is part of every AArch64 CPU: its kernels need no run-time check.
#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define EVLM_NEON 1
#endif

namespace evlm {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow's fixed-point coefficients for 8-bit images
// The vector kernels multiply in 16 bits: each 22-bit weight is hi * 2^11 + lo, with lo in [0, 2^11).
// The high part stays within int16: Lanczos weights are at most ~1.1 (2^22 * 1.1 >> 11 < 2^15).
constexpr int kLowBits = 11;

double sinc(double x) {
    if (x == 0.0) return 1.0;
    x *= M_PI;
    return std::sin(x) / x;
}

double lanczos(double x) { return (-3.0 <= x && x < 3.0) ? sinc(x) * sinc(x / 3) : 0.0; }

// Per output position: the first input index, the number of inputs, and fixed-point weights; also the weights of
// taps 2p and 2p + 1 as two int16 halves of one int32 (high and low parts), the form a multiply-add of int16 pairs
// takes. A tap past `count` has weight 0.
struct Coefficients {
    int ksize = 0, pairs = 0;
    std::vector<int> first, count;
    std::vector<int32_t> weights;  // out_size * ksize
    std::vector<int32_t> hi, lo;   // out_size * pairs
};

int32_t pack16(int32_t a, int32_t b) { return int32_t(uint32_t(uint16_t(a)) | (uint32_t(uint16_t(b)) << 16)); }

void split_pairs(Coefficients &c, int out_size) {
    c.pairs = (c.ksize + 1) / 2;
    c.hi.assign(size_t(out_size) * size_t(c.pairs), 0);
    c.lo.assign(size_t(out_size) * size_t(c.pairs), 0);
    for (int xx = 0; xx < out_size; ++xx) {
        const int32_t *w = &c.weights[size_t(xx) * size_t(c.ksize)];
        auto tap = [&](int t) { return t < c.count[size_t(xx)] ? w[t] : 0; };
        for (int p = 0; p < c.pairs; ++p) {
            const int32_t a = tap(2 * p), b = tap(2 * p + 1);
            const size_t at = size_t(xx) * size_t(c.pairs) + size_t(p);
            c.hi[at] = pack16(a >> kLowBits, b >> kLowBits);
            c.lo[at] = pack16(a & ((1 << kLowBits) - 1), b & ((1 << kLowBits) - 1));
        }
    }
}

Coefficients coefficients(int in_size, int out_size) {
    const float in0 = 0.0f, in1 = float(in_size);
    double scale = double(in1 - in0) / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 3.0 * filterscale;
    Coefficients c;
    c.ksize = int(std::ceil(support)) * 2 + 1;
    c.first.resize(size_t(out_size));
    c.count.resize(size_t(out_size));
    c.weights.assign(size_t(out_size) * size_t(c.ksize), 0);
    std::vector<double> k(size_t(c.ksize));
    for (int xx = 0; xx < out_size; ++xx) {
        double center = in0 + (xx + 0.5) * scale;
        double ww = 0.0, ss = 1.0 / filterscale;
        int xmin = std::max(int(center - support + 0.5), 0);
        int xmax = std::min(int(center + support + 0.5), in_size) - xmin;
        for (int x = 0; x < xmax; ++x) {
            k[size_t(x)] = lanczos((x + xmin - center + 0.5) * ss);
            ww += k[size_t(x)];
        }
        for (int x = 0; x < xmax; ++x) {
            double w = ww != 0.0 ? k[size_t(x)] / ww : k[size_t(x)];
            c.weights[size_t(xx) * size_t(c.ksize) + size_t(x)] =
                w < 0 ? int(-0.5 + w * (1 << kPrecisionBits)) : int(0.5 + w * (1 << kPrecisionBits));
        }
        c.first[size_t(xx)] = xmin;
        c.count[size_t(xx)] = xmax;
    }
    split_pairs(c, out_size);
    return c;
}

inline uint8_t clip8(int32_t v) { return uint8_t(std::clamp(v >> kPrecisionBits, 0, 255)); }

// Coefficients depend on the two sizes only; a camera or a video repeats its sizes on every frame, and computing
// them (two sines per tap) was a millisecond per W1 frame. A handful of sizes are kept.
std::shared_ptr<const Coefficients> cached_coefficients(int in_size, int out_size) {
    static std::mutex lock;
    static std::map<std::pair<int, int>, std::shared_ptr<const Coefficients>> cache;
    std::lock_guard<std::mutex> hold(lock);
    auto key = std::make_pair(in_size, out_size);
    if (auto it = cache.find(key); it != cache.end()) return it->second;
    if (cache.size() >= 16) cache.clear();
    auto c = std::make_shared<const Coefficients>(coefficients(in_size, out_size));
    cache.emplace(key, c);
    return c;
}

// The pass along x runs on 32 image rows at once: the rows are transposed into a buffer that stays in cache (the
// 32 values of one column side by side), filtered like the vertical pass, and transposed back. The vertical pass
// takes 32 columns at a time.
constexpr int kLanes = 32;

// dst[c * dst_stride + r] = src[r * src_stride + c] for a 16 x 16 block of bytes.
inline void transpose16(const uint8_t *src, size_t src_stride, uint8_t *dst, size_t dst_stride) {
#if defined(__SSE2__)
    __m128i a[16], b[16];
    for (int i = 0; i < 16; ++i) a[i] = _mm_loadu_si128(reinterpret_cast<const __m128i *>(src + size_t(i) * src_stride));
    // Four rounds of interleaving (8, 16, 32, 64 bits) leave column c in register bit_reverse4(c).
    for (int i = 0; i < 8; ++i) {
        b[i] = _mm_unpacklo_epi8(a[2 * i], a[2 * i + 1]);
        b[i + 8] = _mm_unpackhi_epi8(a[2 * i], a[2 * i + 1]);
    }
    for (int i = 0; i < 8; ++i) {
        a[i] = _mm_unpacklo_epi16(b[2 * i], b[2 * i + 1]);
        a[i + 8] = _mm_unpackhi_epi16(b[2 * i], b[2 * i + 1]);
    }
    for (int i = 0; i < 8; ++i) {
        b[i] = _mm_unpacklo_epi32(a[2 * i], a[2 * i + 1]);
        b[i + 8] = _mm_unpackhi_epi32(a[2 * i], a[2 * i + 1]);
    }
    for (int i = 0; i < 8; ++i) {
        a[i] = _mm_unpacklo_epi64(b[2 * i], b[2 * i + 1]);
        a[i + 8] = _mm_unpackhi_epi64(b[2 * i], b[2 * i + 1]);
    }
    static constexpr int column[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
    for (int i = 0; i < 16; ++i)
        _mm_storeu_si128(reinterpret_cast<__m128i *>(dst + size_t(column[i]) * dst_stride), a[i]);
#elif defined(EVLM_NEON)
    // The same network: zip1/zip2 are unpacklo/unpackhi, so the columns come out in the same registers.
    uint8x16_t a[16], b[16];
    for (int i = 0; i < 16; ++i) a[i] = vld1q_u8(src + size_t(i) * src_stride);
    for (int i = 0; i < 8; ++i) {
        b[i] = vzip1q_u8(a[2 * i], a[2 * i + 1]);
        b[i + 8] = vzip2q_u8(a[2 * i], a[2 * i + 1]);
    }
#define EVLM_ZIP(W, from, to)                                                                                      \
    for (int i = 0; i < 8; ++i) {                                                                                  \
        const auto x = vreinterpretq_u##W##_u8(from[2 * i]), y = vreinterpretq_u##W##_u8(from[2 * i + 1]);         \
        to[i] = vreinterpretq_u8_u##W(vzip1q_u##W(x, y));                                                          \
        to[i + 8] = vreinterpretq_u8_u##W(vzip2q_u##W(x, y));                                                      \
    }
    EVLM_ZIP(16, b, a)
    EVLM_ZIP(32, a, b)
    EVLM_ZIP(64, b, a)
#undef EVLM_ZIP
    static constexpr int column[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
    for (int i = 0; i < 16; ++i) vst1q_u8(dst + size_t(column[i]) * dst_stride, a[i]);
#else
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c) dst[size_t(c) * dst_stride + size_t(r)] = src[size_t(r) * src_stride + size_t(c)];
#endif
}

// 32 rows x 16 columns <-> 16 groups of 32 bytes, with the 16 x 16 transposes above (SSE2 or NEON; the x86
// vector kernels bring a faster pair).
void gather_block16(const uint8_t *src, size_t stride, uint8_t *dst) {
    for (int r = 0; r < kLanes; r += 16) transpose16(src + size_t(r) * stride, stride, dst + r, kLanes);
}

void scatter_block16(const uint8_t *src, uint8_t *dst, size_t stride) {
    for (int r = 0; r < kLanes; r += 16) transpose16(src + r, kLanes, dst + size_t(r) * stride, stride);
}

using GatherBlock = void (*)(const uint8_t *, size_t, uint8_t *);
using ScatterBlock = void (*)(const uint8_t *, uint8_t *, size_t);

// `valid` (<= 32) rows of `width` bytes -> `width` groups of 32 (rows past `valid` repeat the last one), then one
// group of zeros: a pair of taps may reach one column past the last (with weight 0).
void gather_columns(const uint8_t *src, size_t stride, int valid, int width, uint8_t *dst, GatherBlock block) {
    int x = 0;
    if (valid == kLanes)
        for (; x + 16 <= width; x += 16) block(src + x, stride, dst + size_t(x) * kLanes);
    for (; x < width; ++x)
        for (int j = 0; j < kLanes; ++j)
            dst[size_t(x) * kLanes + size_t(j)] = src[size_t(std::min(j, valid - 1)) * stride + size_t(x)];
    std::memset(dst + size_t(width) * kLanes, 0, kLanes);
}

// The inverse: `width` groups of 32 -> the first `valid` rows.
void scatter_columns(const uint8_t *src, int width, int valid, uint8_t *dst, size_t stride, ScatterBlock block) {
    int x = 0;
    if (valid == kLanes)
        for (; x + 16 <= width; x += 16) block(src + size_t(x) * kLanes, dst + x, stride);
    for (; x < width; ++x)
        for (int j = 0; j < valid; ++j) dst[size_t(j) * stride + size_t(x)] = src[size_t(x) * kLanes + size_t(j)];
}

// The portable kernels: 32-bit products, which the compiler vectorizes for the CPU it was built for.
// B columns of one output row of the vertical pass, from x on, `n` rows from `rows`.
template <int B>
inline void vertical_block(const uint8_t *const *rows, int n, const int32_t *k, int x, uint8_t *dst) {
    int32_t acc[B];
    for (int j = 0; j < B; ++j) acc[j] = 1 << (kPrecisionBits - 1);
    for (int t = 0; t < n; ++t) {
        const uint8_t *src = rows[t] + x;
        const int32_t w = k[t];
        for (int j = 0; j < B; ++j) acc[j] += src[j] * w;
    }
    for (int j = 0; j < B; ++j) dst[x + j] = clip8(acc[j]);
}

// The pass along y: each output row is a weighted sum of whole input rows, 64 columns at a time so the sums stay
// in registers across the taps.
void vertical_generic(const Plane &in, const Coefficients &c, int shift, int y0, int y1, uint8_t *out, size_t stride) {
    std::vector<const uint8_t *> rows(size_t(c.ksize));
    for (int yy = y0; yy < y1; ++yy) {
        const int32_t *k = &c.weights[size_t(yy) * size_t(c.ksize)];
        const int n = c.count[size_t(yy)];
        for (int t = 0; t < n; ++t) rows[size_t(t)] = in.row(c.first[size_t(yy)] - shift + t);
        int x = 0;
        uint8_t *dst = out + size_t(yy - y0) * stride;
        for (; x + 64 <= in.width; x += 64) vertical_block<64>(rows.data(), n, k, x, dst);
        for (; x < in.width; ++x) vertical_block<1>(rows.data(), n, k, x, dst);
    }
}

// One output of the horizontal pass for 32 rows, from gathered columns.
void horizontal_generic(const uint8_t *cols, const Coefficients &c, int xx, uint8_t *dst) {
    const int32_t *k = &c.weights[size_t(xx) * size_t(c.ksize)];
    const uint8_t *src = cols + size_t(c.first[size_t(xx)]) * kLanes;
    int32_t acc[kLanes];
    for (int j = 0; j < kLanes; ++j) acc[j] = 1 << (kPrecisionBits - 1);
    for (int t = 0; t < c.count[size_t(xx)]; ++t, src += kLanes)
        for (int j = 0; j < kLanes; ++j) acc[j] += src[j] * k[t];
    for (int j = 0; j < kLanes; ++j) dst[j] = clip8(acc[j]);
}

#if defined(EVLM_X86)
// The vector kernels: int16 x int16 pair products (vpmaddwd, or AVX-512 VNNI's vpdpwssd that also adds), two taps
// per product and 32-bit sums, 32 lanes at a time (32 columns of the vertical pass, 32 rows of the horizontal one).
// A weight is split in a high and a low part, so each pair of taps costs two products; the sums are recombined
// exactly at the end (32-bit wrap-around cancels: the true sum fits in 32 bits, as in Pillow).
#define EVLM_AVX2 __attribute__((target("avx2")))
// GCC 12's AVX-512 headers trip its own uninitialized-value warnings (_mm512_undefined_epi32); the code is fine.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define EVLM_AVX512 __attribute__((target("avx2,avx512f,avx512bw,avx512vnni")))

// Two 16 x 16 byte transposes side by side, one per 128-bit half (the network of transpose16).
EVLM_AVX2 inline void transpose16x2(__m256i *a) {
    __m256i b[16];
    for (int i = 0; i < 8; ++i) {
        b[i] = _mm256_unpacklo_epi8(a[2 * i], a[2 * i + 1]);
        b[i + 8] = _mm256_unpackhi_epi8(a[2 * i], a[2 * i + 1]);
    }
    for (int i = 0; i < 8; ++i) {
        a[i] = _mm256_unpacklo_epi16(b[2 * i], b[2 * i + 1]);
        a[i + 8] = _mm256_unpackhi_epi16(b[2 * i], b[2 * i + 1]);
    }
    for (int i = 0; i < 8; ++i) {
        b[i] = _mm256_unpacklo_epi32(a[2 * i], a[2 * i + 1]);
        b[i + 8] = _mm256_unpackhi_epi32(a[2 * i], a[2 * i + 1]);
    }
    for (int i = 0; i < 8; ++i) {
        a[i] = _mm256_unpacklo_epi64(b[2 * i], b[2 * i + 1]);
        a[i + 8] = _mm256_unpackhi_epi64(b[2 * i], b[2 * i + 1]);
    }
}

constexpr int kTransposed[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};

// Rows i and 16 + i in the two halves of register i; column c comes out as one 32-byte group.
EVLM_AVX2 void gather_block_avx2(const uint8_t *src, size_t stride, uint8_t *dst) {
    __m256i a[16];
    for (int i = 0; i < 16; ++i)
        a[i] = _mm256_loadu2_m128i(reinterpret_cast<const __m128i *>(src + size_t(16 + i) * stride),
                                   reinterpret_cast<const __m128i *>(src + size_t(i) * stride));
    transpose16x2(a);
    for (int i = 0; i < 16; ++i)
        _mm256_storeu_si256(reinterpret_cast<__m256i *>(dst + size_t(kTransposed[i]) * kLanes), a[i]);
}

EVLM_AVX2 void scatter_block_avx2(const uint8_t *src, uint8_t *dst, size_t stride) {
    __m256i a[16];
    for (int i = 0; i < 16; ++i) a[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(src + size_t(i) * kLanes));
    transpose16x2(a);
    for (int i = 0; i < 16; ++i)
        _mm256_storeu2_m128i(reinterpret_cast<__m128i *>(dst + size_t(16 + kTransposed[i]) * stride),
                             reinterpret_cast<__m128i *>(dst + size_t(kTransposed[i]) * stride), a[i]);
}

// 32 lanes as in-lane unpacks leave them: the bytes of two taps interleaved (vpunpck*bw), then widened to int16
// pairs against zero, so group i holds lanes {4i..4i+3, 16+4i..16+4i+3} and the packs of store() (in-lane too) put
// them back in order. No cross-lane shuffle, two 32-byte loads per pair of taps.
struct Avx2 {
    __m256i acc[8];  // high parts of the four lane groups, then the low parts
    EVLM_AVX2 void zero() {
        for (__m256i &a : acc) a = _mm256_setzero_si256();
    }
    // Two taps' 32 bytes a and b as (a, b) int16 pairs in the four lane groups.
    static EVLM_AVX2 void pairs(const uint8_t *a, const uint8_t *b, __m256i *p) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(a));
        const __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(b));
        const __m256i lo = _mm256_unpacklo_epi8(x, y), hi = _mm256_unpackhi_epi8(x, y), z = _mm256_setzero_si256();
        p[0] = _mm256_unpacklo_epi8(lo, z);  // lanes 0-3, 16-19
        p[1] = _mm256_unpackhi_epi8(lo, z);  // 4-7, 20-23
        p[2] = _mm256_unpacklo_epi8(hi, z);  // 8-11, 24-27
        p[3] = _mm256_unpackhi_epi8(hi, z);  // 12-15, 28-31
    }
    EVLM_AVX2 void add(const uint8_t *a, const uint8_t *b, int32_t hi, int32_t lo) {
        const __m256i whi = _mm256_set1_epi32(hi), wlo = _mm256_set1_epi32(lo);
        __m256i p[4];
        pairs(a, b, p);
        for (int i = 0; i < 4; ++i) {
            acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(p[i], whi));
            acc[4 + i] = _mm256_add_epi32(acc[4 + i], _mm256_madd_epi16(p[i], wlo));
        }
    }
    // (hi * 2^11 + lo + half) >> 22, as Pillow's sum started at half.
    static EVLM_AVX2 __m256i total(__m256i h, __m256i l) {
        const __m256i half = _mm256_set1_epi32(1 << (kPrecisionBits - 1));
        return _mm256_srai_epi32(_mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(h, kLowBits), l), half),
                                 kPrecisionBits);
    }
    // The 32 sums clipped to 0..255 (saturating packs, in-lane like the unpacks) as bytes in lane order.
    EVLM_AVX2 void store(uint8_t *dst) const {
        const __m256i a = _mm256_packs_epi32(total(acc[0], acc[4]), total(acc[1], acc[5]));  // 0-7, 16-23
        const __m256i b = _mm256_packs_epi32(total(acc[2], acc[6]), total(acc[3], acc[7]));  // 8-15, 24-31
        _mm256_storeu_si256(reinterpret_cast<__m256i *>(dst), _mm256_packus_epi16(a, b));
    }
};

// The same with AVX-VNNI (VEX vpdpwssd: the multiply-add and the add in one instruction), for CPUs that have it
// without AVX-512 (Intel since Alder Lake, AMD since Zen 5).
#define EVLM_AVXVNNI __attribute__((target("avx2,avxvnni")))

struct AvxVnni : Avx2 {
    EVLM_AVXVNNI void add(const uint8_t *a, const uint8_t *b, int32_t hi, int32_t lo) {
        const __m256i whi = _mm256_set1_epi32(hi), wlo = _mm256_set1_epi32(lo);
        __m256i p[4];
        pairs(a, b, p);
        for (int i = 0; i < 4; ++i) {
            acc[i] = _mm256_dpwssd_avx_epi32(acc[i], p[i], whi);
            acc[4 + i] = _mm256_dpwssd_avx_epi32(acc[4 + i], p[i], wlo);
        }
    }
};

struct Avx512 {
    // Lanes as vpunpck*bw leaves them within 128-bit halves: {0-7, 16-23} and {8-15, 24-31}; high then low parts.
    __m512i acc[4];
    EVLM_AVX512 void zero() {
        for (__m512i &a : acc) a = _mm512_setzero_si512();
    }
    EVLM_AVX512 void add(const uint8_t *a, const uint8_t *b, int32_t hi, int32_t lo) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(a));
        const __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(b));
        const __m512i p0 = _mm512_cvtepu8_epi16(_mm256_unpacklo_epi8(x, y));
        const __m512i p1 = _mm512_cvtepu8_epi16(_mm256_unpackhi_epi8(x, y));
        const __m512i whi = _mm512_set1_epi32(hi), wlo = _mm512_set1_epi32(lo);
        acc[0] = _mm512_dpwssd_epi32(acc[0], p0, whi);
        acc[1] = _mm512_dpwssd_epi32(acc[1], p1, whi);
        acc[2] = _mm512_dpwssd_epi32(acc[2], p0, wlo);
        acc[3] = _mm512_dpwssd_epi32(acc[3], p1, wlo);
    }
    static EVLM_AVX512 __m128i total(__m512i h, __m512i l) {
        const __m512i half = _mm512_set1_epi32(1 << (kPrecisionBits - 1));
        const __m512i s = _mm512_srai_epi32(
            _mm512_add_epi32(_mm512_add_epi32(_mm512_slli_epi32(h, kLowBits), l), half), kPrecisionBits);
        return _mm512_cvtusepi32_epi8(_mm512_max_epi32(s, _mm512_setzero_si512()));  // clip to 0..255
    }
    EVLM_AVX512 void store(uint8_t *dst) const {
        const __m128i a = total(acc[0], acc[2]), b = total(acc[1], acc[3]);  // lanes {0-7, 16-23}, {8-15, 24-31}
        _mm_storeu_si128(reinterpret_cast<__m128i *>(dst), _mm_unpacklo_epi64(a, b));
        _mm_storeu_si128(reinterpret_cast<__m128i *>(dst + 16), _mm_unpackhi_epi64(a, b));
    }
};

// The two passes for one instruction set: the bodies are the same, each compiled for its target.
#define EVLM_PASSES(ISA, TARGET)                                                                                   \
    TARGET void vertical_##ISA(const Plane &in, const Coefficients &c, int shift, int y0, int y1, uint8_t *out,     \
                               size_t stride) {                                                                \
        std::vector<const uint8_t *> rows(size_t(c.pairs) * 2);                                                    \
        for (int yy = y0; yy < y1; ++yy) {                                                                         \
            const int n = c.count[size_t(yy)], pairs = (n + 1) / 2;                                                \
            for (int t = 0; t < 2 * pairs; ++t)                                                                    \
                rows[size_t(t)] = in.row(c.first[size_t(yy)] - shift + std::min(t, n - 1));                        \
            const int32_t *hi = &c.hi[size_t(yy) * size_t(c.pairs)], *lo = &c.lo[size_t(yy) * size_t(c.pairs)];    \
            uint8_t *dst = out + size_t(yy - y0) * stride;                                                         \
            int x = 0;                                                                                             \
            for (; x + kLanes <= in.width; x += kLanes) {                                                          \
                ISA acc;                                                                                           \
                acc.zero();                                                                                        \
                for (int p = 0; p < pairs; ++p) acc.add(rows[size_t(2 * p)] + x, rows[size_t(2 * p + 1)] + x, hi[p], lo[p]); \
                acc.store(dst + x);                                                                                \
            }                                                                                                      \
            const int32_t *k = &c.weights[size_t(yy) * size_t(c.ksize)];                                           \
            for (; x < in.width; ++x) vertical_block<1>(rows.data(), n, k, x, dst);                                \
        }                                                                                                          \
    }                                                                                                              \
    TARGET void horizontal_##ISA(const uint8_t *cols, const Coefficients &c, int xx, uint8_t *dst) {           \
        const int32_t *hi = &c.hi[size_t(xx) * size_t(c.pairs)], *lo = &c.lo[size_t(xx) * size_t(c.pairs)];        \
        const uint8_t *src = cols + size_t(c.first[size_t(xx)]) * kLanes;                                          \
        const int pairs = (c.count[size_t(xx)] + 1) / 2;                                                           \
        ISA acc;                                                                                                   \
        acc.zero();                                                                                                \
        for (int p = 0; p < pairs; ++p, src += 2 * kLanes) acc.add(src, src + kLanes, hi[p], lo[p]);               \
        acc.store(dst);                                                                                            \
    }

EVLM_PASSES(Avx2, EVLM_AVX2)
EVLM_PASSES(AvxVnni, EVLM_AVXVNNI)
EVLM_PASSES(Avx512, EVLM_AVX512)
#pragma GCC diagnostic pop
#endif

#if defined(EVLM_NEON)
// The NEON kernels: Pillow's own arithmetic (32-bit products of a byte and a whole 22-bit weight, 32-bit sums), 32
// lanes in eight registers. The x86 kernels split weights in 16-bit halves for vpmaddwd; NEON multiplies 32-bit
// lanes at the same cost per lane, so the weights stay whole. (The dot-product extension multiplies bytes by
// bytes: a 22-bit weight would take three of them, so it does not help here.)
struct Neon {
    int32x4_t acc[8];
    void zero() {
        for (int32x4_t &a : acc) a = vdupq_n_s32(1 << (kPrecisionBits - 1));
    }
    // 32 bytes of one tap, times its weight.
    void add(const uint8_t *src, int32_t w) {
        for (int half = 0; half < 2; ++half) {
            const uint8x16_t x = vld1q_u8(src + 16 * half);
            const int16x8_t lo = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(x)));
            const int16x8_t hi = vreinterpretq_s16_u16(vmovl_high_u8(x));
            int32x4_t *a = acc + 4 * half;
            a[0] = vmlaq_n_s32(a[0], vmovl_s16(vget_low_s16(lo)), w);
            a[1] = vmlaq_n_s32(a[1], vmovl_high_s16(lo), w);
            a[2] = vmlaq_n_s32(a[2], vmovl_s16(vget_low_s16(hi)), w);
            a[3] = vmlaq_n_s32(a[3], vmovl_high_s16(hi), w);
        }
    }
    // clip8 of each sum: >> 22, then saturating narrows (negative to 0, above 255 to 255).
    void store(uint8_t *dst) const {
        for (int half = 0; half < 2; ++half) {
            const int32x4_t *a = acc + 4 * half;
            const uint16x8_t w0 = vcombine_u16(vqmovun_s32(vshrq_n_s32(a[0], kPrecisionBits)),
                                               vqmovun_s32(vshrq_n_s32(a[1], kPrecisionBits)));
            const uint16x8_t w1 = vcombine_u16(vqmovun_s32(vshrq_n_s32(a[2], kPrecisionBits)),
                                               vqmovun_s32(vshrq_n_s32(a[3], kPrecisionBits)));
            vst1q_u8(dst + 16 * half, vcombine_u8(vqmovn_u16(w0), vqmovn_u16(w1)));
        }
    }
};

void vertical_neon(const Plane &in, const Coefficients &c, int shift, int y0, int y1, uint8_t *out, size_t stride) {
    std::vector<const uint8_t *> rows(size_t(c.ksize));
    for (int yy = y0; yy < y1; ++yy) {
        const int32_t *k = &c.weights[size_t(yy) * size_t(c.ksize)];
        const int n = c.count[size_t(yy)];
        for (int t = 0; t < n; ++t) rows[size_t(t)] = in.row(c.first[size_t(yy)] - shift + t);
        uint8_t *dst = out + size_t(yy - y0) * stride;
        int x = 0;
        for (; x + kLanes <= in.width; x += kLanes) {
            Neon acc;
            acc.zero();
            for (int t = 0; t < n; ++t) acc.add(rows[size_t(t)] + x, k[t]);
            acc.store(dst + x);
        }
        for (; x < in.width; ++x) vertical_block<1>(rows.data(), n, k, x, dst);
    }
}

void horizontal_neon(const uint8_t *cols, const Coefficients &c, int xx, uint8_t *dst) {
    const int32_t *k = &c.weights[size_t(xx) * size_t(c.ksize)];
    const uint8_t *src = cols + size_t(c.first[size_t(xx)]) * kLanes;
    Neon acc;
    acc.zero();
    for (int t = 0; t < c.count[size_t(xx)]; ++t, src += kLanes) acc.add(src, k[t]);
    acc.store(dst);
}
#endif

// Output rows y0..y1 of the pass along y to out (row y0 first), input row `shift` being in's first.
using VerticalFn = void (*)(const Plane &, const Coefficients &, int, int, int, uint8_t *, size_t);
using HorizontalFn = void (*)(const uint8_t *, const Coefficients &, int, uint8_t *);

struct Kernels {
    const char *name;
    VerticalFn vertical;
    HorizontalFn horizontal;
    GatherBlock gather;
    ScatterBlock scatter;
};

// The best kernel set this CPU has; EDGEVLM_RESAMPLER names a ceiling (x86: generic < avx2 < avxvnni < avx512vnni;
// AArch64: generic < neon).
const Kernels &kernels() {
    static const Kernels chosen = [] {
        const char *force = std::getenv("EDGEVLM_RESAMPLER");
        const std::string cap = force ? force : "";
        const Kernels generic{"generic", vertical_generic, horizontal_generic, gather_block16, scatter_block16};
        if (cap == "generic") return generic;
#if defined(EVLM_X86)
        if (!__builtin_cpu_supports("avx2")) return generic;
        const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                            __builtin_cpu_supports("avx512vnni");
        if (avx512 && cap != "avx2" && cap != "avxvnni")
            return Kernels{"avx512vnni", vertical_Avx512, horizontal_Avx512, gather_block_avx2, scatter_block_avx2};
        if (__builtin_cpu_supports("avxvnni") && cap != "avx2")
            return Kernels{"avxvnni", vertical_AvxVnni, horizontal_AvxVnni, gather_block_avx2, scatter_block_avx2};
        return Kernels{"avx2", vertical_Avx2, horizontal_Avx2, gather_block_avx2, scatter_block_avx2};
#elif defined(EVLM_NEON)
        return Kernels{"neon", vertical_neon, horizontal_neon, gather_block16, scatter_block16};
#else
        return generic;
#endif
    }();
    return chosen;
}

// Groups g0..g1 of 32 output rows of the pass along x; rows(r, valid) gives the input rows r..r + valid (a
// pointer to the first, rows `in_width` bytes apart).
template <typename Rows>
void horizontal_groups(int in_width, Plane &out, const Coefficients &c, int g0, int g1, Rows rows) {
    const Kernels &k = kernels();
    std::unique_ptr<uint8_t[]> cols(new uint8_t[size_t(in_width + 1) * kLanes]);
    std::unique_ptr<uint8_t[]> res(new uint8_t[size_t(out.width) * kLanes]);
    for (int r = g0 * kLanes; r < std::min(g1 * kLanes, out.height); r += kLanes) {
        const int valid = std::min(kLanes, out.height - r);
        gather_columns(rows(r, valid), size_t(in_width), valid, in_width, cols.get(), k.gather);
        for (int xx = 0; xx < out.width; ++xx) k.horizontal(cols.get(), c, xx, res.get() + size_t(xx) * kLanes);
        scatter_columns(res.get(), out.width, valid, out.row(r), size_t(out.width), k.scatter);
    }
}

// Units 0..per_plane of every plane as one range split between the threads: one wake-up of the helpers per pass
// (not per channel), and three channels divide evenly between two threads.
void each_unit(int planes, int per_plane, int threads, const std::function<void(int, int, int)> &fn) {
    parallel_for(planes * per_plane, threads, [&](int b, int e) {
        for (int i = b; i < e;) {
            const int plane = i / per_plane, u0 = i % per_plane, u1 = std::min(per_plane, u0 + (e - i));
            fn(plane, u0, u1);
            i += u1 - u0;
        }
    });
}

Planes vertical(const Planes &in, int out_h, const Coefficients &c, int shift, int threads) {
    Planes out;
    for (const Plane &p : in) out.emplace_back(p.width, out_h);
    const VerticalFn pass = kernels().vertical;
    each_unit(int(in.size()), out_h, threads, [&](int p, int y0, int y1) {
        Plane &dst = out[size_t(p)];
        pass(in[size_t(p)], c, shift, y0, y1, dst.row(y0), size_t(dst.width));
    });
    return out;
}

// The pass along x over input rows row0..row0 + rows.
Planes horizontal(const Planes &in, int out_w, int row0, int rows, const Coefficients &c, int threads) {
    Planes out;
    for (size_t p = 0; p < in.size(); ++p) out.emplace_back(out_w, rows);
    each_unit(int(in.size()), (rows + kLanes - 1) / kLanes, threads,
              [&](int p, int g0, int g1) {
                  const Plane &src = in[size_t(p)];
                  horizontal_groups(src.width, out[size_t(p)], c, g0, g1, [&](int r, int) { return src.row(row0 + r); });
              });
    return out;
}

// Pillow's pass order for one resize: true when the vertical pass comes first.
bool vertical_first(int in_w, int in_h, int w, int h) {
    const int shrink_y = in_h - h, shrink_x = in_w - w;
    return shrink_y > 0 && shrink_y > shrink_x * 2;
}

// Freed plane buffers of this thread, newest last (PlaneMemory).
struct Recycled {
    static constexpr size_t kMaxBytes = size_t(64) << 20, kMaxBuffers = 16;
    std::vector<std::pair<size_t, uint8_t *>> free;
    size_t bytes = 0;
    ~Recycled() {
        for (auto &[size, p] : free) delete[] p;
    }
};

thread_local Recycled recycled;

}  // namespace

// Pillow 13's order: the vertical pass first when the height shrinks by more than twice what the width shrinks
// (fewer rows for the horizontal pass), otherwise the horizontal pass first, over only the rows the vertical
// pass reads. The order changes the rounding of the 8-bit intermediate image, so it must be Pillow's.
Planes resample(const Planes &in, int w, int h, int threads) {
    const int in_w = in.at(0).width, in_h = in[0].height;
    const bool need_h = w != in_w, need_v = h != in_h;
    auto cy = cached_coefficients(in_h, h);
    if (vertical_first(in_w, in_h, w, h)) {
        Planes cur = vertical(in, h, *cy, 0, threads);
        return need_h ? horizontal(cur, w, 0, h, *cached_coefficients(in_w, w), threads) : std::move(cur);
    }
    if (!need_h) return vertical(in, h, *cy, 0, threads);
    const auto cx = cached_coefficients(in_w, w);
    if (!need_v) return horizontal(in, w, 0, in_h, *cx, threads);
    const int first_row = cy->first[0];
    const int last_row = cy->first[size_t(h) - 1] + cy->count[size_t(h) - 1];
    return vertical(horizontal(in, w, first_row, last_row - first_row, *cx, threads), h, *cy, first_row, threads);
}

Planes resample_twice(const Planes &in, int w1, int h1, int w2, int h2, int threads) {
    const int in_w = in.at(0).width, in_h = in[0].height;
    const bool fusable = w1 != in_w && h1 != in_h && !vertical_first(in_w, in_h, w1, h1) && w2 != w1 &&
                         !vertical_first(w1, h1, w2, h2);
    if (!fusable) return resample(resample(in, w1, h1, threads), w2, h2, threads);
    // The first resize up to its pass along y, as resample() does it.
    auto cy1 = cached_coefficients(in_h, h1);
    const int first1 = cy1->first[0], rows1 = cy1->first[size_t(h1) - 1] + cy1->count[size_t(h1) - 1] - first1;
    const Planes across = horizontal(in, w1, first1, rows1, *cached_coefficients(in_w, w1), threads);
    // The second resize's pass along x reads the rows of the first's pass along y as they are made.
    auto cy2 = cached_coefficients(h1, h2);
    const bool need_v2 = h2 != h1;
    const int first2 = need_v2 ? cy2->first[0] : 0;
    const int rows2 = need_v2 ? cy2->first[size_t(h2) - 1] + cy2->count[size_t(h2) - 1] - first2 : h1;
    auto cx2 = cached_coefficients(w1, w2);
    const VerticalFn along_y = kernels().vertical;
    Planes mid;
    for (size_t p = 0; p < in.size(); ++p) mid.emplace_back(w2, rows2);
    each_unit(int(in.size()), (rows2 + kLanes - 1) / kLanes, threads, [&](int p, int g0, int g1) {
        std::unique_ptr<uint8_t[]> band(new uint8_t[size_t(kLanes) * size_t(w1)]);
        horizontal_groups(w1, mid[size_t(p)], *cx2, g0, g1, [&](int r, int valid) {
            along_y(across[size_t(p)], *cy1, first1, first2 + r, first2 + r + valid, band.get(), size_t(w1));
            return static_cast<const uint8_t *>(band.get());
        });
    });
    return need_v2 ? vertical(mid, h2, *cy2, first2, threads) : std::move(mid);
}

// A buffer of this thread's that fits (not over twice the size, so a small plane does not hold a large one).
Plane::Plane(int w, int h) : width(w), height(h), px(nullptr, PlaneMemory{}) {
    const size_t n = std::max<size_t>(size_t(w) * size_t(h), 1);
    auto &free = recycled.free;
    for (size_t i = free.size(); i-- > 0;)
        if (free[i].first >= n && free[i].first <= 2 * n) {
            px = std::unique_ptr<uint8_t[], PlaneMemory>(free[i].second, PlaneMemory{free[i].first});
            recycled.bytes -= free[i].first;
            free.erase(free.begin() + std::ptrdiff_t(i));
            return;
        }
    px = std::unique_ptr<uint8_t[], PlaneMemory>(new uint8_t[n], PlaneMemory{n});
}

void PlaneMemory::operator()(uint8_t *p) const {
    if (!p) return;
    auto &r = recycled;
    if (capacity > Recycled::kMaxBytes) {
        delete[] p;
        return;
    }
    r.free.emplace_back(capacity, p);
    r.bytes += capacity;
    while (r.bytes > Recycled::kMaxBytes || r.free.size() > Recycled::kMaxBuffers) {  // the oldest go first
        r.bytes -= r.free.front().first;
        delete[] r.free.front().second;
        r.free.erase(r.free.begin());
    }
}

const char *resampler_kernels() { return kernels().name; }

}  // namespace evlm
