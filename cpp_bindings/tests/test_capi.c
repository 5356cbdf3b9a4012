/* The C API's contract, in C99: bad input returns an error code and a message (never a crash), one model serves
   two threads with the same tokens as one, the step-wise generator gives evlm_generate's tokens and ends cleanly
   when another thread cancels it mid-step, and open/ask/close in a loop leaks nothing (LeakSanitizer in the
   sanitizer build, valgrind otherwise).
   usage: test_capi BUNDLE ALTERED_BUNDLE [loops [cancel_rounds]] */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgevlm/edgevlm.h"

static int failures = 0;
#define EXPECT(cond, what)                                                          \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "FAIL %s (line %d): last error '%s'\n", what, __LINE__, \
                    evlm_last_error());                                             \
            ++failures;                                                             \
        }                                                                           \
    } while (0)
#define EXPECT_ERR(call, code, what) \
    EXPECT((call) == (code) && strlen(evlm_last_error()) > 0, what)

static uint8_t pixels[64 * 48 * 4];

static evlm_model *open_model(const char *dir) {
    evlm_model_options o;
    evlm_model *m = NULL;
    evlm_model_options_init(&o);
    o.threads = 1;
    if (evlm_model_open(dir, &o, &m) != EVLM_OK) fprintf(stderr, "open %s: %s\n", dir, evlm_last_error());
    return m;
}

static evlm_prompt *image_prompt(const char *text) {
    evlm_prompt *p = NULL;
    evlm_image *img = NULL;
    evlm_prompt_new(&p);
    evlm_prompt_begin(p, EVLM_ROLE_USER);
    evlm_image_from_pixels(pixels, 64, 48, 0, EVLM_RGB8, &img);
    evlm_prompt_add_image(p, img, 0);
    evlm_image_free(img); /* the prompt keeps its own reference */
    evlm_prompt_add_text(p, text);
    return p;
}

static evlm_prompt *text_prompt(const char *text) {
    evlm_prompt *p = NULL;
    evlm_prompt_new(&p);
    evlm_prompt_begin(p, EVLM_ROLE_USER);
    evlm_prompt_add_text(p, text);
    return p;
}

static int cancel_after_three(int32_t token, const char *piece, void *user) {
    (void)token;
    (void)piece;
    return ++*(int *)user >= 3;
}

static void forbid_all(float *logits, size_t vocab, const int32_t *tokens, size_t n, void *user) {
    size_t i;
    (void)tokens;
    (void)n;
    (void)user;
    for (i = 0; i < vocab; ++i) logits[i] = -INFINITY;
}

static void bad_input(const char *bundle, const char *altered) {
    evlm_model *m = NULL;
    evlm_model_options o;
    evlm_image *img = NULL;
    evlm_prompt *p = NULL;
    evlm_result *r = NULL;
    evlm_generate_options g;
    int calls = 0;
    size_t n = 0;

    EXPECT(strlen(evlm_version()) > 0, "version");
    EXPECT_ERR(evlm_model_open("/nonexistent/bundle", NULL, &m), EVLM_ERR_MODEL, "missing bundle");
    EXPECT(m == NULL, "no model on failure");
    EXPECT_ERR(evlm_model_open(altered, NULL, &m), EVLM_ERR_MODEL, "altered file");
    EXPECT(strstr(evlm_last_error(), "checksum") != NULL, "altered file names the checksum");
    evlm_model_options_init(&o);
    o.variant = "int3";
    EXPECT_ERR(evlm_model_open(bundle, &o, &m), EVLM_ERR_MODEL, "unknown variant");
    EXPECT(strstr(evlm_last_error(), "fp32") != NULL, "unknown variant lists the variants");
    evlm_model_options_init(&o);
    o.providers = "npu";
    EXPECT_ERR(evlm_model_open(bundle, &o, &m), EVLM_ERR_ARGUMENT, "unknown provider");
    EXPECT(strstr(evlm_last_error(), "auto, cpu or cuda") != NULL, "unknown provider names the known ones");
    o.providers = "auto"; /* the default spelt out: this CPU build of ONNX Runtime has no CUDA, so the CPU */
    EXPECT(evlm_model_open(bundle, &o, &m) == EVLM_OK, "providers auto");
    evlm_model_close(m);
    m = NULL;
    EXPECT_ERR(evlm_model_open(NULL, NULL, &m), EVLM_ERR_ARGUMENT, "NULL dir");
    EXPECT_ERR(evlm_model_open(bundle, NULL, NULL), EVLM_ERR_ARGUMENT, "NULL out");
    EXPECT_ERR(evlm_image_from_pixels(NULL, 4, 4, 0, EVLM_RGB8, &img), EVLM_ERR_ARGUMENT, "NULL pixels");
    EXPECT_ERR(evlm_image_from_pixels(pixels, 0, 4, 0, EVLM_RGB8, &img), EVLM_ERR_INPUT, "zero-size image");
    EXPECT_ERR(evlm_image_from_pixels(pixels, 4, -1, 0, EVLM_RGB8, &img), EVLM_ERR_INPUT, "negative height");
    EXPECT_ERR(evlm_image_from_pixels(pixels, 16, 4, 40, EVLM_RGB8, &img), EVLM_ERR_ARGUMENT, "stride < row");
    EXPECT_ERR(evlm_image_from_pixels(pixels, 4, 4, 0, (evlm_pixel_format)9, &img), EVLM_ERR_ARGUMENT, "bad format");
    EXPECT(img == NULL, "no image on failure");
    EXPECT_ERR(evlm_prompt_new(NULL), EVLM_ERR_ARGUMENT, "NULL prompt out");
    evlm_prompt_new(&p);
    EXPECT_ERR(evlm_prompt_add_text(p, "no message begun"), EVLM_ERR_ARGUMENT, "text before begin");
    EXPECT_ERR(evlm_prompt_begin(p, (evlm_role)7), EVLM_ERR_ARGUMENT, "unknown role");
    evlm_prompt_begin(p, EVLM_ROLE_USER);
    EXPECT_ERR(evlm_prompt_add_text(p, NULL), EVLM_ERR_ARGUMENT, "NULL text");
    EXPECT_ERR(evlm_prompt_add_text(p, "bad \xff utf8"), EVLM_ERR_INPUT, "invalid UTF-8");
    EXPECT_ERR(evlm_prompt_add_text(p, "an <image> in text"), EVLM_ERR_INPUT, "reserved token in text");
    EXPECT_ERR(evlm_prompt_add_image(p, NULL, 0), EVLM_ERR_ARGUMENT, "NULL image");
    evlm_prompt_free(p);
    evlm_prompt_free(NULL);
    evlm_image_free(NULL);
    evlm_result_free(NULL);
    evlm_encoded_free(NULL);
    evlm_model_close(NULL);

    m = open_model(bundle);
    EXPECT(m != NULL, "open");
    if (!m) return;
    EXPECT_ERR(evlm_generate(m, NULL, NULL, NULL, &r), EVLM_ERR_ARGUMENT, "NULL prompt");
    evlm_prompt_new(&p);
    EXPECT_ERR(evlm_generate(m, p, NULL, NULL, &r), EVLM_ERR_INPUT, "empty prompt");
    evlm_prompt_begin(p, EVLM_ROLE_USER);
    EXPECT_ERR(evlm_generate(m, p, NULL, NULL, &r), EVLM_ERR_INPUT, "message without items");
    evlm_prompt_free(p);

    p = image_prompt("Describe this image.");
    evlm_generate_options_init(&g);
    g.max_new_tokens = 1000000;
    EXPECT_ERR(evlm_generate(m, p, NULL, &g, &r), EVLM_ERR_CONTEXT, "prompt past the context");
    EXPECT(r == NULL, "no result past the context");
    g.max_new_tokens = 0;
    EXPECT_ERR(evlm_generate(m, p, NULL, &g, &r), EVLM_ERR_ARGUMENT, "max_new_tokens 0");
    g.max_new_tokens = 16;
    g.on_token = cancel_after_three;
    g.on_token_user_data = &calls;
    EXPECT(evlm_generate(m, p, NULL, &g, &r) == EVLM_OK, "a stopped answer is not an error (as Python)");
    EXPECT(r != NULL && strcmp(evlm_result_finish_reason(r), "cancelled") == 0, "cancelled result kept");
    evlm_result_tokens(r, &n);
    EXPECT(n == 3, "three tokens before the cancel");
    evlm_result_free(r);
    r = NULL;
    evlm_generate_options_init(&g);
    g.logits_hook = forbid_all;
    EXPECT_ERR(evlm_generate(m, p, NULL, &g, &r), EVLM_ERR_INPUT, "every token forbidden");
    EXPECT(strcmp(evlm_model_kernels(NULL), "") == 0, "no kernels for no model");
    {
        const char *k = evlm_model_kernels(m);
        EXPECT(strcmp(k, "") == 0 || strcmp(k, "attention:bf16") == 0 || strcmp(k, "matmul_q4:vnni") == 0 ||
                   strcmp(k, "attention:bf16,matmul_q4:vnni") == 0 || strcmp(k, "matmul_f32,matmul_f32") == 0,
               "kernels: ONNX Runtime's, the bf16 attention, the 4-bit decoder's products, fp32's products");
    }
    evlm_generate_options_init(&g);
    g.do_sample = 1;
    g.temperature = -1;
    EXPECT_ERR(evlm_generate(m, p, NULL, &g, &r), EVLM_ERR_ARGUMENT, "negative temperature");
    {   /* temperature 0 is greedy even with do_sample set: the same tokens as greedy, whatever the seed */
        evlm_result *greedy = NULL, *zero = NULL;
        const int32_t *a, *b;
        size_t na, nb;
        evlm_generate_options_init(&g);
        g.max_new_tokens = 8;
        g.ignore_eos = 1;
        EXPECT(evlm_generate(m, p, NULL, &g, &greedy) == EVLM_OK, "greedy run");
        g.do_sample = 1;
        g.temperature = 0;
        g.seed = 12345;
        EXPECT(evlm_generate(m, p, NULL, &g, &zero) == EVLM_OK, "temperature 0 run");
        a = evlm_result_tokens(greedy, &na);
        b = evlm_result_tokens(zero, &nb);
        EXPECT(na == 8 && nb == na && memcmp(a, b, na * sizeof *a) == 0, "temperature 0 equals greedy");
        evlm_result_free(greedy);
        evlm_result_free(zero);
    }
    {
        int32_t ids[2];
        EXPECT_ERR(evlm_prompt_tokens(m, p, ids, 2, &n), EVLM_ERR_ARGUMENT, "token buffer too small");
    }
    evlm_prompt_free(p);
    evlm_model_close(m);
}

struct job {
    evlm_model *model;
    int32_t tokens[32];
    size_t n;
    int status;
};

static void *ask(void *arg) {
    struct job *j = arg;
    evlm_prompt *p = image_prompt("What is in this image?");
    evlm_result *r = NULL;
    evlm_generate_options g;
    evlm_generate_options_init(&g);
    g.max_new_tokens = 12;
    j->status = evlm_generate(j->model, p, NULL, &g, &r);
    if (j->status == EVLM_OK) {
        const int32_t *t = evlm_result_tokens(r, &j->n);
        memcpy(j->tokens, t, j->n * sizeof *t);
    }
    evlm_result_free(r);
    evlm_prompt_free(p);
    return NULL;
}

static void two_threads(const char *bundle) {
    struct job alone = {0}, a = {0}, b = {0};
    pthread_t ta, tb;
    evlm_model *m = open_model(bundle);
    if (!m) {
        ++failures;
        return;
    }
    alone.model = a.model = b.model = m;
    ask(&alone);
    pthread_create(&ta, NULL, ask, &a);
    pthread_create(&tb, NULL, ask, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    EXPECT(alone.status == EVLM_OK && a.status == EVLM_OK && b.status == EVLM_OK, "threads ran");
    EXPECT(a.n == alone.n && b.n == alone.n && !memcmp(a.tokens, alone.tokens, alone.n * sizeof(int32_t)) &&
               !memcmp(b.tokens, alone.tokens, alone.n * sizeof(int32_t)),
           "two threads give the single thread's tokens");
    evlm_model_close(m);
}

/* Another thread's cancel: it waits until the generator has produced `after` tokens, cancels, and notes how many
   tokens had been produced once the cancel returned: at most one step (running then) may follow. */
struct canceller {
    evlm_generator *gen;
    int produced, after, seen;
};

static void *cancel_when_ready(void *arg) {
    struct canceller *c = arg;
    while (__atomic_load_n(&c->produced, __ATOMIC_ACQUIRE) < c->after) {
    }
    evlm_generator_cancel(c->gen);
    c->seen = __atomic_load_n(&c->produced, __ATOMIC_ACQUIRE);
    return NULL;
}

static void generator(const char *bundle, int rounds) {
    evlm_model *m = open_model(bundle);
    evlm_prompt *p = image_prompt("Describe this image.");
    evlm_generate_options g;
    evlm_generator *gen = NULL;
    evlm_result *whole = NULL, *r = NULL;
    int32_t tokens[64], token = 0;
    size_t n = 0, i;
    int done = 0, steps = 0, round, clean = 0;
    const int32_t *want;
    if (!m) {
        ++failures;
        return;
    }
    evlm_generate_options_init(&g);
    g.max_new_tokens = 8;
    g.ignore_eos = 1;
    EXPECT(evlm_generate(m, p, NULL, &g, &whole) == EVLM_OK, "generate for the generator's reference");
    want = evlm_result_tokens(whole, &n);
    /* step by step: the same tokens, the same text, then done with no token */
    EXPECT(evlm_generator_new(m, p, NULL, &g, &gen) == EVLM_OK, "generator_new");
    EXPECT(evlm_generator_result(gen, &r) == EVLM_OK && strcmp(evlm_result_finish_reason(r), "") == 0,
           "no finish_reason before the end");
    evlm_result_free(r);
    while (!done && steps < 64 && evlm_generator_step(gen, &token, &done) == EVLM_OK) tokens[steps++] = token;
    EXPECT(steps == (int)n && !memcmp(tokens, want, n * sizeof *want), "steps give evlm_generate's tokens");
    EXPECT(evlm_generator_step(gen, &token, &done) == EVLM_OK && done == 1 && token == -1, "a step after the end");
    EXPECT(evlm_generator_result(gen, &r) == EVLM_OK && strcmp(evlm_result_text(r), evlm_result_text(whole)) == 0 &&
               strcmp(evlm_result_finish_reason(r), "length") == 0, "the generator's result equals generate's");
    evlm_result_free(r);
    evlm_generator_free(gen);
    /* cancelled before the first step: nothing runs */
    EXPECT(evlm_generator_new(m, p, NULL, &g, &gen) == EVLM_OK, "generator_new");
    evlm_generator_cancel(gen);
    EXPECT(evlm_generator_step(gen, &token, &done) == EVLM_OK && done == 1 && token == -1, "cancelled at once");
    EXPECT(evlm_generator_result(gen, &r) == EVLM_OK && strcmp(evlm_result_finish_reason(r), "cancelled") == 0 &&
               (evlm_result_tokens(r, &i), i == 0), "cancelled before any token");
    evlm_result_free(r);
    evlm_generator_free(gen);
    /* another thread cancels while this one steps: the answer ends within one more token, cleanly, every time
       (a text prompt: the race is in the decoding steps, and an image's encode per round was most of the time) */
    evlm_prompt_free(p);
    p = text_prompt("Describe the sea.");
    g.max_new_tokens = 400;
    for (round = 0; round < rounds; ++round) {
        struct canceller c;
        pthread_t t;
        size_t before;
        c.produced = 0;
        c.after = 1 + round % 4;
        done = 0;
        steps = 0;
        if (evlm_generator_new(m, p, NULL, &g, &gen) != EVLM_OK) break;
        c.gen = gen;
        pthread_create(&t, NULL, cancel_when_ready, &c);
        while (!done && evlm_generator_step(gen, &token, &done) == EVLM_OK) {
            if (!done) ++steps;
            __atomic_store_n(&c.produced, steps, __ATOMIC_RELEASE);
        }
        pthread_join(t, NULL);
        if (evlm_generator_result(gen, &r) == EVLM_OK) {
            evlm_result_tokens(r, &before);
            clean += strcmp(evlm_result_finish_reason(r), "cancelled") == 0 && before >= (size_t)c.after &&
                     before <= (size_t)c.seen + 1;
            evlm_result_free(r);
        }
        evlm_generator_free(gen);
    }
    EXPECT(clean == rounds, "a cancel from another thread ends every generator within one token");
    printf("generator: %d of %d cancels from another thread ended cleanly\n", clean, rounds);
    evlm_result_free(whole);
    evlm_prompt_free(p);
    evlm_model_close(m);
}

static void open_ask_close(const char *bundle, int loops) {
    int i;
    for (i = 0; i < loops; ++i) {
        struct job j = {0};
        j.model = open_model(bundle);
        if (!j.model) {
            ++failures;
            return;
        }
        ask(&j);
        EXPECT(j.status == EVLM_OK, "ask in the loop");
        evlm_model_close(j.model);
    }
}

/* A fixed camera: a 1024 x 768 scene whose top-left corner changes. Through one evlm_tile_reuse the second frame
   encodes only the corner's tile(s) and the global view, and answers with the tokens of a full encode. */
static evlm_prompt *frame_prompt(const uint8_t *rgb, int w, int h, int split) {
    evlm_prompt *p = NULL;
    evlm_image *img = NULL;
    evlm_prompt_new(&p);
    evlm_prompt_begin(p, EVLM_ROLE_USER);
    evlm_image_from_pixels(rgb, w, h, 0, EVLM_RGB8, &img);
    evlm_prompt_add_image(p, img, split);
    evlm_image_free(img);
    evlm_prompt_add_text(p, "Describe.");
    return p;
}

static int same_answer(evlm_model *m, evlm_prompt *p, const evlm_encoded *e) {
    evlm_generate_options g;
    evlm_result *a = NULL, *b = NULL;
    const int32_t *ta, *tb;
    size_t na = 0, nb = 0;
    int same;
    evlm_generate_options_init(&g);
    g.max_new_tokens = 4;
    evlm_generate(m, p, e, &g, &a);
    evlm_generate(m, p, NULL, &g, &b); /* encoded here, every tile */
    if (!a || !b) return evlm_result_free(a), evlm_result_free(b), 0;
    ta = evlm_result_tokens(a, &na);
    tb = evlm_result_tokens(b, &nb);
    same = na == nb && na > 0 && memcmp(ta, tb, na * sizeof *ta) == 0;
    evlm_result_free(a);
    evlm_result_free(b);
    return same;
}

/* Encodes `p` through `reuse`; returns how many tiles were reused (-1 on failure), the tile count in `tiles`. */
static int reuse_encode(evlm_model *m, evlm_prompt *p, evlm_tile_reuse *reuse, evlm_encoded **e, int *tiles) {
    int reused = -1;
    *tiles = 0;
    *e = NULL; /* freed by the caller either way */
    if (evlm_encode_reuse(m, p, reuse, e) != EVLM_OK) return -1;
    evlm_encoded_tiles(*e, tiles, &reused);
    return reused;
}

static void tile_reuse(const char *bundle) {
    const int w = 1024, h = 768;
    uint8_t *scene = malloc((size_t)w * h * 3), *moved = malloc((size_t)w * h * 3);
    evlm_model *m = open_model(bundle);
    evlm_tile_reuse *reuse = NULL;
    evlm_encoded *e = NULL;
    evlm_prompt *p;
    int tiles = 0, reused = 0, x, y;
    size_t i;
    if (!m || !scene || !moved) {
        EXPECT(0, "tile reuse setup");
        return;
    }
    for (i = 0; i < (size_t)w * h * 3; ++i) scene[i] = (uint8_t)((i * 7 + i / 13 + i / 4099) & 0xff);
    memcpy(moved, scene, (size_t)w * h * 3);
    for (y = 0; y < 60; ++y)
        for (x = 0; x < 60; ++x) memset(moved + ((size_t)y * w + x) * 3, 255, 3);
    EXPECT(evlm_tile_reuse_new(0.f, &reuse) == EVLM_OK, "tile reuse new");

    p = frame_prompt(scene, w, h, 1);
    EXPECT(reuse_encode(m, p, reuse, &e, &tiles) == 0 && tiles == 13, "the first frame encodes every tile");
    evlm_encoded_free(e);
    EXPECT(reuse_encode(m, p, reuse, &e, &tiles) == 13, "the same frame encodes nothing");
    evlm_encoded_free(e);
    evlm_prompt_free(p);

    p = frame_prompt(moved, w, h, 1);
    reused = reuse_encode(m, p, reuse, &e, &tiles);
    EXPECT(tiles == 13 && reused >= 9 && reused <= 11, "only the corner's tiles and the global view are encoded");
    EXPECT(same_answer(m, p, e), "reused tiles give the tokens of a full encode");
    evlm_encoded_free(e);
    evlm_prompt_free(p);

    /* Another geometry (the same pixels, not split: one tile) starts over, and answers as a full encode. One tile
       keeps the checks below cheap (every split frame is 13 encoder runs; under qemu 5 s each). */
    p = frame_prompt(moved, w, h, 0);
    EXPECT(reuse_encode(m, p, reuse, &e, &tiles) == 0 && tiles == 1, "a new geometry encodes every tile");
    EXPECT(same_answer(m, p, e), "a new geometry gives the tokens of a full encode");
    evlm_encoded_free(e);
    EXPECT(reuse_encode(m, p, reuse, &e, &tiles) == 1, "the same unsplit frame encodes nothing");
    evlm_encoded_free(e);
    {   /* the same frame through another model: its own features, not the first model's */
        evlm_model *other = open_model(bundle);
        EXPECT(other && reuse_encode(other, p, reuse, &e, &tiles) == 0, "another model starts over");
        evlm_encoded_free(e);
        evlm_model_close(other);
    }
    evlm_prompt_free(p);

    evlm_tile_reuse_free(reuse);
    EXPECT_ERR(evlm_tile_reuse_new(-1.f, &reuse), EVLM_ERR_ARGUMENT, "negative tolerance");
    EXPECT_ERR(evlm_tile_reuse_new(NAN, &reuse), EVLM_ERR_ARGUMENT, "NaN tolerance");
    EXPECT_ERR(evlm_tile_reuse_new(300.f, &reuse), EVLM_ERR_ARGUMENT, "tolerance over 255");
    EXPECT(reuse == NULL, "no tile reuse on failure");
    EXPECT_ERR(evlm_encoded_tiles(NULL, &tiles, &reused), EVLM_ERR_ARGUMENT, "NULL encoding");
    evlm_tile_reuse_free(NULL);
    free(scene);
    free(moved);
    evlm_model_close(m);
}

int main(int argc, char **argv) {
    size_t i;
    if (argc < 3) return fprintf(stderr, "usage: test_capi BUNDLE ALTERED_BUNDLE [loops [cancel_rounds]]\n"), 2;
    for (i = 0; i < sizeof pixels; ++i) pixels[i] = (uint8_t)(i * 7 + i / 13);
    bad_input(argv[1], argv[2]);
    two_threads(argv[1]);
    tile_reuse(argv[1]);
    generator(argv[1], argc > 4 ? atoi(argv[4]) : 200);
    open_ask_close(argv[1], argc > 3 ? atoi(argv[3]) : 100);
    printf("%d failures\n", failures);
    return failures ? 1 : 0;
}
