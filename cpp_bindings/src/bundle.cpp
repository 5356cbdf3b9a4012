#include "bundle.hpp"

#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "error.hpp"

namespace evlm {
namespace {

using json = nlohmann::json;
const char *kParts[] = {"vision_encoder", "embed_tokens", "decoder_model_merged"};
const std::map<std::string, std::string> kSuffixes = {{"fp32", ""},     {"fp16", "_fp16"}, {"int8", "_int8"},
                                                      {"uint8", "_uint8"}, {"quantized", "_quantized"},
                                                      {"q4", "_q4"},   {"q4f16", "_q4f16"}, {"bnb4", "_bnb4"}};

bool is_file(const std::string &path) {
    struct stat st {};
    return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_dir(const std::string &path) {
    struct stat st {};
    return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

json read_json(const std::string &path, bool required) {
    std::ifstream f(path, std::ios::binary);
    if (!f) {
        if (required) fail(EVLM_ERR_MODEL, path + " is missing; the folder is not a complete SmolVLM2 bundle. "
                                                  "Re-export it with `edgevlm export`.");
        return json::object();
    }
    try {
        json j = json::parse(f);
        if (!j.is_object()) fail(EVLM_ERR_MODEL, path + " must hold a JSON object; re-export the bundle.");
        return j;
    } catch (const json::exception &e) {
        fail(EVLM_ERR_MODEL, path + " is not valid JSON (" + e.what() + "); re-export the bundle.");
    }
}

Spec read_spec(const std::string &root) {
    json config = read_json(root + "/config.json", true);
    json pre = read_json(root + "/preprocessor_config.json", false);
    json proc = read_json(root + "/processor_config.json", false);
    json gen = read_json(root + "/generation_config.json", false);
    std::string type = config.value("model_type", "");
    if (type != "smolvlm" && type != "idefics3")
        fail(EVLM_ERR_MODEL, root + "/config.json is not a SmolVLM config (model_type '" + type + "').");
    Spec s;
    try {
        const json &vision = config.at("vision_config"), &text = config.at("text_config");
        int tile = vision.at("image_size"), patch = vision.at("patch_size");
        int scale = config.value("scale_factor", 2);
        s.image_token_id = config.value("image_token_id", 49190);
        s.image.tile = pre.value("max_image_size", json::object()).value("longest_edge", tile);
        s.image_seq_len = proc.value("image_seq_len", (tile / patch) * (tile / patch) / (scale * scale));
        s.hidden = text.at("hidden_size");
        s.num_layers = text.at("num_hidden_layers");
        int heads = text.at("num_attention_heads");
        s.kv_heads = text.value("num_key_value_heads", heads);
        s.head_dim = text.contains("head_dim") && text["head_dim"].is_number_integer() ? text["head_dim"].get<int>()
                                                                                       : s.hidden / heads;
        s.vocab_size = text.at("vocab_size");
        s.max_positions = text.value("max_position_embeddings", 8192);
        json eos = gen.contains("eos_token_id") ? gen["eos_token_id"] : text.value("eos_token_id", json(2));
        if (eos.is_array()) s.eos_ids = eos.get<std::vector<int32_t>>();
        else s.eos_ids = {eos.get<int32_t>()};
        s.image.longest_edge = pre.value("size", json::object()).value("longest_edge", 4 * tile);
        auto mean = pre.value("image_mean", std::vector<float>{0.5f, 0.5f, 0.5f});
        auto std_ = pre.value("image_std", std::vector<float>{0.5f, 0.5f, 0.5f});
        if (mean.size() != 3 || std_.size() != 3) fail(EVLM_ERR_MODEL, "image_mean and image_std need 3 values");
        for (int i = 0; i < 3; ++i) {
            s.image.mean[i] = mean[size_t(i)];
            s.image.std[i] = std_[size_t(i)];
        }
        s.image.rescale = pre.value("rescale_factor", 1.0 / 255.0);
        s.image.split = pre.value("do_image_splitting", true);
    } catch (const json::exception &e) {
        fail(EVLM_ERR_MODEL, root + "/config.json (or a processor config beside it) lacks a field or has a value "
                                    "of the wrong kind (" + std::string(e.what()) + "); re-export the bundle.");
    }
    for (int v : {s.image_token_id, s.image.tile, s.image_seq_len, s.hidden, s.num_layers, s.kv_heads, s.head_dim,
                  s.vocab_size, s.max_positions, s.image.longest_edge})
        if (v < 1) fail(EVLM_ERR_MODEL, root + "/config.json holds a size that is not a positive integer.");
    for (const char *name : {"tokenizer_config.json", "special_tokens_map.json"}) {
        json j = read_json(root + "/" + name, false);
        if (j.contains("bos_token")) {
            const json &b = j["bos_token"];
            if (b.is_string()) s.bos_token = b.get<std::string>();
            else if (b.is_object() && b.value("content", json()).is_string()) s.bos_token = b["content"];
        }
    }
    std::ifstream jinja(root + "/chat_template.jinja", std::ios::binary);
    if (jinja) {
        s.chat_template.assign(std::istreambuf_iterator<char>(jinja), {});
    } else {
        for (const char *name : {"chat_template.json", "tokenizer_config.json"}) {
            json j = read_json(root + "/" + name, false);
            if (j.value("chat_template", json()).is_string() && !j["chat_template"].get<std::string>().empty()) {
                s.chat_template = j["chat_template"];
                break;
            }
        }
    }
    return s;
}

bool inside(const std::string &rel) {
    return !rel.empty() && rel[0] != '/' && rel.find("..") == std::string::npos;
}

// Which files already matched their sha256, shared with the Python runtime (edgevlm/engine/verified.py, same file,
// same format): `$EDGEVLM_CACHE/verified.json` maps a file's real path to {"sha256", "id": [device, inode, size,
// mtime ns, ctime ns]}. A stamp is trusted only while the file's identity on disk is unchanged; a write in place or
// a replacement moves its ctime, which no program can set back. A cache that cannot be read or written only means
// hashing every time. Ordered: the oldest stamps are the first dropped past kStampLimit, as in Python.
class Stamps {
  public:
    Stamps() : path_(cache_dir() + "/verified.json") {
        std::ifstream f(path_, std::ios::binary);
        if (!f) return;
        try {
            entries_ = ordered_json::parse(f);
        } catch (const ordered_json::exception &) {
        }
        if (!entries_.is_object()) entries_ = ordered_json::object();
    }

    bool holds(const std::string &path, const std::string &sha256) const {
        ordered_json id = identity(path);
        auto it = entries_.find(real_path(path));
        if (id.is_null() || it == entries_.end() || !it->is_object()) return false;
        auto sum = it->find("sha256"), was = it->find("id");
        return sum != it->end() && *sum == sha256 && was != it->end() && *was == id;
    }

    void add(const std::string &path, const std::string &sha256) {
        ordered_json id = identity(path);
        if (id.is_null()) return;
        std::string key = real_path(path);
        entries_.erase(key);  // re-inserted last
        entries_[key] = {{"sha256", sha256}, {"id", id}};
        changed_ = true;
    }

    // Atomically (a temporary file renamed over the old one); silently nothing where the cache is not writable.
    void save() {
        if (!changed_) return;
        changed_ = false;
        while (entries_.size() > kStampLimit) entries_.erase(entries_.begin());
        std::string dir = path_.substr(0, path_.rfind('/'));
        for (size_t at = dir.find('/', 1); at != std::string::npos; at = dir.find('/', at + 1))  // mkdir -p
            if (mkdir(dir.substr(0, at).c_str(), 0777) != 0 && errno != EEXIST) return;
        if (mkdir(dir.c_str(), 0777) != 0 && errno != EEXIST) return;
        std::string tmp = dir + "/.verified.XXXXXX.partial";
        int fd = mkstemps(tmp.data(), 8);
        if (fd < 0) return;
        std::string text = entries_.dump();
        bool ok = write(fd, text.data(), text.size()) == ssize_t(text.size());
        ok = close(fd) == 0 && ok;
        if (!ok || std::rename(tmp.c_str(), path_.c_str()) != 0) unlink(tmp.c_str());
    }

  private:
    using ordered_json = nlohmann::ordered_json;
    static constexpr size_t kStampLimit = 4096;

    static std::string cache_dir() {
        if (const char *c = std::getenv("EDGEVLM_CACHE"); c && *c) return c;
        if (const char *x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/edgevlm";
        const char *home = std::getenv("HOME");
        return std::string(home && *home ? home : ".") + "/.cache/edgevlm";
    }

    static std::string real_path(const std::string &path) {
        char buf[PATH_MAX];
        return realpath(path.c_str(), buf) ? std::string(buf) : path;
    }

    static ordered_json identity(const std::string &path) {
        struct stat st {};
        if (stat(path.c_str(), &st) != 0) return nullptr;
        auto ns = [](const timespec &t) { return int64_t(t.tv_sec) * 1000000000 + int64_t(t.tv_nsec); };
        return {uint64_t(st.st_dev), uint64_t(st.st_ino), int64_t(st.st_size), ns(st.st_mtim), ns(st.st_ctim)};
    }

    std::string path_;
    ordered_json entries_ = ordered_json::object();
    bool changed_ = false;
};

// Size, then the stamp (unless `full`), then the sha256; a match is stamped.
void verify_file(const std::string &root, const std::string &rel, const json &files, Stamps &stamps, bool full) {
    if (!files.contains(rel))
        fail(EVLM_ERR_MODEL, rel + " is not listed in " + root + "/edgevlm.json; the bundle was changed after "
                                   "export. Re-export it.");
    const json &entry = files[rel];
    std::string path = root + "/" + rel;
    if (!is_file(path)) fail(EVLM_ERR_MODEL, path + " is missing from the bundle; re-export it or copy the whole "
                                                     "folder again.");
    struct stat st {};
    stat(path.c_str(), &st);
    if (!entry.value("size", json()).is_number_integer() || !entry.value("sha256", json()).is_string() ||
        uint64_t(st.st_size) != entry["size"].get<uint64_t>())
        fail(EVLM_ERR_MODEL, path + " does not match its checksum in edgevlm.json (altered or truncated); "
                                    "re-export the bundle or copy it again.");
    const std::string sha256 = entry["sha256"].get<std::string>();
    if (!full && stamps.holds(path, sha256)) return;
    if (sha256_file(path) != sha256)
        fail(EVLM_ERR_MODEL, path + " does not match its checksum in edgevlm.json (altered or truncated); "
                                    "re-export the bundle or copy it again.");
    stamps.add(path, sha256);
}

}  // namespace

std::string sha256_file(const std::string &path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail(EVLM_ERR_MODEL, path + " cannot be read; check the bundle's permissions.");
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    if (!ctx || !EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr)) fail(EVLM_ERR_RUNTIME, "sha256 unavailable");
    std::vector<char> buf(1 << 20);
    while (f) {
        f.read(buf.data(), std::streamsize(buf.size()));
        EVP_DigestUpdate(ctx.get(), buf.data(), size_t(f.gcount()));
    }
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    EVP_DigestFinal_ex(ctx.get(), digest, &len);
    static const char *hex = "0123456789abcdef";
    std::string out;
    for (unsigned i = 0; i < len; ++i) {
        out += hex[digest[i] >> 4];
        out += hex[digest[i] & 15];
    }
    return out;
}

Bundle open_bundle(const std::string &root_in, const std::string &variant, int verify) {
    std::string root = root_in;
    while (root.size() > 1 && root.back() == '/') root.pop_back();
    if (!is_dir(root))
        fail(EVLM_ERR_MODEL, "model folder " + root + " does not exist (or is not a folder); pass a bundle made "
                             "by `edgevlm export`.");
    for (const char *name : {"config.json", "tokenizer.json"})
        if (!is_file(root + "/" + name))
            fail(EVLM_ERR_MODEL, root + " has no " + name + "; it is not a complete SmolVLM2 ONNX model folder "
                                        "(re-export it with `edgevlm export`).");
    Bundle b;
    b.root = root;
    b.spec = read_spec(root);
    json manifest = read_json(root + "/edgevlm.json", false);
    std::map<std::string, std::map<std::string, std::string>> variants;
    std::map<std::string, std::string> kernel_graphs;  // standard file -> its kernel graph, both relative
    if (!manifest.empty()) {
        try {
            if (manifest.value("format", "") != "edgevlm-bundle")
                fail(EVLM_ERR_MODEL, root + "/edgevlm.json is not an edgevlm manifest; re-export the bundle.");
            for (auto &[name, parts] : manifest.at("variants").items())
                for (const char *part : kParts) {
                    std::string rel = parts.at(part);
                    if (!inside(rel)) fail(EVLM_ERR_MODEL, root + "/edgevlm.json names a file outside the bundle.");
                    variants[name][part] = rel;
                }
            const json graphs = manifest.value("kernel_graphs", json::object());
            const json sources = manifest.value("kernel_graph_sources", json::object());
            const json listed = manifest.value("files", json::object());
            for (auto &[standard, kernel] : graphs.items()) {
                std::string rel = kernel.get<std::string>();
                if (!inside(standard) || !inside(rel))
                    fail(EVLM_ERR_MODEL, root + "/edgevlm.json names a file outside the bundle.");
                // A kernel graph reads its weights inside its standard file: beside another one (parts swapped,
                // checksums redone) it is not used, and the standard file's own checks say what is wrong (as
                // engine/bundle.py).
                if (sources.contains(rel) &&
                    (!listed.contains(standard) || listed[standard].value("sha256", "") != sources[rel]))
                    continue;
                kernel_graphs[standard] = rel;
            }
        } catch (const json::exception &e) {
            fail(EVLM_ERR_MODEL, root + "/edgevlm.json is not a valid manifest (" + e.what() + "); re-export it.");
        }
    } else {  // Hugging Face's onnx/ layout: a variant is a file suffix present for all three parts
        for (auto &[name, suffix] : kSuffixes) {
            bool all = true;
            for (const char *part : kParts) all = all && is_file(root + "/onnx/" + part + suffix + ".onnx");
            if (all)
                for (const char *part : kParts) variants[name][part] = std::string("onnx/") + part + suffix + ".onnx";
        }
        verify = EVLM_VERIFY_OFF;  // nothing to check against
    }
    if (variants.empty()) fail(EVLM_ERR_MODEL, root + " holds no complete set of ONNX parts.");
    b.variant = variant.empty() ? (variants.count("fp32") ? "fp32" : variants.begin()->first) : variant;
    auto it = variants.find(b.variant);
    if (it == variants.end()) {
        std::string names;
        for (auto &v : variants) names += (names.empty() ? "" : ", ") + v.first;
        fail(EVLM_ERR_MODEL, "unknown variant '" + b.variant + "'; " + root + " has " + names + ".");
    }
    if (verify != EVLM_VERIFY_OFF) {
        const json &files = manifest.value("files", json::object());
        Stamps stamps;
        const bool full = verify == EVLM_VERIFY_FULL;
        auto check = [&](const std::string &rel) { verify_file(root, rel, files, stamps, full); };
        for (auto &[rel, entry] : files.items())  // the configs
            if (rel.size() < 5 || (rel.find(".onnx") == std::string::npos)) check(rel);
        for (auto &[part, rel] : it->second) {
            check(rel);
            if (files.contains(rel + "_data") || is_file(root + "/" + rel + "_data")) check(rel + "_data");
        }
        for (auto &[part, rel] : it->second) {
            auto kernel = kernel_graphs.find(rel);
            if (kernel != kernel_graphs.end()) check(kernel->second);
        }
        stamps.save();
    }
    for (auto &[part, rel] : it->second) {
        auto kernel = kernel_graphs.find(rel);
        if (kernel != kernel_graphs.end() && is_file(root + "/" + kernel->second))
            b.kernel_graphs[part] = root + "/" + kernel->second;
        auto fp32 = variants.find("fp32");
        if (fp32 != variants.end() && fp32->second.count(part) && fp32->second.at(part) == rel)
            b.fp32_parts.insert(part);
    }
    for (auto &[part, rel] : it->second) {
        b.parts[part] = root + "/" + rel;
        if (!is_file(b.parts[part])) fail(EVLM_ERR_MODEL, b.parts[part] + " is missing from the bundle; re-export it.");
    }
    return b;
}

}  // namespace evlm
