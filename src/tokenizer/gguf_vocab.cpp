#include "tokenizer/gguf_vocab.h"


#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "tokenizer/sentencepiece_model.h"
#include "util/error.h"
#include "util/json_file.h"

namespace lowbit {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kMetaspace = "\xE2\x96\x81";  // U+2581 '▁', SentencePiece's space

GGUFValue scalar(GGUFValueType type, json value) {
  GGUFValue v;
  v.type = type;
  v.value = std::move(value);
  return v;
}

GGUFValue array(GGUFValueType element_type, json values) {
  GGUFValue v;
  v.type = GGUFValueType::ARRAY;
  v.array_type = element_type;
  v.value = std::move(values);
  return v;
}

// ---------------------------------------------------------------------------------------------
// llama.cpp's pre-tokenizers (llm_tokenizer_bpe in src/llama-vocab.cpp): each name has a fixed
// list of regexes, applied one after the other, every match and every gap between matches kept
// as its own piece (HF's Split with behavior Isolated). A tokenizer.json says the same thing in
// its own spelling: llama.cpp rewrites (?i:'s|...) as (?:'[sS]|...), and drops the final |\s+
// from GPT-2's pattern (a lone whitespace character that nothing else matches is a gap piece
// either way). Both spellings are accepted.

// GPT-2's pattern, which ByteLevel(use_regex: true) applies.
const char* kGpt2 = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* kGpt2Cpp = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
const char* kLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* kLlama3Cpp =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* kQwen2 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* kQwen2Cpp =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* kDefaultPunct = R"([\p{P}\$\+<=>\^~\|]+)";

// Pre-tokenized (and byte-mapped: Ġ is a space, Ċ a newline) under each name's regexes. A
// tokenizer whose patterns match a name but whose Split behaviors, Digits grouping, prefix space
// or normalizer differ gives other words here.
const char* kProbe = "Hello world's 123  x\n";

struct PreTokenizerSpec {
  const char* name;
  std::vector<std::vector<std::string>> spellings;
  bool ignore_merges;  // what llama.cpp sets for this name: a pre-token that is a token is kept whole
  std::vector<std::string> probe;
};

const std::vector<PreTokenizerSpec>& pre_tokenizer_specs() {
  static const std::vector<PreTokenizerSpec> specs = {
      // Llama 3: contractions any case, letters with one leading non-letter, digits in threes.
      {"llama-bpe", {{kLlama3}, {kLlama3Cpp}}, true,
       {"Hello", "Ġworld", "'s", "Ġ", "123", "Ġ", "Ġx", "Ċ"}},
      // Qwen2: the same with single digits.
      {"qwen2", {{kQwen2}, {kQwen2Cpp}}, false,
       {"Hello", "Ġworld", "'s", "Ġ", "1", "2", "3", "Ġ", "Ġx", "Ċ"}},
      // GPT-2: ByteLevel's own regex; " 123" stays one piece.
      {"gpt-2", {{kGpt2}, {kGpt2Cpp}}, false, {"Hello", "Ġworld", "'s", "Ġ123", "Ġ", "Ġx", "Ċ"}},
      // SmolLM: Digits(individual_digits) before GPT-2's regex.
      {"smollm", {{R"(\p{N})", kGpt2}, {R"(\p{N})", kGpt2Cpp}}, false,
       {"Hello", "Ġworld", "'s", "Ġ", "1", "2", "3", "Ġ", "Ġx", "Ċ"}},
      // llama.cpp's fallback: punctuation runs first (so "'" is cut from "s"), then GPT-2's regex,
      // then digit runs and digit triples.
      {"default",
       {{kDefaultPunct, kGpt2Cpp, R"(\p{N}+)", "[0-9][0-9][0-9]"},
        {kDefaultPunct, kGpt2, R"(\p{N}+)", "[0-9][0-9][0-9]"}},
       false,
       {"Hello", "Ġworld", "'", "s", "Ġ", "123", "Ġ", "Ġx", "Ċ"}},
  };
  return specs;
}

const PreTokenizerSpec* find_spec(const std::vector<std::string>& patterns) {
  for (const auto& s : pre_tokenizer_specs())
    for (const auto& spelling : s.spellings)
      if (spelling == patterns) return &s;
  return nullptr;
}

std::string quoted_list(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "'" : ", '") + s + "'";
  return out.empty() ? "(none)" : out;
}

// ---------------------------------------------------------------------------------------------
// Files beside the tokenizer

json read_json_if_present(const fs::path& path) {
  std::error_code ec;
  if (path.empty() || !fs::is_regular_file(path, ec)) return json();
  return read_json_file(path.string());
}

// "<pad>" or {"content": "<pad>", ...}, as tokenizer_config.json writes special tokens.
std::string config_token(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return {};
}

// The padding id, as the converter finds it: tokenizer_config.json's pad_token (an added token,
// else a piece), else config.json's pad_token_id. -1 if neither names a token.
int32_t find_pad_id(const Tokenizer& tok, const json& tok_config, const json& config, int64_t n_tokens) {
  if (tok_config.is_object() && tok_config.contains("pad_token")) {
    std::string name = config_token(tok_config["pad_token"]);
    if (!name.empty()) {
      for (const auto& a : tok.added_tokens())
        if (a.content == name) return a.id;
      const auto& pieces = tok.pieces();
      for (size_t id = 0; id < pieces.size(); ++id)
        if (pieces[id] == name && tok.token_type(int32_t(id)) != Tokenizer::TokenType::Unused) return int32_t(id);
    }
  }
  if (config.is_object() && config.contains("pad_token_id") && config["pad_token_id"].is_number_integer()) {
    int64_t id = config["pad_token_id"].get<int64_t>();
    if (id >= 0 && id < n_tokens) return int32_t(id);
  }
  return -1;
}

// ---------------------------------------------------------------------------------------------
// Checks that llama.cpp's SPM tokenizer (llm_tokenizer_spm) can follow lowbit's. It puts " " in
// front of the text (add_space_prefix), turns every space into ▁, and runs its merges over the
// whole text; characters that end up in no token become <0xXX> byte tokens.

// Returns whether lowbit puts a ▁ in front of the text.
bool check_spm_shape(const Tokenizer& tok, const std::vector<std::string>& tokens, const std::string& origin) {
  if (!tok.split_patterns().empty())
    fail("{}: cannot export a SentencePiece-style tokenizer with a regex pre-tokenizer ({}) to GGUF: llama.cpp's "
         "SPM tokenizer never splits the text",
         origin, quoted_list(tok.split_patterns()));
  const auto words = tok.pre_tokenize("a  b");
  std::string joined;
  for (const auto& w : words) joined += w;
  bool prefix;
  if (joined == kMetaspace + "a" + kMetaspace + kMetaspace + "b") prefix = true;
  else if (joined == "a" + kMetaspace + kMetaspace + "b") prefix = false;
  else
    fail("{}: cannot export to GGUF: lowbit normalizes \"a  b\" to '{}', but llama.cpp's SPM tokenizer only turns "
         "spaces into \u2581 (and may put one in front)",
         origin, joined);
  if (words.size() > 1) {
    // Split at each ▁ (Metaspace split: true). That changes nothing only if no token has a ▁
    // anywhere but at its start, since no merge could ever reach across one then.
    for (size_t id = 0; id < tokens.size(); ++id)
      if (tokens[id].find(kMetaspace, 1) != std::string::npos)
        fail("{}: cannot export to GGUF: the pre-tokenizer splits the text before each \u2581 but token {} '{}' has "
             "a \u2581 inside, which llama.cpp's SPM tokenizer (no split) could form and lowbit cannot",
             origin, id, tokens[id]);
  }
  // llama.cpp spells every character outside the vocabulary with <0xXX> tokens and has no <unk>
  // fallback; lowbit does the same only with byte_fallback and all 256 byte tokens.
  std::unordered_map<std::string, int32_t> ids;
  for (size_t id = 0; id < tokens.size(); ++id) ids.emplace(tokens[id], int32_t(id));
  for (int b = 0; b < 256; ++b) {
    std::string name = fmt::format("<0x{:02X}>", b);
    auto it = ids.find(name);
    if (it == ids.end() || it->second >= tok.vocab_size() || tok.token_type(it->second) != Tokenizer::TokenType::Byte)
      fail("{}: cannot export to GGUF: llama.cpp's SPM tokenizer spells unknown characters with the 256 byte tokens, "
           "but {} is not a byte-fallback token of this tokenizer",
           origin, name);
  }
  return prefix;
}

// Scores from tokenizer.model, whose pieces (and types) must be lowbit's.
std::vector<float> sentencepiece_scores(const Tokenizer& tok, const std::string& model_path, int64_t n_tokens) {
  const std::vector<SentencePieceEntry> sp = read_sentencepiece_model(model_path);
  const int n_sp = int(sp.size());
  if (n_sp > tok.vocab_size())
    fail("{} has {} pieces but the tokenizer has only {} ids", model_path, n_sp, tok.vocab_size());
  std::vector<float> scores(size_t(n_tokens), -10000.0f);  // the converter's score for unused ids
  for (int id = 0; id < n_sp; ++id) {
    const std::string& piece = sp[id].piece;
    if (piece != tok.pieces()[id])
      fail("{}: piece {} is '{}', but the tokenizer's id {} is '{}'", model_path, id, piece, id, tok.pieces()[id]);
    auto sp_type = sp[id].type, type = tok.token_type(id);
    // An added token in tokenizer.json may make a normal piece user-defined or control, as the
    // converter's added_tokens_decoder does; any other difference is a different vocabulary.
    bool added = sp_type == Tokenizer::TokenType::Normal &&
                 (type == Tokenizer::TokenType::UserDefined || type == Tokenizer::TokenType::Control);
    if (sp_type != type && !added)
      fail("{}: piece {} '{}' has SentencePiece type {} but tokenizer type {}", model_path, id, piece, int(sp_type),
           int(type));
    scores[id] = sp[id].score;
  }
  for (int64_t id = n_sp; id < n_tokens; ++id)  // added tokens beyond the model: the converter's -1000
    if (id < tok.vocab_size() && tok.token_type(int32_t(id)) != Tokenizer::TokenType::Unused) scores[id] = -1000.0f;
  return scores;
}

// Scores derived from merge ranks; ids past the tokenizer (config padding) go below all of them.
std::vector<float> derived_scores(const Tokenizer& tok, int64_t n_tokens) {
  std::vector<float> scores = tok.spm_scores();
  float low = scores.empty() ? 0.0f : *std::min_element(scores.begin(), scores.end());
  for (int64_t id = int64_t(scores.size()); id < n_tokens; ++id) scores.push_back(low - float(id - tok.vocab_size() + 1));
  return scores;
}

}  // namespace

std::string gguf_pre_tokenizer_name(const std::vector<std::string>& split_patterns) {
  const PreTokenizerSpec* s = find_spec(split_patterns);
  return s ? s->name : "";
}

std::optional<GGUFPreTokenizer> gguf_pre_tokenizer(const std::string& name) {
  for (const auto& s : pre_tokenizer_specs())
    if (name == s.name) return GGUFPreTokenizer{s.spellings.front(), s.ignore_merges};
  return std::nullopt;
}

std::vector<std::string> gguf_pre_tokenizer_names() {
  std::vector<std::string> out;
  for (const auto& s : pre_tokenizer_specs()) out.push_back(s.name);
  return out;
}

std::vector<std::pair<std::string, GGUFValue>> gguf_tokenizer_metadata(const Tokenizer& tok,
                                                                       const std::string& tokenizer_dir) {
  using T = GGUFValueType;
  const fs::path dir(tokenizer_dir);
  // An empty tokenizer_dir means no files beside the tokenizer (not the working directory).
  auto beside = [&](const char* name) { return tokenizer_dir.empty() ? fs::path() : dir / name; };
  const json tok_json = read_json_if_present(beside("tokenizer.json"));
  const std::string origin = tok_json.is_null() ? tokenizer_dir : (dir / "tokenizer.json").string();
  const json tok_config = read_json_if_present(beside("tokenizer_config.json"));
  const json config = read_json_if_present(beside("config.json"));

  // The token list: lowbit's pieces, unused ids and the model's padding rows as "[PAD<id>]".
  int64_t n_tokens = tok.vocab_size();
  if (config.is_object() && config.contains("vocab_size") && config["vocab_size"].is_number_integer()) {
    int64_t v = config["vocab_size"].get<int64_t>();
    if (v < n_tokens)
      fail("{}: vocab_size {} is smaller than the tokenizer's {} ids", (dir / "config.json").string(), v, n_tokens);
    n_tokens = v;
  }
  std::vector<std::string> tokens(static_cast<size_t>(n_tokens));
  std::vector<int32_t> types(static_cast<size_t>(n_tokens));
  std::unordered_map<std::string, int32_t> seen;
  seen.reserve(size_t(n_tokens));
  for (int64_t id = 0; id < n_tokens; ++id) {
    auto type = id < tok.vocab_size() ? tok.token_type(int32_t(id)) : Tokenizer::TokenType::Unused;
    if (type == Tokenizer::TokenType::Unused) {
      tokens[id] = fmt::format("[PAD{}]", id);
    } else {
      tokens[id] = tok.pieces()[id];
      if (tokens[id].empty()) fail("{}: token {} is empty, which llama.cpp cannot load", origin, id);
    }
    types[id] = int32_t(type);
    if (auto [it, fresh] = seen.emplace(tokens[id], int32_t(id)); !fresh)
      fail("{}: ids {} and {} are both '{}'; llama.cpp refuses duplicate tokens", origin, it->second, id, tokens[id]);
  }

  std::vector<std::pair<std::string, GGUFValue>> kv;
  auto ids_and_flags = [&] {
    auto add_id = [&](const char* key, int32_t id) {
      if (id >= 0 && id < n_tokens) kv.emplace_back(key, scalar(T::UINT32, uint32_t(id)));
    };
    add_id("tokenizer.ggml.bos_token_id", tok.bos_id());
    add_id("tokenizer.ggml.eos_token_id", tok.eos_id());
    add_id("tokenizer.ggml.unknown_token_id", tok.unk_id());
    add_id("tokenizer.ggml.padding_token_id", find_pad_id(tok, tok_config, config, n_tokens));
    kv.emplace_back("tokenizer.ggml.add_bos_token", scalar(T::BOOL, tok.add_bos_default() && tok.bos_id() >= 0));
    kv.emplace_back("tokenizer.ggml.add_eos_token", scalar(T::BOOL, false));
  };

  if (tok.kind() == Tokenizer::Kind::SentencePieceBPE) {
    bool prefix = check_spm_shape(tok, tokens, origin);
    const fs::path model = beside("tokenizer.model");
    std::error_code ec;
    std::vector<float> scores = fs::is_regular_file(model, ec) ? sentencepiece_scores(tok, model.string(), n_tokens)
                                                              : derived_scores(tok, n_tokens);
    kv.emplace_back("tokenizer.ggml.model", scalar(T::STRING, "llama"));
    kv.emplace_back("tokenizer.ggml.pre", scalar(T::STRING, "default"));
    kv.emplace_back("tokenizer.ggml.tokens", array(T::STRING, tokens));
    json s = json::array();
    for (float f : scores) s.push_back(double(f));
    kv.emplace_back("tokenizer.ggml.scores", array(T::FLOAT32, std::move(s)));
    kv.emplace_back("tokenizer.ggml.token_type", array(T::INT32, types));
    ids_and_flags();
    if (!prefix) kv.emplace_back("tokenizer.ggml.add_space_prefix", scalar(T::BOOL, false));
    return kv;
  }

  // Byte-level BPE.
  const auto patterns = tok.split_patterns();
  const PreTokenizerSpec* spec = find_spec(patterns);
  if (!spec) {
    std::string known;
    for (const auto& s : pre_tokenizer_specs()) known += (known.empty() ? "" : ", ") + std::string(s.name);
    fail("{}: cannot export to GGUF: llama.cpp has no pre-tokenizer for the split pattern(s) {} (lowbit knows {})",
         origin, quoted_list(patterns), known);
  }
  if (auto words = tok.pre_tokenize(kProbe); words != spec->probe)
    fail("{}: cannot export to GGUF as pre-tokenizer '{}': its patterns match, but it splits \"Hello world's 123  "
         "x\\n\" into {} where llama.cpp gives {} (split behavior, digit grouping, prefix space or normalizer differ)",
         origin, spec->name, quoted_list(words), quoted_list(spec->probe));
  if (tok_json.is_object() && tok_json.contains("model") && tok_json["model"].is_object()) {
    const json& m = tok_json["model"];
    bool ignore_merges = m.contains("ignore_merges") && m["ignore_merges"].is_boolean() && m["ignore_merges"].get<bool>();
    if (ignore_merges != spec->ignore_merges)
      fail("{}: cannot export to GGUF as pre-tokenizer '{}': the model has ignore_merges {}, but llama.cpp uses {} "
           "for it",
           origin, spec->name, ignore_merges, spec->ignore_merges);
  }
  json merges = json::array();
  for (const auto& [a, b] : tok.merges()) {
    if (a.find(' ') != std::string::npos || b.find(' ') != std::string::npos)
      fail("{}: merge '{}' + '{}' has a space in a piece, which GGUF's \"a b\" merges cannot hold", origin, a, b);
    merges.push_back(a + " " + b);
  }
  kv.emplace_back("tokenizer.ggml.model", scalar(T::STRING, "gpt2"));
  kv.emplace_back("tokenizer.ggml.pre", scalar(T::STRING, spec->name));
  kv.emplace_back("tokenizer.ggml.tokens", array(T::STRING, tokens));
  kv.emplace_back("tokenizer.ggml.token_type", array(T::INT32, types));
  kv.emplace_back("tokenizer.ggml.merges", array(T::STRING, std::move(merges)));
  ids_and_flags();
  return kv;
}

}  // namespace lowbit
