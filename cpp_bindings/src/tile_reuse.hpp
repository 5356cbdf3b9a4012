// Tile-level feature reuse for a source whose frames change in parts (Python's edgevlm.TileReuse): the last
// frame's tiles (normalized values) and their features; a frame of the same geometry runs the vision encoder only
// on the tiles whose values differ. Exact, because the encoder runs once per tile (Model::encode): a tile's
// features depend on its own pixels only. Thread safety: one mutex per object, so a source encoded from two
// threads stays correct.
#pragma once
#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

namespace evlm {

class TileReuse {
  public:
    // tolerance: 0 (exact) or the mean absolute change, in grey levels, under which a tile counts as unchanged;
    // grey_level converts it to normalized values (rescale factor / std).
    explicit TileReuse(float tolerance = 0.f) : tolerance_(tolerance) {}

    // Features of one image's `tiles` tiles (`values`: tiles x tile_values floats) into `out` (appended), calling
    // `encode_tile(tile's values, out)` for the tiles that changed. Returns how many tiles were reused.
    // `owner` (the model's id) is part of the geometry: another model's image starts over.
    int encode(uint64_t owner, const float *values, int tiles, size_t tile_values, int rows, int cols,
               float grey_level,
               const std::function<void(const float *, std::vector<float> &)> &encode_tile, std::vector<float> &out);

  private:
    bool same(const float *stored, const float *fresh, size_t n, float grey_level) const;

    std::mutex mu_;
    float tolerance_;
    std::vector<float> values_, features_;  // the stored frame: tile values, and features (tiles x per_tile)
    uint64_t owner_ = 0;
    int tiles_ = 0, rows_ = -1, cols_ = -1;
    size_t tile_values_ = 0, per_tile_ = 0;
};

}  // namespace evlm
