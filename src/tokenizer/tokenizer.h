#pragma once
// Hugging Face tokenizer.json loader with exact BPE encode/decode, for the two styles the Llama
// family uses:
//   SentencePieceBPE: "▁" for spaces, no pre-tokenizer (the whole text is one BPE word), byte
//                     fallback to <0xXX> tokens (Llama 2, Mistral, TinyLlama, the test models);
//   ByteLevelBPE:     GPT-2 byte alphabet, regex pre-tokenizer (GPT-2, Llama 3, Qwen2, SmolLM).
// Merges follow HF semantics (lowest rank first, then leftmost), which also reproduce
// SentencePiece's and llama.cpp's ids for converted SentencePiece vocabularies. from_gguf builds
// the same from a GGUF file's own tokenizer metadata, as llama.cpp tokenizes with it.
// Objects are immutable after loading, cheap to copy, and safe to use from several threads.
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lowbit {

class GGUFFile;

class Tokenizer {
 public:
  enum class Kind { SentencePieceBPE, ByteLevelBPE };
  // GGUF's tokenizer.ggml.token_type values.
  enum class TokenType : int32_t { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };
  struct AddedToken {
    int32_t id;
    std::string content;
    bool special, lstrip, rstrip, single_word, normalized;
  };

  // Reads tokenizer.json; bos/eos come from a tokenizer_config.json beside it when there is one.
  // Throws Error with a clear message (missing file, bad JSON, unsupported model, bad ids...).
  static Tokenizer from_file(const std::string& tokenizer_json_path);
  // origin names the source in error messages.
  static Tokenizer from_json(const nlohmann::json& j, const std::string& origin);
  // From a GGUF file's tokenizer.ggml.* metadata ("llama" SPM or "gpt2" byte-level vocabularies),
  // tokenizing exactly as llama.cpp does with that metadata (tokenizer_gguf.cpp says how). Throws
  // Error for a file without tokenizer metadata, another tokenizer model, a pre-tokenizer name
  // lowbit does not know, or a vocabulary lowbit could not tokenize as llama.cpp does.
  static Tokenizer from_gguf(const GGUFFile& file);

  // Text must be valid UTF-8 (else Error). Special added tokens (<s>, <|eot_id|>...) written in
  // the text are plain text unless parse_special, as in llama.cpp's perplexity tool; non-special
  // added tokens are always matched, as HF and llama.cpp do.
  std::vector<int32_t> encode(std::string_view text, bool add_bos) const;
  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const;
  // Full text of the ids, special tokens included as their text (HF's decode default).
  // decode(encode(t, false)) == t for valid UTF-8 t. Throws Error on an id out of range.
  std::string decode(const std::vector<int32_t>& ids) const;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const;

  // The words BPE runs on: normalized, pre-tokenized and (byte-level) byte-mapped; for tests and
  // debugging. Added tokens are not split out here.
  std::vector<std::string> pre_tokenize(std::string_view text) const;

  std::string token_text(int32_t id) const;  // the raw vocab piece, e.g. "▁the" or "Ġthe"
  int32_t vocab_size() const;                // max id + 1 over vocab and added_tokens
  int32_t bos_id() const;                    // -1 if none
  int32_t eos_id() const;                    // -1 if none
  int32_t unk_id() const;                    // -1 if none
  int32_t pad_id() const { return pad_; }    // -1 if none (only a GGUF's metadata names one)
  bool add_bos_default() const;              // the model's own setting (add_bos_token / template)
  Kind kind() const;

  // For GGUF export.
  const std::vector<std::string>& pieces() const;                // id -> piece, "" for unused ids
  TokenType token_type(int32_t id) const;
  std::vector<std::pair<std::string, std::string>> merges() const;  // in rank order
  const std::vector<AddedToken>& added_tokens() const;
  std::vector<int32_t> special_ids() const;                      // added tokens with special: true
  bool is_special(int32_t id) const;
  std::vector<std::string> split_patterns() const;               // pre-tokenizer regexes, in order
  // SentencePiece-style scores for a llama (SPM) GGUF vocab: llama.cpp merges the pair whose
  // result has the highest score, so a piece scores -(rank of the first merge making it); pieces
  // no merge makes (bytes, single characters, specials) score below every merge result.
  std::vector<float> spm_scores() const;

  // Overrides for callers that know better (e.g. from config.json).
  void set_bos_id(int32_t id);
  void set_eos_id(int32_t id);

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
  // Kept outside the shared Impl so that set_bos_id() on a copy does not change the original.
  int32_t bos_ = -1, eos_ = -1, pad_ = -1;
  bool add_bos_ = false;
};

}  // namespace lowbit
