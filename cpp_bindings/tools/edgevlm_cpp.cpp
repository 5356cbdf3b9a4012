// edgevlm-cpp: a thin command-line client of the C API.
//   edgevlm-cpp caption IMAGE --model BUNDLE [--variant V] [--prompt TEXT] [--max-new-tokens N] [--threads N]
//                             [--no-split]
//   ffmpeg -i cam -f rawvideo -pix_fmt rgb24 -s 640x480 - | edgevlm-cpp watch --size 640x480 --model BUNDLE
// watch captions the newest complete frame on stdin (older ones are dropped while a caption runs).
#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "edgevlm/edgevlm.h"

namespace {

// The Python CLI's defaults (edgevlm/defaults.py): a caption, and one frame of a live source.
constexpr const char *kCaptionPrompt = EVLM_DEFAULT_CAPTION_PROMPT;  // edgevlm.h's table, shared with Python
constexpr const char *kFramePrompt = EVLM_DEFAULT_LIVE_PROMPT;
constexpr int kCaptionTokens = EVLM_DEFAULT_CAPTION_TOKENS, kLiveTokens = EVLM_DEFAULT_LIVE_TOKENS;

struct Args {
    std::string command, image, model, variant, prompt, size;
    int max_new_tokens = -1, threads = 0, split = -1;  // -1 / empty: the command's default
    bool help = false;
};

constexpr const char *kUsage =
    "usage: edgevlm-cpp caption IMAGE --model BUNDLE [--variant V] [--prompt TEXT] [--max-new-tokens N]\n"
    "                  [--threads N] [--no-split]\n"
    "       edgevlm-cpp watch --size WxH --model BUNDLE [...]   (raw RGB24 frames on stdin, one caption a line)\n"
    "       edgevlm-cpp version\n"
    "defaults as `edgevlm`'s: caption 64 new tokens, 'Describe this image.'; watch 32, 'Describe this image in one\n"
    "sentence.'; --model may come from EDGEVLM_MODEL.\n";

int usage(const char *why) {
    if (why) std::fprintf(stderr, "error: %s\n", why);
    std::fputs(kUsage, stderr);
    return 2;
}

bool parse(int argc, char **argv, Args &a, std::string &why) {
    if (argc < 2) return why = "no command", false;
    a.command = argv[1];
    if (a.command == "--help" || a.command == "-h" || a.command == "help") return a.help = true;
    if (const char *env = std::getenv("EDGEVLM_MODEL")) a.model = env;
    for (int i = 2; i < argc; ++i) {
        std::string k = argv[i];
        auto value = [&](std::string &out) {
            if (i + 1 >= argc) return why = k + " needs a value", false;
            out = argv[++i];
            return true;
        };
        auto number = [&](int &out) {
            std::string v;
            if (!value(v)) return false;
            char *end = nullptr;
            long n = std::strtol(v.c_str(), &end, 10);
            if (*end || n < 0 || n > 1000000) return why = k + " needs a non-negative integer, not '" + v + "'", false;
            out = int(n);
            return true;
        };
        bool ok = true;
        if (k == "--help" || k == "-h") a.help = true;
        else if (k == "--model") ok = value(a.model);
        else if (k == "--variant") ok = value(a.variant);
        else if (k == "--prompt") ok = value(a.prompt);
        else if (k == "--size") ok = value(a.size);
        else if (k == "--max-new-tokens") ok = number(a.max_new_tokens);
        else if (k == "--threads") ok = number(a.threads);
        else if (k == "--no-split") a.split = 0;
        else if (!k.empty() && k[0] != '-' && a.image.empty()) a.image = k;
        else return why = "unknown option " + k, false;
        if (!ok) return false;
    }
    return true;
}

evlm_model *open_model(const Args &a) {
    if (a.model.empty()) {
        std::fprintf(stderr, "error: no model; pass --model BUNDLE (a folder made by `edgevlm export`) or set "
                             "EDGEVLM_MODEL.\n");
        return nullptr;
    }
    evlm_model_options o;
    evlm_model_options_init(&o);
    o.variant = a.variant.empty() ? nullptr : a.variant.c_str();
    o.threads = a.threads;
    evlm_model *m = nullptr;
    if (evlm_model_open(a.model.c_str(), &o, &m) != EVLM_OK) std::fprintf(stderr, "error: %s\n", evlm_last_error());
    return m;
}

int print_piece(int32_t, const char *piece, void *) {
    std::fputs(piece, stdout);
    std::fflush(stdout);
    return 0;
}

// One caption of one image; prints the text as it is generated. Returns the C API status.
evlm_status caption(evlm_model *m, evlm_image *img, const Args &a, bool stream, std::string *text) {
    evlm_prompt *p = nullptr;
    evlm_result *r = nullptr;
    evlm_status s = evlm_prompt_new(&p);
    if (s == EVLM_OK) s = evlm_prompt_begin(p, EVLM_ROLE_USER);
    if (s == EVLM_OK) s = evlm_prompt_add_image(p, img, a.split);
    if (s == EVLM_OK) s = evlm_prompt_add_text(p, a.prompt.c_str());
    evlm_generate_options g;
    evlm_generate_options_init(&g);
    g.max_new_tokens = a.max_new_tokens;  // set by main: the command's default unless given
    if (stream) g.on_token = print_piece;
    if (s == EVLM_OK) s = evlm_generate(m, p, nullptr, &g, &r);
    if (s == EVLM_OK && text) *text = evlm_result_text(r);
    evlm_result_free(r);
    evlm_prompt_free(p);
    return s;
}

int run_caption(const Args &a) {
    if (a.image.empty()) return usage("caption needs an IMAGE file");
    int w = 0, h = 0, n = 0;
    unsigned char *pixels = stbi_load(a.image.c_str(), &w, &h, &n, 3);
    if (!pixels) {
        std::fprintf(stderr, "error: cannot read %s as an image (%s); pass a JPEG, PNG, BMP or GIF file.\n",
                     a.image.c_str(), stbi_failure_reason());
        return 3;
    }
    evlm_model *m = open_model(a);
    if (!m) {
        stbi_image_free(pixels);
        return 4;
    }
    evlm_image *img = nullptr;
    evlm_status s = evlm_image_from_pixels(pixels, w, h, 0, EVLM_RGB8, &img);
    stbi_image_free(pixels);
    if (s == EVLM_OK) s = caption(m, img, a, true, nullptr);
    std::fputs("\n", stdout);
    if (s != EVLM_OK) std::fprintf(stderr, "error: %s\n", evlm_last_error());
    evlm_image_free(img);
    evlm_model_close(m);
    return s == EVLM_OK ? 0 : 1;
}

int run_watch(const Args &a) {
    int w = 0, h = 0;
    if (std::sscanf(a.size.c_str(), "%dx%d", &w, &h) != 2 || w < 1 || h < 1 || w > 16384 || h > 16384)
        return usage("watch needs --size WxH (the raw RGB24 frame size on stdin), e.g. --size 640x480");
    evlm_model *m = open_model(a);
    if (!m) return 4;
    const size_t frame_bytes = size_t(w) * size_t(h) * 3;
    std::mutex mu;
    std::condition_variable cv;
    std::vector<unsigned char> latest(frame_bytes);
    long latest_index = -1;
    bool ended = false;
    std::thread reader([&] {  // keeps only the newest complete frame
        std::vector<unsigned char> buf(frame_bytes);
        for (long index = 0;; ++index) {
            if (std::fread(buf.data(), 1, frame_bytes, stdin) != frame_bytes) break;
            std::lock_guard<std::mutex> lock(mu);
            latest.swap(buf);
            latest_index = index;
            cv.notify_one();
        }
        std::lock_guard<std::mutex> lock(mu);
        ended = true;
        cv.notify_one();
    });
    long done = -1;
    int rc = 0;
    std::vector<unsigned char> frame(frame_bytes);
    for (;;) {
        long index;
        {
            std::unique_lock<std::mutex> lock(mu);
            cv.wait(lock, [&] { return latest_index > done || ended; });
            if (latest_index <= done) break;
            index = latest_index;
            frame = latest;
        }
        auto t0 = std::chrono::steady_clock::now();
        evlm_image *img = nullptr;
        std::string text;
        evlm_status s = evlm_image_from_pixels(frame.data(), w, h, 0, EVLM_RGB8, &img);
        if (s == EVLM_OK) s = caption(m, img, a, false, &text);
        evlm_image_free(img);
        if (s != EVLM_OK) {
            std::fprintf(stderr, "error: %s\n", evlm_last_error());
            rc = 1;
            break;
        }
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        for (char &c : text)  // one caption per line, as the Python CLI's text output
            if (c == '\n' || c == '\r') c = ' ';
        std::printf("frame %ld (%.0f ms): %s\n", index, ms, text.c_str());
        std::fflush(stdout);
        done = index;
    }
    if (rc) reader.detach();  // it may be blocked reading stdin; the process ends with this error
    else reader.join();
    evlm_model_close(m);
    return rc;
}

}  // namespace

int main(int argc, char **argv) {
    Args a;
    std::string why;
    if (!parse(argc, argv, a, why)) return usage(why.c_str());
    if (a.help) return std::fputs(kUsage, stdout) < 0;
    const bool live = a.command == "watch";
    if (a.prompt.empty()) a.prompt = live ? kFramePrompt : kCaptionPrompt;
    if (a.max_new_tokens < 0) a.max_new_tokens = live ? kLiveTokens : kCaptionTokens;
    if (a.command == "version") return std::printf("edgevlm %s\n", evlm_version()) < 0;
    if (a.command == "caption") return run_caption(a);
    if (a.command == "watch") return run_watch(a);
    return usage(("unknown command " + a.command).c_str());
}
