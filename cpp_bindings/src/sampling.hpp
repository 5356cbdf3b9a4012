// The next token from one row of logits (the C++ library's sampler): greedy, or sampled after temperature, top-k
// and top-p in the Python runtime's order, which is transformers'.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

#include "model.hpp"

namespace evlm {

// Throws EVLM_ERR_INPUT when no token is allowed (a logits hook forbade every one). `scores` is changed when
// sampling.
int32_t pick(std::vector<float> &scores, const GenerateOptions &o, std::mt19937_64 &rng);
// transformers' repetition penalty: each token marked in `seen` has its logit divided by `penalty` (multiplied when
// negative), so a penalty above 1 makes every repeat less likely.
void penalize(std::vector<float> &scores, const std::vector<uint8_t> &seen, float penalty);

}  // namespace evlm
