// Caption raw RGB pixels with the edgevlm C++ API (edgevlm.hpp, header-only over the C library).  usage: caption BUNDLE
#include <edgevlm/edgevlm.hpp>

#include <iostream>
#include <vector>

int main(int argc, char **argv) {
    if (argc < 2) {
        std::cerr << "usage: " << argv[0] << " BUNDLE\n";
        return 2;
    }
    try {
        std::vector<uint8_t> rgb(320 * 240 * 3);  // your camera frame here
        for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = uint8_t(i % 251);
        edgevlm::Model model(argv[1]);
        edgevlm::Image image = edgevlm::Image::from_pixels(rgb.data(), 320, 240, EVLM_RGB8);
        edgevlm::Prompt prompt;
        prompt.begin(EVLM_ROLE_USER).add_image(image).add_text("Describe this image.");
        edgevlm::GenerateOptions options;
        options.max_new_tokens = 32;
        edgevlm::Result r = model.generate(prompt, options, [](int32_t, std::string_view piece) {
            std::cout << piece << std::flush;  // streamed as it is generated
            return true;
        });
        std::cout << "\n(" << r.tokens().size() << " tokens, " << r.finish_reason() << ")\n";
    } catch (const edgevlm::Error &e) {  // every failed call: the C status and its message
        std::cerr << "error " << e.status() << ": " << e.what() << "\n";
        return 1;
    }
    return 0;
}
