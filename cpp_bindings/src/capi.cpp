// The C ABI: handles over the C++ objects; every entry point catches everything and reports a status plus a
// thread-local message, so no exception or C++ type crosses the boundary.
#include <algorithm>
#include <cstring>
#include <new>
#include <optional>

#include "edgevlm/edgevlm.h"
#include "error.hpp"
#include "model.hpp"

struct evlm_model {
    std::unique_ptr<evlm::Model> model;
    int64_t max_image_pixels = EVLM_DEFAULT_MAX_IMAGE_PIXELS;
};
struct evlm_image {
    std::shared_ptr<const evlm::Pixels> pixels;
};
struct evlm_prompt {
    std::vector<evlm::Message> messages;
};
struct evlm_tile_reuse {
    evlm::TileReuse reuse;
};
struct evlm_encoded {
    evlm::Features features;
    std::vector<int32_t> ids;  // the prompt it was made for
};
struct evlm_result {
    evlm::Generation generation;
    double vision_ms = 0, preprocess_ms = 0, vision_runtime_ms = 0;
};
struct evlm_generator {
    evlm::Features features;  // its own: the caller may free an evlm_encoded before the first step
    std::unique_ptr<evlm::Decoding> decoding;
    double vision_ms = 0, preprocess_ms = 0, vision_runtime_ms = 0;  // when the generator encoded the images
};

namespace {

thread_local std::string last_error;

evlm_status fail_with(evlm_status status, const std::string &message) {
    last_error = message;
    return status;
}

template <typename F>
evlm_status guarded(F &&body) {
    try {
        body();
        return EVLM_OK;
    } catch (const evlm::Error &e) {
        return fail_with(e.status, e.what());
    } catch (const Ort::Exception &e) {
        return fail_with(EVLM_ERR_RUNTIME, std::string("ONNX Runtime: ") + e.what());
    } catch (const std::bad_alloc &) {
        return fail_with(EVLM_ERR_MEMORY, "out of memory");
    } catch (const std::exception &e) {
        return fail_with(EVLM_ERR_RUNTIME, std::string("unexpected error: ") + e.what());
    } catch (...) {
        return fail_with(EVLM_ERR_RUNTIME, "unexpected error");
    }
}

void need(const void *p, const char *what) {
    if (!p) evlm::fail(EVLM_ERR_ARGUMENT, std::string(what) + " is NULL");
}

// An image over the model's max_image_pixels is refused before any work on it (the Python runtime's rule).
void check_pixels(const evlm_model *model, const evlm_prompt *prompt) {
    for (const evlm::Message &m : prompt->messages)
        for (const evlm::Item &item : m.items) {
            if (!item.image) continue;
            const int64_t n = int64_t(item.image->width) * item.image->height;
            if (n > model->max_image_pixels)
                evlm::fail(EVLM_ERR_INPUT, "an image has " + std::to_string(n) + " pixels, over the model's " +
                                               "max_image_pixels (" + std::to_string(model->max_image_pixels) +
                                               "); scale it down first.");
        }
}

evlm::PreparedPrompt prepared(const evlm_model *model, const evlm_prompt *prompt) {
    need(model, "model");
    need(prompt, "prompt");
    check_pixels(model, prompt);
    return model->model->prepare(prompt->messages);
}

// The caller's options struct, as far as its struct_size reaches, over the defaults (ABI policy in edgevlm.h).
template <typename Options, typename Init>
Options options_from(const Options *given, Init init, const char *what) {
    Options o;
    init(&o, sizeof o);
    if (!given) return o;
    const size_t n = given->struct_size;
    if (n < sizeof(size_t) || n > sizeof o)
        evlm::fail(EVLM_ERR_ARGUMENT, std::string(what) + ".struct_size is " + std::to_string(n) + "; call " + what +
                                          "_init on it first (more than " + std::to_string(sizeof o) +
                                          " means a newer edgevlm.h than this library).");
    std::memcpy(static_cast<void *>(&o), given, n);
    o.struct_size = sizeof o;
    return o;
}

// Defaults into the first `n` bytes of `o` (a caller compiled with an older, smaller struct passes its size).
template <typename Options>
void init_prefix(Options *o, size_t n, const Options &defaults) {
    if (!o || n < sizeof(size_t)) return;
    n = std::min(n, sizeof defaults);
    std::memcpy(static_cast<void *>(o), &defaults, n);
    o->struct_size = n;
}

template <typename T>
void copy_out(const std::vector<T> &v, T *out, size_t capacity, size_t *count) {
    if (count) *count = v.size();
    if (!out) return;
    if (capacity < v.size())
        evlm::fail(EVLM_ERR_ARGUMENT, "the output buffer holds " + std::to_string(capacity) + " values but " +
                                          std::to_string(v.size()) + " are needed; call with NULL first for the count.");
    std::copy(v.begin(), v.end(), out);
}

void check_encoding(const evlm_encoded *encoded, const evlm::PreparedPrompt &p) {
    if (encoded->ids != p.ids)
        evlm::fail(EVLM_ERR_ARGUMENT, "the encoding was made for another prompt; encode this prompt first.");
}

// The C options as the library's, checked (NULL: the defaults).
evlm::GenerateOptions generate_options(const evlm_generate_options *options) {
    const evlm_generate_options o = options_from(options, evlm_generate_options_init_sized, "evlm_generate_options");
    if (!(o.repetition_penalty > 0)) evlm::fail(EVLM_ERR_ARGUMENT, "repetition_penalty must be > 0 (1: off)");
    evlm::GenerateOptions g;
    g.repetition_penalty = o.repetition_penalty;
    g.max_new_tokens = o.max_new_tokens;
    g.do_sample = o.do_sample != 0;
    g.temperature = o.temperature;
    g.top_k = o.top_k;
    g.top_p = o.top_p;
    g.seed = o.seed;
    g.ignore_eos = o.ignore_eos != 0;
    if (o.n_stop_tokens) {
        need(o.stop_tokens, "stop_tokens");
        g.stop_tokens.assign(o.stop_tokens, o.stop_tokens + o.n_stop_tokens);
    }
    if (o.on_token) {
        auto cb = o.on_token;
        void *user = o.on_token_user_data;
        g.on_token = [cb, user](int32_t t, const std::string &piece) { return cb(t, piece.c_str(), user) != 0; };
    }
    if (o.logits_hook) {
        auto hook = o.logits_hook;
        void *user = o.logits_hook_user_data;
        g.logits_hook = [hook, user](float *l, size_t n, const std::vector<int32_t> &toks) {
            hook(l, n, toks.data(), toks.size(), user);
        };
    }
    return g;
}

}  // namespace

extern "C" {

const char *evlm_version(void) {
    static const std::string v = std::to_string(EVLM_VERSION_MAJOR) + "." + std::to_string(EVLM_VERSION_MINOR) + "." +
                                 std::to_string(EVLM_VERSION_PATCH) + " (onnxruntime " + evlm::onnxruntime_version() + ")";
    return v.c_str();
}

const char *evlm_last_error(void) { return last_error.c_str(); }

void evlm_model_options_init_sized(evlm_model_options *o, size_t n) {
    evlm_model_options d;
    std::memset(static_cast<void *>(&d), 0, sizeof d);
    d.struct_size = sizeof d;
    d.verify = EVLM_VERIFY_ON;
    d.max_image_pixels = EVLM_DEFAULT_MAX_IMAGE_PIXELS;
    init_prefix(o, n, d);
}

evlm_status evlm_model_open(const char *dir, const evlm_model_options *options, evlm_model **out) {
    if (out) *out = nullptr;
    return guarded([&] {
        need(dir, "bundle_dir");
        need(out, "out");
        const evlm_model_options o = options_from(options, evlm_model_options_init_sized, "evlm_model_options");
        if (o.threads < 0) evlm::fail(EVLM_ERR_ARGUMENT, "threads must be >= 0");
        if (o.max_image_pixels < 0) evlm::fail(EVLM_ERR_ARGUMENT, "max_image_pixels must be >= 0 (0: the default)");
        if (o.verify < EVLM_VERIFY_OFF || o.verify > EVLM_VERIFY_FULL)
            evlm::fail(EVLM_ERR_ARGUMENT, "verify must be EVLM_VERIFY_OFF (0), EVLM_VERIFY_ON (1) or "
                                          "EVLM_VERIFY_FULL (2)");
        auto m = std::make_unique<evlm_model>();
        if (o.max_image_pixels > 0) m->max_image_pixels = o.max_image_pixels;
        m->model = std::make_unique<evlm::Model>(dir, o.variant ? o.variant : "", o.threads,
                                                 o.providers ? o.providers : EVLM_DEFAULT_PROVIDERS,
                                                 o.verify);
        *out = m.release();
    });
}

void evlm_model_close(evlm_model *model) { delete model; }

evlm_status evlm_model_info(const evlm_model *model, int *tile, int *image_seq_len, int *max_positions,
                            int *vocab_size) {
    return guarded([&] {
        need(model, "model");
        const evlm::Spec &s = model->model->spec();
        if (tile) *tile = s.image.tile;
        if (image_seq_len) *image_seq_len = s.image_seq_len;
        if (max_positions) *max_positions = s.max_positions;
        if (vocab_size) *vocab_size = s.vocab_size;
    });
}

const char *evlm_model_kernels(const evlm_model *model) {
    return model ? model->model->kernels().c_str() : "";
}

evlm_status evlm_image_from_pixels(const uint8_t *pixels, int width, int height, size_t stride,
                                   evlm_pixel_format format, evlm_image **out) {
    if (out) *out = nullptr;
    return guarded([&] {
        need(pixels, "pixels");
        need(out, "out");
        if (format != EVLM_RGB8 && format != EVLM_BGR8 && format != EVLM_RGBA8)
            evlm::fail(EVLM_ERR_ARGUMENT, "unknown pixel format " + std::to_string(int(format)));
        const int in_ch = format == EVLM_RGBA8 ? 4 : 3;
        if (width < 1 || height < 1)
            evlm::fail(EVLM_ERR_INPUT, "the image is " + std::to_string(width) + "x" + std::to_string(height) +
                                           "; it needs at least one pixel.");
        // The buffer's size must stay addressable; the model's max_image_pixels is checked where a model is known.
        if (int64_t(width) * height > int64_t(1) << 31)
            evlm::fail(EVLM_ERR_INPUT, "the image has over 2^31 pixels; scale it down first.");
        size_t row = size_t(width) * size_t(in_ch);
        if (stride == 0) stride = row;
        if (stride < row)
            evlm::fail(EVLM_ERR_ARGUMENT, "stride " + std::to_string(stride) + " is smaller than a row (" +
                                              std::to_string(row) + " bytes for " + std::to_string(width) + " pixels).");
        auto p = std::make_shared<evlm::Pixels>();
        p->width = width;
        p->height = height;
        p->channels = in_ch;
        p->data.resize(row * size_t(height));
        for (int y = 0; y < height; ++y) {
            const uint8_t *src = pixels + size_t(y) * stride;
            uint8_t *dst = &p->data[size_t(y) * row];
            if (format == EVLM_BGR8) {
                for (int x = 0; x < width; ++x) {
                    dst[3 * x] = src[3 * x + 2];
                    dst[3 * x + 1] = src[3 * x + 1];
                    dst[3 * x + 2] = src[3 * x];
                }
            } else {
                std::memcpy(dst, src, row);
            }
        }
        *out = new evlm_image{std::move(p)};
    });
}

void evlm_image_free(evlm_image *image) { delete image; }

evlm_status evlm_prompt_new(evlm_prompt **out) {
    if (out) *out = nullptr;
    return guarded([&] {
        need(out, "out");
        *out = new evlm_prompt;
    });
}

void evlm_prompt_free(evlm_prompt *prompt) { delete prompt; }

evlm_status evlm_prompt_begin(evlm_prompt *prompt, evlm_role role) {
    return guarded([&] {
        need(prompt, "prompt");
        if (role != EVLM_ROLE_SYSTEM && role != EVLM_ROLE_USER && role != EVLM_ROLE_ASSISTANT)
            evlm::fail(EVLM_ERR_ARGUMENT, "unknown role " + std::to_string(int(role)));
        prompt->messages.push_back({int(role), {}});
    });
}

static evlm::Message &current(evlm_prompt *prompt) {
    if (prompt->messages.empty())
        evlm::fail(EVLM_ERR_ARGUMENT, "no message begun; call evlm_prompt_begin(prompt, EVLM_ROLE_USER) first.");
    return prompt->messages.back();
}

evlm_status evlm_prompt_add_text(evlm_prompt *prompt, const char *text) {
    return guarded([&] {
        need(prompt, "prompt");
        need(text, "text");
        evlm::check_text(text);
        current(prompt).items.push_back({evlm::Item::Text, text, nullptr, -1});
    });
}

evlm_status evlm_prompt_add_image(evlm_prompt *prompt, const evlm_image *image, int split) {
    return guarded([&] {
        need(prompt, "prompt");
        need(image, "image");
        if (split < -1 || split > 1) evlm::fail(EVLM_ERR_ARGUMENT, "split is 1, 0 or -1 (the model's default).");
        current(prompt).items.push_back({evlm::Item::Image, {}, image->pixels, split});
    });
}

evlm_status evlm_prompt_tokens(const evlm_model *model, const evlm_prompt *prompt, int32_t *ids, size_t capacity,
                               size_t *count) {
    return guarded([&] { copy_out(prepared(model, prompt).ids, ids, capacity, count); });
}

evlm_status evlm_encode(const evlm_model *model, const evlm_prompt *prompt, evlm_encoded **out) {
    return evlm_encode_reuse(model, prompt, nullptr, out);
}

evlm_status evlm_encode_reuse(const evlm_model *model, const evlm_prompt *prompt, evlm_tile_reuse *reuse,
                              evlm_encoded **out) {
    if (out) *out = nullptr;
    return guarded([&] {
        need(out, "out");
        evlm::PreparedPrompt p = prepared(model, prompt);
        auto e = std::make_unique<evlm_encoded>();
        e->features = model->model->encode(p, reuse ? &reuse->reuse : nullptr);
        e->ids = std::move(p.ids);
        *out = e.release();
    });
}

void evlm_encoded_free(evlm_encoded *encoded) { delete encoded; }

evlm_status evlm_encoded_tiles(const evlm_encoded *encoded, int *tiles, int *reused) {
    return guarded([&] {
        need(encoded, "encoded");
        if (tiles) *tiles = encoded->features.tiles;
        if (reused) *reused = encoded->features.reused;
    });
}

evlm_status evlm_tile_reuse_new(float tolerance, evlm_tile_reuse **out) {
    if (out) *out = nullptr;
    return guarded([&] {
        need(out, "out");
        if (!(tolerance >= 0.f && tolerance <= 255.f))
            evlm::fail(EVLM_ERR_ARGUMENT, "tolerance must be a number of grey levels from 0 to 255 (0: exact)");
        *out = new evlm_tile_reuse{evlm::TileReuse(tolerance)};
    });
}

void evlm_tile_reuse_free(evlm_tile_reuse *reuse) { delete reuse; }

void evlm_generate_options_init_sized(evlm_generate_options *o, size_t n) {
    evlm_generate_options d;
    std::memset(static_cast<void *>(&d), 0, sizeof d);
    d.struct_size = sizeof d;
    d.max_new_tokens = EVLM_DEFAULT_MAX_NEW_TOKENS;
    d.temperature = EVLM_DEFAULT_TEMPERATURE;
    d.top_k = EVLM_DEFAULT_TOP_K;
    d.top_p = EVLM_DEFAULT_TOP_P;
    d.repetition_penalty = EVLM_DEFAULT_REPETITION_PENALTY;
    d.seed = EVLM_SEED_RANDOM;
    init_prefix(o, n, d);
}

evlm_status evlm_generate(const evlm_model *model, const evlm_prompt *prompt, const evlm_encoded *encoded,
                          const evlm_generate_options *options, evlm_result **out) {
    if (out) *out = nullptr;
    return guarded([&] {
        need(out, "out");
        evlm::PreparedPrompt p = prepared(model, prompt);
        evlm::GenerateOptions g = generate_options(options);
        auto r = std::make_unique<evlm_result>();
        if (encoded) {
            check_encoding(encoded, p);
            r->generation = model->model->generate(p, encoded->features, g);
        } else {
            evlm::Features f = model->model->encode(p);
            r->vision_ms = f.vision_ms;
            r->vision_runtime_ms = f.runtime_ms;
            r->preprocess_ms = f.preprocess_ms;
            r->generation = model->model->generate(p, f, g);
        }
        *out = r.release();
    });
}

evlm_status evlm_generator_new(const evlm_model *model, const evlm_prompt *prompt, const evlm_encoded *encoded,
                               const evlm_generate_options *options, evlm_generator **out) {
    if (out) *out = nullptr;
    return guarded([&] {
        need(out, "out");
        evlm::PreparedPrompt p = prepared(model, prompt);
        evlm::GenerateOptions g = generate_options(options);
        g.on_token = nullptr;  // the caller has each token from evlm_generator_step
        auto gen = std::make_unique<evlm_generator>();
        if (encoded) {
            check_encoding(encoded, p);
            gen->features = encoded->features;
        } else {
            gen->features = model->model->encode(p);
            gen->vision_ms = gen->features.vision_ms;
            gen->vision_runtime_ms = gen->features.runtime_ms;
            gen->preprocess_ms = gen->features.preprocess_ms;
        }
        gen->decoding = std::make_unique<evlm::Decoding>(*model->model, p, gen->features, g);
        *out = gen.release();
    });
}

evlm_status evlm_generator_step(evlm_generator *gen, int32_t *token, int *done) {
    if (token) *token = -1;
    if (done) *done = 0;
    return guarded([&] {
        need(gen, "generator");
        need(token, "token");
        need(done, "done");
        std::optional<int32_t> t = gen->decoding->next();
        if (t) *token = *t;
        *done = gen->decoding->done() ? 1 : 0;
    });
}

void evlm_generator_cancel(evlm_generator *gen) {
    if (gen) gen->decoding->cancel();
}

evlm_status evlm_generator_result(const evlm_generator *gen, evlm_result **out) {
    if (out) *out = nullptr;
    return guarded([&] {
        need(gen, "generator");
        need(out, "out");
        auto r = std::make_unique<evlm_result>();
        r->generation = gen->decoding->snapshot();
        r->vision_ms = gen->vision_ms;
        r->preprocess_ms = gen->preprocess_ms;
        r->vision_runtime_ms = gen->vision_runtime_ms;
        *out = r.release();
    });
}

void evlm_generator_free(evlm_generator *gen) { delete gen; }

const char *evlm_result_text(const evlm_result *r) { return r ? r->generation.text.c_str() : ""; }

const int32_t *evlm_result_tokens(const evlm_result *r, size_t *count) {
    if (count) *count = r ? r->generation.tokens.size() : 0;
    return r ? r->generation.tokens.data() : nullptr;
}

const char *evlm_result_finish_reason(const evlm_result *r) { return r ? r->generation.finish_reason.c_str() : ""; }

evlm_status evlm_result_timings(const evlm_result *r, evlm_timings *out) {
    return guarded([&] {
        need(r, "result");
        need(out, "out");
        out->vision_ms = r->vision_ms;
        out->preprocess_ms = r->preprocess_ms;
        out->prefill_ms = r->generation.prefill_ms;
        out->decode_ms = r->generation.decode_ms;
        out->first_token_ms = r->vision_ms + r->generation.first_token_ms;
        out->runtime_ms = r->vision_runtime_ms + r->generation.runtime_ms;
        out->prompt_tokens = r->generation.prompt_tokens;
        out->new_tokens = int(r->generation.tokens.size());
    });
}

void evlm_result_free(evlm_result *r) { delete r; }

evlm_status evlm_tokenize(const evlm_model *model, const char *text, int add_special, int32_t *ids, size_t capacity,
                          size_t *count) {
    return guarded([&] {
        need(model, "model");
        need(text, "text");
        copy_out(model->model->tokenizer().encode(text, add_special != 0), ids, capacity, count);
    });
}

evlm_status evlm_detokenize(const evlm_model *model, const int32_t *ids, size_t n_ids, int skip_special, char *text,
                            size_t capacity, size_t *length) {
    return guarded([&] {
        need(model, "model");
        if (n_ids) need(ids, "ids");
        std::string s = model->model->tokenizer().decode(std::vector<int32_t>(ids, ids + n_ids), skip_special != 0);
        if (length) *length = s.size();
        if (!text) return;
        if (capacity < s.size() + 1) evlm::fail(EVLM_ERR_ARGUMENT, "the text buffer is too small (needs " +
                                                                       std::to_string(s.size() + 1) + " bytes).");
        std::memcpy(text, s.c_str(), s.size() + 1);
    });
}

evlm_status evlm_image_preprocess(const evlm_model *model, const evlm_image *image, int split, float *values,
                                  size_t capacity, size_t *count, int *tiles, int *rows, int *cols) {
    return guarded([&] {
        need(model, "model");
        need(image, "image");
        bool s = split < 0 ? model->model->split_default() : split != 0;
        evlm::Processed p;
        evlm::process_image(*image->pixels, model->model->spec().image, s, model->model->image_threads(), p);
        copy_out(p.values, values, capacity, count);
        if (tiles) *tiles = p.tiles;
        if (rows) *rows = p.rows;
        if (cols) *cols = p.cols;
    });
}

}  // extern "C"
