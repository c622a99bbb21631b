#pragma once
// PCRE2 (UTF + Unicode properties, JIT when available) for the pre-tokenizer split patterns of
// tokenizer.json, which are written for Oniguruma; the patterns Llama/GPT-2/Qwen use
// (\p{L}, \p{N}, (?i:...), (?!\S)) mean the same in PCRE2.
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lowbit {

class Regex {
 public:
  // literal: match `pattern` as plain text. Throws Error if the pattern does not compile.
  Regex(const std::string& pattern, bool literal);
  // Non-empty, non-overlapping matches as [begin, end) byte offsets, left to right.
  // `text` must be valid UTF-8 (it is not re-checked: the caller validates once).
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;
  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  std::shared_ptr<void> code_;  // pcre2_code_8, freed with pcre2_code_free
};

}  // namespace lowbit
