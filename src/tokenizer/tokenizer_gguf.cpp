// Tokenizer::from_gguf: lowbit's Tokenizer from a GGUF file's own tokenizer.ggml.* metadata,
// tokenizing as llama.cpp does with that metadata (src/llama-vocab.cpp). The metadata is turned
// into the equivalent tokenizer.json object and loaded with from_json; for "llama" (SPM) vocabs
// the merge ranks are then regrouped by score (see spm_merges below).
//
// "llama" (llm_tokenizer_spm): the text (after a " " in front of every stretch of plain text that
// starts the input or follows a special token, when add_space_prefix) has its spaces turned into
// "▁" and is cut into UTF-8 characters; then, among adjacent symbols, the pair whose concatenation
// is a token (any token) with the highest score is merged, the leftmost pair on equal scores;
// characters that end up in no token become <0xXX> byte tokens. As ranked BPE merges: every split
// t = a + b of a token t into two tokens is a merge (a, b) -> t, and merges rank by their result's
// score, all merges of equal score sharing one rank. lowbit's BPE takes the lowest rank and, among
// equal ranks, the leftmost pair, which is then exactly llama.cpp's choice.
//
// "gpt2" (llm_tokenizer_bpe): tokenizer.ggml.merges in rank order, the pre-tokenizer's regexes
// (gguf_pre_tokenizer in gguf_vocab.h) split the text, each piece is byte-mapped, ignore_merges
// as llama.cpp sets it for the pre name.
//
// Control and Unknown tokens are special added tokens (split out of the text only when parsing
// special tokens), UserDefined ones non-special added tokens (always split out), as llama.cpp's
// tokenizer_st_partition does.
#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <unordered_map>

#include "io/gguf.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"
#include "util/error.h"
#include "util/text_file.h"

namespace lowbit {

using nlohmann::json;

namespace {

const std::string kMetaspace = "\xE2\x96\x81";  // U+2581 '▁'

using TokenType = Tokenizer::TokenType;

// Other tokenizer.ggml.pre names that llama.cpp (llama_vocab::impl::load and
// llm_tokenizer_bpe) gives the same regexes as one of gguf_pre_tokenizer's names; ignore_merges
// is the canonical name's unless overridden (-1: keep, 0/1: set).
struct PreAlias {
  const char* name;
  const char* same_as;
  int ignore_merges;
};
constexpr PreAlias kPreAliases[] = {
    {"llama3", "llama-bpe", -1},       {"llama-v3", "llama-bpe", -1},     {"falcon3", "llama-bpe", -1},
    {"falcon-h1", "llama-bpe", -1},    {"pixtral", "llama-bpe", -1},      {"midm-2.0", "llama-bpe", -1},
    {"lfm2", "llama-bpe", -1},         {"jina-v5-nano", "llama-bpe", -1}, {"dbrx", "llama-bpe", 0},
    {"smaug-bpe", "llama-bpe", 0},     {"deepseek-r1-qwen", "qwen2", -1}, {"kormo", "qwen2", -1},
    {"megrez", "qwen2", -1},           {"stablelm2", "qwen2", -1},        {"hunyuan", "qwen2", -1},
    {"phi-2", "gpt-2", -1},            {"mpt", "gpt-2", -1},              {"olmo", "gpt-2", -1},
    {"jais", "gpt-2", -1},             {"trillion", "gpt-2", -1},         {"granite-docling", "gpt-2", -1},
    {"exaone4", "gpt-2", -1},          {"gigachat", "gpt-2", -1},         {"a.x-4.0", "gpt-2", -1},
    {"mellum", "gpt-2", -1},           {"jina-es", "gpt-2", -1},          {"jina-de", "gpt-2", -1},
    {"jina-v2-es", "gpt-2", -1},       {"jina-v2-de", "gpt-2", -1},       {"jina-v1-en", "gpt-2", -1},
    {"jina-v2-code", "gpt-2", -1},     {"roberta-bpe", "gpt-2", -1},      {"starcoder", "smollm", -1},
    {"refact", "smollm", -1},          {"command-r", "smollm", -1},       {"codeshell", "smollm", -1},
    {"exaone", "smollm", -1},          {"minerva-7b", "smollm", -1},
};

// What llama.cpp does for a pre name: regexes, ignore_merges, and the add_bos default (true for
// the names it gives Llama 3's settings).
struct PreSpec {
  GGUFPreTokenizer pre;
  bool add_bos = false;
};

std::optional<PreSpec> find_pre_tokenizer(const std::string& name) {
  std::string canonical = name;
  int ignore_merges = -1;
  for (const auto& a : kPreAliases)
    if (name == a.name) canonical = a.same_as, ignore_merges = a.ignore_merges;
  auto p = gguf_pre_tokenizer(canonical);
  if (!p) return std::nullopt;
  PreSpec spec{*p, canonical == "llama-bpe" && ignore_merges < 0};
  if (ignore_merges >= 0) spec.pre.ignore_merges = ignore_merges != 0;
  return spec;
}

// One UTF-8 character (as llama.cpp cuts the text: valid input only ever gives whole ones).
bool is_one_char(std::string_view s) {
  return !s.empty() && utf8::seq_len(static_cast<unsigned char>(s[0])) == s.size() &&
         find_invalid_utf8(s) == std::string_view::npos;
}

bool is_byte_piece(std::string_view s) {
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); };
  return s.size() == 6 && s.substr(0, 3) == "<0x" && hex(s[3]) && hex(s[4]) && s[5] == '>';
}

// What a GGUF's tokenizer metadata says, as llama.cpp reads it. `ids` views the strings in
// `tokens`, so a Vocab is moved (which keeps the vector's buffer), never copied.
struct Vocab {
  Vocab() = default;
  Vocab(Vocab&&) = default;
  Vocab(const Vocab&) = delete;
  std::string origin;
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;  // GGUF token_type values (Normal if absent)
  std::unordered_map<std::string_view, int32_t> ids;

  int32_t find(std::string_view s) const {
    auto it = ids.find(s);
    return it == ids.end() ? -1 : it->second;
  }
};

Vocab read_vocab(const GGUFFile& f) {
  Vocab v;
  v.origin = f.path();
  v.tokens = f.get_string_array("tokenizer.ggml.tokens");
  const size_t n = v.tokens.size();
  if (n == 0) fail("{}: tokenizer.ggml.tokens is empty", v.origin);
  if (n >= size_t(1) << 24) fail("{}: tokenizer.ggml.tokens has {} tokens, too many", v.origin, n);
  v.scores.assign(n, 0.0f);  // llama.cpp: 0 for every token without tokenizer.ggml.scores
  if (f.has("tokenizer.ggml.scores")) {
    auto s = f.get_float_array("tokenizer.ggml.scores");
    if (s.size() != n) fail("{}: tokenizer.ggml.scores has {} values for {} tokens", v.origin, s.size(), n);
    for (size_t i = 0; i < n; ++i) v.scores[i] = std::isnan(s[i]) ? -INFINITY : float(s[i]);
  }  // (all-zero scores: llama.cpp's SPM then always merges the leftmost pair)
  v.types.assign(n, int32_t(TokenType::Normal));
  if (f.has("tokenizer.ggml.token_type")) {
    auto t = f.get_int_array("tokenizer.ggml.token_type");
    if (t.size() != n) fail("{}: tokenizer.ggml.token_type has {} values for {} tokens", v.origin, t.size(), n);
    for (size_t i = 0; i < n; ++i) v.types[i] = int32_t(t[i]);
  }
  v.ids.reserve(n);
  for (size_t id = 0; id < n; ++id) {
    if (v.tokens[id].empty()) v.tokens[id] = "[EMPTY_" + std::to_string(id) + "]";  // as llama.cpp
    if (auto [it, fresh] = v.ids.emplace(v.tokens[id], int32_t(id)); !fresh)
      fail("{}: tokens {} and {} are both '{}'; llama.cpp refuses a vocabulary with duplicate tokens", v.origin,
           it->second, id, v.tokens[id]);
  }
  return v;
}

// Added tokens from the token types, and the vocab with every token in it.
void add_vocab(json& model, json& j, const Vocab& v) {
  json vocab = json::object();
  for (size_t id = 0; id < v.tokens.size(); ++id) vocab[v.tokens[id]] = int32_t(id);
  model["vocab"] = std::move(vocab);
  json added = json::array();
  for (size_t id = 0; id < v.tokens.size(); ++id) {
    auto type = TokenType(v.types[id]);
    bool special = type == TokenType::Control || type == TokenType::Unknown;
    if (!special && type != TokenType::UserDefined) continue;
    added.push_back({{"id", int32_t(id)},
                     {"content", v.tokens[id]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", special}});
  }
  j["added_tokens"] = std::move(added);
}

// ---------------------------------------------------------------------------------------------
// "llama": merges from scores

struct SpmMerges {
  json merges = json::array();
  std::vector<int32_t> ranks;  // per merge, in list order: equal for equal scores
};

// Every split of every token into two tokens, ordered by the token's score (highest first),
// with one rank per distinct score. A split llama.cpp can make but lowbit cannot (a part that
// is a single character outside the vocabulary: llama.cpp keeps it as a symbol, lowbit spells it
// in byte tokens) is an Error. Splits with a byte-fallback (or <unk>) piece as a part are left
// out: lowbit's BPE would apply them to byte-fallback ids, llama.cpp's symbols are never such a
// piece unless merges can form it from the text (an Error then). UserDefined tokens make no
// merges: both llama.cpp and lowbit cut every occurrence out of the text before merging.
SpmMerges spm_merges(const Vocab& v, int32_t unk) {
  const int32_t n = int32_t(v.tokens.size());
  auto splits_of = [&](int32_t id, auto&& each) {
    const std::string& t = v.tokens[id];
    for (size_t k = utf8::seq_len(static_cast<unsigned char>(t[0])); k < t.size();
         k += utf8::seq_len(static_cast<unsigned char>(t[k])))
      each(std::string_view(t).substr(0, k), std::string_view(t).substr(k));
  };
  // Tokens some split into two tokens can form (over-approximates what llama.cpp can reach).
  std::vector<uint8_t> formable(size_t(n), 0);
  for (int32_t id = 0; id < n; ++id)
    splits_of(id, [&](std::string_view a, std::string_view b) {
      if (v.find(a) >= 0 && v.find(b) >= 0) formable[id] = 1;
    });
  // Ids lowbit's byte fallback produces: byte pieces, and <unk> when some byte piece is missing.
  bool all_bytes = true;
  for (int b = 0; b < 256; ++b) all_bytes = all_bytes && v.find(fmt::format("<0x{:02X}>", b)) >= 0;
  auto lowbit_only = [&](int32_t part) { return is_byte_piece(v.tokens[part]) || (part == unk && !all_bytes); };

  std::vector<int32_t> order(size_t(n), 0);
  for (int32_t id = 0; id < n; ++id) order[id] = id;
  std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) { return v.scores[x] > v.scores[y]; });

  SpmMerges out;
  int32_t rank = -1;
  float last = 0.0f;
  for (size_t i = 0; i < order.size(); ++i) {
    const int32_t id = order[i];
    if (i == 0 || v.scores[id] != last) ++rank, last = v.scores[id];
    if (v.types[id] == int32_t(TokenType::UserDefined)) continue;
    splits_of(id, [&](std::string_view a, std::string_view b) {
      int32_t ia = v.find(a), ib = v.find(b);
      // A symbol is a token or one character of the escaped text (never a space).
      auto symbol = [&](std::string_view s, int32_t sid) { return sid >= 0 || (is_one_char(s) && s != " "); };
      if (!symbol(a, ia) || !symbol(b, ib)) return;  // llama.cpp never meets this pair
      if (ia < 0 || ib < 0)
        fail("{}: cannot tokenize as llama.cpp does: token {} '{}' is '{}' + '{}', and llama.cpp merges the character "
             "'{}', which is not a token, where lowbit has byte tokens; pass --tokenizer with a tokenizer.json",
             v.origin, id, v.tokens[id], a, b, ia < 0 ? a : b);
      for (int32_t part : {ia, ib})
        if (lowbit_only(part)) {
          if (formable[part])
            fail("{}: cannot tokenize as llama.cpp does: token {} '{}' extends '{}', which is both a byte-fallback "
                 "token and a merge result; pass --tokenizer with a tokenizer.json",
                 v.origin, id, v.tokens[id], v.tokens[part]);
          return;
        }
      out.merges.push_back(json::array({std::string(a), std::string(b)}));
      out.ranks.push_back(rank);
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// "gpt2": merges as written, checked

json bpe_merges(const GGUFFile& f, const Vocab& v) {
  if (!f.has("tokenizer.ggml.merges")) fail("{}: a gpt2 tokenizer needs tokenizer.ggml.merges", v.origin);
  const std::vector<std::string> list = f.get_string_array("tokenizer.ggml.merges");
  json merges = json::array();
  std::unordered_map<std::string, int> seen;  // llama.cpp keeps the first rank of a pair listed twice
  for (size_t r = 0; r < list.size(); ++r) {
    const std::string& m = list[r];
    size_t sp = m.find(' ', 1);  // as llama.cpp splits "a b"
    if (sp == std::string::npos) continue;  // llama.cpp ranks ("", ""), which never matches
    std::string a = m.substr(0, sp), b = m.substr(sp + 1);
    if (!seen.emplace(m, 0).second) continue;
    int32_t ia = v.find(a), ib = v.find(b), ir = v.find(a + b);
    if (ia >= 0 && ib >= 0 && ir >= 0) {
      merges.push_back(json::array({a, b}));
      continue;
    }
    // llama.cpp merges by text; a pair it can meet (tokens or single byte-level characters) that
    // lowbit cannot represent would tokenize differently. Pairs it never meets are left out.
    auto symbol = [&](const std::string& s, int32_t id) {
      size_t i = 0;
      return id >= 0 || (is_one_char(s) && unicode_to_byte(utf8::next(s, i)) >= 0);
    };
    if (symbol(a, ia) && symbol(b, ib))
      fail("{}: merge #{} '{}' joins '{}' and '{}' into {}, which lowbit cannot represent as llama.cpp does; pass "
           "--tokenizer with a tokenizer.json",
           v.origin, r, m, a, b, ir < 0 ? "'" + a + b + "', not a token" : "a token from a part that is not one");
  }
  return merges;
}

json pre_tokenizer_json(const GGUFPreTokenizer& pre) {
  json steps = json::array();
  for (const auto& p : pre.patterns)
    steps.push_back({{"type", "Split"}, {"pattern", {{"Regex", p}}}, {"behavior", "Isolated"}, {"invert", false}});
  steps.push_back({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}});
  return {{"type", "Sequence"}, {"pretokenizers", std::move(steps)}};
}

}  // namespace

Tokenizer Tokenizer::from_gguf(const GGUFFile& f) {
  const std::string origin = f.path();
  if (!f.has("tokenizer.ggml.model"))
    fail("{}: the GGUF metadata has no tokenizer (no tokenizer.ggml.model)", origin);
  const std::string type = f.get_string("tokenizer.ggml.model");
  const bool spm = type == "llama";
  if (!spm && type != "gpt2")
    fail("{}: unsupported tokenizer.ggml.model '{}' (lowbit reads 'llama' and 'gpt2' vocabularies)", origin, type);

  const Vocab v = read_vocab(f);
  const int32_t n = int32_t(v.tokens.size());
  // Special ids: llama.cpp's defaults per vocabulary type (its gpt2 default really is 11),
  // replaced by each metadata id in range.
  auto id_key = [&](const char* key, int32_t def) -> int32_t {
    if (def >= n) def = -1;
    if (!f.has(key)) return def;
    int64_t id = f.get_int(key);
    return id >= 0 && id < n ? int32_t(id) : def;
  };
  const int32_t bos = id_key("tokenizer.ggml.bos_token_id", spm ? 1 : 11);
  const int32_t eos = id_key("tokenizer.ggml.eos_token_id", spm ? 2 : 11);
  const int32_t unk = id_key("tokenizer.ggml.unknown_token_id", spm ? 0 : -1);
  const int32_t pad = id_key("tokenizer.ggml.padding_token_id", -1);

  json j = json::object();
  json model = {{"type", "BPE"}, {"dropout", nullptr}, {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr}, {"fuse_unk", false}};
  add_vocab(model, j, v);
  bool add_bos;
  std::vector<int32_t> ranks;
  if (spm) {
    const bool prefix = f.get_bool("tokenizer.ggml.add_space_prefix", true);
    SpmMerges m = spm_merges(v, unk);
    model["merges"] = std::move(m.merges);
    ranks = std::move(m.ranks);
    model["byte_fallback"] = true;
    model["ignore_merges"] = false;
    model["unk_token"] = unk >= 0 ? json(v.tokens[unk]) : json(nullptr);
    json replace = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kMetaspace}};
    j["normalizer"] = prefix ? json{{"type", "Sequence"},
                                    {"normalizers", {{{"type", "Prepend"}, {"prepend", kMetaspace}}, replace}}}
                             : replace;
    j["pre_tokenizer"] = nullptr;
    json decoders = {{{"type", "Replace"}, {"pattern", {{"String", kMetaspace}}}, {"content", " "}},
                     {{"type", "ByteFallback"}},
                     {{"type", "Fuse"}}};
    if (prefix) decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
    j["decoder"] = {{"type", "Sequence"}, {"decoders", std::move(decoders)}};
    add_bos = true;
  } else {
    // llama.cpp uses "default" without a pre name (and, warning, for a name it does not know); a
    // name lowbit does not know may be one of llama.cpp's other regex sets, so it is an Error.
    const std::string name = f.get_string("tokenizer.ggml.pre", "default");
    std::optional<PreSpec> spec = find_pre_tokenizer(name);
    if (!spec) {
      std::string known;
      for (const auto& s : gguf_pre_tokenizer_names()) known += (known.empty() ? "" : ", ") + s;
      for (const auto& a : kPreAliases) known += std::string(", ") + a.name;
      fail("{}: unsupported tokenizer.ggml.pre '{}' (lowbit knows {}); pass --tokenizer with a tokenizer.json", origin,
           name, known);
    }
    const GGUFPreTokenizer& pre = spec->pre;
    model["merges"] = bpe_merges(f, v);
    model["byte_fallback"] = false;
    model["ignore_merges"] = pre.ignore_merges;
    model["unk_token"] = nullptr;  // llama.cpp's BPE never writes <unk>: it drops what it cannot spell
    j["normalizer"] = nullptr;
    j["pre_tokenizer"] = pre_tokenizer_json(pre);
    j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
    add_bos = spec->add_bos;
  }
  j["model"] = std::move(model);
  j["post_processor"] = nullptr;

  Tokenizer t = from_json(j, origin);
  auto m = std::make_shared<Impl>(*t.impl_);
  if (spm) {  // merges of equal score share one rank (from_json ranked them by list position)
    if (ranks.size() != m->merge_list.size())
      fail("{}: internal error: {} merge ranks for {} merges", origin, ranks.size(), m->merge_list.size());
    MergeTable table;
    table.reserve(ranks.size());
    for (size_t r = 0; r < ranks.size(); ++r)
      table.add(m->merge_list[r].first, m->merge_list[r].second, m->merge_result[r], ranks[r]);
    m->merge_table = std::move(table);
  }
  for (int32_t id = 0; id < n; ++id)  // the file's own token types, where they are valid ones
    if (v.types[id] >= int32_t(TokenType::Normal) && v.types[id] <= int32_t(TokenType::Byte))
      m->types[id] = TokenType(v.types[id]);
  t.impl_ = std::move(m);

  t.bos_ = bos;
  t.eos_ = eos;
  t.pad_ = pad;
  t.add_bos_ = f.get_bool("tokenizer.ggml.add_bos_token", add_bos) && bos >= 0;
  return t;
}

}  // namespace lowbit
