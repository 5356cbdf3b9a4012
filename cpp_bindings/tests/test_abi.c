/* The ABI policy of edgevlm.h, as a program built against an older header meets a newer library: its option
 * structs end before the fields added since (here: max_image_pixels, repetition_penalty). The library must fill and
 * read only the bytes the caller's struct_size covers, give the same answer as with today's struct, and refuse a
 * struct_size it does not know. Also: options added since (max_image_pixels, repetition_penalty) and
 * evlm_last_error's rule (kept until the next failure).
 *   test_abi BUNDLE_DIR */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "edgevlm/edgevlm.h"

static int failures = 0;
#define EXPECT(cond, what)                                                              \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "FAIL %s (line %d; last error: %s)\n", what, __LINE__, evlm_last_error()); \
            ++failures;                                                                 \
        }                                                                               \
    } while (0)

/* The 1.0 layouts, before the fields added at their ends. */
typedef struct {
    size_t struct_size;
    const char *variant;
    int threads;
    const char *providers;
    int verify;
} model_options_1_0;

typedef struct {
    size_t struct_size;
    int max_new_tokens;
    int do_sample;
    float temperature;
    int top_k;
    float top_p;
    uint64_t seed;
    const int32_t *stop_tokens;
    size_t n_stop_tokens;
    int ignore_eos;
    evlm_token_callback on_token;
    void *on_token_user_data;
    evlm_logits_hook logits_hook;
    void *logits_hook_user_data;
} generate_options_1_0;

/* Each old struct followed by bytes a library reading too far would take for options (0xFF: NaN floats, huge
   sizes). */
struct old_model { model_options_1_0 o; unsigned char after[32]; };
struct old_generate { generate_options_1_0 o; unsigned char after[32]; };

static int all_ff(const unsigned char *p, size_t n) {
    size_t i;
    for (i = 0; i < n; ++i)
        if (p[i] != 0xFF) return 0;
    return 1;
}

static uint8_t pixels[64 * 48 * 3];

static evlm_prompt *caption_prompt(evlm_image *img) {
    evlm_prompt *p = NULL;
    evlm_prompt_new(&p);
    evlm_prompt_begin(p, EVLM_ROLE_USER);
    evlm_prompt_add_image(p, img, 0);
    evlm_prompt_add_text(p, EVLM_DEFAULT_CAPTION_PROMPT);
    return p;
}

/* Tokens of a greedy 8-token answer into out (returns the count, -1 on failure). */
static int answer(const evlm_model *m, const evlm_prompt *p, const evlm_generate_options *g, int32_t *out) {
    evlm_result *r = NULL;
    size_t n = 0;
    const int32_t *t;
    if (evlm_generate(m, p, NULL, g, &r) != EVLM_OK) return -1;
    t = evlm_result_tokens(r, &n);
    memcpy(out, t, n * sizeof *t);
    evlm_result_free(r);
    return (int)n;
}

int main(int argc, char **argv) {
    struct old_model om;
    struct old_generate og;
    evlm_model_options mo;
    evlm_generate_options go;
    evlm_model *m = NULL, *small = NULL;
    evlm_image *img = NULL;
    evlm_prompt *p;
    int32_t now[16], old[16];
    int n_now, n_old;
    size_t i;
    if (argc < 2) return fprintf(stderr, "usage: test_abi BUNDLE_DIR\n"), 2;
    for (i = 0; i < sizeof pixels; ++i) pixels[i] = (uint8_t)(i * 5 + i / 11);

    /* init writes only the caller's bytes */
    memset(&om, 0xFF, sizeof om);
    evlm_model_options_init_sized((evlm_model_options *)&om.o, sizeof om.o);
    EXPECT(om.o.struct_size == sizeof om.o && om.o.verify == 1 && om.o.variant == NULL, "old model options filled");
    EXPECT(all_ff(om.after, sizeof om.after), "model options init wrote past the caller's struct");
    memset(&og, 0xFF, sizeof og);
    evlm_generate_options_init_sized((evlm_generate_options *)&og.o, sizeof og.o);
    EXPECT(og.o.struct_size == sizeof og.o && og.o.max_new_tokens == EVLM_DEFAULT_MAX_NEW_TOKENS, "old generate options filled");
    EXPECT(all_ff(og.after, sizeof og.after), "generate options init wrote past the caller's struct");

    /* an old program opens and generates; the library reads nothing past its structs */
    om.o.threads = 1;
    EXPECT(evlm_model_open(argv[1], (const evlm_model_options *)&om.o, &m) == EVLM_OK, "open with 1.0 options");
    if (!m) return 1;
    EXPECT(evlm_image_from_pixels(pixels, 64, 48, 0, EVLM_RGB8, &img) == EVLM_OK, "image");
    p = caption_prompt(img);
    og.o.max_new_tokens = 8;
    n_old = answer(m, p, (const evlm_generate_options *)&og.o, old);
    evlm_generate_options_init(&go);
    go.max_new_tokens = 8;
    n_now = answer(m, p, &go, now);
    EXPECT(n_old > 0 && n_old == n_now && memcmp(old, now, (size_t)n_now * sizeof *now) == 0,
           "1.0 options give today's answer");

    /* sizes the library does not know */
    go.struct_size = 0;
    EXPECT(answer(m, p, &go, now) == -1 && strstr(evlm_last_error(), "struct_size") != NULL, "struct_size 0 refused");
    go.struct_size = sizeof go + 8;
    EXPECT(answer(m, p, &go, now) == -1 && strstr(evlm_last_error(), "newer") != NULL, "a newer struct refused");

    /* evlm_last_error is kept by a successful call */
    EXPECT(evlm_model_info(m, NULL, NULL, NULL, NULL) == EVLM_OK && strstr(evlm_last_error(), "newer") != NULL,
           "a success keeps the last error");

    /* the options added since 1.0 */
    evlm_generate_options_init(&go);
    go.repetition_penalty = 0;
    EXPECT(answer(m, p, &go, now) == -1 && strstr(evlm_last_error(), "repetition_penalty") != NULL,
           "repetition_penalty 0 refused");
    evlm_model_options_init(&mo);
    mo.threads = 1;
    mo.max_image_pixels = 64 * 48 - 1;
    EXPECT(evlm_model_open(argv[1], &mo, &small) == EVLM_OK, "open with max_image_pixels");
    if (small) {
        EXPECT(answer(small, p, &go, now) == -1 && strstr(evlm_last_error(), "max_image_pixels") != NULL,
               "an image over max_image_pixels refused");
        evlm_model_close(small);
    }
    {   /* seeds: an explicit one repeats its tokens; the default (EVLM_SEED_RANDOM) draws fresh ones each time */
        int32_t a[16], b[16], c[16], d[16];
        int na, nb, nc, nd;
        evlm_generate_options_init(&go);
        EXPECT(go.seed == EVLM_SEED_RANDOM, "the default seed is EVLM_SEED_RANDOM");
        go.max_new_tokens = 8;
        go.ignore_eos = 1;
        go.do_sample = 1;
        go.seed = 7;
        na = answer(m, p, &go, a);
        nb = answer(m, p, &go, b);
        EXPECT(na == 8 && nb == 8 && memcmp(a, b, sizeof(int32_t) * 8) == 0, "seed 7 twice: the same tokens");
        go.seed = EVLM_SEED_RANDOM;
        nc = answer(m, p, &go, c);
        nd = answer(m, p, &go, d);
        /* 8 tokens sampled at temperature 1 from a random model's ~49k-way distribution: equal runs would mean
           the same seed was used */
        EXPECT(nc == 8 && nd == 8 && memcmp(c, d, sizeof(int32_t) * 8) != 0, "random seeds: different tokens");
    }
    mo.max_image_pixels = -1;
    EXPECT(evlm_model_open(argv[1], &mo, &small) == EVLM_ERR_ARGUMENT, "negative max_image_pixels refused");

    evlm_prompt_free(p);
    evlm_image_free(img);
    evlm_model_close(m);
    printf("%d failures\n", failures);
    return failures ? 1 : 0;
}
