#include "image.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace evlm {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow's fixed-point coefficients for 8-bit images
constexpr int kMaxImageSize = 4096;         // transformers' cap on the resized longest edge

double sinc(double x) {
    if (x == 0.0) return 1.0;
    x *= M_PI;
    return std::sin(x) / x;
}

double lanczos(double x) { return (-3.0 <= x && x < 3.0) ? sinc(x) * sinc(x / 3) : 0.0; }

// Per output position: the first input index, the number of inputs, and fixed-point weights.
struct Coefficients {
    int ksize = 0;
    std::vector<int> first, count;
    std::vector<int32_t> weights;  // out_size * ksize
};

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

// One channel, rows packed. Never zero-filled: every pass writes each byte of its output.
struct Plane {
    int width = 0, height = 0;
    std::unique_ptr<uint8_t[]> px;
    Plane(int w, int h) : width(w), height(h), px(new uint8_t[size_t(w) * size_t(h)]) {}
    uint8_t *row(int y) { return px.get() + size_t(y) * size_t(width); }
    const uint8_t *row(int y) const { return px.get() + size_t(y) * size_t(width); }
};

// An image as one plane per channel (RGB or RGBA): the passes, crops and normalization all run along rows of
// one channel, and the 2048 px intermediate of SmolVLM2's rule is never interleaved or split again.
using Planes = std::vector<Plane>;

// The passes are most of the C library's own time per caption (a W1 frame is resized 512 -> 2048 -> 512 by
// SmolVLM2's rule, ~190 M multiply-adds). Integer sums, so the order of the additions never changes a result:
// only the taps and their fixed-point weights must be Pillow's. Built for AVX-512, AVX2 and the baseline, chosen
// at run time; the fixed-size inner loops are what the compiler turns into whole vector registers.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EVLM_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define EVLM_CLONES
#endif

// The pass along y: each output row is a weighted sum of whole input rows, 64 columns at a time so the sums stay
// in registers across the taps. One thread: a second one lost time here, ONNX Runtime's workers still spin on
// the other cores after a run (W1 preprocessing 7.5 ms on one thread, 13.3 ms on two).
EVLM_CLONES void vertical_pass(const Plane &in, Plane &out, const Coefficients &c, int shift) {
    constexpr int B = 64;
    const int width = in.width;
    for (int yy = 0; yy < out.height; ++yy) {
        const int32_t *k = &c.weights[size_t(yy) * size_t(c.ksize)];
        const int ymin = c.first[size_t(yy)] - shift, n = c.count[size_t(yy)];
        uint8_t *dst = out.row(yy);
        int x = 0;
        for (; x + B <= width; x += B) {
            int32_t acc[B];
            for (int j = 0; j < B; ++j) acc[j] = 1 << (kPrecisionBits - 1);
            for (int t = 0; t < n; ++t) {
                const uint8_t *src = in.row(ymin + t) + x;
                const int32_t w = k[t];
                for (int j = 0; j < B; ++j) acc[j] += src[j] * w;
            }
            for (int j = 0; j < B; ++j) dst[x + j] = clip8(acc[j]);
        }
        for (; x < width; ++x) {
            int32_t acc = 1 << (kPrecisionBits - 1);
            for (int t = 0; t < n; ++t) acc += in.row(ymin + t)[x] * k[t];
            dst[x] = clip8(acc);
        }
    }
}

// The pass along x runs on 16 image rows at once: the rows are transposed into a buffer that stays in cache (the
// 16 values of one column side by side), filtered like the vertical pass, and transposed back.
constexpr int kLanes = 16;

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
#else
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c) dst[size_t(c) * dst_stride + size_t(r)] = src[size_t(r) * src_stride + size_t(c)];
#endif
}

// `valid` (<= 16) rows of `width` bytes -> `width` groups of 16 (rows past `valid` repeat the last one).
void gather_columns(const uint8_t *src, size_t stride, int valid, int width, uint8_t *dst) {
    int x = 0;
    if (valid == kLanes)
        for (; x + kLanes <= width; x += kLanes) transpose16(src + x, stride, dst + size_t(x) * kLanes, kLanes);
    for (; x < width; ++x)
        for (int j = 0; j < kLanes; ++j)
            dst[size_t(x) * kLanes + size_t(j)] = src[size_t(std::min(j, valid - 1)) * stride + size_t(x)];
}

// The inverse: `width` groups of 16 -> the first `valid` rows.
void scatter_columns(const uint8_t *src, int width, int valid, uint8_t *dst, size_t stride) {
    int x = 0;
    if (valid == kLanes)
        for (; x + kLanes <= width; x += kLanes) transpose16(src + size_t(x) * kLanes, kLanes, dst + x, stride);
    for (; x < width; ++x)
        for (int j = 0; j < valid; ++j) dst[size_t(j) * stride + size_t(x)] = src[size_t(x) * kLanes + size_t(j)];
}

// The pass along x over input rows row0..row0 + out.height.
EVLM_CLONES void horizontal_pass(const Plane &in, Plane &out, const Coefficients &c, int row0) {
    std::unique_ptr<uint8_t[]> cols(new uint8_t[size_t(in.width) * kLanes]);
    std::unique_ptr<uint8_t[]> res(new uint8_t[size_t(out.width) * kLanes]);
    for (int r = 0; r < out.height; r += kLanes) {
        const int valid = std::min(kLanes, out.height - r);
        gather_columns(in.row(row0 + r), size_t(in.width), valid, in.width, cols.get());
        for (int xx = 0; xx < out.width; ++xx) {
            const int32_t *k = &c.weights[size_t(xx) * size_t(c.ksize)];
            const uint8_t *src = cols.get() + size_t(c.first[size_t(xx)]) * kLanes;
            const int n = c.count[size_t(xx)];
            int32_t acc[kLanes];
            for (int j = 0; j < kLanes; ++j) acc[j] = 1 << (kPrecisionBits - 1);
            for (int t = 0; t < n; ++t, src += kLanes) {
                const int32_t w = k[t];
                for (int j = 0; j < kLanes; ++j) acc[j] += src[j] * w;
            }
            for (int j = 0; j < kLanes; ++j) res[size_t(xx) * kLanes + size_t(j)] = clip8(acc[j]);
        }
        scatter_columns(res.get(), out.width, valid, out.row(r), size_t(out.width));
    }
}

Plane vertical(const Plane &in, int out_h, const Coefficients &c, int shift) {
    Plane out(in.width, out_h);
    vertical_pass(in, out, c, shift);
    return out;
}

Plane horizontal(const Plane &in, int out_w, int row0, int rows, const Coefficients &c) {
    Plane out(out_w, rows);
    horizontal_pass(in, out, c, row0);
    return out;
}

// Pillow 13's order: the vertical pass first when the height shrinks by more than twice what the width shrinks
// (fewer rows for the horizontal pass), otherwise the horizontal pass first, over only the rows the vertical
// pass reads. The order changes the rounding of the 8-bit intermediate image, so it must be Pillow's.
Plane resample(const Plane &in, int w, int h) {
    const bool need_h = w != in.width, need_v = h != in.height;
    const int shrink_y = in.height - h, shrink_x = in.width - w;
    auto cy = cached_coefficients(in.height, h);
    if (shrink_y > 0 && shrink_y > shrink_x * 2) {
        Plane cur = vertical(in, h, *cy, 0);
        return need_h ? horizontal(cur, w, 0, h, *cached_coefficients(in.width, w)) : std::move(cur);
    }
    if (!need_h) return vertical(in, h, *cy, 0);
    const auto cx = cached_coefficients(in.width, w);
    if (!need_v) return horizontal(in, w, 0, in.height, *cx);
    const int first_row = cy->first[0];
    const int last_row = cy->first[size_t(h) - 1] + cy->count[size_t(h) - 1];
    return vertical(horizontal(in, w, first_row, last_row - first_row, *cx), h, *cy, first_row);
}

inline uint8_t muldiv255(unsigned a, unsigned b) {
    unsigned t = a * b + 128;
    return uint8_t(((t >> 8) + t) >> 8);
}

inline uint8_t clip(int v) { return uint8_t(std::clamp(v, 0, 255)); }

// Pillow's resize of an RGBA image: RGBA -> RGBa (premultiplied), resample, RGBa -> RGBA, on every call.
Planes resize_planes(const Planes &in, int w, int h) {
    const size_t n = size_t(in[0].width) * size_t(in[0].height);
    Planes out;
    if (in.size() == 4) {
        Planes pre;
        for (int b = 0; b < 4; ++b) pre.emplace_back(in[0].width, in[0].height);
        const uint8_t *a = in[3].px.get();
        std::copy_n(a, n, pre[3].px.get());
        for (int b = 0; b < 3; ++b)
            for (size_t p = 0; p < n; ++p) pre[size_t(b)].px[p] = muldiv255(in[size_t(b)].px[p], a[p]);
        for (const Plane &plane : pre) out.push_back(resample(plane, w, h));
        const uint8_t *oa = out[3].px.get();
        for (int b = 0; b < 3; ++b)
            for (size_t p = 0; p < size_t(w) * size_t(h); ++p)
                if (oa[p] != 0 && oa[p] != 255)
                    out[size_t(b)].px[p] = clip(int(255 * unsigned(out[size_t(b)].px[p]) / oa[p]));
        return out;
    }
    for (const Plane &plane : in) out.push_back(resample(plane, w, h));
    return out;
}

Planes to_planes(const Pixels &in) {
    const size_t n = size_t(in.width) * size_t(in.height), ch = size_t(in.channels);
    Planes out;
    for (size_t b = 0; b < ch; ++b) {
        out.emplace_back(in.width, in.height);
        uint8_t *dst = out.back().px.get();
        for (size_t p = 0; p < n; ++p) dst[p] = in.data[p * ch + b];
    }
    return out;
}

Pixels to_pixels(const Planes &in) {
    const int w = in[0].width, h = in[0].height;
    const size_t n = size_t(w) * size_t(h), ch = in.size();
    Pixels out{w, h, int(ch), std::vector<uint8_t>(n * ch)};
    for (size_t b = 0; b < ch; ++b)
        for (size_t p = 0; p < n; ++p) out.data[p * ch + b] = in[b].px[p];
    return out;
}

Planes resize_or_keep(Planes im, int w, int h) {
    if (im[0].width == w && im[0].height == h) return im;
    return resize_planes(im, w, h);
}

std::pair<int, int> resize_longest(int h, int w, int max_len) {
    double aspect = double(w) / h;
    if (w >= h) {
        w = max_len;
        h = int(w / aspect);
        h += h % 2;
    } else {
        h = max_len;
        w = int(h * aspect);
        w += w % 2;
    }
    h = std::max(h, 1);
    w = std::max(w, 1);
    aspect = double(w) / h;
    if (w >= h && w > kMaxImageSize) {
        w = kMaxImageSize;
        h = int(kMaxImageSize / aspect);
    } else if (h > w && h > kMaxImageSize) {
        h = kMaxImageSize;
        w = int(kMaxImageSize * aspect);
    }
    return {std::max(h, 1), std::max(w, 1)};
}

std::pair<int, int> tile_multiple(int h, int w, int tile) {
    double aspect = double(w) / h;
    if (w >= h) {
        w = int(std::ceil(double(w) / tile)) * tile;
        h = int(std::ceil(double(int(w / aspect)) / tile)) * tile;
    } else {
        h = int(std::ceil(double(h) / tile)) * tile;
        w = int(std::ceil(double(int(h * aspect)) / tile)) * tile;
    }
    return {h, w};
}

// The tile at (x0, y0) of `im`, transparent pixels composited on white (Pillow's alpha_composite over an opaque
// white background), rescaled and normalized. Each byte value maps to one float per channel, so the
// normalization is a table lookup (the same float32 arithmetic as the Python runtime's, done 256 times).
void normalize_into(const Planes &im, int x0, int y0, int size, const ImageRules &r, std::vector<float> &out) {
    float table[3][256];
    for (int b = 0; b < 3; ++b)
        for (int v = 0; v < 256; ++v) table[b][v] = (float(double(v) * r.rescale) - r.mean[b]) / r.std[b];
    const size_t plane = size_t(size) * size_t(size), base = out.size();
    out.resize(base + 3 * plane);
    constexpr unsigned bits = 7;
    auto shiftdiv255 = [](unsigned a) { return ((a >> 8) + a) >> 8; };
    std::vector<uint8_t> row(3 * size_t(size));  // one row of the tile, alpha flattened
    uint8_t *rgb[3] = {row.data(), row.data() + size, row.data() + 2 * size_t(size)};
    for (int y = 0; y < size; ++y) {
        const size_t at = size_t(y0 + y) * size_t(im[0].width) + size_t(x0);
        for (int b = 0; b < 3; ++b) std::copy_n(im[size_t(b)].px.get() + at, size, rgb[b]);
        if (im.size() == 4) {
            const uint8_t *alpha = im[3].px.get() + at;
            for (int x = 0; x < size; ++x) {
                const unsigned a = alpha[x];
                if (a == 255) continue;
                if (a == 0) {
                    rgb[0][x] = rgb[1][x] = rgb[2][x] = 255;
                    continue;
                }
                const unsigned outa255 = a * 255 + 255 * (255 - a);
                const unsigned coef1 = a * 255 * 255 * (1u << bits) / outa255, coef2 = 255 * (1u << bits) - coef1;
                for (int b = 0; b < 3; ++b)
                    rgb[b][x] = uint8_t(shiftdiv255(rgb[b][x] * coef1 + 255 * coef2 + (0x80u << bits)) >> bits);
            }
        }
        for (int b = 0; b < 3; ++b) {
            float *dst = &out[base + size_t(b) * plane + size_t(y) * size_t(size)];
            for (int x = 0; x < size; ++x) dst[x] = table[b][rgb[b][x]];
        }
    }
}

}  // namespace

Pixels resize_lanczos(const Pixels &image, int width, int height) {
    if (image.width == width && image.height == height) return image;
    return to_pixels(resize_planes(to_planes(image), width, height));
}

std::pair<int, int> tile_grid(int width, int height, const ImageRules &rules, bool split) {
    if (!split) return {0, 0};
    auto [h0, w0] = resize_longest(height, width, rules.longest_edge);
    auto [h, w] = tile_multiple(h0, w0, rules.tile);
    if (h <= rules.tile && w <= rules.tile) return {0, 0};
    return {(h + rules.tile - 1) / rules.tile, (w + rules.tile - 1) / rules.tile};
}

Processed process_image(const Pixels &image, const ImageRules &rules, bool split) {
    const int tile = rules.tile;
    Processed out;
    auto [h, w] = resize_longest(image.height, image.width, rules.longest_edge);
    Planes im = resize_or_keep(to_planes(image), w, h);
    if (!split) {
        normalize_into(resize_or_keep(std::move(im), tile, tile), 0, 0, tile, rules, out.values);
        out.tiles = 1;
        return out;
    }
    std::tie(h, w) = tile_multiple(h, w, tile);
    im = resize_or_keep(std::move(im), w, h);
    if (h <= tile && w <= tile) {
        normalize_into(im, 0, 0, tile, rules, out.values);
        out.tiles = 1;
        return out;
    }
    out.rows = (h + tile - 1) / tile;
    out.cols = (w + tile - 1) / tile;
    for (int r = 0; r < out.rows; ++r)
        for (int c = 0; c < out.cols; ++c) normalize_into(im, c * tile, r * tile, tile, rules, out.values);
    normalize_into(resize_or_keep(std::move(im), tile, tile), 0, 0, tile, rules, out.values);
    out.tiles = out.rows * out.cols + 1;
    return out;
}

}  // namespace evlm
