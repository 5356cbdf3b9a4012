#include "tokenizer.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <climits>
#include <fstream>
#include <nlohmann/json.hpp>

#include "error.hpp"

namespace evlm {
namespace {

using json = nlohmann::json;

// GPT-2's ByteLevel pre-tokenizer pattern, as `tokenizers` compiles it (with Oniguruma there, PCRE2 here).
const char *kByteLevelPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string utf8_of(uint32_t cp) {
    std::string s;
    if (cp < 0x80) {
        s += char(cp);
    } else if (cp < 0x800) {
        s += char(0xC0 | (cp >> 6));
        s += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        s += char(0xE0 | (cp >> 12));
        s += char(0x80 | ((cp >> 6) & 0x3F));
        s += char(0x80 | (cp & 0x3F));
    } else {
        s += char(0xF0 | (cp >> 18));
        s += char(0x80 | ((cp >> 12) & 0x3F));
        s += char(0x80 | ((cp >> 6) & 0x3F));
        s += char(0x80 | (cp & 0x3F));
    }
    return s;
}

// Length of a valid UTF-8 sequence at s[i], or 0 when invalid; `maximal` receives the length of the maximal
// subpart (what one U+FFFD replaces), `incomplete` whether the input ended inside a valid prefix.
size_t utf8_sequence(const std::string &s, size_t i, size_t &maximal, bool &incomplete) {
    const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
    unsigned char c = b(i);
    incomplete = false;
    maximal = 1;
    if (c < 0x80) return 1;
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c == 0xE0) need = 2, lo = 0xA0;
    else if (c >= 0xE1 && c <= 0xEC) need = 2;
    else if (c == 0xED) need = 2, hi = 0x9F;
    else if (c >= 0xEE && c <= 0xEF) need = 2;
    else if (c == 0xF0) need = 3, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) need = 3;
    else if (c == 0xF4) need = 3, hi = 0x8F;
    else return 0;
    for (size_t k = 1; k <= need; ++k) {
        if (i + k >= s.size()) {
            incomplete = true;
            maximal = k;
            return 0;
        }
        unsigned char d = b(i + k);
        unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
        if (d < l || d > h) {
            maximal = k;
            return 0;
        }
    }
    return need + 1;
}

bool valid_utf8(const std::string &s) {
    for (size_t i = 0; i < s.size();) {
        size_t maximal;
        bool incomplete;
        size_t n = utf8_sequence(s, i, maximal, incomplete);
        if (!n) return false;
        i += n;
    }
    return true;
}

std::string read_file(const std::string &path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail(EVLM_ERR_MODEL, path + " cannot be read; the bundle is incomplete. Re-export it.");
    return std::string(std::istreambuf_iterator<char>(f), {});
}

[[noreturn]] void unsupported(const std::string &path, const std::string &what) {
    fail(EVLM_ERR_MODEL, path + ": " + what + " is not supported by the C++ tokenizer (it reads SmolLM2's "
                                              "byte-level BPE); use the Python runtime for this model.");
}

}  // namespace

struct Tokenizer::Regex {
    pcre2_code *byte_level = nullptr;
    pcre2_code *number = nullptr;
    ~Regex() {
        pcre2_code_free(byte_level);
        pcre2_code_free(number);
    }
    static pcre2_code *compile(const char *pattern) {
        int err;
        PCRE2_SIZE offset;
        pcre2_code *code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED,
                                         PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &offset, nullptr);
        if (!code) fail(EVLM_ERR_RUNTIME, "PCRE2 could not compile the pre-tokenizer pattern");
        pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // optional speed-up; matching works without it
        return code;
    }
    // Pieces of `text`: every match isolated, and the text between matches kept as pieces too.
    static void split(pcre2_code *code, const std::string &text, std::vector<std::string> &out) {
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(code, nullptr);
        size_t pos = 0, last = 0;
        auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
        while (pos < text.size()) {
            int rc = pcre2_match(code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
            if (rc < 0) break;
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            if (ov[1] == ov[0]) {  // an empty match: step one character on
                size_t step = 1;
                while (ov[0] + step < text.size() && (static_cast<unsigned char>(text[ov[0] + step]) & 0xC0) == 0x80)
                    ++step;
                pos = ov[0] + step;
                continue;
            }
            if (ov[0] > last) out.push_back(text.substr(last, ov[0] - last));
            out.push_back(text.substr(ov[0], ov[1] - ov[0]));
            last = pos = ov[1];
        }
        if (last < text.size()) out.push_back(text.substr(last));
        pcre2_match_data_free(md);
    }
};

Tokenizer::Tokenizer(const std::string &path) : regex_(new Regex) {
    json j;
    try {
        j = json::parse(read_file(path));
    } catch (const json::exception &e) {
        fail(EVLM_ERR_MODEL, path + " is not valid JSON (" + e.what() + "); re-export the bundle.");
    }
    try {
        const json &model = j.at("model");
        if (model.value("type", "") != "BPE") unsupported(path, "a model of type " + model.value("type", "?"));
        // GPT-2's byte alphabet: printable bytes stand for themselves, the others for 256, 257, ...
        int extra = 0;
        for (int b = 0; b < 256; ++b) {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            byte_to_char_[b] = utf8_of(printable ? uint32_t(b) : uint32_t(256 + extra++));
        }
        for (int b = 0; b < 256; ++b) char_to_byte_[byte_to_char_[b]] = static_cast<unsigned char>(b);

        int32_t max_id = -1;
        for (auto &[piece, id] : model.at("vocab").items()) {
            vocab_[piece] = id.get<int32_t>();
            max_id = std::max(max_id, id.get<int32_t>());
        }
        int rank = 0;
        for (const json &m : model.at("merges")) {
            std::string key = m.is_string() ? m.get<std::string>()
                                            : m.at(0).get<std::string>() + " " + m.at(1).get<std::string>();
            merge_rank_.emplace(key, rank++);
        }
        byte_fallback_ = model.value("byte_fallback", false);
        if (model.contains("unk_token") && model["unk_token"].is_string()) {
            auto it = vocab_.find(model["unk_token"].get<std::string>());
            if (it != vocab_.end()) unk_ = it->second;
        }
        for (const json &a : j.value("added_tokens", json::array())) {
            if (a.value("lstrip", false) || a.value("rstrip", false) || a.value("single_word", false) ||
                a.value("normalized", false))
                unsupported(path, "an added token with lstrip/rstrip/single_word/normalized");
            added_.push_back({a.at("content").get<std::string>(), a.at("id").get<int32_t>(), a.value("special", false)});
            max_id = std::max(max_id, added_.back().id);
        }
        std::stable_sort(added_.begin(), added_.end(),
                         [](const Added &x, const Added &y) { return x.content.size() > y.content.size(); });

        id_to_token_.assign(size_t(max_id) + 1, std::string());
        special_.assign(size_t(max_id) + 1, false);
        for (auto &[piece, id] : vocab_) id_to_token_[size_t(id)] = piece;
        for (const Added &a : added_) {
            id_to_token_[size_t(a.id)] = a.content;
            special_[size_t(a.id)] = a.special;
        }
        read_decoder(path, j.value("decoder", json()));

        const json &normalizer = j.value("normalizer", json());
        if (!normalizer.is_null() &&
            !(normalizer.value("type", "") == "Sequence" && normalizer.value("normalizers", json::array()).empty()))
            unsupported(path, "a normalizer");
        const json &pre = j.at("pre_tokenizer");
        std::vector<json> steps;
        if (pre.value("type", "") == "Sequence") {
            for (const json &p : pre.at("pretokenizers")) steps.push_back(p);
        } else {
            steps.push_back(pre);
        }
        bool byte_level = false;
        for (const json &p : steps) {
            std::string type = p.value("type", "");
            if (type == "Digits" && p.value("individual_digits", false) && !byte_level) digits_ = true;
            else if (type == "ByteLevel" && p.value("use_regex", true) && !p.value("add_prefix_space", false))
                byte_level = true;
            else unsupported(path, "the pre-tokenizer step " + p.dump());
        }
        if (!byte_level) unsupported(path, "a pre-tokenizer without ByteLevel");
        regex_->byte_level = Regex::compile(kByteLevelPattern);
        regex_->number = Regex::compile(R"(\p{N})");

        const json &post = j.value("post_processor", json());
        if (!post.is_null()) {
            std::vector<json> posts;
            if (post.value("type", "") == "Sequence") {
                for (const json &p : post.at("processors")) posts.push_back(p);
            } else {
                posts.push_back(post);
            }
            for (const json &p : posts) {
                std::string type = p.value("type", "");
                if (type == "ByteLevel") continue;  // offsets only
                if (type != "TemplateProcessing") unsupported(path, "the post-processor " + type);
                bool seen_sequence = false;
                for (const json &item : p.at("single")) {
                    if (item.contains("Sequence")) {
                        seen_sequence = true;
                        continue;
                    }
                    const std::string &name = item.at("SpecialToken").at("id").get_ref<const std::string &>();
                    for (int32_t id : p.at("special_tokens").at(name).at("ids").get<std::vector<int32_t>>())
                        (seen_sequence ? suffix_ : prefix_).push_back(id);
                }
            }
        }
    } catch (const json::exception &e) {
        fail(EVLM_ERR_MODEL, path + " lacks a field the tokenizer needs (" + e.what() + "); re-export the bundle.");
    }
}

Tokenizer::~Tokenizer() = default;

bool Tokenizer::is_special(int32_t id) const { return id >= 0 && size_t(id) < special_.size() && special_[size_t(id)]; }

void Tokenizer::split_digits(const std::string &piece, std::vector<std::string> &out) const {
    if (!digits_) {
        out.push_back(piece);
        return;
    }
    Regex::split(regex_->number, piece, out);
}

void Tokenizer::bpe(const std::string &word, std::vector<int32_t> &out) const {
    std::vector<std::string> symbols;
    for (unsigned char b : word) symbols.push_back(byte_to_char_[b]);
    while (symbols.size() > 1) {
        int best = INT_MAX;
        size_t at = 0;
        for (size_t i = 0; i + 1 < symbols.size(); ++i) {
            auto it = merge_rank_.find(symbols[i] + " " + symbols[i + 1]);
            if (it != merge_rank_.end() && it->second < best) {
                best = it->second;
                at = i;
            }
        }
        if (best == INT_MAX) break;
        symbols[at] += symbols[at + 1];
        symbols.erase(symbols.begin() + long(at) + 1);
    }
    for (const std::string &s : symbols) {
        auto it = vocab_.find(s);
        if (it != vocab_.end()) {
            out.push_back(it->second);
            continue;
        }
        bool fell_back = false;
        if (byte_fallback_) {  // every byte of the symbol as <0xNN>, only if all exist
            std::vector<int32_t> bytes;
            for (size_t i = 0; i < s.size(); ++i) {
                char name[8];
                snprintf(name, sizeof name, "<0x%02X>", static_cast<unsigned char>(s[i]));
                auto b = vocab_.find(name);
                if (b == vocab_.end()) break;
                bytes.push_back(b->second);
            }
            if (bytes.size() == s.size()) {
                out.insert(out.end(), bytes.begin(), bytes.end());
                fell_back = true;
            }
        }
        if (!fell_back) {
            if (unk_ < 0) fail(EVLM_ERR_INPUT, "the tokenizer has no token for a piece of the text and no unknown token");
            out.push_back(unk_);
        }
    }
}

std::vector<int32_t> Tokenizer::encode(const std::string &text, bool add_special) const {
    if (!valid_utf8(text)) fail(EVLM_ERR_INPUT, "the text is not valid UTF-8; check its encoding.");
    std::vector<int32_t> ids;
    if (add_special) ids = prefix_;
    std::vector<std::string> pieces, words;
    auto encode_plain = [&](const std::string &segment) {
        if (segment.empty()) return;
        pieces.clear();
        split_digits(segment, pieces);
        for (const std::string &piece : pieces) {
            words.clear();
            Regex::split(regex_->byte_level, piece, words);
            for (const std::string &w : words) bpe(w, ids);
        }
    };
    // Added tokens first: the leftmost match, the longest at that position (tokenizers' AddedVocabulary).
    size_t start = 0;
    for (size_t i = 0; i < text.size();) {
        const Added *hit = nullptr;
        for (const Added &a : added_) {
            if (a.content[0] == text[i] && text.compare(i, a.content.size(), a.content) == 0) {
                hit = &a;
                break;  // longest first
            }
        }
        if (!hit) {
            ++i;
            continue;
        }
        encode_plain(text.substr(start, i - start));
        ids.push_back(hit->id);
        i += hit->content.size();
        start = i;
    }
    encode_plain(text.substr(start));
    if (add_special) ids.insert(ids.end(), suffix_.begin(), suffix_.end());
    return ids;
}

void Tokenizer::read_decoder(const std::string &path, const json &decoder) {
    std::vector<json> steps;
    if (decoder.value("type", "") == "Sequence") {
        for (const json &d : decoder.at("decoders")) steps.push_back(d);
    } else if (!decoder.is_null()) {
        steps.push_back(decoder);
    }
    bool byte_level = false;
    for (const json &d : steps) {
        std::string type = d.value("type", "");
        if (type == "ByteFallback") byte_fallback_decode_ = true;
        else if (type == "Fuse") fuse_ = true;
        else if (type == "Replace" && d.at("pattern").value("String", "") == "\xE2\x96\x81" &&
                 d.value("content", "") == " ")
            replace_space_ = true;
        else if (type == "ByteLevel") byte_level = true;
        else unsupported(path, "the decoder step " + d.dump());
    }
    if (!byte_level) unsupported(path, "a decoder without ByteLevel");
}

std::string Tokenizer::byte_level(const std::string &token) const {
    // All characters in GPT-2's alphabet: the bytes they stand for; otherwise the text unchanged.
    std::string bytes;
    for (size_t i = 0; i < token.size();) {
        size_t maximal;
        bool incomplete;
        size_t n = utf8_sequence(token, i, maximal, incomplete);
        auto it = char_to_byte_.find(token.substr(i, n ? n : 1));
        if (!n || it == char_to_byte_.end()) return token;
        bytes += char(it->second);
        i += n;
    }
    return bytes;
}

std::string Tokenizer::decode_bytes(const std::vector<int32_t> &ids, bool skip_special) const {
    // tokenizers' decoder chain: ByteFallback (<0xNN> runs -> text, or U+FFFD per byte), Fuse, Replace (▁ ->
    // space), ByteLevel (per token, or on the fused text), then one lossy UTF-8 conversion.
    std::vector<std::string> tokens;
    std::string pending;
    size_t pending_count = 0;
    auto flush = [&]() {
        if (!pending_count) return;
        if (valid_utf8(pending)) tokens.push_back(pending);
        else for (size_t k = 0; k < pending_count; ++k) tokens.push_back("\xEF\xBF\xBD");
        pending.clear();
        pending_count = 0;
    };
    for (int32_t id : ids) {
        if (id < 0 || size_t(id) >= id_to_token_.size()) continue;  // past the vocabulary: no text
        if (skip_special && special_[size_t(id)]) continue;
        const std::string &t = id_to_token_[size_t(id)];
        if (byte_fallback_decode_ && t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
            isxdigit(static_cast<unsigned char>(t[3])) && isxdigit(static_cast<unsigned char>(t[4]))) {
            pending += char(std::stoi(t.substr(3, 2), nullptr, 16));
            ++pending_count;
            continue;
        }
        flush();
        tokens.push_back(t);
    }
    flush();
    if (fuse_) {
        std::string fused;
        for (const std::string &t : tokens) fused += t;
        tokens.assign(1, fused);
    }
    std::string out;
    for (std::string &t : tokens) {
        if (replace_space_) {
            for (size_t at; (at = t.find("\xE2\x96\x81")) != std::string::npos;) t.replace(at, 3, " ");
        }
        out += byte_level(t);
    }
    return out;
}

std::string Tokenizer::token_bytes(int32_t id) const {
    if (id < 0 || size_t(id) >= id_to_token_.size() || special_[size_t(id)]) return {};
    return decode_bytes({id}, true);
}

std::string Tokenizer::decode(const std::vector<int32_t> &ids, bool skip_special) const {
    return utf8_lossy(decode_bytes(ids, skip_special));
}

std::string utf8_complete_prefix(const std::string &bytes, std::string &rest) {
    // Everything up to an incomplete character at the very end; invalid bytes in the middle pass (lossy later).
    size_t i = 0, keep = bytes.size();
    while (i < bytes.size()) {
        size_t maximal;
        bool incomplete;
        size_t n = utf8_sequence(bytes, i, maximal, incomplete);
        if (!n && incomplete) {
            keep = i;
            break;
        }
        i += n ? n : maximal;
    }
    rest = bytes.substr(keep);
    return utf8_lossy(bytes.substr(0, keep));
}

std::string utf8_lossy(const std::string &bytes) {
    std::string out;
    for (size_t i = 0; i < bytes.size();) {
        size_t maximal;
        bool incomplete;
        size_t n = utf8_sequence(bytes, i, maximal, incomplete);
        if (n) {
            out.append(bytes, i, n);
            i += n;
        } else {
            out += "\xEF\xBF\xBD";
            i += maximal;
        }
    }
    return out;
}

}  // namespace evlm
