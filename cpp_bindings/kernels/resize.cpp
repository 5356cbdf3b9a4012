// The C library's resampler (cpp_bindings/src/resample.cpp: Pillow's LANCZOS, byte for byte, on vector kernels
// and the fused 512 -> 2048 -> 512 of SmolVLM2's rule) for the Python runtime, which otherwise resizes with Pillow
// itself: one exported function over interleaved 8-bit pixels, called through ctypes (edgevlm/engine/resample.py).
#include <cstdint>
#include <exception>

#include "../src/resample.hpp"

extern "C" {

// pixels: height x width x channels (1 to 4, each resampled on its own, as Pillow does); resized to w1 x h1, then,
// where w2 > 0, to w2 x h2 (Pillow's two calls, the same bytes); out: the final height x width x channels. At most
// `threads` threads (the calling one included). Returns 0, or -1 for bad sizes, -2 if anything failed inside.
__attribute__((visibility("default"))) int evk_resize(const uint8_t *pixels, int width, int height, int channels,
                                                      int w1, int h1, int w2, int h2, int threads, uint8_t *out) {
    if (!pixels || !out || width < 1 || height < 1 || channels < 1 || channels > 4 || w1 < 1 || h1 < 1 ||
        (w2 > 0 && h2 < 1))
        return -1;
    try {
        evlm::Planes in;
        for (int c = 0; c < channels; ++c) {
            in.emplace_back(width, height);
            uint8_t *p = in.back().px.get();
            for (size_t i = 0, n = size_t(width) * size_t(height); i < n; ++i) p[i] = pixels[i * size_t(channels) + size_t(c)];
        }
        const evlm::Planes done =
            w2 > 0 ? evlm::resample_twice(in, w1, h1, w2, h2, threads) : evlm::resample(in, w1, h1, threads);
        const size_t n = size_t(done[0].width) * size_t(done[0].height);
        for (int c = 0; c < channels; ++c) {
            const uint8_t *p = done[size_t(c)].px.get();
            for (size_t i = 0; i < n; ++i) out[i * size_t(channels) + size_t(c)] = p[i];
        }
        return 0;
    } catch (const std::exception &) {
        return -2;
    }
}

}  // extern "C"
