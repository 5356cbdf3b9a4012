#include "image.hpp"

#include <algorithm>
#include <cmath>
#include <tuple>

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

inline uint8_t clip8(int v) { return uint8_t(std::clamp(v >> kPrecisionBits, 0, 255)); }

// The two passes are most of the C library's own time per caption (a W1 frame is resized 512 -> 2048 -> 512 by
// SmolVLM2's rule). Integer sums, so the order of the additions never changes a result: only the taps and their
// fixed-point weights must be Pillow's. Built for AVX-512, AVX2 and the baseline, chosen at run time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EVLM_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define EVLM_CLONES
#endif

// One pass along y: each output row is a weighted sum of whole input rows (a loop the compiler vectorizes).
EVLM_CLONES Pixels vertical(const Pixels &in, int out_h, const Coefficients &c, int shift) {
    Pixels out{in.width, out_h, in.channels, std::vector<uint8_t>(size_t(in.width) * size_t(out_h) * size_t(in.channels))};
    const size_t row = size_t(in.width) * size_t(in.channels);
    std::vector<int32_t> acc(row);
    for (int yy = 0; yy < out_h; ++yy) {
        const int32_t *k = &c.weights[size_t(yy) * size_t(c.ksize)];
        int ymin = c.first[size_t(yy)] - shift, n = c.count[size_t(yy)];
        std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
        for (int y = 0; y < n; ++y) {
            const uint8_t *src = &in.data[size_t(y + ymin) * row];
            const int32_t w = k[y];
            for (size_t i = 0; i < row; ++i) acc[i] += src[i] * w;
        }
        uint8_t *dst = &out.data[size_t(yy) * row];
        for (size_t i = 0; i < row; ++i) dst[i] = clip8(acc[i]);
    }
    return out;
}

// Rows row0..row0+rows of `in`, transposed (x and y swapped), in cache-sized blocks.
template <int CH>
void transpose_rows(const Pixels &in, Pixels &out, int row0) {
    constexpr int B = 32;
    for (int xb = 0; xb < in.width; xb += B)
        for (int yb = 0; yb < out.width; yb += B)
            for (int x = xb; x < std::min(xb + B, in.width); ++x) {
                uint8_t *d = &out.data[(size_t(x) * size_t(out.width) + size_t(yb)) * CH];
                const uint8_t *s = &in.data[(size_t(row0 + yb) * size_t(in.width) + size_t(x)) * CH];
                for (int y = yb; y < std::min(yb + B, out.width); ++y, d += CH, s += size_t(in.width) * CH)
                    for (int b = 0; b < CH; ++b) d[b] = s[b];
            }
}

Pixels transposed(const Pixels &in, int row0, int rows) {
    Pixels out{rows, in.width, in.channels, std::vector<uint8_t>(size_t(rows) * size_t(in.width) * size_t(in.channels))};
    if (in.channels == 3) transpose_rows<3>(in, out, row0);
    else transpose_rows<4>(in, out, row0);
    return out;
}

// The pass along x is the vertical pass over the transposed image: a per-pixel dot product of a few taps does
// not vectorize, whole rows do, and the taps, weights and rounding are the same either way (27 -> 19 ms per W1
// frame; threads did not help, ONNX Runtime's spinning workers hold the other cores between runs).
Pixels horizontal(const Pixels &in, int out_w, int row0, int rows, const Coefficients &c) {
    Pixels t = vertical(transposed(in, row0, rows), out_w, c, 0);
    return transposed(t, 0, t.height);
}

// Pillow 13's order: the vertical pass first when the height shrinks by more than twice what the width shrinks
// (fewer rows for the horizontal pass), otherwise the horizontal pass first, over only the rows the vertical
// pass reads. The order changes the rounding of the 8-bit intermediate image, so it must be Pillow's.
Pixels resample(const Pixels &in, int w, int h) {
    bool need_h = w != in.width, need_v = h != in.height;
    int shrink_y = in.height - h, shrink_x = in.width - w;
    if (shrink_y > 0 && shrink_y > shrink_x * 2) {
        Pixels cur = need_v ? vertical(in, h, coefficients(in.height, h), 0) : in;
        return need_h ? horizontal(cur, w, 0, h, coefficients(in.width, w)) : cur;
    }
    Coefficients cy = coefficients(in.height, h);
    int first_row = cy.first[0];
    int last_row = cy.first[size_t(h) - 1] + cy.count[size_t(h) - 1];
    if (!need_h) return need_v ? vertical(in, h, cy, 0) : in;
    Pixels cur = horizontal(in, w, first_row, last_row - first_row, coefficients(in.width, w));
    return need_v ? vertical(cur, h, cy, first_row) : cur;
}

inline uint8_t muldiv255(unsigned a, unsigned b) {
    unsigned t = a * b + 128;
    return uint8_t(((t >> 8) + t) >> 8);
}

inline uint8_t clip(int v) { return uint8_t(std::clamp(v, 0, 255)); }

// Transparent pixels composited on white (Pillow's alpha_composite over an opaque white background).
Pixels flatten_alpha(const Pixels &in) {
    if (in.channels == 3) return in;
    Pixels out{in.width, in.height, 3, std::vector<uint8_t>(size_t(in.width) * size_t(in.height) * 3)};
    constexpr unsigned bits = 7;
    auto shiftdiv255 = [](unsigned a) { return ((a >> 8) + a) >> 8; };
    for (size_t p = 0; p < size_t(in.width) * size_t(in.height); ++p) {
        const uint8_t *s = &in.data[p * 4];
        uint8_t *d = &out.data[p * 3];
        unsigned a = s[3];
        if (a == 0) {
            d[0] = d[1] = d[2] = 255;
            continue;
        }
        unsigned blend = 255 * (255 - a);
        unsigned outa255 = a * 255 + blend;
        unsigned coef1 = a * 255 * 255 * (1u << bits) / outa255;
        unsigned coef2 = 255 * (1u << bits) - coef1;
        for (int b = 0; b < 3; ++b)
            d[b] = uint8_t(shiftdiv255(s[b] * coef1 + 255 * coef2 + (0x80u << bits)) >> bits);
    }
    return out;
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

Pixels crop(const Pixels &in, int x0, int y0, int w, int h) {
    Pixels out{w, h, in.channels, std::vector<uint8_t>(size_t(w) * size_t(h) * size_t(in.channels))};
    for (int y = 0; y < h; ++y)
        std::copy_n(&in.data[(size_t(y + y0) * size_t(in.width) + size_t(x0)) * size_t(in.channels)],
                    size_t(w) * size_t(in.channels), &out.data[size_t(y) * size_t(w) * size_t(in.channels)]);
    return out;
}

// Each byte value maps to one float per channel, so the whole rescale-and-normalize is a table lookup (the same
// float32 arithmetic as the Python runtime's, done 256 times instead of once per pixel).
void normalize_into(const Pixels &tile_image, const ImageRules &r, std::vector<float> &out) {
    Pixels rgb = flatten_alpha(tile_image);
    float table[3][256];
    for (int b = 0; b < 3; ++b)
        for (int v = 0; v < 256; ++v) table[b][v] = (float(double(v) * r.rescale) - r.mean[b]) / r.std[b];
    const size_t plane = size_t(rgb.width) * size_t(rgb.height);
    size_t base = out.size();
    out.resize(base + 3 * plane);
    for (int b = 0; b < 3; ++b) {
        float *dst = &out[base + size_t(b) * plane];
        const uint8_t *src = &rgb.data[size_t(b)];
        for (size_t p = 0; p < plane; ++p) dst[p] = table[b][src[p * 3]];
    }
}

}  // namespace

Pixels resize_lanczos(const Pixels &image, int width, int height) {
    if (image.width == width && image.height == height) return image;
    if (image.channels == 3) return resample(image, width, height);
    Pixels pre = image;  // RGBA -> RGBa, resample, RGBa -> RGBA
    for (size_t p = 0; p < pre.data.size(); p += 4)
        for (int b = 0; b < 3; ++b) pre.data[p + size_t(b)] = muldiv255(pre.data[p + size_t(b)], pre.data[p + 3]);
    Pixels out = resample(pre, width, height);
    for (size_t p = 0; p < out.data.size(); p += 4) {
        unsigned a = out.data[p + 3];
        if (a == 0 || a == 255) continue;
        for (int b = 0; b < 3; ++b) out.data[p + size_t(b)] = clip(int(255 * unsigned(out.data[p + size_t(b)]) / a));
    }
    return out;
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
    Pixels im = resize_lanczos(image, w, h);
    if (!split) {
        normalize_into(resize_lanczos(im, tile, tile), rules, out.values);
        out.tiles = 1;
        return out;
    }
    std::tie(h, w) = tile_multiple(h, w, tile);
    im = resize_lanczos(im, w, h);
    if (h <= tile && w <= tile) {
        normalize_into(im, rules, out.values);
        out.tiles = 1;
        return out;
    }
    out.rows = (h + tile - 1) / tile;
    out.cols = (w + tile - 1) / tile;
    for (int r = 0; r < out.rows; ++r)
        for (int c = 0; c < out.cols; ++c) normalize_into(crop(im, c * tile, r * tile, tile, tile), rules, out.values);
    normalize_into(resize_lanczos(im, tile, tile), rules, out.values);
    out.tiles = out.rows * out.cols + 1;
    return out;
}

}  // namespace evlm
