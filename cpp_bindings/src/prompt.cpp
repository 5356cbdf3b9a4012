#include "prompt.hpp"

#include "edgevlm/edgevlm.h"
#include "error.hpp"
#include "tokenizer.hpp"

namespace evlm {
namespace {

// SmolVLM2's chat template (all released sizes), which render_prompt implements.
const char *kSmolVLM2Template =
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

const char *kReserved[] = {"<image>", "<video>", "<fake_token_around_image>", "<global-img>"};

std::string strip(const std::string &s) {
    size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
    return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
}

std::string image_block(int rows, int cols, int seq_len) {
    std::string tokens;
    for (int i = 0; i < seq_len; ++i) tokens += "<image>";
    const std::string fake = "<fake_token_around_image>", global = "<global-img>";
    if (rows == 0 && cols == 0) return fake + global + tokens + fake;
    std::string out;
    for (int r = 0; r < rows; ++r) {
        for (int c = 0; c < cols; ++c)
            out += fake + "<row_" + std::to_string(r + 1) + "_col_" + std::to_string(c + 1) + ">" + tokens;
        out += "\n";
    }
    return out + "\n" + fake + global + tokens + fake;
}

}  // namespace

void check_template(const std::string &template_text) {
    if (!template_text.empty() && strip(template_text) != strip(kSmolVLM2Template))
        fail(EVLM_ERR_MODEL, "the bundle's chat template is not SmolVLM2's; the C++ library renders SmolVLM2's "
                             "template only (use the Python runtime for other templates).");
}

void check_text(const std::string &text) {
    if (utf8_lossy(text) != text) fail(EVLM_ERR_INPUT, "the text is not valid UTF-8; check its encoding.");
    for (const char *token : kReserved)
        if (text.find(token) != std::string::npos)
            fail(EVLM_ERR_INPUT, std::string("the text contains '") + token + "', which the model reserves for "
                                 "image positions; remove it (pass images with evlm_prompt_add_image).");
}

std::string render_prompt(const std::vector<Message> &messages, const std::vector<ImageSlot> &slots, int seq_len) {
    static const char *roles[] = {"System", "User", "Assistant"};
    std::string out = "<|im_start|>";
    size_t slot = 0;
    for (const Message &m : messages) {
        out += roles[m.role];
        out += !m.items.empty() && m.items[0].kind == Item::Image ? ":" : ": ";
        for (const Item &item : m.items) {
            if (item.kind == Item::Text) {
                out += item.text;
            } else {
                const ImageSlot &s = slots.at(slot++);
                out += image_block(s.rows, s.cols, seq_len);
            }
        }
        out += "<end_of_utterance>\n";
    }
    return out + "Assistant:";
}

}  // namespace evlm
