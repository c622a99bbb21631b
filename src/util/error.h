#pragma once
// One exception type for every user-facing failure. Library code throws; only the CLI turns it
// into a one-line message and a non-zero exit.
#include <fmt/format.h>
#include <stdexcept>
#include <string>

namespace lowbit {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace lowbit
