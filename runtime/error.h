// Error reporting: every failure in the runtime is an mfuser::Error carrying a message that names
// what failed (file, tensor, op, CUDA call). Nothing aborts; callers decide what to do.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace mfuser {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Concatenates any streamable values into one string: str_cat("tensor ", name, " has ", n, " dims").
template <class... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

}  // namespace mfuser

// Throws mfuser::Error with the streamed message when `cond` is false.
#define MFUSER_CHECK(cond, ...)                                \
  do {                                                         \
    if (!(cond)) throw ::mfuser::Error(::mfuser::str_cat(__VA_ARGS__)); \
  } while (0)
