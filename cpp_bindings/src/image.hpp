// SmolVLM2's image rules, done exactly as the Python runtime does them with Pillow: longest-edge resize, resize
// to tile multiples, tiles + global view, all with Pillow's LANCZOS (fixed-point, two passes), then rescale and
// normalize in float32. Bit-equal resampling is what makes the C++ library's tokens equal the Python runtime's.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

namespace evlm {

struct Pixels {
    int width = 0, height = 0, channels = 3;  // 3: RGB, 4: RGBA (straight alpha)
    std::vector<uint8_t> data;                // rows packed, channels interleaved
};

struct ImageRules {
    int tile = 512;
    int longest_edge = 2048;
    float mean[3] = {0.5f, 0.5f, 0.5f};
    float std[3] = {0.5f, 0.5f, 0.5f};
    double rescale = 1.0 / 255.0;
    bool split = true;  // the model's default
};

struct Processed {
    std::vector<float> values;  // (tiles, 3, tile, tile)
    int tiles = 0, rows = 0, cols = 0;
};

// (rows, cols) of the tile grid ((0, 0): one tile), from the size alone.
std::pair<int, int> tile_grid(int width, int height, const ImageRules &rules, bool split);
// The image's tiles into `out` (its values' memory reused: callers keep one per thread, as a camera repeats its
// sizes); the resizes and the normalization split their rows between `threads` threads.
void process_image(const Pixels &image, const ImageRules &rules, bool split, int threads, Processed &out);

}  // namespace evlm
