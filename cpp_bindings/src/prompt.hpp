// Messages -> SmolVLM2's prompt text with image blocks expanded, as the Python runtime renders the bundle's chat
// template (the C++ library knows SmolVLM2's template and refuses a bundle whose template differs).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "image.hpp"

namespace evlm {

struct Item {
    enum Kind { Text, Image } kind;
    std::string text;
    std::shared_ptr<const Pixels> image;
    int split = -1;  // -1: the model's default
};

struct Message {
    int role;  // evlm_role
    std::vector<Item> items;
};

struct ImageSlot {
    int rows, cols;
};

// Throws EVLM_ERR_MODEL when `template_text` is not SmolVLM2's template.
void check_template(const std::string &template_text);
// The rendered text with image placeholders expanded; slots in prompt order.
std::string render_prompt(const std::vector<Message> &messages, const std::vector<ImageSlot> &slots, int image_seq_len);
// Refuses text that is not UTF-8 or holds the tokens reserved for image positions (as the Python runtime).
void check_text(const std::string &text);

}  // namespace evlm
