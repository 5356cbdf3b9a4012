// The loaded model: three ONNX Runtime sessions (vision encoder, token embeddings, decoder with KV cache), the
// tokenizer and the image rules. Immutable after open, so one Model serves several threads at once.
#pragma once
#include <onnxruntime_cxx_api.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "bundle.hpp"
#include "edgevlm/edgevlm.h"
#include "prompt.hpp"
#include "tile_reuse.hpp"
#include "tokenizer.hpp"

namespace evlm {

struct Features {
    std::vector<float> values;  // (tiles * image_seq_len, hidden), prompt order
    int tiles = 0;
    int reused = 0;  // of `tiles`, those a TileReuse served
    double vision_ms = 0, preprocess_ms = 0, runtime_ms = 0;  // runtime_ms: inside ONNX Runtime
};

struct GenerateOptions {
    int max_new_tokens = 128;
    bool do_sample = false;
    float temperature = 1.0f, top_p = 1.0f;
    int top_k = 0;
    float repetition_penalty = 1.0f;  // 1: off
    uint64_t seed = EVLM_SEED_RANDOM;
    std::vector<int32_t> stop_tokens;
    bool ignore_eos = false;
    std::function<bool(int32_t, const std::string &)> on_token;  // true: stop
    std::function<void(float *, size_t, const std::vector<int32_t> &)> logits_hook;
};

struct Generation {
    std::vector<int32_t> tokens;
    std::string text, finish_reason = "length";
    double prefill_ms = 0, decode_ms = 0, first_token_ms = 0, runtime_ms = 0;
    int prompt_tokens = 0;
};

struct PreparedPrompt {
    std::vector<int32_t> ids;
    std::vector<const Pixels *> images;
    std::vector<bool> splits;
};

class SharedKV;

class Model;

// One answer, step by step (the C API's evlm_generator; Model::generate runs one to its end). The model must
// outlive it, and `features` must stay alive until the first next() (the prompt's pass reads them; no copy).
// next() and done() belong to one thread at a time; cancel() may come from any thread.
class Decoding {
public:
    Decoding(const Model &model, const PreparedPrompt &prompt, const Features &features, const GenerateOptions &o);
    ~Decoding();
    Decoding(const Decoding &) = delete;
    Decoding &operator=(const Decoding &) = delete;
    // The next token (the first call runs the prompt); nullopt once the answer has ended. The token that ends it
    // (end of sequence, max_new_tokens, a callback's stop) is returned, and done() is true from then on.
    std::optional<int32_t> next();
    // The next call to next() ends the answer with finish_reason "cancelled" (a step running now completes).
    void cancel() { cancel_.store(true); }
    bool done() const;
    // Tokens, timings, finish_reason; the text once done.
    const Generation &generation() const;
    // The same, with the text of the tokens so far when not done (finish_reason then "").
    Generation snapshot() const;

    struct State;  // defined in model.cpp (a friend of Model's)

private:
    std::unique_ptr<State> st_;
    std::atomic<bool> cancel_{false};
};

class Model {
public:
    Model(const std::string &dir, const std::string &variant, int threads, const std::string &providers, int verify);
    ~Model();

    const Spec &spec() const { return bundle_.spec; }
    const Tokenizer &tokenizer() const { return *tokenizer_; }
    bool split_default() const { return bundle_.spec.image.split; }
    // Threads for the image resizes: the count given at open (all cores for 0), as for ONNX Runtime's runs.
    int image_threads() const { return image_threads_; }
    // edgevlm's own kernels this model runs, comma-separated ("attention:bf16" for the vision encoder,
    // "matmul_q4:vnni" or "matmul_q4:avx2" for the 4-bit decoder), or empty: ONNX Runtime's.
    const std::string &kernels() const { return kernels_; }

    PreparedPrompt prepare(const std::vector<Message> &messages) const;
    // With `reuse`, each image's tiles unchanged since the last image encoded through it keep their features.
    Features encode(const PreparedPrompt &prompt, TileReuse *reuse = nullptr) const;
    Generation generate(const PreparedPrompt &prompt, const Features &features, const GenerateOptions &options) const;

private:
    friend struct Decoding::State;
    std::vector<float> embed(const std::vector<int64_t> &ids, double &runtime_ms) const;
    Ort::Session open_session(const std::string &path, const Ort::SessionOptions &options) const;
    // `kernel`: set to the label of edgevlm's kernel the part runs ("" for none). Safe on several threads at once.
    std::unique_ptr<Ort::Session> open_part(const std::string &part, const Ort::SessionOptions &options, bool cpu_only,
                                            std::string &kernel) const;

    Bundle bundle_;
    std::unique_ptr<Tokenizer> tokenizer_;
    std::unique_ptr<Ort::Session> vision_, embed_, decoder_;
    std::vector<std::string> decoder_inputs_, decoder_outputs_;
    bool position_ids_ = false, logits_to_keep_ = false;
    int image_threads_ = 1;
    std::string kernels_;
    const uint64_t id_ = next_id();  // unique per Model in this process (a TileReuse keys its features on it)
    static uint64_t next_id() {
        static std::atomic<uint64_t> n{0};
        return ++n;
    }
    mutable std::mutex kv_lock_;
    mutable std::unique_ptr<SharedKV> kv_spare_;  // the last generation's decoder cache, for the next one
};

Ort::Env &ort_env();
std::string onnxruntime_version();

}  // namespace evlm
