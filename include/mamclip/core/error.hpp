#pragma once
// The exception hierarchy. Every message names the op or file, the argument,
// what was expected and what was given, so a user can act on it.
//
//   error (std::runtime_error)
//   ├── shape_error     shapes that do not fit together
//   ├── dtype_error     an element type an op does not support
//   ├── device_error    wrong device, or no kernel registered for a device
//   ├── index_error     an index out of range
//   ├── io_error        files: missing, corrupt, truncated
//   ├── value_error     an argument with a bad value
//   └── autograd_error  misuse of the graph (backward twice, non-scalar root)

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace mamclip {

struct error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct shape_error : error { using error::error; };
struct dtype_error : error { using error::error; };
struct device_error : error { using error::error; };
struct index_error : error { using error::error; };
struct io_error : error { using error::error; };
struct value_error : error { using error::error; };
struct autograd_error : error { using error::error; };

namespace detail {
template <class... Args>
std::string str_cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
}  // namespace detail

}  // namespace mamclip

// MAMCLIP_CHECK(cond, error_type, message parts...): throws error_type with the
// parts streamed together when cond is false.
#define MAMCLIP_CHECK(cond, error_type, ...)                             \
  do {                                                                   \
    if (!(cond)) throw error_type(::mamclip::detail::str_cat(__VA_ARGS__)); \
  } while (0)
