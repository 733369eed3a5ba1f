// ncml: error handling.
//
// Every public entry point validates its arguments before it writes anything and throws
// nc::error with a message that names the argument and the offending value. NC_EXPECTS is
// the one macro used for that; the message is a stream expression so values can be embedded:
//
//   NC_EXPECTS(k > 0, "k must be positive, got k = " << k);
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace nc {

/// Invalid input to an ncml call. The message names the argument and the value.
class error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// A failing CUDA runtime or library call (thrown by the GPU path only).
class cuda_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
[[noreturn]] inline void throw_error(const char* file, int line, const std::string& what) {
  std::string f(file);
  const auto slash = f.find_last_of("/\\");
  if (slash != std::string::npos) f = f.substr(slash + 1);
  throw ::nc::error("ncml: " + what + " (" + f + ":" + std::to_string(line) + ")");
}
}  // namespace detail
}  // namespace nc

/// Throws nc::error with the streamed message when `cond` is false.
#define NC_EXPECTS(cond, msg)                                         \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::ostringstream nc_expects_os_;                              \
      nc_expects_os_ << msg;                                          \
      ::nc::detail::throw_error(__FILE__, __LINE__, nc_expects_os_.str()); \
    }                                                                 \
  } while (0)

/// Throws nc::error unconditionally (for the end of a dispatch over enum values).
#define NC_FAIL(msg) NC_EXPECTS(false, msg)
