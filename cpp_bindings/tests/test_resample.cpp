// The resampler's own equalities, on sizes the parity fixtures do not reach (downscales first, both pass orders,
// widths that are not multiples of the vector width): resample_twice equals two resamples, and any thread count
// equals one thread, byte for byte. Equality with Pillow is test_parity's (each kernel set, through the C API).
// The last line is a digest of every output: equal digests mean equal bytes across kernel sets and machines (the
// aarch64 stage compares NEON's with x86's).
// Built from the library's sources: these functions are internal.
#include <cstdint>
#include <cstdio>
#include <array>
#include <random>
#include <vector>

#include "resample.hpp"

using evlm::Plane;
using evlm::Planes;

static Planes random_planes(int w, int h, int channels, std::mt19937 &rng) {
    Planes out;
    std::uniform_int_distribution<int> byte(0, 255);
    for (int c = 0; c < channels; ++c) {
        out.emplace_back(w, h);
        for (size_t i = 0; i < size_t(w) * size_t(h); ++i) out.back().px[i] = uint8_t(byte(rng));
    }
    return out;
}

// FNV-1a over the planes' sizes and bytes.
static void digest(const Planes &planes, uint64_t &h) {
    auto mix = [&h](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
    for (const Plane &p : planes) {
        mix(uint64_t(p.width));
        mix(uint64_t(p.height));
        for (size_t i = 0; i < size_t(p.width) * size_t(p.height); ++i) mix(p.px[i]);
    }
}

static size_t differing(const Planes &a, const Planes &b) {
    if (a.size() != b.size()) return ~size_t(0);
    size_t bad = 0;
    for (size_t c = 0; c < a.size(); ++c) {
        if (a[c].width != b[c].width || a[c].height != b[c].height) return ~size_t(0);
        for (size_t i = 0; i < size_t(a[c].width) * size_t(a[c].height); ++i) bad += a[c].px[i] != b[c].px[i];
    }
    return bad;
}

int main() {
    std::printf("kernels: %s\n", evlm::resampler_kernels());
    std::mt19937 rng(7);
    std::uniform_int_distribution<int> size(1, 700);
    int failures = 0, cases = 0;
    uint64_t h = 14695981039346656037ull;
    // (in, first, second): W1's rule, downscale then upscale, vertical-first orders, odd and tiny sizes, random.
    std::vector<std::array<int, 6>> sizes = {{512, 512, 2048, 2048, 512, 512}, {640, 480, 2048, 1536, 512, 512},
                                             {3000, 2000, 2048, 1366, 512, 512}, {900, 2600, 708, 2048, 512, 512},
                                             {300, 2000, 300, 600, 77, 50}, {33, 1, 70, 3, 5, 9},
                                             {1000, 40, 2048, 82, 2048, 20}};
    for (int i = 0; i < 24; ++i)
        sizes.push_back({size(rng), size(rng), size(rng), size(rng), size(rng), size(rng)});
    for (const auto &s : sizes) {
        const Planes in = random_planes(s[0], s[1], 3, rng);
        const Planes two = evlm::resample(evlm::resample(in, s[2], s[3], 1), s[4], s[5], 1);
        digest(two, h);
        for (int threads : {1, 2, 3}) {
            ++cases;
            const size_t fused = differing(evlm::resample_twice(in, s[2], s[3], s[4], s[5], threads), two);
            const size_t apart = differing(evlm::resample(evlm::resample(in, s[2], s[3], threads), s[4], s[5], threads), two);
            if (fused || apart) {
                ++failures;
                std::fprintf(stderr, "%dx%d -> %dx%d -> %dx%d, %d threads: %zu bytes differ fused, %zu apart\n", s[0],
                             s[1], s[2], s[3], s[4], s[5], threads, fused, apart);
            }
        }
    }
    std::printf("%d cases, %d failures\n", cases, failures);
    std::printf("digest: %016llx\n", static_cast<unsigned long long>(h));
    return failures ? 1 : 0;
}
