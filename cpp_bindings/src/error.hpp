// Errors inside the library: thrown as evlm::Error and turned into a status + thread-local message at the C API.
#pragma once
#include <stdexcept>
#include <string>

#include "edgevlm/edgevlm.h"

namespace evlm {

struct Error : std::runtime_error {
    evlm_status status;
    Error(evlm_status s, const std::string &message) : std::runtime_error(message), status(s) {}
};

[[noreturn]] inline void fail(evlm_status s, const std::string &message) { throw Error(s, message); }

}  // namespace evlm
