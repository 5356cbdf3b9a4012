/*
 * edgevlm C API: SmolVLM2 bundles (made by `edgevlm export`) through ONNX Runtime, for programs without Python.
 *
 * The stages mirror the Python engine: open a model -> make images from pixel buffers -> build a prompt
 * (messages with image slots) -> encode its images -> generate. Every call returns an evlm_status; on an error
 * evlm_last_error() gives a message for the calling thread. No C++ types or exceptions cross this header.
 *
 * Thread safety: an evlm_model may be used from several threads at once (encode and generate hold no lock while
 * they run: ONNX Runtime sessions run concurrently; the image-resizing helpers serve one caller at a time, and
 * others resize on their own thread meanwhile). Images, prompts, encodings and results are owned by one thread at
 * a time; they may be handed between threads but not used from two at once. Every function taking a
 * `const evlm_model *` is safe to call from several threads on one model.
 *
 * ABI policy: functions are only ever added, and option structs only grow at their end. Each option struct starts
 * with `struct_size`, which its _init function sets to the size the caller was compiled with (the inline wrappers
 * below pass sizeof); the library reads the fields that size covers and uses the defaults for the rest, so a
 * program built against an older header keeps working with a newer library (tests/test_abi.c). A struct_size
 * the library does not know (0: never initialized; larger: a newer header) is EVLM_ERR_ARGUMENT. A field added
 * later starts at or after the older struct's sizeof, never inside its tail padding (which an old caller leaves
 * uninitialized): pad explicitly where alignment would put it there.
 * Errors: evlm_last_error() keeps the message of this thread's last failed call until another call fails.
 */
#ifndef EDGEVLM_H
#define EDGEVLM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Exported by the library's build (EDGEVLM_BUILDING), imported by its users; EDGEVLM_STATIC: a static library. */
#if defined(EDGEVLM_STATIC)
#define EVLM_API
#elif defined(_WIN32)
#if defined(EDGEVLM_BUILDING)
#define EVLM_API __declspec(dllexport)
#else
#define EVLM_API __declspec(dllimport)
#endif
#else
#define EVLM_API __attribute__((visibility("default")))
#endif

/* The defaults every interface shares (Python: edgevlm/defaults.py and GenerationConfig; a test checks they agree;
   docs/design.md has the table). */
#define EVLM_DEFAULT_MAX_NEW_TOKENS 128       /* chat/ask; captions use EVLM_DEFAULT_CAPTION_TOKENS */
#define EVLM_DEFAULT_CAPTION_TOKENS 64
#define EVLM_DEFAULT_LIVE_TOKENS 32
#define EVLM_DEFAULT_TEMPERATURE 1.0f
#define EVLM_DEFAULT_TOP_K 0                  /* off */
#define EVLM_DEFAULT_TOP_P 1.0f               /* off */
#define EVLM_DEFAULT_REPETITION_PENALTY 1.0f  /* off */
#define EVLM_DEFAULT_MAX_IMAGE_PIXELS 100000000
#define EVLM_DEFAULT_CAPTION_PROMPT "Describe this image."
#define EVLM_DEFAULT_LIVE_PROMPT "Describe this image in one sentence."
#define EVLM_DEFAULT_PROVIDERS "auto"         /* CUDA when this ONNX Runtime has it, else the CPU (as Python) */
/* evlm_generate_options.seed: fresh entropy for each answer (the default, as Python's seed=None). */
#define EVLM_SEED_RANDOM UINT64_MAX
/* evlm_model_options.verify */
#define EVLM_VERIFY_OFF 0
#define EVLM_VERIFY_ON 1   /* the default: hash once, then trust an unchanged file's stamp */
#define EVLM_VERIFY_FULL 2 /* hash every file on every open */

#define EVLM_VERSION_MAJOR 0
#define EVLM_VERSION_MINOR 1
#define EVLM_VERSION_PATCH 0

typedef enum evlm_status {
    EVLM_OK = 0,
    EVLM_ERR_ARGUMENT = 1,  /* a NULL pointer, a size out of range, an unknown option */
    EVLM_ERR_MODEL = 2,     /* the bundle is missing, altered, incomplete or of an unknown variant */
    EVLM_ERR_INPUT = 3,     /* an image or prompt the model cannot take */
    EVLM_ERR_CONTEXT = 4,   /* the prompt and max_new_tokens exceed the model's context */
    EVLM_ERR_CANCELLED = 5, /* not returned since 1.0 (a stopped answer is EVLM_OK with finish_reason
                               "cancelled", as in Python); the number stays reserved */
    EVLM_ERR_RUNTIME = 6,   /* ONNX Runtime failed */
    EVLM_ERR_MEMORY = 7,
    EVLM_STATUS_MAX_ENUM = 0x7FFFFFFF /* keeps the enum int-sized, so any int a caller passes is a valid value */
} evlm_status;

/* "0.1.0 (onnxruntime 1.32.0)"; never NULL. */
EVLM_API const char *evlm_version(void);
/* The message of this thread's last failed call ("" before any failure); a successful call leaves it as it was.
   Valid until this thread's next failed call. */
EVLM_API const char *evlm_last_error(void);

typedef struct evlm_model evlm_model;
typedef struct evlm_image evlm_image;
typedef struct evlm_prompt evlm_prompt;
typedef struct evlm_encoded evlm_encoded;
typedef struct evlm_result evlm_result;

/* ---------------------------------------------------------------------------------------------- model */
typedef struct evlm_model_options {
    size_t struct_size;    /* set by evlm_model_options_init (ABI policy above) */
    const char *variant;   /* "fp32", "int8", "q4", "mixed", ...; NULL: the bundle's default (fp32) */
    int threads;           /* intra-op threads per session, and threads for resizing images (the caller plus
                              helpers the library keeps for the process); 0: every core */
    const char *providers; /* "auto" (default, NULL): CUDA when this ONNX Runtime has it, else the CPU; or a
                              comma list of "cpu" and "cuda" ("cuda,cpu"); the CPU is always the fallback */
    int verify;            /* EVLM_VERIFY_ON (default): check the chosen files' size and sha256 against the
                              manifest, hashing a file only when the user's cache has no stamp that it matched
                              and is unchanged on disk since (device, inode, size, mtime, ctime; shared with the
                              Python runtime: $EDGEVLM_CACHE/verified.json); EVLM_VERIFY_FULL: hash every file;
                              EVLM_VERIFY_OFF: no check */
    int64_t max_image_pixels; /* larger images are refused by evlm_prompt_tokens, evlm_encode and evlm_generate
                                 with this model (default EVLM_DEFAULT_MAX_IMAGE_PIXELS; 0: the default) */
} evlm_model_options;

/* Defaults for the first `struct_size` bytes of *options; use evlm_model_options_init. */
EVLM_API void evlm_model_options_init_sized(evlm_model_options *options, size_t struct_size);
static inline void evlm_model_options_init(evlm_model_options *options) {
    evlm_model_options_init_sized(options, sizeof *options);
}
/* options may be NULL (defaults). On success *out is a model to close with evlm_model_close. The three parts open
   at once, two of them on threads this call starts and joins before it returns. */
EVLM_API evlm_status evlm_model_open(const char *bundle_dir, const evlm_model_options *options, evlm_model **out);
EVLM_API void evlm_model_close(evlm_model *model);
/* Facts of the loaded model (any out pointer may be NULL). */
EVLM_API evlm_status evlm_model_info(const evlm_model *model, int *tile, int *image_seq_len, int *max_positions,
                                     int *vocab_size);
/* Which of edgevlm's own kernels the model runs beside ONNX Runtime, comma-separated: "attention:bf16" (the
   vision encoder's attention, on CPUs with AMX or AVX-512 BF16), "matmul_q4:vnni" (the 4-bit decoder's products:
   by default on CPUs with AMX or AVX-512 BF16, which run its prompts in bf16; with AVX-512 VNNI alone only with
   EDGEVLM_KERNELS=all), "matmul_q4:avx2" (the same on CPUs with AVX2 and no AVX-512), "matmul_f32" (an fp32 part's products, weights read where the file keeps them: on CPUs
   with AVX-512, elsewhere only with EDGEVLM_KERNELS=all), each for bundles with that part's kernel graph, the
   vision encoder's first; "" where ONNX Runtime's kernels run alone.
   The same rule as Python's VLM.kernels; EDGEVLM_KERNELS=off turns them off. Valid while the model is open. */
EVLM_API const char *evlm_model_kernels(const evlm_model *model);

/* ---------------------------------------------------------------------------------------------- images */
typedef enum evlm_pixel_format {
    EVLM_RGB8 = 0,
    EVLM_BGR8 = 1,
    EVLM_RGBA8 = 2,
    EVLM_PIXEL_FORMAT_MAX_ENUM = 0x7FFFFFFF
} evlm_pixel_format;

/* Copies the pixels; `stride` is the byte distance between rows (0: tightly packed). The library decodes no
   files: decode JPEG/PNG with your own library (the CLI uses stb_image). */
EVLM_API evlm_status evlm_image_from_pixels(const uint8_t *pixels, int width, int height, size_t stride,
                                            evlm_pixel_format format, evlm_image **out);
EVLM_API void evlm_image_free(evlm_image *image);

/* ---------------------------------------------------------------------------------------------- prompts */
typedef enum evlm_role {
    EVLM_ROLE_SYSTEM = 0,
    EVLM_ROLE_USER = 1,
    EVLM_ROLE_ASSISTANT = 2,
    EVLM_ROLE_MAX_ENUM = 0x7FFFFFFF
} evlm_role;

EVLM_API evlm_status evlm_prompt_new(evlm_prompt **out);
EVLM_API void evlm_prompt_free(evlm_prompt *prompt);
/* Starts the next message; the items added after it belong to it. */
EVLM_API evlm_status evlm_prompt_begin(evlm_prompt *prompt, evlm_role role);
EVLM_API evlm_status evlm_prompt_add_text(evlm_prompt *prompt, const char *utf8_text);
/* The prompt keeps its own reference to the image. split: 1 tiles + global view, 0 one tile, -1 the model's
   default (split). */
EVLM_API evlm_status evlm_prompt_add_image(evlm_prompt *prompt, const evlm_image *image, int split);
/* The prompt's token ids as the model reads them (images expanded). Call with ids == NULL to learn the count. */
EVLM_API evlm_status evlm_prompt_tokens(const evlm_model *model, const evlm_prompt *prompt, int32_t *ids, size_t capacity,
                                        size_t *count);

/* ---------------------------------------------------------------------------------------------- stages */
/* Runs the vision encoder over the prompt's images (in prompt order). Reusable with any number of generations
   of the same prompt. A text-only prompt gives an encoding with no features. */
EVLM_API evlm_status evlm_encode(const evlm_model *model, const evlm_prompt *prompt, evlm_encoded **out);
EVLM_API void evlm_encoded_free(evlm_encoded *encoded);
/* How many tiles the encoding holds, and how many of them a tile reuse served (either pointer may be NULL). */
EVLM_API evlm_status evlm_encoded_tiles(const evlm_encoded *encoded, int *tiles, int *reused);

/* Tile reuse for the frames of one source (Python's edgevlm.TileReuse): it keeps the last image it encoded (its
   tiles' values and features), and an image of the same size and tile grid, through the same model, runs the
   vision encoder only on the tiles that changed (anything else starts over). Exact with tolerance 0 (the encoder runs once per tile, so a tile's features depend on its
   own pixels: the same tokens as evlm_encode); tolerance > 0 (grey levels, 0-255) also reuses tiles whose mean
   absolute change is at most that, for noisy cameras. Thread safety: calls sharing one evlm_tile_reuse are
   serialized inside it; keep one per source. */
typedef struct evlm_tile_reuse evlm_tile_reuse;
EVLM_API evlm_status evlm_tile_reuse_new(float tolerance, evlm_tile_reuse **out);
EVLM_API void evlm_tile_reuse_free(evlm_tile_reuse *reuse);
/* evlm_encode through `reuse` (NULL: the same as evlm_encode). */
EVLM_API evlm_status evlm_encode_reuse(const evlm_model *model, const evlm_prompt *prompt, evlm_tile_reuse *reuse,
                                       evlm_encoded **out);

/* Called with each new token and the text it completes (UTF-8, possibly empty while a character is incomplete).
   Return non-zero to stop: evlm_generate then returns EVLM_OK with the tokens so far and finish_reason
   "cancelled" (as Python's Generator.cancel()). */
typedef int (*evlm_token_callback)(int32_t token, const char *text_piece, void *user_data);
/* May change the logits (vocab floats) before a token is picked: set -INFINITY to forbid a token. `tokens`:
   the new tokens so far. */
typedef void (*evlm_logits_hook)(float *logits, size_t vocab, const int32_t *tokens, size_t n_tokens,
                                 void *user_data);

typedef struct evlm_generate_options {
    size_t struct_size;         /* set by evlm_generate_options_init (ABI policy above) */
    int max_new_tokens;         /* default EVLM_DEFAULT_MAX_NEW_TOKENS */
    int do_sample;              /* 0: greedy (default) */
    float temperature;          /* sampling only; default EVLM_DEFAULT_TEMPERATURE; 0: greedy (as in Python) */
    int top_k;                  /* sampling only; EVLM_DEFAULT_TOP_K: off */
    float top_p;                /* sampling only; EVLM_DEFAULT_TOP_P: off */
    uint64_t seed;              /* sampling only: same seed, same tokens; default EVLM_SEED_RANDOM (fresh each answer) */
    const int32_t *stop_tokens; /* ends generation (besides the model's end-of-sequence ids) */
    size_t n_stop_tokens;
    int ignore_eos;             /* non-zero: the model's end-of-sequence ids do not stop (benchmarks) */
    evlm_token_callback on_token;
    void *on_token_user_data;
    evlm_logits_hook logits_hook;
    void *logits_hook_user_data;
    float repetition_penalty;   /* > 0; 1 (default): off. Divides the logits (multiplies negative ones) of every
                                   token already in the prompt or the answer, before logits_hook, as transformers */
} evlm_generate_options;

/* Defaults for the first `struct_size` bytes of *options; use evlm_generate_options_init. */
EVLM_API void evlm_generate_options_init_sized(evlm_generate_options *options, size_t struct_size);
static inline void evlm_generate_options_init(evlm_generate_options *options) {
    evlm_generate_options_init_sized(options, sizeof *options);
}
/* encoded may be NULL for a text-only prompt (or to encode here). options may be NULL (defaults). On EVLM_OK
   *out is a result to free with evlm_result_free (also when on_token stopped it: see its finish_reason). */
EVLM_API evlm_status evlm_generate(const evlm_model *model, const evlm_prompt *prompt, const evlm_encoded *encoded,
                                   const evlm_generate_options *options, evlm_result **out);

/* Stage 3, one token per call (Python's Generator). `encoded` as in evlm_generate (NULL: the images are encoded
   here). The options' on_token is not called (each token comes from evlm_generator_step); logits_hook is. The
   model must outlive the generator. Thread safety: step and result belong to one thread at a time;
   evlm_generator_cancel may be called from any thread. */
typedef struct evlm_generator evlm_generator;
EVLM_API evlm_status evlm_generator_new(const evlm_model *model, const evlm_prompt *prompt,
                                        const evlm_encoded *encoded, const evlm_generate_options *options,
                                        evlm_generator **out);
/* The next token into *token (the first call runs the prompt: the slow one). *done is 1 with the token that ends
   the answer (end of sequence, a stop token, max_new_tokens) and on every call after it, where *token is -1. */
EVLM_API evlm_status evlm_generator_step(evlm_generator *generator, int32_t *token, int *done);
/* The next step ends the answer (finish_reason "cancelled", *done 1, *token -1); a step running now completes
   and keeps its token. Any thread; NULL is ignored. */
EVLM_API void evlm_generator_cancel(evlm_generator *generator);
/* The answer so far: tokens, timings, text; finish_reason "" while not done. Free with evlm_result_free. */
EVLM_API evlm_status evlm_generator_result(const evlm_generator *generator, evlm_result **out);
EVLM_API void evlm_generator_free(evlm_generator *generator);

/* ---------------------------------------------------------------------------------------------- results */
typedef struct evlm_timings {
    double vision_ms;      /* encoding (0 when an encoding was passed in) */
    double preprocess_ms;  /* of vision_ms, resizing and normalizing the images */
    double prefill_ms;
    double decode_ms;
    double first_token_ms; /* vision_ms + prefill + the first pick: the wait for the first token (as Python's) */
    double runtime_ms;     /* of all the above, the time inside ONNX Runtime; the rest is this library's */
    int prompt_tokens;
    int new_tokens;
} evlm_timings;

EVLM_API const char *evlm_result_text(const evlm_result *result);
/* The new token ids (the stop token included, as transformers' generate). */
EVLM_API const int32_t *evlm_result_tokens(const evlm_result *result, size_t *count);
/* "stop", "length" or "cancelled". */
EVLM_API const char *evlm_result_finish_reason(const evlm_result *result);
EVLM_API evlm_status evlm_result_timings(const evlm_result *result, evlm_timings *out);
EVLM_API void evlm_result_free(evlm_result *result);

/* ---------------------------------------------------------------------------------------------- helpers */
/* The model's tokenizer. ids == NULL: count only. add_special: the tokenizer's template (e.g. a BOS). */
EVLM_API evlm_status evlm_tokenize(const evlm_model *model, const char *utf8_text, int add_special, int32_t *ids,
                                   size_t capacity, size_t *count);
/* Text of ids (special tokens skipped when skip_special). text == NULL: the byte count (without the NUL). */
EVLM_API evlm_status evlm_detokenize(const evlm_model *model, const int32_t *ids, size_t n_ids, int skip_special,
                                     char *text, size_t capacity, size_t *length);
/* The vision encoder's input for one image: floats (tiles, 3, tile, tile), rows and cols of the grid (0, 0 for
   one tile). values == NULL: sizes only. */
EVLM_API evlm_status evlm_image_preprocess(const evlm_model *model, const evlm_image *image, int split, float *values,
                                           size_t capacity, size_t *count, int *tiles, int *rows, int *cols);

#ifdef __cplusplus
}
#endif
#endif /* EDGEVLM_H */
