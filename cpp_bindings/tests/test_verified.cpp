// Checksums at open: the first open hashes the variant's files and stamps them in the user's cache, in the file
// and format the Python runtime uses ($EDGEVLM_CACHE/verified.json); a later open trusts a stamp only while the
// file's identity on disk (device, inode, size, mtime, ctime) is unchanged; EVLM_VERIFY_FULL ignores stamps.
// The altered bundle's embed_tokens.onnx (one byte flipped, same size) shows which of these ran: a stamp forged for
// it is trusted by the default, and refused by a full check or once its ctime no longer matches.
// With PYTHON, stamps the Python runtime wrote are trusted as they are (the C open hashes nothing, so it does not
// rewrite the file).
// usage: test_verified BUNDLE ALTERED_BUNDLE [PYTHON]
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "edgevlm/edgevlm.h"

namespace {

using json = nlohmann::json;
int failures = 0;

void expect(bool ok, const std::string &what) {
    if (ok) return;
    std::fprintf(stderr, "FAIL %s: last error '%s'\n", what.c_str(), evlm_last_error());
    ++failures;
}

evlm_status open_with(const std::string &dir, int verify) {
    evlm_model_options o;
    evlm_model_options_init(&o);
    o.threads = 1;
    o.verify = verify;
    evlm_model *m = nullptr;
    evlm_status s = evlm_model_open(dir.c_str(), &o, &m);
    evlm_model_close(m);
    return s;
}

std::string real(const std::string &path) {
    char buf[PATH_MAX];
    return realpath(path.c_str(), buf) ? buf : path;
}

json identity(const std::string &path) {
    struct stat st {};
    stat(path.c_str(), &st);
    auto ns = [](const timespec &t) { return int64_t(t.tv_sec) * 1000000000 + t.tv_nsec; };
    return {st.st_dev, st.st_ino, st.st_size, ns(st.st_mtim), ns(st.st_ctim)};
}

json read(const std::string &path) {
    std::ifstream f(path);
    return f ? json::parse(f, nullptr, false) : json();
}

void write(const std::string &path, const json &j) {
    std::ofstream(path) << j.dump();
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: test_verified BUNDLE ALTERED_BUNDLE [PYTHON]\n");
        return 2;
    }
    const std::string bundle = argv[1], altered = argv[2];
    char dir[] = "/tmp/evlm-verified-XXXXXX";
    if (!mkdtemp(dir)) return 2;
    const std::string cache = std::string(dir) + "/cache", stamps = cache + "/verified.json";
    setenv("EDGEVLM_CACHE", cache.c_str(), 1);

    // The first open hashes and stamps what it checked, keyed by real path, with the file's identity.
    expect(open_with(bundle, EVLM_VERIFY_ON) == EVLM_OK, "first open");
    json entries = read(stamps);
    const std::string embed = bundle + "/onnx/embed_tokens.onnx", config = bundle + "/config.json";
    json manifest = read(bundle + "/edgevlm.json");
    expect(entries.is_object() && entries.contains(real(embed)) && entries.contains(real(config)),
           "the first open stamps the part and the configs");
    if (entries.contains(real(embed))) {
        expect(entries[real(embed)]["sha256"] == manifest["files"]["onnx/embed_tokens.onnx"]["sha256"],
               "the stamp holds the manifest's sha256");
        expect(entries[real(embed)]["id"] == identity(embed), "the stamp holds the file's identity");
    }
    expect(open_with(bundle, EVLM_VERIFY_ON) == EVLM_OK, "second open");

    // The altered file was never stamped: hashed and refused, and nothing stamped for it.
    const std::string bad = altered + "/onnx/embed_tokens.onnx";
    expect(open_with(altered, EVLM_VERIFY_ON) == EVLM_ERR_MODEL, "altered file refused");
    expect(std::strstr(evlm_last_error(), "checksum") != nullptr, "the refusal names the checksum");
    expect(!read(stamps).contains(real(bad)), "a mismatch is not stamped");

    // A stamp for it with its identity and the manifest's sum (as if it had matched): the default trusts it, which
    // shows the stamp is what saved the hashing; a full check hashes and refuses.
    json forged = read(stamps);
    json altered_manifest = read(altered + "/edgevlm.json");
    forged[real(bad)] = {{"sha256", altered_manifest["files"]["onnx/embed_tokens.onnx"]["sha256"]},
                         {"id", identity(bad)}};
    write(stamps, forged);
    expect(open_with(altered, EVLM_VERIFY_ON) == EVLM_OK, "a matching stamp is trusted");
    expect(open_with(altered, EVLM_VERIFY_FULL) == EVLM_ERR_MODEL, "EVLM_VERIFY_FULL hashes despite the stamp");
    expect(open_with(altered, EVLM_VERIFY_OFF) == EVLM_OK, "EVLM_VERIFY_OFF checks nothing");

    // The same stamp once the file's ctime moved (any write, chmod or rename does; nothing sets it back).
    json id = identity(bad);
    id[4] = id[4].get<int64_t>() - 1;
    forged[real(bad)]["id"] = id;
    write(stamps, forged);
    expect(open_with(altered, EVLM_VERIFY_ON) == EVLM_ERR_MODEL, "a stamp of another identity is not trusted");

    // A damaged stamps file or an unwritable cache only means hashing again.
    std::ofstream(stamps) << "{not json";
    expect(open_with(bundle, EVLM_VERIFY_ON) == EVLM_OK, "a damaged stamps file");
    expect(read(stamps).is_object(), "a damaged stamps file is rewritten");
    const std::string blocker = std::string(dir) + "/file";
    std::ofstream(blocker) << "x";
    setenv("EDGEVLM_CACHE", (blocker + "/cache").c_str(), 1);
    expect(open_with(bundle, EVLM_VERIFY_ON) == EVLM_OK, "an unwritable cache");
    expect(open_with(altered, EVLM_VERIFY_ON) == EVLM_ERR_MODEL, "an unwritable cache still hashes");

    if (argc > 3) {  // the Python runtime's stamps
        const std::string py_cache = std::string(dir) + "/py-cache";
        setenv("EDGEVLM_CACHE", py_cache.c_str(), 1);
        std::string load = std::string(argv[3]) + " -c \"import edgevlm; edgevlm.load('" + bundle + "')\"";
        expect(std::system(load.c_str()) == 0, "the Python runtime loads the bundle");
        struct stat before {}, after {};
        expect(stat((py_cache + "/verified.json").c_str(), &before) == 0, "the Python runtime wrote its stamps");
        expect(open_with(bundle, EVLM_VERIFY_ON) == EVLM_OK, "open after the Python runtime");
        stat((py_cache + "/verified.json").c_str(), &after);
        expect(before.st_ino == after.st_ino && before.st_mtim.tv_nsec == after.st_mtim.tv_nsec,
               "the Python runtime's stamps are trusted as they are");
    }

    expect(open_with(bundle, 3) == EVLM_ERR_ARGUMENT, "verify out of range");
    expect(std::strstr(evlm_last_error(), "EVLM_VERIFY_FULL") != nullptr, "the error names the values");

    std::string cleanup = std::string("rm -rf ") + dir;
    if (std::system(cleanup.c_str()) != 0) std::fprintf(stderr, "could not remove %s\n", dir);
    if (failures) std::fprintf(stderr, "%d failure(s)\n", failures);
    return failures ? 1 : 0;
}
