#pragma once
// Small helpers shared by the spec parser and the registry matchers.
#include <cstdint>
#include <optional>
#include <string_view>

namespace lowbit {

// A positive decimal count without sign or leading zeros ("128"); nullopt otherwise.
inline std::optional<int64_t> parse_count(std::string_view s) {
  if (s.empty() || s.size() > 9 || s[0] == '0') return std::nullopt;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

}  // namespace lowbit
