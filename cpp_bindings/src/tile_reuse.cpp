#include "tile_reuse.hpp"

#include <cmath>
#include <cstring>
#include <utility>

namespace evlm {

bool TileReuse::same(const float *stored, const float *fresh, size_t n, float grey_level) const {
    if (tolerance_ == 0.f) return std::memcmp(stored, fresh, n * sizeof(float)) == 0;
    double sum = 0;
    for (size_t i = 0; i < n; ++i) sum += std::fabs(double(stored[i]) - double(fresh[i]));
    return sum / double(n) <= double(tolerance_) * double(grey_level);
}

int TileReuse::encode(uint64_t owner, const float *values, int tiles, size_t tile_values, int rows, int cols,
                      float grey_level,
                      const std::function<void(const float *, std::vector<float> &)> &encode_tile,
                      std::vector<float> &out) {
    std::lock_guard<std::mutex> lock(mu_);
    const bool geometry = owner == owner_ && tiles == tiles_ && rows == rows_ && cols == cols_ &&
                          tile_values == tile_values_ && !features_.empty();
    std::vector<float> features, one;
    std::vector<int> changed;
    int reused = 0;
    for (int t = 0; t < tiles; ++t) {
        const float *tile = values + size_t(t) * tile_values;
        if (geometry && same(values_.data() + size_t(t) * tile_values, tile, tile_values, grey_level)) {
            features.insert(features.end(), features_.begin() + std::ptrdiff_t(size_t(t) * per_tile_),
                            features_.begin() + std::ptrdiff_t(size_t(t + 1) * per_tile_));
            ++reused;
            continue;
        }
        one.clear();
        encode_tile(tile, one);
        per_tile_ = one.size();
        features.insert(features.end(), one.begin(), one.end());
        changed.push_back(t);
    }
    // Stored only once every tile is encoded: an encoder error leaves the last frame as it was.
    if (geometry) {
        for (int t : changed)
            std::memcpy(values_.data() + size_t(t) * tile_values, values + size_t(t) * tile_values,
                        tile_values * sizeof(float));
    } else {
        values_.assign(values, values + size_t(tiles) * tile_values);
        owner_ = owner, tiles_ = tiles, rows_ = rows, cols_ = cols, tile_values_ = tile_values;
    }
    out.insert(out.end(), features.begin(), features.end());
    features_ = std::move(features);
    return reused;
}

}  // namespace evlm
