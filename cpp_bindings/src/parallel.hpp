// Work split between the calling thread and helper threads kept for the process, for the resampler: ONNX Runtime
// has its own pool, but its workers are busy only inside a run, and an image is resized between runs.
#pragma once
#include <functional>

namespace evlm {

// fn(begin, end) over [0, n) in `threads` contiguous parts (at most), the caller taking the last part. Helpers are
// started on first use and kept; when another call holds them (two models resizing at once), or threads <= 1,
// everything runs on the caller. Blocks until every part is done; an exception in a part is rethrown here.
void parallel_for(int n, int threads, const std::function<void(int, int)> &fn);

}  // namespace evlm
