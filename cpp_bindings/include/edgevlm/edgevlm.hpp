// edgevlm C++ API: a header-only C++17 wrapper over edgevlm.h (as ONNX Runtime GenAI's ort_genai.h wraps its C
// API). Objects own their C handles (move-only, freed in destructors); a failed call throws edgevlm::Error with
// the C status and message. Nothing here adds state or behaviour of its own: every call is one C call, and the
// C header's notes on thread safety hold as they are (a Model may serve several threads; the other objects are
// used by one thread at a time).
//
//   edgevlm::Model model("smolvlm2-256m-bundle", {/*variant=*/"mixed"});
//   edgevlm::Image image = edgevlm::Image::from_pixels(rgb, width, height, EVLM_RGB8);
//   edgevlm::Prompt prompt;
//   prompt.begin(EVLM_ROLE_USER).add_image(image).add_text("Describe this image.");
//   edgevlm::Result r = model.generate(prompt, {}, [](int32_t, std::string_view piece) {
//       std::cout << piece << std::flush;
//       return true;  // false stops: the result keeps the tokens so far, finish_reason "cancelled"
//   });
#ifndef EDGEVLM_HPP
#define EDGEVLM_HPP

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "edgevlm.h"

namespace edgevlm {

class Error : public std::runtime_error {
  public:
    Error(evlm_status status, const std::string &message) : std::runtime_error(message), status_(status) {}
    evlm_status status() const noexcept { return status_; }

  private:
    evlm_status status_;
};

namespace detail {
inline void check(evlm_status status) {
    if (status != EVLM_OK) throw Error(status, evlm_last_error());
}
template <typename T, void (*Free)(T *)>
struct Deleter {
    void operator()(T *p) const noexcept { Free(p); }
};
inline void close_model(evlm_model *m) { evlm_model_close(m); }
}  // namespace detail

inline std::string version() { return evlm_version(); }

class Image {
  public:
    // Copies the pixels (stride 0: tightly packed rows).
    static Image from_pixels(const uint8_t *pixels, int width, int height, evlm_pixel_format format,
                             size_t stride = 0) {
        evlm_image *out = nullptr;
        detail::check(evlm_image_from_pixels(pixels, width, height, stride, format, &out));
        return Image(out);
    }
    const evlm_image *get() const noexcept { return handle_.get(); }

  private:
    explicit Image(evlm_image *h) : handle_(h) {}
    std::unique_ptr<evlm_image, detail::Deleter<evlm_image, evlm_image_free>> handle_;
};

class Prompt {
  public:
    Prompt() {
        evlm_prompt *out = nullptr;
        detail::check(evlm_prompt_new(&out));
        handle_.reset(out);
    }
    Prompt &begin(evlm_role role) {
        detail::check(evlm_prompt_begin(handle_.get(), role));
        return *this;
    }
    Prompt &add_text(const std::string &utf8) {
        detail::check(evlm_prompt_add_text(handle_.get(), utf8.c_str()));
        return *this;
    }
    // split: 1 tiles + global view, 0 one tile, -1 the model's default. The prompt keeps its own reference.
    Prompt &add_image(const Image &image, int split = -1) {
        detail::check(evlm_prompt_add_image(handle_.get(), image.get(), split));
        return *this;
    }
    const evlm_prompt *get() const noexcept { return handle_.get(); }

  private:
    std::unique_ptr<evlm_prompt, detail::Deleter<evlm_prompt, evlm_prompt_free>> handle_;
};

class Encoded {
  public:
    const evlm_encoded *get() const noexcept { return handle_.get(); }
    int tiles() const {
        int n = 0;
        detail::check(evlm_encoded_tiles(handle_.get(), &n, nullptr));
        return n;
    }
    // Of tiles(), those a TileReuse served instead of the vision encoder.
    int reused_tiles() const {
        int n = 0;
        detail::check(evlm_encoded_tiles(handle_.get(), nullptr, &n));
        return n;
    }

  private:
    friend class Model;
    explicit Encoded(evlm_encoded *h) : handle_(h) {}
    std::unique_ptr<evlm_encoded, detail::Deleter<evlm_encoded, evlm_encoded_free>> handle_;
};

// One per source (a fixed camera): Model::encode(prompt, reuse) then runs the vision encoder only on the tiles
// that changed since the last image encoded through it (evlm_tile_reuse_new).
class TileReuse {
  public:
    explicit TileReuse(float tolerance = 0.f) {
        evlm_tile_reuse *out = nullptr;
        detail::check(evlm_tile_reuse_new(tolerance, &out));
        handle_.reset(out);
    }
    evlm_tile_reuse *get() const noexcept { return handle_.get(); }

  private:
    std::unique_ptr<evlm_tile_reuse, detail::Deleter<evlm_tile_reuse, evlm_tile_reuse_free>> handle_;
};

class Result {
  public:
    std::string text() const { return evlm_result_text(handle_.get()); }
    std::vector<int32_t> tokens() const {
        size_t n = 0;
        const int32_t *ids = evlm_result_tokens(handle_.get(), &n);
        return std::vector<int32_t>(ids, ids + n);
    }
    std::string finish_reason() const { return evlm_result_finish_reason(handle_.get()); }
    evlm_timings timings() const {
        evlm_timings t{};
        detail::check(evlm_result_timings(handle_.get(), &t));
        return t;
    }

  private:
    friend class Model;
    friend class Generator;
    explicit Result(evlm_result *h) : handle_(h) {}
    std::unique_ptr<evlm_result, detail::Deleter<evlm_result, evlm_result_free>> handle_;
};

// Stage 3 one token at a time (evlm_generator, Python's Generator): next() gives each token and std::nullopt once
// the answer has ended; cancel() may come from any thread (the next step ends the answer, "cancelled").
class Generator {
  public:
    std::optional<int32_t> next() {
        int32_t token = -1;
        int done = 0;
        detail::check(evlm_generator_step(handle_.get(), &token, &done));
        done_ = done != 0;
        return token >= 0 ? std::optional<int32_t>(token) : std::nullopt;
    }
    bool done() const noexcept { return done_; }
    void cancel() noexcept { evlm_generator_cancel(handle_.get()); }
    // The answer so far (finish_reason "" until it ends).
    Result result() const {
        evlm_result *out = nullptr;
        detail::check(evlm_generator_result(handle_.get(), &out));
        return Result(out);
    }

  private:
    friend class Model;
    explicit Generator(evlm_generator *h) : handle_(h) {}
    std::unique_ptr<evlm_generator, detail::Deleter<evlm_generator, evlm_generator_free>> handle_;
    bool done_ = false;
};

// The generation options, with C's defaults (evlm_generate_options_init); stop tokens are copied.
struct GenerateOptions {
    GenerateOptions() {
        evlm_generate_options c;
        evlm_generate_options_init(&c);
        max_new_tokens = c.max_new_tokens;
        do_sample = c.do_sample != 0;
        temperature = c.temperature;
        top_k = c.top_k;
        top_p = c.top_p;
        seed = c.seed;
        ignore_eos = c.ignore_eos != 0;
        repetition_penalty = c.repetition_penalty;
    }
    int max_new_tokens;
    bool do_sample;
    float temperature;  // 0: greedy, as everywhere in edgevlm
    int top_k;
    float top_p;
    uint64_t seed;
    bool ignore_eos;
    float repetition_penalty;  // 1: off
    std::vector<int32_t> stop_tokens;
};

// Called with each new token and the text it completes; return false to stop.
using TokenCallback = std::function<bool(int32_t token, std::string_view piece)>;

struct ModelOptions {
    std::string variant;          // empty: the bundle's default (fp32)
    int threads = 0;              // 0: every core
    std::string providers;        // empty: EVLM_DEFAULT_PROVIDERS ("auto")
    int verify = EVLM_VERIFY_ON;  // EVLM_VERIFY_OFF, _ON (hash once, then trust a stamp) or _FULL (hash each open)
    int64_t max_image_pixels = EVLM_DEFAULT_MAX_IMAGE_PIXELS;  // larger images are refused
};

class Model {
  public:
    explicit Model(const std::string &bundle_dir, const ModelOptions &options = {}) {
        evlm_model_options o;
        evlm_model_options_init(&o);
        if (!options.variant.empty()) o.variant = options.variant.c_str();
        if (!options.providers.empty()) o.providers = options.providers.c_str();
        o.threads = options.threads;
        o.verify = options.verify;
        o.max_image_pixels = options.max_image_pixels;
        evlm_model *out = nullptr;
        detail::check(evlm_model_open(bundle_dir.c_str(), &o, &out));
        handle_.reset(out);
    }

    // Stage 2: the vision encoder over the prompt's images; reusable for several generations.
    Encoded encode(const Prompt &prompt) {
        evlm_encoded *out = nullptr;
        detail::check(evlm_encode(handle_.get(), prompt.get(), &out));
        return Encoded(out);
    }
    // The same, with the unchanged tiles of a source's frames served by `reuse`.
    Encoded encode(const Prompt &prompt, TileReuse &reuse) {
        evlm_encoded *out = nullptr;
        detail::check(evlm_encode_reuse(handle_.get(), prompt.get(), reuse.get(), &out));
        return Encoded(out);
    }

    // Stage 3. A callback that returns false ends the answer: that is a result (finish_reason "cancelled"), not
    // an error; an exception thrown by the callback stops generation and is rethrown here.
    Result generate(const Prompt &prompt, const GenerateOptions &options = {}, TokenCallback on_token = nullptr,
                    const Encoded *encoded = nullptr) {
        evlm_generate_options c = to_c(options);
        Trampoline t{&on_token, nullptr};
        if (on_token) {
            c.on_token = &Trampoline::call;
            c.on_token_user_data = &t;
        }
        evlm_result *out = nullptr;
        evlm_status s = evlm_generate(handle_.get(), prompt.get(), encoded ? encoded->get() : nullptr, &c, &out);
        Result result(out);
        if (t.thrown) std::rethrow_exception(t.thrown);
        detail::check(s);
        return result;
    }

    // Stage 3 step by step; the Model must outlive the Generator.
    Generator generator(const Prompt &prompt, const GenerateOptions &options = {}, const Encoded *encoded = nullptr) {
        const evlm_generate_options c = to_c(options);
        evlm_generator *out = nullptr;
        detail::check(evlm_generator_new(handle_.get(), prompt.get(), encoded ? encoded->get() : nullptr, &c, &out));
        return Generator(out);
    }

  private:
    static evlm_generate_options to_c(const GenerateOptions &options) {
        evlm_generate_options c;
        evlm_generate_options_init(&c);
        c.max_new_tokens = options.max_new_tokens;
        c.do_sample = options.do_sample ? 1 : 0;
        c.temperature = options.temperature;
        c.top_k = options.top_k;
        c.top_p = options.top_p;
        c.seed = options.seed;
        c.ignore_eos = options.ignore_eos ? 1 : 0;
        c.repetition_penalty = options.repetition_penalty;
        c.stop_tokens = options.stop_tokens.empty() ? nullptr : options.stop_tokens.data();
        c.n_stop_tokens = options.stop_tokens.size();
        return c;
    }

  public:

    // The prompt's token ids as the model reads them (images expanded).
    std::vector<int32_t> prompt_tokens(const Prompt &prompt) {
        size_t n = 0;
        detail::check(evlm_prompt_tokens(handle_.get(), prompt.get(), nullptr, 0, &n));
        std::vector<int32_t> ids(n);
        detail::check(evlm_prompt_tokens(handle_.get(), prompt.get(), ids.data(), ids.size(), &n));
        return ids;
    }

    std::vector<int32_t> tokenize(const std::string &utf8, bool add_special = false) {
        size_t n = 0;
        detail::check(evlm_tokenize(handle_.get(), utf8.c_str(), add_special, nullptr, 0, &n));
        std::vector<int32_t> ids(n);
        detail::check(evlm_tokenize(handle_.get(), utf8.c_str(), add_special, ids.data(), ids.size(), &n));
        return ids;
    }

    std::string detokenize(const std::vector<int32_t> &ids, bool skip_special = true) {
        size_t n = 0;
        detail::check(evlm_detokenize(handle_.get(), ids.data(), ids.size(), skip_special, nullptr, 0, &n));
        std::string text(n + 1, '\0');  // the C call writes a terminating NUL
        detail::check(evlm_detokenize(handle_.get(), ids.data(), ids.size(), skip_special, text.data(), text.size(),
                                      &n));
        text.resize(n);
        return text;
    }

    // edgevlm's own kernels in use, comma-separated ("attention:bf16", "matmul_q4:vnni", "matmul_q4:avx2"), else "".
    std::string kernels() const { return evlm_model_kernels(handle_.get()); }
    evlm_model *get() const noexcept { return handle_.get(); }

  private:
    struct Trampoline {
        TokenCallback *fn;
        std::exception_ptr thrown;
        static int call(int32_t token, const char *piece, void *user) noexcept {
            auto *self = static_cast<Trampoline *>(user);
            try {
                return (*self->fn)(token, piece ? std::string_view(piece) : std::string_view()) ? 0 : 1;
            } catch (...) {
                self->thrown = std::current_exception();
                return 1;
            }
        }
    };
    std::unique_ptr<evlm_model, detail::Deleter<evlm_model, detail::close_model>> handle_;
};

}  // namespace edgevlm

#endif  // EDGEVLM_HPP
