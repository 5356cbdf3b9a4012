// The one AMX tile configuration every kernel of this library uses: 8 tiles of 16 rows x 64 bytes. ONNX Runtime's
// MLAS loads this same configuration once per thread and relies on it staying loaded for its own AMX int8 GEMMs
// on the same threads (ONNX Runtime's pool runs our operators too), so a kernel loads exactly this one before its
// tiles and never releases them or loads another. Include only from files compiled with -mamx-tile.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace evk {

struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
    uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

inline void load_tiles() {
    static const TileConfig config;
    _tile_loadconfig(&config);
}

}  // namespace evk
