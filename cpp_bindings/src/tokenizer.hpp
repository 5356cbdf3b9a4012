// Byte-level BPE from a tokenizer.json, as Hugging Face `tokenizers` runs SmolLM2's: added tokens split first,
// then the pre-tokenizer (optional Digits, ByteLevel's GPT-2 regex through PCRE2), then BPE merges by rank.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace evlm {

class Tokenizer {
public:
    explicit Tokenizer(const std::string &path);
    ~Tokenizer();
    Tokenizer(const Tokenizer &) = delete;
    Tokenizer &operator=(const Tokenizer &) = delete;

    std::vector<int32_t> encode(const std::string &text, bool add_special) const;
    // The bytes of `ids` joined (special tokens left out when skip_special); may end inside a UTF-8 character.
    std::string decode_bytes(const std::vector<int32_t> &ids, bool skip_special) const;
    // decode_bytes made valid UTF-8 (invalid sequences become U+FFFD, as tokenizers' lossy decode).
    std::string decode(const std::vector<int32_t> &ids, bool skip_special) const;
    bool is_special(int32_t id) const;
    size_t vocab_size() const { return id_to_token_.size(); }
    // The bytes one generated token adds to the text (none for special tokens): what streaming accumulates.
    std::string token_bytes(int32_t id) const;

private:
    struct Regex;
    struct Added {
        std::string content;
        int32_t id;
        bool special;
    };
    void read_decoder(const std::string &path, const nlohmann::json &decoder);
    std::string byte_level(const std::string &token) const;
    void split_digits(const std::string &piece, std::vector<std::string> &out) const;
    void bpe(const std::string &word, std::vector<int32_t> &out) const;

    std::unordered_map<std::string, int32_t> vocab_;     // byte-level strings (GPT-2 alphabet) -> id
    std::unordered_map<std::string, int32_t> merge_rank_;  // "left right" -> rank
    std::vector<std::string> id_to_token_;                 // id -> its piece (vocabulary or added token)
    std::unordered_map<std::string, unsigned char> char_to_byte_;
    std::vector<bool> special_;
    std::vector<Added> added_;                            // longest first
    std::vector<int32_t> prefix_, suffix_;                 // TemplateProcessing for single sequences
    std::unique_ptr<Regex> regex_;
    bool digits_ = false;
    bool byte_fallback_ = false;
    bool byte_fallback_decode_ = false, fuse_ = false, replace_space_ = false;
    int32_t unk_ = -1;
    std::string byte_to_char_[256];                        // GPT-2's printable stand-in for each byte (UTF-8)
};

// The longest prefix of `bytes` that is complete UTF-8 text; `rest` receives what an incomplete character left.
std::string utf8_complete_prefix(const std::string &bytes, std::string &rest);
// Invalid sequences replaced by U+FFFD.
std::string utf8_lossy(const std::string &bytes);

}  // namespace evlm
