/* W1 through the C API: one image as one tile, QUESTION, NEW_TOKENS new tokens with end-of-sequence ignored.
   Prints one JSON line of medians over RUNS (after a warm-up), including the time spent outside ONNX Runtime.
   usage: edgevlm-cpp-bench BUNDLE VARIANT IMAGE.raw WIDTH HEIGHT RUNS NEW_TOKENS THREADS QUESTION */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "edgevlm/edgevlm.h"

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv) {
    evlm_model_options mo;
    evlm_model *m = NULL;
    evlm_image *img = NULL;
    evlm_prompt *p = NULL;
    evlm_generate_options g;
    double load_ms, total[64], vision[64], prefill[64], decode[64], outside[64], pre[64];
    int w, h, runs, tokens = 0, prompt_tokens = 0, i;
    long size;
    unsigned char *px;
    FILE *f;
    struct rusage ru;

    if (argc < 10) return fprintf(stderr, "usage: see the source\n"), 2;
    w = atoi(argv[4]);
    h = atoi(argv[5]);
    runs = atoi(argv[6]);
    if (runs < 1 || runs > 64) return fprintf(stderr, "runs: 1..64\n"), 2;
    f = fopen(argv[3], "rb");
    if (!f) return fprintf(stderr, "cannot read %s\n", argv[3]), 2;
    size = (long)w * h * 3;
    px = malloc((size_t)size);
    if (fread(px, 1, (size_t)size, f) != (size_t)size) return fprintf(stderr, "short image file\n"), 2;
    fclose(f);
    evlm_model_options_init(&mo);
    mo.variant = argv[2];
    mo.threads = atoi(argv[8]);
    load_ms = now_ms();
    if (evlm_model_open(argv[1], &mo, &m) != EVLM_OK) return fprintf(stderr, "%s\n", evlm_last_error()), 1;
    load_ms = now_ms() - load_ms;
    evlm_image_from_pixels(px, w, h, 0, EVLM_RGB8, &img);
    evlm_prompt_new(&p);
    evlm_prompt_begin(p, EVLM_ROLE_USER);
    evlm_prompt_add_image(p, img, 0);
    evlm_prompt_add_text(p, argv[9]);
    evlm_generate_options_init(&g);
    g.ignore_eos = 1;
    for (i = -1; i < runs; ++i) { /* run -1 warms up */
        evlm_result *r = NULL;
        evlm_timings t;
        double t0 = now_ms();
        g.max_new_tokens = i < 0 ? 4 : atoi(argv[7]);
        if (evlm_generate(m, p, NULL, &g, &r) != EVLM_OK) return fprintf(stderr, "%s\n", evlm_last_error()), 1;
        if (i >= 0) {
            total[i] = now_ms() - t0;
            evlm_result_timings(r, &t);
            vision[i] = t.vision_ms;
            prefill[i] = t.prefill_ms;
            decode[i] = (t.new_tokens - 1) / (t.decode_ms / 1e3);
            outside[i] = total[i] - t.runtime_ms;
            pre[i] = t.preprocess_ms;
            tokens = t.new_tokens;
            prompt_tokens = t.prompt_tokens;
        }
        evlm_result_free(r);
    }
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"load_s\": %.3f, \"vision_ms_per_tile\": %.1f, \"prefill_ms\": %.1f, \"decode_tokens_per_s\": %.1f, "
           "\"end_to_end_s\": %.3f, \"outside_runtime_ms\": %.2f, \"preprocess_ms\": %.2f, \"prompt_tokens\": %d, \"new_tokens\": %d, "
           "\"peak_rss_mb\": %.1f}\n",
           load_ms / 1e3, median(vision, runs), median(prefill, runs), median(decode, runs), median(total, runs) / 1e3,
           median(outside, runs), median(pre, runs), prompt_tokens, tokens, ru.ru_maxrss / 1024.0);
    evlm_prompt_free(p);
    evlm_image_free(img);
    evlm_model_close(m);
    free(px);
    return 0;
}
