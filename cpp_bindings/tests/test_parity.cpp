// The C API against the Python runtime's outputs (make_fixtures.py): prompt ids, greedy tokens and text for
// every case, bundle and variant; token ids and decoded text of 2,000+ strings; pixel values of 24 image sizes.
// Fixtures made on another architecture (the aarch64 stage runs x86's): fp32 must still give the same tokens; a
// quantized case may differ where the fixtures' own quantized tokens already depart from their fp32 tokens (a
// near-tie that ARM's and x86's int8/int4 kernels, rounding differently, may break either way). It is reported.
#include <cmath>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "edgevlm/edgevlm.h"

using json = nlohmann::json;
static int failures = 0;

#define CHECK(cond, ...)                     \
    do {                                     \
        if (!(cond)) {                       \
            std::fprintf(stderr, __VA_ARGS__); \
            std::fprintf(stderr, "\n");      \
            ++failures;                      \
        }                                    \
    } while (0)

static std::string dir;

#if defined(__aarch64__)
static const std::string kMachine = "aarch64";
#elif defined(__x86_64__)
static const std::string kMachine = "x86_64";
#else
static const std::string kMachine = "other";
#endif

static evlm_image *load_image(const json &info) {
    std::ifstream f(dir + "/" + info["file"].get<std::string>(), std::ios::binary);
    std::vector<uint8_t> px((std::istreambuf_iterator<char>(f)), {});
    int ch = info["channels"];
    evlm_image *img = nullptr;
    if (evlm_image_from_pixels(px.data(), info["width"], info["height"], 0, ch == 4 ? EVLM_RGBA8 : EVLM_RGB8, &img))
        std::fprintf(stderr, "image: %s\n", evlm_last_error());
    return img;
}

// `fp32`: the fp32 rows of the same bundle when fixtures from another machine are checked on a quantized variant
// (else null): where they differ from `expected`, a token difference is allowed.
static void run_cases(evlm_model *m, const json &cases, const json &expected, const std::string &label,
                      const json *fp32, float repetition_penalty = 1.0f) {
    for (const json &c : cases) {
        const std::string name = c["name"];
        evlm_prompt *p = nullptr;
        evlm_prompt_new(&p);
        std::vector<evlm_image *> images;
        for (const json &msg : c["messages"]) {
            std::string role = msg["role"];
            evlm_prompt_begin(p, role == "system" ? EVLM_ROLE_SYSTEM : role == "user" ? EVLM_ROLE_USER : EVLM_ROLE_ASSISTANT);
            for (const json &item : msg["content"]) {
                if (item["type"] == "text") {
                    evlm_prompt_add_text(p, item["text"].get<std::string>().c_str());
                } else {
                    images.push_back(load_image(item["image"]));
                    evlm_prompt_add_image(p, images.back(), c["split"]);
                }
            }
        }
        const json &want = expected[name];
        size_t n = 0;
        evlm_prompt_tokens(m, p, nullptr, 0, &n);
        std::vector<int32_t> ids(n);
        evlm_status s = evlm_prompt_tokens(m, p, ids.data(), ids.size(), &n);
        CHECK(s == EVLM_OK && ids == want["prompt_ids"].get<std::vector<int32_t>>(), "%s %s: prompt ids differ (%s)",
              label.c_str(), name.c_str(), evlm_last_error());
        evlm_generate_options o;
        evlm_generate_options_init(&o);
        o.max_new_tokens = 12;
        o.repetition_penalty = repetition_penalty;
        evlm_result *r = nullptr;
        s = evlm_generate(m, p, nullptr, &o, &r);
        CHECK(s == EVLM_OK, "%s %s: generate failed: %s", label.c_str(), name.c_str(), evlm_last_error());
        if (s == EVLM_OK) {
            size_t k = 0;
            const int32_t *t = evlm_result_tokens(r, &k);
            std::vector<int32_t> got(t, t + k);
            const bool near_tie = fp32 && (*fp32)[name]["tokens"] != want["tokens"];
            if (near_tie && got != want["tokens"].get<std::vector<int32_t>>()) {
                std::printf("%s %s: tokens differ from the fixtures' machine, allowed: there its quantized tokens "
                            "already differ from fp32 ('%s')\n", label.c_str(), name.c_str(), evlm_result_text(r));
            } else {
                CHECK(got == want["tokens"].get<std::vector<int32_t>>(), "%s %s: tokens differ", label.c_str(),
                      name.c_str());
                CHECK(want["text"].get<std::string>() == evlm_result_text(r), "%s %s: text differs: '%s'",
                      label.c_str(), name.c_str(), evlm_result_text(r));
            }
        }
        std::printf("%s %s: %zu prompt tokens, %s\n", label.c_str(), name.c_str(), n, s == EVLM_OK ? "ok" : "failed");
        evlm_result_free(r);
        for (evlm_image *i : images) evlm_image_free(i);
        evlm_prompt_free(p);
    }
}

static void run_preprocess(evlm_model *m, const json &entries, const std::string &label) {
    double worst = 0;
    for (const json &e : entries) {
        evlm_image *img = load_image(e);
        size_t n = 0;
        int tiles = 0, rows = 0, cols = 0;
        evlm_image_preprocess(m, img, e["split"], nullptr, 0, &n, &tiles, &rows, &cols);
        std::vector<float> got(n);
        evlm_status s = evlm_image_preprocess(m, img, e["split"], got.data(), got.size(), &n, &tiles, &rows, &cols);
        // One byte per value, a code into the entry's table of distinct floats (make_fixtures.py: pixel_codes).
        std::ifstream f(dir + "/" + e["values"].get<std::string>(), std::ios::binary);
        std::vector<uint8_t> codes((std::istreambuf_iterator<char>(f)), {});
        const std::vector<float> table = e["table"].get<std::vector<float>>();
        std::vector<float> want(codes.size());
        for (size_t i = 0; i < codes.size(); ++i) want[i] = codes[i] < table.size() ? table[codes[i]] : NAN;
        CHECK(s == EVLM_OK && got.size() == want.size() && tiles == e["tiles"] && rows == e["rows"] && cols == e["cols"],
              "%s preprocess %dx%d split %d: shape differs (%zu vs %zu values, %d tiles)", label.c_str(),
              int(e["width"]), int(e["height"]), int(e["split"]), got.size(), want.size(), tiles);
        double diff = 0;
        for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
            const double d = std::fabs(double(got[i]) - double(want[i]));
            if (!(d <= diff)) diff = d;  // a NaN on either side sticks, and fails the check below
        }
        CHECK(diff <= 1e-5, "%s preprocess %dx%d split %d: max abs diff %g", label.c_str(), int(e["width"]),
              int(e["height"]), int(e["split"]), diff);
        worst = std::max(worst, diff);
        evlm_image_free(img);
    }
    std::printf("%s preprocess: %zu images, max abs diff %g\n", label.c_str(), entries.size(), worst);
}

static void run_tokenizer(evlm_model *m, const json &entries) {
    int bad = 0;
    for (const json &e : entries) {
        const std::string text = e["text"];
        size_t n = 0;
        evlm_status s = evlm_tokenize(m, text.c_str(), e["add_special"] ? 1 : 0, nullptr, 0, &n);
        std::vector<int32_t> ids(n);
        if (s == EVLM_OK) s = evlm_tokenize(m, text.c_str(), e["add_special"] ? 1 : 0, ids.data(), n, &n);
        auto want = e["ids"].get<std::vector<int32_t>>();
        size_t len = 0;
        evlm_detokenize(m, want.data(), want.size(), 1, nullptr, 0, &len);
        std::string decoded(len + 1, '\0');
        evlm_detokenize(m, want.data(), want.size(), 1, &decoded[0], decoded.size(), &len);
        decoded.resize(len);
        if (s != EVLM_OK || ids != want || decoded != e["decoded"].get<std::string>()) {
            if (bad++ < 10)
                std::fprintf(stderr, "tokenizer: '%s' (add_special %d): ids %s, decode %s\n", text.c_str(),
                             int(e["add_special"]), ids == want ? "equal" : "differ",
                             decoded == e["decoded"].get<std::string>() ? "equal" : "differs");
        }
    }
    CHECK(bad == 0, "tokenizer: %d of %zu strings differ", bad, entries.size());
    std::printf("tokenizer: %zu strings, %d differ\n", entries.size(), bad);
}

int main(int argc, char **argv) {
    if (argc < 2) return std::fprintf(stderr, "usage: test_parity FIXTURES_DIR [256M|2.2B [fp32|q4|preprocess]]\n"), 2;
    dir = argv[1];
    std::string only = argc > 2 ? argv[2] : "";
    // A variant: that variant's rows only, so that ctest runs each variant as its own test (two cores share them).
    // "preprocess": the pixel values only, as ctest runs them once more for each resampler kernel set
    // (EDGEVLM_RESAMPLER=avx2|generic; the default is the best this CPU has).
    const std::string part = argc > 3 ? argv[3] : "";
    const bool preprocess_only = part == "preprocess";
    if (preprocess_only)
        std::printf("resampler kernels asked for: %s\n", std::getenv("EDGEVLM_RESAMPLER") ? std::getenv("EDGEVLM_RESAMPLER") : "best");
    std::ifstream f(dir + "/expected.json");
    json expected = json::parse(f);
    int ran = 0;  // bundle-variant pairs run: a name that matches none is an error, not a pass
    std::printf("fixtures made on %s, run on %s\n", expected.value("machine", kMachine).c_str(), kMachine.c_str());
    for (auto &[arch, bundle] : expected["bundles"].items()) {
        if (!only.empty() && arch != only) continue;
        for (auto &[variant, rows] : bundle["variants"].items()) {
            if ((preprocess_only && variant != "fp32") || (!preprocess_only && !part.empty() && variant != part)) continue;
            ++ran;
            evlm_model_options o;
            evlm_model_options_init(&o);
            o.variant = variant.c_str();
            o.threads = 1;
            evlm_model *m = nullptr;
            if (evlm_model_open(bundle["path"].get<std::string>().c_str(), &o, &m) != EVLM_OK) {
                std::fprintf(stderr, "open %s %s: %s\n", arch.c_str(), variant.c_str(), evlm_last_error());
                return 1;
            }
            const std::string kernels = bundle.value("kernels", json::object()).value(variant, std::string());
            if (kernels != evlm_model_kernels(m)) {
                std::fprintf(stderr, "FAIL %s %s: the C library runs kernels '%s', Python '%s'\n", arch.c_str(),
                             variant.c_str(), evlm_model_kernels(m), kernels.c_str());
                ++failures;
            }
            const bool elsewhere = expected.value("machine", kMachine) != kMachine;
            const json *fp32 = elsewhere && variant != "fp32" ? &bundle["variants"]["fp32"] : nullptr;
            if (!preprocess_only) run_cases(m, expected["cases"], rows, arch + " " + variant, fp32);
            // Python's repetition penalty (transformers' rule) on a few cases: the C option must equal it.
            if (!preprocess_only && variant == "fp32" && bundle.contains("penalty")) {
                json some = json::array();
                for (const json &c : expected["cases"])
                    if (bundle["penalty"]["rows"].contains(c["name"].get<std::string>())) some.push_back(c);
                const float penalty = bundle["penalty"]["repetition_penalty"].get<float>();
                run_cases(m, some, bundle["penalty"]["rows"], arch + " fp32 repetition_penalty", nullptr, penalty);
            }
            if (variant == "fp32") run_preprocess(m, bundle["preprocess"], arch);
            if (variant == "fp32" && arch == "256M" && !preprocess_only) run_tokenizer(m, expected["tokenizer"]);
            evlm_model_close(m);
        }
    }
    if (!ran) {
        std::fprintf(stderr, "no bundle or variant matches '%s %s' in %s/expected.json\n", only.c_str(), part.c_str(),
                     dir.c_str());
        return 1;
    }
    std::printf("%d failures\n", failures);
    return failures ? 1 : 0;
}
