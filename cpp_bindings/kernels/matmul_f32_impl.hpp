// The body of matmul_f32.hpp's kernel, included once per instruction set with EVK_F32_NAME (the function's name),
// EVK_F32_WIDTH (floats per vector), EVK_F32_MR (rows of a prompt's register tile) and EVK_F32_NV (vectors of
// columns in it) defined.
#include <algorithm>
#include <cstring>
#include <vector>

#include "matmul_f32.hpp"

namespace evk {
namespace {

constexpr size_t W = EVK_F32_WIDTH;
typedef float vf __attribute__((vector_size(W * sizeof(float))));
constexpr size_t MR = EVK_F32_MR, NV = EVK_F32_NV, NR = NV * W;  // a register tile: MR rows x NR columns
constexpr size_t KC = 256;          // rows of W per packed block (a strip of it, KC x NR, stays in L1)
// A packed strip's stride: a cache line beyond KC x NR, so that one row's pieces of the 8 strips, written one
// after the other, fall in different L1 sets (32 KB apart they all fell in one).
constexpr size_t STRIP = KC * NR + 16;
constexpr size_t NC = 8 * NR;       // columns per task of a prompt
constexpr size_t MC = 16 * MR;      // rows of x per task of a prompt
constexpr size_t GROUP = 8;          // rows of W a short input takes together (4, 16: 2-4 % slower decoding)
constexpr size_t GEMV_MAX_ROWS = 4; // up to this many rows stream W unpacked (decode, a short follow-up)
constexpr size_t STREAM_COLS = 4096;  // columns per task of those: 16 KB of each row of W

inline vf load(const float *p) {
    vf v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline void store(float *p, vf v) { std::memcpy(p, &v, sizeof v); }

// Rows [k0, k0 + kb) of W by columns [c0, c1), for up to GEMV_MAX_ROWS rows of x: W's rows streamed in order,
// GROUP at a time, into `part` (rows x (c1 - c0)), which starts at zero: one block's sum, as `tile` makes it.
void stream_block(const F32Shape &s, const float *x, const float *w, size_t k0, size_t kb, size_t c0, size_t c1,
                  float *part) {
    const size_t k = s.k, n = s.n, rows = s.rows, cols = c1 - c0, whole = cols / W * W, end = k0 + kb;
    std::fill(part, part + rows * cols, 0.0f);
    size_t kk = k0;
    for (; kk + GROUP <= end; kk += GROUP) {
        const float *wg = w + kk * n + c0;
        for (size_t c = 0; c < whole; c += W) {
            vf b[GROUP];
            for (size_t j = 0; j < GROUP; ++j) b[j] = load(wg + j * n + c);
            for (size_t r = 0; r < rows; ++r) {
                const float *xr = x + r * k + kk;
                vf acc = load(part + r * cols + c);
                for (size_t j = 0; j < GROUP; ++j) acc += xr[j] * b[j];
                store(part + r * cols + c, acc);
            }
        }
        for (size_t c = whole; c < cols; ++c) {
            float b[GROUP];
            for (size_t j = 0; j < GROUP; ++j) std::memcpy(&b[j], wg + j * n + c, sizeof(float));
            for (size_t r = 0; r < rows; ++r) {
                const float *xr = x + r * k + kk;
                float acc = part[r * cols + c];
                for (size_t j = 0; j < GROUP; ++j) acc += xr[j] * b[j];
                part[r * cols + c] = acc;
            }
        }
    }
    for (; kk < end; ++kk) {
        const float *wk = w + kk * n + c0;
        for (size_t c = 0; c < whole; c += W) {
            const vf b = load(wk + c);
            for (size_t r = 0; r < rows; ++r)
                store(part + r * cols + c, load(part + r * cols + c) + x[r * k + kk] * b);
        }
        for (size_t c = whole; c < cols; ++c) {
            float b;
            std::memcpy(&b, wk + c, sizeof b);
            for (size_t r = 0; r < rows; ++r) part[r * cols + c] += x[r * k + kk] * b;
        }
    }
}

// Decode and other short inputs: tasks of one block of KC rows of W by up to STREAM_COLS columns (whole rows of
// the matrices of SmolLM2's hidden size: a long contiguous run per row, few pages), each summing into its own
// partial, then the blocks' partials added in order: the prompt path's sums in the prompt path's order, on as
// many threads as there are blocks.
void stream(const F32Shape &s, const float *x, const float *w, float *out, const ParallelFor &parallel_for) {
    const size_t blocks = (s.k + KC - 1) / KC;
    const size_t chunks = (s.n + STREAM_COLS - 1) / STREAM_COLS;
    const size_t per = (s.n + chunks - 1) / chunks;  // columns per chunk, as even as they come
    thread_local std::vector<float> buffer;
    if (buffer.size() < blocks * s.rows * s.n) buffer.resize(blocks * s.rows * s.n);
    float *partial = buffer.data();  // block b's sums for chunk [c0, c1): rows x (c1 - c0) at b * rows * n + rows * c0
    auto task = [&](size_t t) {
        const size_t b = t / chunks, c0 = t % chunks * per, c1 = std::min(s.n, c0 + per);
        stream_block(s, x, w, b * KC, std::min(KC, s.k - b * KC), c0, c1, partial + (b * s.n + c0) * s.rows);
    };
    if (blocks * chunks == 1)
        task(0);
    else
        parallel_for(blocks * chunks, task);
    for (size_t ch = 0; ch < chunks; ++ch) {
        const size_t c0 = ch * per, cols = std::min(s.n, c0 + per) - c0;
        for (size_t r = 0; r < s.rows; ++r) {
            float *y = out + r * s.n + c0;
            std::memcpy(y, partial + c0 * s.rows + r * cols, cols * sizeof(float));
            for (size_t b = 1; b < blocks; ++b) {
                const float *p = partial + (b * s.n + c0) * s.rows + r * cols;
                for (size_t c = 0; c < cols; ++c) y[c] += p[c];
            }
        }
    }
}

// W[k0 : k0 + kb, c0 : c0 + nc] as strips of NR columns, each kb x NR in row order; columns beyond n as zeros.
// Row by row, each row's run across the strips in one go: W is cold (a decoder's weights are read once per
// prompt), and a strip at a time went down its rows one cache line per page. (Software prefetches here and of the
// next block during the tiles measured no faster.)
void pack(const float *w, size_t n, size_t k0, size_t kb, size_t c0, size_t nc, float *panel) {
    for (size_t kk = 0; kk < kb; ++kk) {
        const float *row = w + (k0 + kk) * n;
        for (size_t s = 0; s * NR < nc; ++s) {
            const size_t cs = c0 + s * NR, width = std::min(NR, n - cs);
            float *dst = panel + s * STRIP + kk * NR;
            if (width == NR) {  // vector moves: a memcpy of this variable size became `rep movsq`
                for (size_t v = 0; v < NV; ++v) store(dst + v * W, load(row + cs + v * W));
            } else {
                std::memcpy(dst, row + cs, width * sizeof(float));
                std::fill(dst + width, dst + NR, 0.0f);
            }
        }
    }
}

// One register tile: rows [i0, i0 + mr) by a strip's NR columns at c, over W's rows [k0, k0 + kb). Each block of
// KC rows sums from zero and then adds to what the blocks before it left in out: shorter chains than one over all
// of K (a tenth of the rounding error at K = 8,192: as close to the exact product as ONNX Runtime's MLAS).
void tile(const F32Shape &s, const float *x, const float *strip, size_t i0, size_t mr, size_t c, size_t k0,
          size_t kb, float *out) {
    const size_t k = s.k, n = s.n, nr = std::min(NR, n - c);
    const float *a[MR];
    for (size_t r = 0; r < MR; ++r) a[r] = x + (i0 + std::min(r, mr - 1)) * k + k0;  // beyond mr: computed, dropped
    vf acc[MR][NV];
    for (size_t r = 0; r < MR; ++r)
        for (size_t v = 0; v < NV; ++v) acc[r][v] = vf{};
    for (size_t kk = 0; kk < kb; ++kk) {
        vf b[NV];
        for (size_t v = 0; v < NV; ++v) b[v] = load(strip + kk * NR + v * W);
        for (size_t r = 0; r < MR; ++r) {
            const float av = a[r][kk];
            for (size_t v = 0; v < NV; ++v) acc[r][v] += av * b[v];
        }
    }
    for (size_t r = 0; r < mr; ++r) {
        float held[NR];
        for (size_t v = 0; v < NV; ++v) store(held + v * W, acc[r][v]);
        float *y = out + (i0 + r) * n + c;
        if (k0 == 0)
            std::memcpy(y, held, nr * sizeof(float));
        else
            for (size_t j = 0; j < nr; ++j) y[j] += held[j];
    }
}

}  // namespace

void EVK_F32_NAME(const F32Shape &s, const float *x, const float *w, float *out, const ParallelFor &parallel_for) {
    if (s.rows == 0 || s.n == 0) return;
    if (s.k == 0) {
        std::fill(out, out + s.rows * s.n, 0.0f);
        return;
    }
    if (s.rows <= GEMV_MAX_ROWS) return stream(s, x, w, out, parallel_for);
    const size_t row_blocks = (s.rows + MC - 1) / MC, col_blocks = (s.n + NC - 1) / NC;
    parallel_for(row_blocks * col_blocks, [&](size_t t) {
        thread_local std::vector<float> panel;
        if (panel.size() < STRIP * (NC / NR)) panel.resize(STRIP * (NC / NR));
        const size_t i0 = t / col_blocks * MC, c0 = t % col_blocks * NC;
        const size_t mc = std::min(MC, s.rows - i0), nc = std::min(NC, s.n - c0), strips = (nc + NR - 1) / NR;
        for (size_t k0 = 0; k0 < s.k; k0 += KC) {
            const size_t kb = std::min(KC, s.k - k0);
            pack(w, s.n, k0, kb, c0, nc, panel.data());
            for (size_t i = 0; i < mc; i += MR)
                for (size_t st = 0; st < strips; ++st)
                    tile(s, x, panel.data() + st * STRIP, i0 + i, std::min(MR, mc - i), c0 + st * NR, k0, kb, out);
        }
    });
}

}  // namespace evk
