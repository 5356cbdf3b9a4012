#include "model.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <future>
#include <mutex>
#include <numeric>
#include <thread>

#include "error.hpp"
#include "sampling.hpp"

// libedgevlm_kernels (cpp_bindings/kernels), linked into this library.
extern "C" int evk_attention_level(int head_dim);
extern "C" int evk_matmul_q4_level(int k);
extern "C" int evk_matmul_f32_level(void);
extern "C" OrtStatus *ORT_API_CALL RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *api);

namespace evlm {
namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

Ort::MemoryInfo &cpu_memory() {
    static Ort::MemoryInfo info = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    return info;
}

template <typename T>
Ort::Value tensor(std::vector<T> &data, const std::vector<int64_t> &shape) {
    static T empty{};  // a zero-size tensor still needs a valid pointer
    return Ort::Value::CreateTensor<T>(cpu_memory(), data.empty() ? &empty : data.data(), data.size(), shape.data(),
                                       shape.size());
}

[[noreturn]] void runtime_failure(const char *what, const Ort::Exception &e) {
    fail(EVLM_ERR_RUNTIME, std::string("ONNX Runtime failed while ") + what + ": " + e.what());
}

// Python's str.isspace() characters at the start of s (n = their byte length), for the text's strip.
size_t space_at(const std::string &s, size_t i) {
    static const char *spaces[] = {"\x85", "\xC2\x85", "\xC2\xA0", "\xE1\x9A\x80", "\xE2\x80\xA8", "\xE2\x80\xA9",
                                   "\xE2\x80\xAF", "\xE2\x81\x9F", "\xE3\x80\x80"};
    unsigned char c = static_cast<unsigned char>(s[i]);
    if ((c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20)) return 1;
    if (s.compare(i, 2, "\xE2\x80") == 0 && i + 2 < s.size() && static_cast<unsigned char>(s[i + 2]) <= 0x8A) return 3;
    for (const char *sp : spaces) {
        size_t n = std::strlen(sp);
        if (n > 1 && s.compare(i, n, sp) == 0) return n;
    }
    return 0;
}

// The text as the Python runtime returns it: str.strip() of the decoded answer.
std::string strip_text(const std::string &s) {
    size_t a = 0;
    while (a < s.size()) {
        size_t n = space_at(s, a);
        if (!n) break;
        a += n;
    }
    size_t b = s.size();
    while (b > a) {  // step back one UTF-8 character at a time
        size_t start = b - 1;
        while (start > a && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
        if (space_at(s, start) != b - start) break;
        b = start;
    }
    return s.substr(a, b - a);
}

}  // namespace

// The KV cache the fused decoder updates in place (the Python runtime's kv_cache.py): one buffer per layer and kind,
// bound through IO binding as both past_key_values.* and present.*, so a step writes only the new positions
// instead of copying the whole past into a new tensor. Grows by doubling, keeping what is cached. A model keeps
// the last one for its next generation (Model::kv_spare_).
class SharedKV {
public:
    SharedKV(Ort::Session &session, int layers, int kv_heads, int head_dim, size_t capacity)
        : binding_(session), layers_(layers), kv_heads_(kv_heads), head_dim_(head_dim) {
        binding_.BindOutput("logits", cpu_memory());  // bound first: the binding's first output
        resize(capacity, 0);
    }

    size_t capacity() const { return capacity_; }
    size_t bytes() const { return size_t(2 * layers_ * kv_heads_) * capacity_ * size_t(head_dim_) * sizeof(float); }
    Ort::IoBinding &binding() { return binding_; }

    // Ready for a new generation of `need` positions. What the last one cached stays: the decoder reads only the
    // positions its mask counts, and writes each before reading it. Its logits were bound to that generation's
    // buffer; they go back to memory ONNX Runtime allocates until the new generation binds its own.
    void reuse(size_t need) {
        binding_.BindOutput("logits", cpu_memory());
        if (capacity_ < need) resize(need, 0);
    }

    void resize(size_t capacity, size_t keep) {
        const size_t head = capacity * size_t(head_dim_), old_head = capacity_ * size_t(head_dim_);
        std::vector<std::vector<float>> host(size_t(2 * layers_), std::vector<float>(size_t(kv_heads_) * head));
        for (size_t i = 0; i < host.size() && keep; ++i)
            for (size_t h = 0; h < size_t(kv_heads_); ++h)
                std::copy_n(&host_[i][h * old_head], keep * size_t(head_dim_), &host[i][h * head]);
        host_ = std::move(host);
        values_.clear();
        const std::vector<int64_t> shape{1, kv_heads_, int64_t(capacity), head_dim_};
        for (size_t i = 0; i < host_.size(); ++i) values_.push_back(tensor(host_[i], shape));
        for (int l = 0; l < layers_; ++l)
            for (int v = 0; v < 2; ++v) {
                const std::string kind = v ? ".value" : ".key";
                binding_.BindInput(("past_key_values." + std::to_string(l) + kind).c_str(), values_[size_t(2 * l + v)]);
                binding_.BindOutput(("present." + std::to_string(l) + kind).c_str(), values_[size_t(2 * l + v)]);
            }
        capacity_ = capacity;
    }

private:
    Ort::IoBinding binding_;
    int layers_, kv_heads_, head_dim_;
    size_t capacity_ = 0;
    std::vector<std::vector<float>> host_;
    std::vector<Ort::Value> values_;
};

Ort::Env &ort_env() {
    static Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "edgevlm");
    return env;
}

std::string onnxruntime_version() { return Ort::GetVersionString(); }

Ort::Session Model::open_session(const std::string &path, const Ort::SessionOptions &options) const {
    try {
        return Ort::Session(ort_env(), path.c_str(), options);
    } catch (const Ort::Exception &e) {
        fail(EVLM_ERR_MODEL, path + " could not be loaded by ONNX Runtime (" + e.what() + "); re-export the bundle.");
    }
}

Model::~Model() = default;

// A part's kernel graph (on libedgevlm_kernels, linked into this library) where the bundle has one, the session
// runs on the CPU and that library's kernel for the part beats ONNX Runtime's on this CPU (an fp32 part's
// MatMulF32: where its AVX-512 build runs, as it opens much faster; the vision attention: AMX or AVX-512 BF16; the
// 4-bit decoder: AMX or AVX-512 BF16 for its prompts, AVX2 where there is no AVX-512 (evk_matmul_f32_level 2 says
// there is), or AVX-512 VNNI alone only with EDGEVLM_KERNELS=all, its prefill being slower than ONNX Runtime's
// there); else the standard file. The same rule as the Python runtime's
// engine/kernels.py.
std::unique_ptr<Ort::Session> Model::open_part(const std::string &part, const Ort::SessionOptions &options,
                                               bool cpu_only, std::string &kernel) const {
    const char *off = std::getenv("EDGEVLM_KERNELS");
    bool disabled = off && (std::string(off) == "off" || std::string(off) == "0" || std::string(off) == "none");
    auto graph = bundle_.kernel_graphs.find(part);
    const bool vision = part == "vision_encoder";
    const bool all = off && std::string(off) == "all";
    // 3: AMX, 4: AVX-512 BF16 prompts, 2: AVX-512 VNNI alone, 5: AVX2
    const int q4 = part == "decoder_model_merged" ? evk_matmul_q4_level(64) : 0;
    // An fp32 part's MatMulF32: by default where its AVX-512 build runs (level 2), its portable one with "all".
    const bool fp32 = bundle_.fp32_parts.count(part) > 0;
    const bool faster = fp32 ? evk_matmul_f32_level() == 2 || all
                             : vision ? evk_attention_level(64) >= 2
                                    : q4 == 3 || q4 == 4 || (q4 == 5 && evk_matmul_f32_level() != 2) ||
                                          (all && (q4 == 2 || q4 == 5));
    if (graph == bundle_.kernel_graphs.end() || !cpu_only || disabled || !faster)
        return std::make_unique<Ort::Session>(open_session(bundle_.parts.at(part), options));
    Ort::SessionOptions with_kernels = options.Clone();
    Ort::ThrowOnError(RegisterCustomOps(with_kernels, OrtGetApiBase()));
    kernel = fp32 ? "matmul_f32" : vision ? "attention:bf16" : q4 == 5 ? "matmul_q4:avx2" : "matmul_q4:vnni";
    // One at a time in the process: ONNX Runtime adds a custom operator domain to its process-wide schema registry
    // with a check-then-add that two sessions opening at once can both pass ("the domain is already exist").
    static std::mutex custom_ops_open;
    std::lock_guard<std::mutex> one_at_a_time(custom_ops_open);
    return std::make_unique<Ort::Session>(open_session(graph->second, with_kernels));
}

// "auto" as the Python runtime's AUTO_ORDER, for the providers this library knows: CUDA when this ONNX Runtime
// was built with it, the CPU always.
static std::string auto_providers() {
    for (const std::string &name : Ort::GetAvailableProviders())
        if (name == "CUDAExecutionProvider") return "cuda,cpu";
    return "cpu";
}

Model::Model(const std::string &dir, const std::string &variant, int threads, const std::string &providers,
             int verify)
    : bundle_(open_bundle(dir, variant, verify)),
      image_threads_(threads > 0 ? threads : int(std::max(1u, std::thread::hardware_concurrency()))) {
    check_template(bundle_.spec.chat_template);
    tokenizer_ = std::make_unique<Tokenizer>(bundle_.root + "/tokenizer.json");
    Ort::SessionOptions options;
    bool cpu_only = true;
    try {
        if (threads > 0) options.SetIntraOpNumThreads(threads);
        options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
        std::string list = providers.empty() || providers == "auto" ? auto_providers() : providers;
        cpu_only = list.find("cuda") == std::string::npos && list.find("CUDA") == std::string::npos;
        for (size_t start = 0; start <= list.size();) {
            size_t end = list.find(',', start);
            std::string name = list.substr(start, end == std::string::npos ? std::string::npos : end - start);
            start = end == std::string::npos ? list.size() + 1 : end + 1;
            if (name == "cpu" || name == "CPUExecutionProvider") continue;
            if (name == "cuda" || name == "CUDAExecutionProvider") {
                OrtCUDAProviderOptions cuda{};
                options.AppendExecutionProvider_CUDA(cuda);
            } else {
                fail(EVLM_ERR_ARGUMENT, "unknown provider '" + name + "'; use auto, cpu or cuda.");
            }
        }
    } catch (const Ort::Exception &e) {
        fail(EVLM_ERR_MODEL, std::string("the requested execution provider is not available in this ONNX Runtime (") +
                                 e.what() + "); use providers \"cpu\".");
    }
    // The parts that run once per image or per token do not spin after a run: each session has its own workers,
    // and spinning ones take the cores from the decoder that runs next (as in the Python runtime's providers.py).
    Ort::SessionOptions quiet = options.Clone();
    quiet.AddConfigEntry("session.intra_op.allow_spinning", "0");
    // The three parts open at once, as in the Python runtime: ONNX Runtime optimizes and packs each on the thread
    // that opens it, so a model opens in about its decoder's time (docs/benchmarks.md, "load()").
    std::string vision_kernel, decoder_kernel;
    auto vision = std::async(std::launch::async,
                             [&] { return open_part("vision_encoder", quiet, cpu_only, vision_kernel); });
    auto embed = std::async(std::launch::async, [&] {
        return std::make_unique<Ort::Session>(open_session(bundle_.parts.at("embed_tokens"), quiet));
    });
    // The decoder spins between its runs (without it, 185 -> 120 tokens/s), but stops the moment a run returns
    // with nothing to follow: the image of the next caption is resized on these cores (2 threads: W1's resize
    // 6.3-7.1 -> 4.0-4.2 ms; decode speed unchanged within noise, 3 alternating pairs).
    options.AddConfigEntry("session.force_spinning_stop", "1");
    decoder_ = open_part("decoder_model_merged", options, cpu_only, decoder_kernel);
    vision_ = vision.get();
    embed_ = embed.get();
    for (const std::string &k : {vision_kernel, decoder_kernel})
        if (!k.empty()) kernels_ += (kernels_.empty() ? "" : ",") + k;
    Ort::AllocatorWithDefaultOptions alloc;
    for (size_t i = 0; i < decoder_->GetInputCount(); ++i) {
        decoder_inputs_.push_back(decoder_->GetInputNameAllocated(i, alloc).get());
        auto type = decoder_->GetInputTypeInfo(i).GetTensorTypeAndShapeInfo().GetElementType();
        const std::string &n = decoder_inputs_.back();
        if ((n == "inputs_embeds" || n.rfind("past_key_values", 0) == 0) && type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
            fail(EVLM_ERR_MODEL, "the decoder of variant '" + bundle_.variant + "' takes " + n + " in a type other "
                                 "than float32; the C++ library runs variants with float32 inputs (fp32, int8, q4, mixed).");
    }
    for (size_t i = 0; i < decoder_->GetOutputCount(); ++i)
        decoder_outputs_.push_back(decoder_->GetOutputNameAllocated(i, alloc).get());
    position_ids_ = std::count(decoder_inputs_.begin(), decoder_inputs_.end(), "position_ids") > 0;
    logits_to_keep_ = std::count(decoder_inputs_.begin(), decoder_inputs_.end(), "num_logits_to_keep") > 0;
    if (std::count(decoder_inputs_.begin(), decoder_inputs_.end(), "past_key_values.0.key") == 0 ||
        decoder_outputs_.empty() || decoder_outputs_[0] != "logits")
        fail(EVLM_ERR_MODEL, bundle_.parts.at("decoder_model_merged") + " is not a decoder with a KV cache "
                             "(inputs past_key_values.*, output logits); the bundle's files are mixed up.");
}

PreparedPrompt Model::prepare(const std::vector<Message> &messages) const {
    if (messages.empty()) fail(EVLM_ERR_INPUT, "the prompt has no message; call evlm_prompt_begin and add text.");
    PreparedPrompt p;
    std::vector<ImageSlot> slots;
    for (const Message &m : messages) {
        if (m.items.empty()) fail(EVLM_ERR_INPUT, "a message has no text or image; add some before the next message.");
        for (const Item &item : m.items) {
            if (item.kind != Item::Image) continue;
            bool split = item.split < 0 ? split_default() : item.split != 0;
            auto [rows, cols] = tile_grid(item.image->width, item.image->height, spec().image, split);
            slots.push_back({rows, cols});
            p.images.push_back(item.image.get());
            p.splits.push_back(split);
        }
    }
    std::string text = render_prompt(messages, slots, spec().image_seq_len);
    bool add_special = spec().bos_token.empty() || text.rfind(spec().bos_token, 0) != 0;
    p.ids = tokenizer_->encode(text, add_special);
    return p;
}

Features Model::encode(const PreparedPrompt &prompt, TileReuse *reuse) const {
    Features f;
    auto t0 = Clock::now();
    const int tile = spec().image.tile;
    for (size_t i = 0; i < prompt.images.size(); ++i) {
        auto t_pre = Clock::now();
        // The tiles' memory is kept for this thread's next image (fresh pages for W1's 3 MB cost ~0.3 ms of page
        // faults), unless it is a large split image's.
        thread_local Processed px;
        process_image(*prompt.images[i], spec().image, prompt.splits[i], image_threads_, px);
        struct Release {
            Processed &p;
            ~Release() {
                if (p.values.capacity() > (size_t(16) << 20) / sizeof(float)) std::vector<float>().swap(p.values);
            }
        } release{px};
        f.preprocess_ms += ms_since(t_pre);
        // One run per tile, as the Python runtime: the int8 encoders quantize activations with one scale per run,
        // so a tile's features then depend on its own pixels only (what lets TileReuse skip unchanged tiles).
        const size_t tile_values = size_t(3) * size_t(tile) * size_t(tile);
        // Shapes and the all-true mask are the same for every tile: made once per image, not per run.
        const std::vector<int64_t> shape{1, 1, 3, tile, tile}, mshape{1, 1, tile, tile};
        std::unique_ptr<bool[]> mask(new bool[size_t(tile) * size_t(tile)]);
        std::fill_n(mask.get(), size_t(tile) * size_t(tile), true);
        auto encode_tile = [&](const float *values, std::vector<float> &out) {
            try {
                Ort::Value inputs[] = {
                    Ort::Value::CreateTensor<float>(cpu_memory(), const_cast<float *>(values), tile_values,
                                                    shape.data(), shape.size()),
                    Ort::Value::CreateTensor<bool>(cpu_memory(), mask.get(), size_t(tile) * size_t(tile),
                                                   mshape.data(), mshape.size())};
                const char *in_names[] = {"pixel_values", "pixel_attention_mask"};
                const char *out_names[] = {"image_features"};
                auto t_run = Clock::now();
                auto result = vision_->Run(Ort::RunOptions{nullptr}, in_names, inputs, 2, out_names, 1);
                f.runtime_ms += ms_since(t_run);
                auto info = result[0].GetTensorTypeAndShapeInfo();
                const float *data = result[0].GetTensorData<float>();
                out.insert(out.end(), data, data + info.GetElementCount());
            } catch (const Ort::Exception &e) {
                runtime_failure("encoding an image", e);
            }
        };
        if (reuse) {
            const float grey_level = float(spec().image.rescale) /
                                     std::min({spec().image.std[0], spec().image.std[1], spec().image.std[2]});
            f.reused += reuse->encode(id_, px.values.data(), px.tiles, tile_values, px.rows, px.cols, grey_level,
                                      encode_tile, f.values);
        } else {
            for (int t = 0; t < px.tiles; ++t) encode_tile(px.values.data() + size_t(t) * tile_values, f.values);
        }
        f.tiles += px.tiles;
    }
    f.vision_ms = ms_since(t0);
    return f;
}

std::vector<float> Model::embed(const std::vector<int64_t> &ids, double &runtime_ms) const {
    std::vector<int64_t> data(ids), shape{1, int64_t(ids.size())};
    try {
        Ort::Value in = tensor(data, shape);
        const char *in_names[] = {"input_ids"};
        const char *out_names[] = {"inputs_embeds"};
        auto t = Clock::now();
        auto out = embed_->Run(Ort::RunOptions{nullptr}, in_names, &in, 1, out_names, 1);
        runtime_ms += ms_since(t);
        const float *p = out[0].GetTensorData<float>();
        return std::vector<float>(p, p + out[0].GetTensorTypeAndShapeInfo().GetElementCount());
    } catch (const Ort::Exception &e) {
        runtime_failure("embedding tokens", e);
    }
}

namespace {

// The embedding of each new token, written by the embedding session straight into a buffer the decoder reads:
// the binding is made once per generation, so a decode step allocates and copies nothing (the per-step Run with
// fresh tensors cost ~35 us outside ONNX Runtime, a millisecond per caption).
class NextEmbedding {
public:
    NextEmbedding(Ort::Session &session, int hidden)
        : session_(session), binding_(session), id_(1, 0), row_(size_t(hidden)),
          id_value_(tensor(id_, {1, 1})), row_value_(tensor(row_, {1, 1, hidden})) {
        binding_.BindInput("input_ids", id_value_);
        binding_.BindOutput("inputs_embeds", row_value_);
    }
    std::vector<float> &row() { return row_; }
    std::vector<float> &run(int32_t token, double &runtime_ms) {
        id_[0] = token;
        try {
            auto t = Clock::now();
            session_.Run(Ort::RunOptions{nullptr}, binding_);
            runtime_ms += ms_since(t);
        } catch (const Ort::Exception &e) {
            runtime_failure("embedding tokens", e);
        }
        return row_;
    }

private:
    Ort::Session &session_;
    Ort::IoBinding binding_;
    std::vector<int64_t> id_;
    std::vector<float> row_;
    Ort::Value id_value_, row_value_;
};

}  // namespace

// One answer's state between steps: the decoder's cache, the logits of the last run, the tokens so far.
struct Decoding::State {
    State(const Model &model, const PreparedPrompt &p, const Features &f, const GenerateOptions &options)
        : m(model), s(model.spec()), prompt(p), features(&f), o(options), scores(size_t(s.vocab_size)),
          logits_value(tensor(scores, {1, 1, int64_t(s.vocab_size)})) {}

    const Model &m;
    const Spec &s;
    PreparedPrompt prompt;
    const Features *features;  // the caller's, read by the prefill only (null after it)
    GenerateOptions o;
    Generation g;
    std::vector<int64_t> mask, positions, keep{1};
    std::vector<float> scores;  // each run's last logits, then what the penalty, the hook and the pick make of them
    std::unique_ptr<SharedKV> shared;
    std::vector<Ort::Value> past;
    std::vector<const char *> in_names, out_names;
    std::unique_ptr<NextEmbedding> next_embedding;
    bool logits_bound = false, prefilled = false, done = false;
    Ort::Value logits_value;
    std::mt19937_64 rng;
    std::vector<uint8_t> seen;  // the repetition penalty's tokens: the prompt's and the answer's (as transformers)
    std::string pending;
    bool started = false;
    Clock::time_point t0, t1;

    // Feeds of one step other than the cache: embeddings, mask, and what this decoder declares.
    void feeds_for(std::vector<float> &x, size_t past_len, std::vector<std::pair<std::string, Ort::Value>> &out) {
        size_t n = x.size() / size_t(s.hidden);
        mask.assign(past_len + n, 1);
        positions.resize(n);
        std::iota(positions.begin(), positions.end(), int64_t(past_len));
        for (const std::string &name : m.decoder_inputs_) {
            if (name == "inputs_embeds") out.emplace_back(name, tensor(x, {1, int64_t(n), s.hidden}));
            else if (name == "attention_mask") out.emplace_back(name, tensor(mask, {1, int64_t(mask.size())}));
            else if (name == "position_ids") out.emplace_back(name, tensor(positions, {1, int64_t(n)}));
            else if (name == "num_logits_to_keep") out.emplace_back(name, tensor(keep, {}));
            else if (name.rfind("past_key_values.", 0) != 0)
                fail(EVLM_ERR_MODEL, "the decoder has an input '" + name + "' the C++ library does not know.");
        }
    }

    void take_logits(const Ort::Value &out) {
        auto shape = out.GetTensorTypeAndShapeInfo().GetShape();
        const float *l = out.GetTensorData<float>() + (size_t(shape[1]) - 1) * size_t(shape[2]);
        std::copy_n(l, s.vocab_size, scores.begin());
    }

    // A decode step of the fused decoder feeds one token: its embedding row is bound once (NextEmbedding writes
    // it in place), the mask is the only input that changes shape, and the logits land in `scores` directly.
    void step(std::vector<float> &x, size_t past_len) {
        std::vector<std::pair<std::string, Ort::Value>> named;
        if (shared && logits_bound) {
            mask.assign(past_len + 1, 1);
            named.emplace_back("attention_mask", tensor(mask, {1, int64_t(mask.size())}));
        } else {
            feeds_for(x, past_len, named);
        }
        size_t total = past_len + x.size() / size_t(s.hidden);
        try {
            if (shared) {
                if (total > shared->capacity())
                    shared->resize(std::min(std::max(2 * shared->capacity(), total), size_t(s.max_positions)), past_len);
                for (auto &[name, value] : named) shared->binding().BindInput(name.c_str(), value);
                auto t = Clock::now();
                m.decoder_->Run(Ort::RunOptions{nullptr}, shared->binding());
                g.runtime_ms += ms_since(t);
                if (!logits_bound) take_logits(shared->binding().GetOutputValues()[0]);
                return;
            }
            std::vector<Ort::Value> feeds;
            for (const std::string &name : m.decoder_inputs_) {
                if (name.rfind("past_key_values.", 0) == 0) {
                    size_t layer = std::stoul(name.substr(16));
                    bool value = name.compare(name.size() - 6, 6, ".value") == 0;
                    feeds.push_back(std::move(past[2 * layer + (value ? 1 : 0)]));
                } else {
                    auto it = std::find_if(named.begin(), named.end(), [&](auto &p) { return p.first == name; });
                    feeds.push_back(std::move(it->second));
                }
            }
            auto t = Clock::now();
            std::vector<Ort::Value> out = m.decoder_->Run(Ort::RunOptions{nullptr}, in_names.data(), feeds.data(),
                                                          feeds.size(), out_names.data(), out_names.size());
            g.runtime_ms += ms_since(t);
            take_logits(out[0]);
            for (size_t i = 1; i < out.size(); ++i) {  // present.{i}.key / .value become the next step's past
                const std::string &name = m.decoder_outputs_[i];
                size_t layer = std::stoul(name.substr(8));
                bool value = name.compare(name.size() - 6, 6, ".value") == 0;
                past[2 * layer + (value ? 1 : 0)] = std::move(out[i]);
            }
        } catch (const Ort::Exception &e) {
            runtime_failure("running the decoder", e);
        }
    }

    void check() const {
        if (o.max_new_tokens < 1) fail(EVLM_ERR_ARGUMENT, "max_new_tokens must be at least 1.");
        if (!(o.temperature >= 0)) fail(EVLM_ERR_ARGUMENT, "temperature must be >= 0 (0 is greedy).");
        if (!(o.top_p > 0 && o.top_p <= 1) || o.top_k < 0)
            fail(EVLM_ERR_ARGUMENT, "top_p must be in (0, 1] and top_k >= 0.");
        if (prompt.ids.size() + size_t(o.max_new_tokens) > size_t(s.max_positions))
            fail(EVLM_ERR_CONTEXT, "the prompt is " + std::to_string(prompt.ids.size()) + " tokens (images included) and " +
                                       std::to_string(o.max_new_tokens) + " new tokens are asked for, over the model's "
                                       "context of " + std::to_string(s.max_positions) + ". Use fewer or smaller images "
                                       "(split 0), a shorter prompt, or a lower max_new_tokens.");
        size_t image_tokens = size_t(std::count(prompt.ids.begin(), prompt.ids.end(), s.image_token_id));
        if (image_tokens * size_t(s.hidden) != features->values.size())
            fail(EVLM_ERR_INPUT, "the prompt has " + std::to_string(image_tokens) + " image tokens but the encoding holds " +
                                     std::to_string(features->values.size() / size_t(std::max(s.hidden, 1))) +
                                     " features; encode this prompt (evlm_encode) and pass that encoding.");
    }

    // The prompt through the decoder: the first logits.
    void prefill() {
        t0 = Clock::now();
        std::vector<float> embeds = m.embed(std::vector<int64_t>(prompt.ids.begin(), prompt.ids.end()), g.runtime_ms);
        size_t row = 0;
        for (size_t i = 0; i < prompt.ids.size(); ++i)
            if (prompt.ids[i] == s.image_token_id)
                std::copy_n(&features->values[(row++) * size_t(s.hidden)], s.hidden, &embeds[i * size_t(s.hidden)]);
        features = nullptr;
        // edgevlm's fused decoder (positions from the mask) updates one buffer in place; the traced decoder
        // (position_ids) grows its cache by feeding each step's present.* back.
        if (!m.position_ids_) {
            const size_t need = std::min(prompt.ids.size() + size_t(std::min(o.max_new_tokens, 128)),
                                         size_t(s.max_positions));
            {
                std::lock_guard<std::mutex> hold(m.kv_lock_);
                shared = std::move(m.kv_spare_);
            }
            try {
                if (shared) shared->reuse(need);
                else shared = std::make_unique<SharedKV>(*m.decoder_, s.num_layers, s.kv_heads, s.head_dim, need);
            } catch (const Ort::Exception &e) {
                runtime_failure("binding the decoder's cache", e);
            }
        }
        std::vector<float> empty;
        for (int i = 0; i < 2 * s.num_layers && !shared; ++i) past.push_back(tensor(empty, {1, s.kv_heads, 0, s.head_dim}));
        for (const std::string &n : m.decoder_inputs_) in_names.push_back(n.c_str());
        for (const std::string &n : m.decoder_outputs_) out_names.push_back(n.c_str());
        step(embeds, 0);
        next_embedding = std::make_unique<NextEmbedding>(*m.embed_, s.hidden);
        if (shared) {  // from here on each step is one token: bind its embedding row and the logits once
            try {
                std::vector<std::pair<std::string, Ort::Value>> named;
                feeds_for(next_embedding->row(), prompt.ids.size(), named);
                for (auto &[name, value] : named)
                    if (name != "attention_mask") shared->binding().BindInput(name.c_str(), value);
                shared->binding().BindOutput("logits", logits_value);
                logits_bound = true;
            } catch (const Ort::Exception &e) {
                runtime_failure("binding the decoder's inputs", e);
            }
        }
        g.prefill_ms = ms_since(t0);
        t1 = Clock::now();
        rng.seed(o.seed == EVLM_SEED_RANDOM ? (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}() : o.seed);
        if (o.repetition_penalty != 1.0f) {
            seen.assign(scores.size(), 0);
            for (int32_t id : prompt.ids)
                if (id >= 0 && size_t(id) < seen.size()) seen[size_t(id)] = 1;
        }
        prefilled = true;
    }

    // Pick, record and report one token; true when it ends the answer.
    bool pick_one(int32_t &token) {
        if (!seen.empty()) penalize(scores, seen, o.repetition_penalty);
        if (o.logits_hook) o.logits_hook(scores.data(), scores.size(), g.tokens);
        token = pick(scores, o, rng);
        if (!seen.empty() && token >= 0 && size_t(token) < seen.size()) seen[size_t(token)] = 1;
        if (g.tokens.empty()) g.first_token_ms = ms_since(t0);
        g.tokens.push_back(token);
        std::string rest;
        std::string piece = utf8_complete_prefix(pending + m.tokenizer().token_bytes(token), rest);
        pending = rest;
        if (!started) {  // the streamed text starts where the stripped text starts
            size_t a = 0;
            while (a < piece.size() && space_at(piece, a)) a += space_at(piece, a);
            piece.erase(0, a);
            started = !piece.empty();
        }
        bool stop = (!o.ignore_eos && std::count(s.eos_ids.begin(), s.eos_ids.end(), token)) ||
                    std::count(o.stop_tokens.begin(), o.stop_tokens.end(), token);
        if (o.on_token && o.on_token(token, piece)) return finish("cancelled"), true;
        if (stop) return finish("stop"), true;
        if (g.tokens.size() >= size_t(o.max_new_tokens)) return finish("length"), true;
        return false;
    }

    void finish(const char *reason) {
        if (done) return;
        done = true;
        g.finish_reason = reason;
        if (prefilled) g.decode_ms = ms_since(t1);
        give_back_cache();
        g.text = strip_text(m.tokenizer().decode(g.tokens, true));
    }

    // Binding a new cache (60 buffers for the 256M model) and zeroing it cost ~0.3 ms per caption: the next
    // generation takes this one, unless it grew large (a long prompt of many tiles).
    void give_back_cache() {
        if (!shared) return;
        next_embedding.reset();
        if (shared->bytes() <= (size_t(32) << 20)) {
            std::lock_guard<std::mutex> hold(m.kv_lock_);
            m.kv_spare_ = std::move(shared);
        }
        shared.reset();
    }
};

Decoding::Decoding(const Model &model, const PreparedPrompt &prompt, const Features &features,
                   const GenerateOptions &options)
    : st_(std::make_unique<State>(model, prompt, features, options)) {
    st_->g.prompt_tokens = int(prompt.ids.size());
    st_->check();
}

Decoding::~Decoding() {
    if (st_) st_->give_back_cache();
}

std::optional<int32_t> Decoding::next() {
    State &st = *st_;
    if (st.done) return std::nullopt;
    if (cancel_.load()) {
        st.finish("cancelled");
        return std::nullopt;
    }
    if (!st.prefilled) {
        st.prefill();
    } else {
        const int32_t last = st.g.tokens.back();
        st.step(st.next_embedding->run(last, st.g.runtime_ms), st.prompt.ids.size() + st.g.tokens.size() - 1);
    }
    int32_t token = 0;
    st.pick_one(token);
    return token;
}

bool Decoding::done() const { return st_->done; }

const Generation &Decoding::generation() const { return st_->g; }

Generation Decoding::snapshot() const {
    Generation g = st_->g;
    if (!st_->done) {
        g.finish_reason.clear();
        g.text = strip_text(st_->m.tokenizer().decode(g.tokens, true));
    }
    return g;
}

Generation Model::generate(const PreparedPrompt &prompt, const Features &features, const GenerateOptions &o) const {
    Decoding d(*this, prompt, features, o);
    while (d.next()) {
    }
    return d.generation();
}

}  // namespace evlm
