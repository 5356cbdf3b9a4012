/* Caption raw RGB pixels with the edgevlm C API.  usage: caption BUNDLE */
#include <stdio.h>
#include <edgevlm/edgevlm.h>

int main(int argc, char **argv) {
    static unsigned char rgb[320 * 240 * 3]; /* your camera frame here */
    evlm_model *model; evlm_image *image; evlm_prompt *prompt; evlm_result *result;
    if (argc < 2 || evlm_model_open(argv[1], NULL, &model) != EVLM_OK)
        return fprintf(stderr, "open: %s\n", evlm_last_error()), 1;
    for (int i = 0; i < (int)sizeof rgb; ++i) rgb[i] = (unsigned char)(i % 251);
    evlm_image_from_pixels(rgb, 320, 240, 0, EVLM_RGB8, &image);
    evlm_prompt_new(&prompt);
    evlm_prompt_begin(prompt, EVLM_ROLE_USER);
    evlm_prompt_add_image(prompt, image, -1);
    evlm_prompt_add_text(prompt, "Describe this image.");
    if (evlm_generate(model, prompt, NULL, NULL, &result) != EVLM_OK)
        return fprintf(stderr, "generate: %s\n", evlm_last_error()), 1;
    printf("%s\n", evlm_result_text(result));
    evlm_result_free(result); evlm_prompt_free(prompt); evlm_image_free(image); evlm_model_close(model);
    return 0;
}
