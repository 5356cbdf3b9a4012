#include "image.hpp"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "parallel.hpp"
#include "resample.hpp"

namespace evlm {
namespace {

constexpr int kMaxImageSize = 4096;  // transformers' cap on the resized longest edge

inline uint8_t muldiv255(unsigned a, unsigned b) {
    unsigned t = a * b + 128;
    return uint8_t(((t >> 8) + t) >> 8);
}

inline uint8_t clip(int v) { return uint8_t(std::clamp(v, 0, 255)); }

// Pillow's resize of an RGBA image: RGBA -> RGBa (premultiplied), resample, RGBa -> RGBA, on every call.
Planes resize_planes(const Planes &in, int w, int h, int threads) {
    const size_t n = size_t(in[0].width) * size_t(in[0].height);
    if (in.size() == 4) {
        Planes pre;
        for (int b = 0; b < 4; ++b) pre.emplace_back(in[0].width, in[0].height);
        const uint8_t *a = in[3].px.get();
        std::copy_n(a, n, pre[3].px.get());
        for (int b = 0; b < 3; ++b)
            for (size_t p = 0; p < n; ++p) pre[size_t(b)].px[p] = muldiv255(in[size_t(b)].px[p], a[p]);
        Planes out = resample(pre, w, h, threads);
        const uint8_t *oa = out[3].px.get();
        for (int b = 0; b < 3; ++b)
            for (size_t p = 0; p < size_t(w) * size_t(h); ++p)
                if (oa[p] != 0 && oa[p] != 255)
                    out[size_t(b)].px[p] = clip(int(255 * unsigned(out[size_t(b)].px[p]) / oa[p]));
        return out;
    }
    return resample(in, w, h, threads);
}

Planes to_planes(const Pixels &in, int threads) {
    const size_t ch = size_t(in.channels);
    Planes out;
    for (size_t b = 0; b < ch; ++b) out.emplace_back(in.width, in.height);
    parallel_for(in.height, threads, [&](int y0, int y1) {
        const size_t p0 = size_t(y0) * size_t(in.width), p1 = size_t(y1) * size_t(in.width);
        const uint8_t *src = in.data.data();
        if (ch == 3) {  // one pass over the pixels, not one per channel (GCC vectorizes the stride-3 loads)
            uint8_t *r = out[0].px.get(), *g = out[1].px.get(), *b = out[2].px.get();
            for (size_t p = p0; p < p1; ++p) {
                r[p] = src[3 * p];
                g[p] = src[3 * p + 1];
                b[p] = src[3 * p + 2];
            }
            return;
        }
        for (size_t b = 0; b < ch; ++b) {
            uint8_t *dst = out[b].px.get();
            for (size_t p = p0; p < p1; ++p) dst[p] = src[p * ch + b];
        }
    });
    return out;
}

Planes resize_or_keep(Planes im, int w, int h, int threads) {
    if (im[0].width == w && im[0].height == h) return im;
    return resize_planes(im, w, h, threads);
}

// Two resizes in a row; RGB ones as one (resample_twice: the intermediate image is never written). Pillow
// converts RGBA to premultiplied and back on each resize, so those stay two.
Planes resize_twice(Planes im, int w1, int h1, int w2, int h2, int threads) {
    const bool first = im[0].width != w1 || im[0].height != h1, second = w1 != w2 || h1 != h2;
    if (im.size() == 4 || !first || !second)
        return resize_or_keep(resize_or_keep(std::move(im), w1, h1, threads), w2, h2, threads);
    return resample_twice(im, w1, h1, w2, h2, threads);
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
void normalize_into(const Planes &im, int x0, int y0, int size, const ImageRules &r, std::vector<float> &out,
                    int threads) {
    float table[3][256];
    for (int b = 0; b < 3; ++b)
        for (int v = 0; v < 256; ++v) table[b][v] = (float(double(v) * r.rescale) - r.mean[b]) / r.std[b];
    const size_t plane = size_t(size) * size_t(size), base = out.size();
    out.resize(base + 3 * plane);
    constexpr unsigned bits = 7;
    auto shiftdiv255 = [](unsigned a) { return ((a >> 8) + a) >> 8; };
    parallel_for(size, threads, [&](int row0, int row1) {
        std::vector<uint8_t> row(3 * size_t(size));  // one row of the tile, alpha flattened
        uint8_t *rgb[3] = {row.data(), row.data() + size, row.data() + 2 * size_t(size)};
        for (int y = row0; y < row1; ++y) {
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
    });
}

}  // namespace

std::pair<int, int> tile_grid(int width, int height, const ImageRules &rules, bool split) {
    if (!split) return {0, 0};
    auto [h0, w0] = resize_longest(height, width, rules.longest_edge);
    auto [h, w] = tile_multiple(h0, w0, rules.tile);
    if (h <= rules.tile && w <= rules.tile) return {0, 0};
    return {(h + rules.tile - 1) / rules.tile, (w + rules.tile - 1) / rules.tile};
}

void process_image(const Pixels &image, const ImageRules &rules, bool split, int threads, Processed &out) {
    const int tile = rules.tile;
    const size_t tile_values = 3 * size_t(tile) * size_t(tile);
    out.values.clear();
    out.tiles = 1;
    out.rows = out.cols = 0;
    auto [h, w] = resize_longest(image.height, image.width, rules.longest_edge);
    if (!split) {
        normalize_into(resize_twice(to_planes(image, threads), w, h, tile, tile, threads), 0, 0, tile, rules,
                       out.values, threads);
        return;
    }
    Planes im = resize_or_keep(to_planes(image, threads), w, h, threads);
    std::tie(h, w) = tile_multiple(h, w, tile);
    im = resize_or_keep(std::move(im), w, h, threads);
    if (h <= tile && w <= tile) {
        normalize_into(im, 0, 0, tile, rules, out.values, threads);
        return;
    }
    out.rows = (h + tile - 1) / tile;
    out.cols = (w + tile - 1) / tile;
    out.tiles = out.rows * out.cols + 1;
    out.values.reserve(size_t(out.tiles) * tile_values);
    for (int r = 0; r < out.rows; ++r)
        for (int c = 0; c < out.cols; ++c) normalize_into(im, c * tile, r * tile, tile, rules, out.values, threads);
    normalize_into(resize_or_keep(std::move(im), tile, tile, threads), 0, 0, tile, rules, out.values, threads);
}

}  // namespace evlm
