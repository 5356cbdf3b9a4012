// Pillow's LANCZOS resampling of one 8-bit channel, bit-equal to Image.resize: the same taps, the same fixed-point
// weights, the same order of the two passes and the same 8-bit rounding between them. Integer sums, so how the
// additions are grouped (vector lanes, pairs of taps) never changes a result.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace evlm {

// Memory of planes, reused by the thread that freed it: a camera or a video repeats its sizes, and fresh pages
// for SmolVLM2's 2048 x 2048 x 3 intermediate cost milliseconds of page faults on every frame. A few buffers
// (at most 16 and 64 MB) are kept per thread.
struct PlaneMemory {
    size_t capacity = 0;
    void operator()(uint8_t *p) const;
};

// One channel, rows packed. Never zero-filled: every pass writes each byte of its output.
struct Plane {
    int width = 0, height = 0;
    std::unique_ptr<uint8_t[], PlaneMemory> px;
    Plane(int w, int h);
    uint8_t *row(int y) { return px.get() + size_t(y) * size_t(width); }
    const uint8_t *row(int y) const { return px.get() + size_t(y) * size_t(width); }
};

// An image as one plane per channel, all of one size.
using Planes = std::vector<Plane>;

// Each plane resized; the passes split the rows of all planes between `threads` threads (parallel.hpp).
Planes resample(const Planes &in, int width, int height, int threads = 1);

// resample(resample(in, w1, h1), w2, h2), the same bytes. SmolVLM2 resizes a frame twice (to the longest edge,
// then to the tile); where the first resize ends with its pass along y and the second starts with its pass along
// x (an upscale then a downscale, W1's 512 -> 2048 -> 512), the second reads the first's rows 32 at a time as
// they are made, in cache, and the intermediate image (2048 x 2048 per channel) is never written out.
Planes resample_twice(const Planes &in, int w1, int h1, int w2, int h2, int threads = 1);

// "avx512vnni", "avxvnni", "avx2" or "generic": the kernels this CPU runs. EDGEVLM_RESAMPLER=avxvnni|avx2|generic
// caps the choice (the tests check every set the CPU has).
const char *resampler_kernels();

}  // namespace evlm
