#pragma once
// The text stages of a Hugging Face tokenizer.json around the BPE model: normalizer,
// pre-tokenizer and decoder, each parsed from its JSON object and applied with HF semantics.
// Only the kinds Llama-family tokenizers use are supported; anything else is an Error naming it.
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/regex.h"

namespace lowbit {

class Normalizer {
 public:
  // j may be null (no normalizer). origin names the file in error messages.
  static Normalizer parse(const nlohmann::json& j, const std::string& origin);
  std::string apply(std::string_view text) const;

 private:
  struct Step {
    enum Type { Prepend, Replace, Strip, Nfc } type;
    std::string a, b;              // Prepend: a; Replace: a -> b
    std::shared_ptr<Regex> regex;  // Replace with a Regex pattern
    bool left = false, right = false;
  };
  void add(const nlohmann::json& j, const std::string& origin);
  std::vector<Step> steps_;
};

class PreTokenizer {
 public:
  static PreTokenizer parse(const nlohmann::json& j, const std::string& origin);
  // Splits one normalized text segment into the words BPE runs on, appending them to `out`.
  // `at_start`: the segment begins the input text (Metaspace prepend_scheme "first").
  void split(std::string_view text, bool at_start, std::vector<std::string>& out) const;
  bool has_byte_level() const;
  // The regex patterns the splits use, in order (for export).
  std::vector<std::string> patterns() const;

 private:
  enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
  struct Step {
    enum Type { Split, ByteLevel, Metaspace } type;
    std::shared_ptr<Regex> regex;  // Split, ByteLevel with use_regex
    Behavior behavior = Behavior::Isolated;
    bool invert = false;
    bool add_prefix_space = false;  // ByteLevel
    std::string replacement;        // Metaspace
    enum class Prepend { Always, First, Never } prepend = Prepend::Always;
    bool metaspace_split = true;
  };
  void add(const nlohmann::json& j, const std::string& origin);
  static void split_by(const Regex& re, Behavior behavior, bool invert, std::string_view text,
                       std::vector<std::string>& out);
  std::vector<Step> steps_;
};

class Decoder {
 public:
  static Decoder parse(const nlohmann::json& j, const std::string& origin);
  // Token pieces -> text, as HF's decode_chain followed by concatenation.
  std::string decode(std::vector<std::string> tokens) const;

 private:
  struct Step {
    enum Type { Replace, ByteFallback, Fuse, Strip, ByteLevel, Metaspace } type;
    std::string a, b;  // Replace a -> b; Strip: a = content; Metaspace: a = replacement
    size_t start = 0, stop = 0;
    bool strip_first = true;  // Metaspace: prepend_scheme != never
  };
  void add(const nlohmann::json& j, const std::string& origin);
  std::vector<Step> steps_;
  bool present_ = false;
};

}  // namespace lowbit
