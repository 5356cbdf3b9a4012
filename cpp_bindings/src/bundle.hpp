// A model folder as `edgevlm export` writes it: configs, onnx/ parts, edgevlm.json (variants, sha256 sums).
#pragma once
#include <map>
#include <set>
#include <string>
#include <vector>

#include "image.hpp"

namespace evlm {

struct Spec {
    int image_token_id = 49190;
    int image_seq_len = 64;
    int hidden = 0, num_layers = 0, kv_heads = 0, head_dim = 0, vocab_size = 0, max_positions = 8192;
    std::vector<int32_t> eos_ids;
    ImageRules image;
    std::string bos_token;      // from the tokenizer's special tokens: decides whether encode adds its template
    std::string chat_template;  // as found (checked against SmolVLM2's at open)
};

struct Bundle {
    std::string root;
    Spec spec;
    std::map<std::string, std::string> parts;  // part name -> absolute path of the chosen variant's file
    std::string variant;
    // Part -> its kernel graph (edgevlm.json "kernel_graphs"; absolute path) for the chosen variant's files that have
    // one: the same graph on libedgevlm_kernels (the vision encoder's attention, the 4-bit decoder's products),
    // opened instead where that library runs its kernel for the part on this CPU.
    std::map<std::string, std::string> kernel_graphs;
    // Parts whose chosen file is the fp32 variant's: their kernel graph puts the products on MatMulF32.
    std::set<std::string> fp32_parts;
};

// Reads the configs, resolves `variant` (empty: the default) and, unless `verify` is EVLM_VERIFY_OFF, checks the
// size and sha256 of the chosen files and the configs against edgevlm.json (EVLM_VERIFY_ON: a file stamped as
// matching in the user's cache, and unchanged on disk since, is not hashed again). Throws evlm::Error
// (EVLM_ERR_MODEL) with the reason.
Bundle open_bundle(const std::string &root, const std::string &variant, int verify);

std::string sha256_file(const std::string &path);

}  // namespace evlm
