// The C++ wrapper (edgevlm.hpp) against the C API on the same bundle: the same tokens, errors as exceptions with
// the C status, a callback that stops or throws, and move-only ownership.
#include <edgevlm/edgevlm.hpp>

#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <vector>

static int failures = 0;
#define EXPECT(cond, what)                                  \
    do {                                                    \
        if (!(cond)) {                                      \
            std::fprintf(stderr, "FAIL: %s\n", what);       \
            ++failures;                                     \
        }                                                   \
    } while (0)

static_assert(!std::is_copy_constructible_v<edgevlm::Model> && std::is_move_constructible_v<edgevlm::Model>);
static_assert(!std::is_copy_constructible_v<edgevlm::Result> && std::is_move_constructible_v<edgevlm::Result>);

int main(int argc, char **argv) {
    if (argc < 2) return std::fprintf(stderr, "usage: test_cpp_wrapper BUNDLE\n"), 2;
    std::vector<uint8_t> rgb(64 * 48 * 3);
    for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = uint8_t((i * 7) % 256);

    edgevlm::Model model(argv[1]);
    edgevlm::Image image = edgevlm::Image::from_pixels(rgb.data(), 64, 48, EVLM_RGB8);
    edgevlm::Prompt prompt;
    prompt.begin(EVLM_ROLE_USER).add_image(image, 0).add_text("What is this?");
    edgevlm::GenerateOptions opts;
    opts.max_new_tokens = 8;
    opts.ignore_eos = true;
    edgevlm::Result r = model.generate(prompt, opts);

    // The same generation through the C API directly: the same tokens.
    evlm_generate_options c;
    evlm_generate_options_init(&c);
    c.max_new_tokens = 8;
    c.ignore_eos = 1;
    evlm_result *raw = nullptr;
    EXPECT(evlm_generate(model.get(), prompt.get(), nullptr, &c, &raw) == EVLM_OK, "C generate");
    size_t n = 0;
    const int32_t *ids = evlm_result_tokens(raw, &n);
    EXPECT(r.tokens() == std::vector<int32_t>(ids, ids + n) && n == 8, "wrapper tokens equal the C API's");
    EXPECT(r.text() == evlm_result_text(raw) && r.finish_reason() == "length", "text and finish reason");
    EXPECT(r.timings().new_tokens == 8, "timings");
    evlm_result_free(raw);

    // Encode once, generate twice from it.
    edgevlm::Encoded enc = model.encode(prompt);
    EXPECT(model.generate(prompt, opts, nullptr, &enc).tokens() == r.tokens(), "generation from an encoding");

    // A source's frames through a TileReuse: the same frame again encodes nothing, with the same tokens.
    {
        edgevlm::TileReuse camera;
        EXPECT(model.encode(prompt, camera).reused_tiles() == 0, "first frame: every tile encoded");
        edgevlm::Encoded again = model.encode(prompt, camera);
        EXPECT(again.reused_tiles() == again.tiles() && again.tiles() == enc.tiles(), "same frame: all reused");
        EXPECT(model.generate(prompt, opts, nullptr, &again).tokens() == r.tokens(), "reused tiles, same tokens");
        try {
            edgevlm::TileReuse bad(-1.f);
            EXPECT(false, "a negative tolerance throws");
        } catch (const edgevlm::Error &e) {
            EXPECT(e.status() == EVLM_ERR_ARGUMENT, "a negative tolerance is an argument error");
        }
    }

    // Step by step: the same tokens, and a cancel ends it ("cancelled", no token after).
    {
        edgevlm::Generator gen = model.generator(prompt, opts, &enc);
        std::vector<int32_t> steps;
        while (auto t = gen.next()) steps.push_back(*t);
        EXPECT(steps == r.tokens() && gen.done() && gen.result().text() == r.text(), "generator steps");
        edgevlm::Generator cut = model.generator(prompt, opts);
        EXPECT(cut.next().has_value(), "first step");
        cut.cancel();
        EXPECT(!cut.next().has_value() && cut.result().finish_reason() == "cancelled" &&
                   cut.result().tokens().size() == 1, "generator cancel");
    }

    // A callback that returns false stops: a result, not an exception.
    int seen = 0;
    edgevlm::Result stopped = model.generate(prompt, opts, [&](int32_t, std::string_view) { return ++seen < 3; });
    EXPECT(stopped.finish_reason() == "cancelled" && stopped.tokens().size() == 3, "callback stops at 3");

    // A callback that throws: generation stops and the exception comes back out of generate().
    bool caught = false;
    try {
        model.generate(prompt, opts, [](int32_t, std::string_view) -> bool { throw std::logic_error("boom"); });
    } catch (const std::logic_error &e) {
        caught = std::strcmp(e.what(), "boom") == 0;
    }
    EXPECT(caught, "the callback's exception is rethrown");

    // Errors carry the C status and message.
    try {
        edgevlm::Model missing("/nonexistent/bundle");
        EXPECT(false, "opening a missing bundle throws");
    } catch (const edgevlm::Error &e) {
        EXPECT(e.status() == EVLM_ERR_MODEL && std::strlen(e.what()) > 10, "model error status and message");
    }
    try {
        edgevlm::Image::from_pixels(rgb.data(), 0, 48, EVLM_RGB8);
        EXPECT(false, "a zero-width image throws");
    } catch (const edgevlm::Error &e) {
        EXPECT(e.status() == EVLM_ERR_INPUT, "a zero-width image is an input error");
    }
    edgevlm::GenerateOptions bad;
    bad.max_new_tokens = 0;
    try {
        model.generate(prompt, bad);
        EXPECT(false, "max_new_tokens 0 throws");
    } catch (const edgevlm::Error &e) {
        EXPECT(e.status() == EVLM_ERR_ARGUMENT, "max_new_tokens 0 is an argument error");
    }

    // Tokenizer helpers round-trip; ownership moves.
    std::vector<int32_t> t = model.tokenize("Hello world");
    EXPECT(!t.empty() && model.detokenize(t) == "Hello world", "tokenize / detokenize");
    EXPECT(model.prompt_tokens(prompt).size() > 64, "prompt tokens include the image's");
    edgevlm::Model moved = std::move(model);
    EXPECT(moved.get() != nullptr && model.get() == nullptr, "a moved-from model is empty");
    const std::string k = moved.kernels();
    EXPECT(k.empty() || k == "attention:bf16" || k == "matmul_q4:vnni" || k == "attention:bf16,matmul_q4:vnni" ||
               k == "matmul_q4:avx2" || k == "matmul_f32,matmul_f32",
           "kernels");

    std::printf("%d failures\n", failures);
    return failures ? 1 : 0;
}
