// Tokenizer::from_gguf: the tokenizer built from a GGUF file's tokenizer.ggml.* metadata must give
// the ids llama.cpp gives with that metadata. Checked on the real llama.cpp file stories260K.gguf
// (its reference ids came from llama.cpp), on files written from the exporter's metadata
// (gguf_vocab.h) for the test models and for byte-level fixtures (same ids as the tokenizer.json
// they came from), and on small SPM vocabularies with many equal scores against an independent
// re-implementation of llama.cpp's SPM algorithm.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>
#include <unistd.h>
#include <unordered_map>

#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/text_file.h"

using namespace lowbit;
using nlohmann::json;
using Ids = std::vector<int32_t>;
using Metadata = std::vector<std::pair<std::string, GGUFValue>>;
namespace fs = std::filesystem;

namespace {

std::string asset(const std::string& rel) { return std::string(LOWBIT_ASSETS) + "/" + rel; }
std::string u8(const char8_t* s) { return reinterpret_cast<const char*>(s); }

struct RefLine {
  std::string text;
  Ids ids;
};

std::vector<RefLine> reference(const std::string& model) {
  std::ifstream in(asset("models/" + model + "/tokenizer_reference.jsonl"));
  EXPECT_TRUE(in) << model;
  std::vector<RefLine> out;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) {
      json j = json::parse(line);
      out.push_back({j.at("text").get<std::string>(), j.at("ids").get<Ids>()});
    }
  return out;
}

// The first n lines of wiki.test.raw, each with and without its newline.
std::vector<std::string> wiki_lines(size_t n) {
  static const std::string wiki = read_text_file(asset("data/wikitext2/wiki.test.raw"));
  std::vector<std::string> out;
  size_t pos = 0;
  for (size_t i = 0; i < n && pos < wiki.size(); ++i) {
    size_t end = wiki.find('\n', pos);
    if (end == std::string::npos) end = wiki.size();
    out.push_back(wiki.substr(pos, end - pos));
    out.push_back(wiki.substr(pos, end - pos) + "\n");
    pos = end + 1;
  }
  return out;
}

std::vector<std::string> texts_of(const std::string& model) {
  std::vector<std::string> out;
  for (const auto& r : reference(model)) out.push_back(r.text);
  for (auto& w : wiki_lines(300)) out.push_back(std::move(w));
  return out;
}

// A fresh empty directory under the system temp dir, removed at the end of the scope.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = fs::temp_directory_path() /
           ("lowbit_tok_gguf_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream(path / name, std::ios::binary) << text;
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

// A GGUF with these metadata keys and no tensors.
void write_gguf(const std::string& path, const Metadata& md) {
  GGUFWriter w(path);
  w.set_string("general.architecture", "llama");
  for (const auto& [key, value] : md) w.set(key, value);
  w.finish();
}

Tokenizer from_metadata(const TempDir& dir, const Metadata& md) {
  const std::string path = dir.file("vocab.gguf");
  write_gguf(path, md);
  return Tokenizer::from_gguf(GGUFFile(path));
}

// Every text gives the same ids with and without special-token parsing; reports the first few
// differences in full.
void expect_same_ids(const Tokenizer& got, const Tokenizer& want, const std::vector<std::string>& texts,
                     const std::string& what) {
  int shown = 0;
  size_t bad = 0;
  for (const auto& text : texts)
    for (bool special : {false, true}) {
      Ids g = got.encode(text, false, special), w = want.encode(text, false, special);
      if (g == w) continue;
      ++bad;
      if (shown++ < 3)
        ADD_FAILURE() << what << ": from_gguf and tokenizer.json differ on \"" << text << "\" (parse_special "
                      << special << ")\n  from_gguf: " << testing::PrintToString(g)
                      << "\n  json:      " << testing::PrintToString(w);
    }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << 2 * texts.size() << " encodes differ";
}

void expect_round_trip(const Tokenizer& t, const std::vector<std::string>& texts, const std::string& what) {
  size_t bad = 0;
  for (const auto& text : texts) bad += t.decode(t.encode(text, false)) != text;
  EXPECT_EQ(bad, 0u) << what;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

void expect_one_line_error(const std::string& e, const std::string& needle) {
  EXPECT_NE(e, "(no error)");
  EXPECT_NE(e.find(needle), std::string::npos) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// stories260K.gguf, written by llama.cpp's tooling (SentencePiece scores from llama2.c)

TEST(TokenizerGguf, Stories260KFileMatchesReferenceAndTokenizerJson) {
  GGUFFile f(asset("models/stories260K/stories260K.gguf"));
  Tokenizer t = Tokenizer::from_gguf(f);
  Tokenizer json_tok = Tokenizer::from_file(asset("models/stories260K/tokenizer.json"));
  EXPECT_EQ(t.kind(), Tokenizer::Kind::SentencePieceBPE);
  EXPECT_EQ(t.vocab_size(), 512);
  EXPECT_EQ(t.pieces(), json_tok.pieces());
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.unk_id(), 0);
  EXPECT_TRUE(t.add_bos_default());
  auto types = f.get_int_array("tokenizer.ggml.token_type");
  for (int32_t id = 0; id < t.vocab_size(); ++id) EXPECT_EQ(int(t.token_type(id)), types[id]) << id;
  EXPECT_TRUE(t.is_special(1));

  for (const auto& r : reference("stories260K")) {
    EXPECT_EQ(t.encode(r.text, false), r.ids) << r.text;
    Ids with_bos = r.ids;
    with_bos.insert(with_bos.begin(), 1);
    EXPECT_EQ(t.encode(r.text, true), with_bos) << r.text;
  }
  expect_same_ids(t, json_tok, texts_of("stories260K"), "stories260K.gguf");
  expect_round_trip(t, texts_of("stories260K"), "stories260K.gguf");
  // Special tokens: plain text unless parsed, and a " " in front of the text after one.
  EXPECT_EQ(t.encode("<s>a", false, true), (Ids{1, 261}));
  EXPECT_NE(t.encode("<s>a", false, false)[0], 1);
  EXPECT_EQ(t.decode(t.encode("Hi there", true)), "<s> Hi there");
}

TEST(TokenizerGguf, WholeWikiTextMatches) {
  // One long text, as the perplexity tools tokenize it (cut points, long words).
  const std::string wiki = read_text_file(asset("data/wikitext2/wiki.test.raw"));
  Tokenizer t = Tokenizer::from_gguf(GGUFFile(asset("models/stories260K/stories260K.gguf")));
  Tokenizer json_tok = Tokenizer::from_file(asset("models/stories260K/tokenizer.json"));
  const std::string head = wiki.substr(0, 200000);
  Ids ids = t.encode(head, true);
  EXPECT_EQ(ids, json_tok.encode(head, true));
  EXPECT_EQ(t.decode(ids, true), head);
}

// ---------------------------------------------------------------------------------------------
// Round trip through the exporter's metadata

TEST(TokenizerGguf, ExportedStories260KReadsBack) {
  TempDir dir;
  Tokenizer json_tok = Tokenizer::from_file(asset("models/stories260K/tokenizer.json"));
  Metadata md = gguf_tokenizer_metadata(json_tok, asset("models/stories260K"));  // derived scores
  Tokenizer t = from_metadata(dir, md);
  EXPECT_EQ(t.pieces(), json_tok.pieces());
  EXPECT_EQ(t.bos_id(), json_tok.bos_id());
  EXPECT_EQ(t.eos_id(), json_tok.eos_id());
  EXPECT_EQ(t.add_bos_default(), json_tok.add_bos_default());
  for (const auto& r : reference("stories260K")) EXPECT_EQ(t.encode(r.text, false), r.ids) << r.text;
  expect_same_ids(t, json_tok, texts_of("stories260K"), "stories260K exported");
  expect_round_trip(t, texts_of("stories260K"), "stories260K exported");
  // Exporting the GGUF-built tokenizer again gives the same vocabulary.
  Metadata again = gguf_tokenizer_metadata(t, dir.path.string());
  for (const char* key : {"tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                          "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                          "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_bos_token"}) {
    auto find = [&](const Metadata& m) {
      for (const auto& [k, v] : m)
        if (k == key) return v.value;
      return json();
    };
    EXPECT_EQ(find(again), find(md)) << key;
  }
}

TEST(TokenizerGguf, ExportedGutenbergReadsBack) {
  // tokenizer.model beside it: SentencePiece's own scores.
  TempDir dir;
  Tokenizer json_tok = Tokenizer::from_file(asset("models/gutenberg-6m/tokenizer.json"));
  Tokenizer t = from_metadata(dir, gguf_tokenizer_metadata(json_tok, asset("models/gutenberg-6m")));
  EXPECT_EQ(t.pieces(), json_tok.pieces());
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_TRUE(t.add_bos_default());
  for (const auto& r : reference("gutenberg-6m")) EXPECT_EQ(t.encode(r.text, false), r.ids) << r.text;
  expect_same_ids(t, json_tok, texts_of("gutenberg-6m"), "gutenberg-6m exported");
  expect_round_trip(t, texts_of("gutenberg-6m"), "gutenberg-6m exported");
}

TEST(TokenizerGguf, ExportedGutenbergDerivedScoresReadBack) {
  // Without tokenizer.model: scores derived from the merge ranks.
  TempDir src, dir;
  src.write("tokenizer.json", read_text_file(asset("models/gutenberg-6m/tokenizer.json")));
  src.write("tokenizer_config.json", read_text_file(asset("models/gutenberg-6m/tokenizer_config.json")));
  Tokenizer json_tok = Tokenizer::from_file(src.file("tokenizer.json"));
  Tokenizer t = from_metadata(dir, gguf_tokenizer_metadata(json_tok, src.path.string()));
  expect_same_ids(t, json_tok, texts_of("gutenberg-6m"), "gutenberg-6m exported (derived scores)");
}

TEST(TokenizerGguf, NoSpacePrefix) {
  // Metaspace(prepend_scheme: never) exports add_space_prefix = false.
  TempDir dir;
  json j = json::parse(read_text_file(asset("models/stories260K/tokenizer.json")));
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", u8(u8"▁")}, {"prepend_scheme", "never"}, {"split", false}};
  j["decoder"] = {{"type", "Sequence"},
                  {"decoders", json::array({{{"type", "Replace"}, {"pattern", {{"String", u8(u8"▁")}}}, {"content", " "}},
                                            {{"type", "ByteFallback"}},
                                            {{"type", "Fuse"}}})}};
  dir.write("tokenizer.json", j.dump());
  Tokenizer json_tok = Tokenizer::from_file(dir.file("tokenizer.json"));
  Metadata md = gguf_tokenizer_metadata(json_tok, dir.path.string());
  Tokenizer t = from_metadata(dir, md);
  EXPECT_NE(t.encode("Hello", false), Tokenizer::from_file(asset("models/stories260K/tokenizer.json")).encode("Hello", false));
  std::vector<std::string> texts;
  for (const auto& r : reference("stories260K")) texts.push_back(r.text);
  for (auto& w : wiki_lines(100)) texts.push_back(std::move(w));
  expect_same_ids(t, json_tok, texts, "no space prefix");
  expect_round_trip(t, texts, "no space prefix");
}

// ---------------------------------------------------------------------------------------------
// Byte-level (gpt2) vocabularies

namespace {

const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// GPT-2's bytes_to_unicode: printable bytes keep their code point, the rest get 256, 257, ...
std::string gpt2_char(int b) {
  bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  int extra = 0;
  for (int x = 0; x < b; ++x) extra += !((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255));
  int cp = keep ? b : 256 + extra;
  std::string s;
  if (cp < 0x80) s += char(cp);
  else s += char(0xc0 | (cp >> 6)), s += char(0x80 | (cp & 0x3f));
  return s;
}

json split(const char* pattern) {
  return {{"type", "Split"}, {"pattern", {{"Regex", pattern}}}, {"behavior", "Isolated"}, {"invert", false}};
}
json byte_level(bool use_regex) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", use_regex}};
}
json sequence(std::vector<json> steps) { return {{"type", "Sequence"}, {"pretokenizers", steps}}; }

// A byte-level tokenizer.json with merges learned (plain BPE: the most frequent adjacent pair,
// ties by the pair's text) on the start of WikiText-2 under this pre-tokenizer, then three
// special tokens and a non-special added token.
json byte_level_fixture(const json& pre_tokenizer, bool ignore_merges, int n_merges) {
  json vocab = json::object();
  int next_id = 0;
  for (int b = 0; b < 256; ++b) vocab[gpt2_char(b)] = next_id++;
  json base = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}},
               {"pre_tokenizer", pre_tokenizer}};
  Tokenizer bytes_only = Tokenizer::from_json(base, "fixture");
  std::map<std::string, int> word_count;
  for (const auto& line : wiki_lines(150))
    for (auto& w : bytes_only.pre_tokenize(line)) ++word_count[w];
  std::vector<std::pair<std::vector<std::string>, int>> words;
  for (const auto& [w, c] : word_count) {
    std::vector<std::string> sym;
    for (size_t i = 0; i < w.size();) {
      unsigned char c0 = w[i];
      size_t n = c0 < 0x80 ? 1 : c0 < 0xe0 ? 2 : c0 < 0xf0 ? 3 : 4;
      sym.push_back(w.substr(i, n));
      i += n;
    }
    words.emplace_back(std::move(sym), c);
  }
  json merges = json::array();
  std::set<std::pair<std::string, std::string>> done;  // a pair listed twice ranks differently in HF and llama.cpp
  for (int m = 0; m < n_merges; ++m) {
    std::map<std::pair<std::string, std::string>, int> pairs;
    for (const auto& [sym, c] : words)
      for (size_t i = 0; i + 1 < sym.size(); ++i) pairs[{sym[i], sym[i + 1]}] += c;
    auto best = pairs.end();
    for (auto it = pairs.begin(); it != pairs.end(); ++it)
      if (!done.count(it->first) && (best == pairs.end() || it->second > best->second)) best = it;
    if (best == pairs.end()) break;
    auto [a, b] = best->first;
    done.insert(best->first);
    merges.push_back(a + " " + b);
    if (!vocab.contains(a + b)) vocab[a + b] = next_id++;
    for (auto& [sym, c] : words) {
      std::vector<std::string> out;
      for (size_t i = 0; i < sym.size(); ++i) {
        if (i + 1 < sym.size() && sym[i] == a && sym[i + 1] == b) out.push_back(a + b), ++i;
        else out.push_back(sym[i]);
      }
      sym = std::move(out);
    }
  }
  const int bot = next_id, eot = next_id + 1, tool = next_id + 3;  // next_id + 2 stays unused
  return {{"added_tokens", json::array({{{"id", bot}, {"content", "<|begin_of_text|>"}, {"special", true}},
                                        {{"id", eot}, {"content", "<|end_of_text|>"}, {"special", true}},
                                        {{"id", tool}, {"content", "<tool>"}, {"special", false}}})},
          {"normalizer", nullptr},
          {"pre_tokenizer", pre_tokenizer},
          {"post_processor",
           {{"type", "TemplateProcessing"},
            {"single", json::array({{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
                                    {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
            {"special_tokens", {{"<|begin_of_text|>", {{"id", "<|begin_of_text|>"}, {"ids", {bot}},
                                                        {"tokens", {"<|begin_of_text|>"}}}}}}}},
          {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
          {"model", {{"type", "BPE"}, {"unk_token", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
                     {"ignore_merges", ignore_merges}, {"vocab", vocab}, {"merges", merges}}}};
}

std::vector<std::string> byte_level_texts() {
  std::vector<std::string> texts = {"Hello world's 123  x\n",
                                    "<|begin_of_text|>The <tool> call<|end_of_text|> and <tool><tool>",
                                    u8(u8"Ünïcödé 中文 and émojis 🦙 — don't, WE'LL 12345678"),
                                    "  leading and trailing spaces  ",
                                    "tabs\tand\r\nnewlines\n\n\n"};
  for (auto& w : wiki_lines(300)) texts.push_back(std::move(w));
  return texts;
}

void check_byte_level(const json& pre_tokenizer, bool ignore_merges, const std::string& pre_name) {
  TempDir dir;
  dir.write("tokenizer.json", byte_level_fixture(pre_tokenizer, ignore_merges, 200).dump());
  Tokenizer json_tok = Tokenizer::from_file(dir.file("tokenizer.json"));
  ASSERT_GT(json_tok.merges().size(), 150u);
  Metadata md = gguf_tokenizer_metadata(json_tok, dir.path.string());
  Tokenizer t = from_metadata(dir, md);
  EXPECT_EQ(t.kind(), Tokenizer::Kind::ByteLevelBPE);
  EXPECT_EQ(t.pieces().size(), json_tok.pieces().size());
  EXPECT_EQ(t.merges(), json_tok.merges());
  EXPECT_EQ(t.bos_id(), json_tok.bos_id());
  EXPECT_EQ(t.eos_id(), json_tok.eos_id());
  EXPECT_EQ(t.add_bos_default(), json_tok.add_bos_default());
  EXPECT_EQ(gguf_pre_tokenizer_name(t.split_patterns()), pre_name);
  for (const auto& a : json_tok.added_tokens()) {
    EXPECT_EQ(t.is_special(a.id), a.special) << a.content;
    EXPECT_EQ(t.token_text(a.id), a.content);
  }
  auto texts = byte_level_texts();
  expect_same_ids(t, json_tok, texts, pre_name);
  expect_round_trip(t, texts, pre_name);
  // "<tool>" is always its token, "<|begin_of_text|>" only when parsing special tokens.
  const int32_t tool = json_tok.added_tokens()[2].id, bot = json_tok.bos_id();
  Ids plain = t.encode("a<tool><|begin_of_text|>", false, false), parsed = t.encode("a<tool><|begin_of_text|>", false, true);
  EXPECT_NE(std::find(plain.begin(), plain.end(), tool), plain.end());
  EXPECT_EQ(std::find(plain.begin(), plain.end(), bot), plain.end());
  EXPECT_EQ(parsed.back(), bot);
}

}  // namespace

TEST(TokenizerGgufByteLevel, Llama3) {
  check_byte_level(sequence({split(kLlama3Pattern), byte_level(false)}), true, "llama-bpe");
}
TEST(TokenizerGgufByteLevel, Qwen2) {
  check_byte_level(sequence({split(kQwen2Pattern), byte_level(false)}), false, "qwen2");
}
TEST(TokenizerGgufByteLevel, Gpt2) { check_byte_level(byte_level(true), false, "gpt-2"); }
TEST(TokenizerGgufByteLevel, SmolLM) {
  check_byte_level(sequence({{{"type", "Digits"}, {"individual_digits", true}}, byte_level(true)}), false, "smollm");
}

TEST(TokenizerGgufByteLevel, PreNamesAliasesAndDefaults) {
  TempDir dir;
  dir.write("tokenizer.json", byte_level_fixture(sequence({split(kLlama3Pattern), byte_level(false)}), true, 50).dump());
  Metadata md = gguf_tokenizer_metadata(Tokenizer::from_file(dir.file("tokenizer.json")), dir.path.string());
  auto with = [&](const std::string& pre, std::optional<bool> add_bos) {
    Metadata m;
    for (const auto& [k, v] : md) {
      if (k == "tokenizer.ggml.add_bos_token" && !add_bos) continue;
      GGUFValue value = v;
      if (k == "tokenizer.ggml.pre") value.value = pre;
      if (k == "tokenizer.ggml.add_bos_token") value.value = *add_bos;
      if (k == "tokenizer.ggml.pre" && pre.empty()) continue;
      m.emplace_back(k, value);
    }
    return from_metadata(dir, m);
  };
  // An older name for Llama 3's pre-tokenizer: same regexes, ignore_merges, BOS by default.
  Tokenizer llama3 = with("llama3", std::nullopt);
  EXPECT_EQ(gguf_pre_tokenizer_name(llama3.split_patterns()), "llama-bpe");
  EXPECT_TRUE(llama3.add_bos_default());
  EXPECT_FALSE(with("llama3", false).add_bos_default());
  // The same regexes without ignore_merges or BOS.
  EXPECT_FALSE(with("smaug-bpe", std::nullopt).add_bos_default());
  EXPECT_EQ(gguf_pre_tokenizer_name(with("deepseek-r1-qwen", std::nullopt).split_patterns()), "qwen2");
  // No pre name: llama.cpp's "default".
  EXPECT_EQ(gguf_pre_tokenizer_name(with("", std::nullopt).split_patterns()), "default");
  // A name lowbit does not know.
  expect_one_line_error(error_of([&] { with("deepseek-coder", std::nullopt); }), "deepseek-coder");
}

// ---------------------------------------------------------------------------------------------
// SPM vocabularies with equal scores, against llama.cpp's algorithm

namespace {

// llama.cpp's SPM tokenizer (llm_tokenizer_spm_session), written from its description, by text:
// " " in front (add_space_prefix), spaces to "▁", UTF-8 characters; while some adjacent pair
// concatenates to a token, merge the pair whose token has the highest score, the leftmost on
// equal scores; symbols that are no token become <0xXX> tokens.
Ids llama_cpp_spm(const std::vector<std::string>& tokens, const std::vector<float>& scores, const std::string& raw) {
  if (raw.empty()) return {};
  std::unordered_map<std::string, int32_t> ids;
  for (size_t i = 0; i < tokens.size(); ++i) ids.emplace(tokens[i], int32_t(i));
  std::string text;
  for (char c : " " + raw) text += c == ' ' ? u8(u8"\u2581") : std::string(1, c);
  std::vector<std::string> sym;
  for (size_t i = 0; i < text.size();) {
    unsigned char c = text[i];
    size_t n = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
    sym.push_back(text.substr(i, n));
    i += n;
  }
  for (;;) {
    size_t best = sym.size();
    float best_score = 0;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      auto it = ids.find(sym[i] + sym[i + 1]);
      if (it == ids.end()) continue;
      if (best == sym.size() || scores[it->second] > best_score) best = i, best_score = scores[it->second];
    }
    if (best == sym.size()) break;
    sym[best] += sym[best + 1];
    sym.erase(sym.begin() + best + 1);
  }
  Ids out;
  for (const auto& s : sym) {
    if (auto it = ids.find(s); it != ids.end()) {
      out.push_back(it->second);
      continue;
    }
    for (unsigned char b : s) {
      char name[8];
      snprintf(name, sizeof name, "<0x%02X>", b);
      out.push_back(ids.at(name));
    }
  }
  return out;
}

// <unk>, <s>, </s>, the 256 byte tokens, then `pieces`.
struct SpmVocab {
  std::vector<std::string> tokens{"<unk>", "<s>", "</s>"};
  std::vector<float> scores{0, 0, 0};
  std::vector<int32_t> types{2, 3, 3};
  SpmVocab() {
    for (int b = 0; b < 256; ++b) {
      char name[8];
      snprintf(name, sizeof name, "<0x%02X>", b);
      tokens.push_back(name), scores.push_back(0), types.push_back(6);
    }
  }
  void add(const std::string& piece, float score) {
    tokens.push_back(piece), scores.push_back(score), types.push_back(1);
  }
  Metadata metadata() const {
    Metadata md;
    auto set = [&](const char* key, GGUFValueType type, json value, GGUFValueType array_type = GGUFValueType::UINT8) {
      GGUFValue v;
      v.type = type;
      v.array_type = array_type;
      v.value = std::move(value);
      md.emplace_back(key, std::move(v));
    };
    set("tokenizer.ggml.model", GGUFValueType::STRING, "llama");
    set("tokenizer.ggml.tokens", GGUFValueType::ARRAY, tokens, GGUFValueType::STRING);
    set("tokenizer.ggml.scores", GGUFValueType::ARRAY, scores, GGUFValueType::FLOAT32);
    set("tokenizer.ggml.token_type", GGUFValueType::ARRAY, types, GGUFValueType::INT32);
    return md;
  }
};

}  // namespace

TEST(TokenizerGgufSpm, EqualScoresTakeTheLeftmostPair) {
  // "ab" and "bc" score the same; "bc" has the lower id and comes first in the file. llama.cpp
  // merges the leftmost pair: "abc" -> ▁, ab, c; "bcab" -> ▁, bc, ab.
  SpmVocab v;
  const int32_t first = int32_t(v.tokens.size());
  for (const char* c : {"\xE2\x96\x81", "a", "b", "c"}) v.add(c, -100);
  v.add("bc", -1);
  v.add("ab", -1);
  TempDir dir;
  Tokenizer t = from_metadata(dir, v.metadata());
  const int32_t space = first, c = first + 3, bc = first + 4, ab = first + 5;
  EXPECT_EQ(t.encode("abc", false), (Ids{space, ab, c}));
  EXPECT_EQ(t.encode("bcab", false), (Ids{space, bc, ab}));
  EXPECT_EQ(t.encode("abc", false), llama_cpp_spm(v.tokens, v.scores, "abc"));
}

TEST(TokenizerGgufSpm, RandomVocabulariesWithTiesMatchLlamaCpp) {
  // Tokens over a small alphabet with only three distinct scores, so most choices are ties;
  // texts also hold characters outside the vocabulary (byte tokens).
  std::mt19937 rng(1234);
  const std::vector<std::string> alphabet = {"\xE2\x96\x81", "a", "b", "c", u8(u8"é")};
  const std::vector<std::string> text_chars = {" ", "a", "b", "c", u8(u8"é"), "d", u8(u8"中")};
  size_t compared = 0, bad = 0;
  for (int trial = 0; trial < 20; ++trial) {
    SpmVocab v;
    std::set<std::string> have;
    for (const auto& ch : alphabet) v.add(ch, -50), have.insert(ch);
    for (int k = 0; k < 40; ++k) {
      std::string piece;
      int len = 2 + int(rng() % 4);
      for (int i = 0; i < len; ++i) piece += alphabet[rng() % alphabet.size()];
      if (!have.insert(piece).second) continue;
      v.add(piece, -float(rng() % 3));
    }
    TempDir dir;
    Tokenizer t = from_metadata(dir, v.metadata());
    for (int k = 0; k < 200; ++k) {
      std::string text;
      int len = 1 + int(rng() % 30);
      for (int i = 0; i < len; ++i) text += text_chars[rng() % text_chars.size()];
      Ids got = t.encode(text, false), want = llama_cpp_spm(v.tokens, v.scores, text);
      ++compared;
      if (got != want && bad++ < 3)
        ADD_FAILURE() << "trial " << trial << " \"" << text << "\"\n  from_gguf: " << testing::PrintToString(got)
                      << "\n  llama.cpp: " << testing::PrintToString(want);
      EXPECT_EQ(t.decode(got), text);
    }
  }
  EXPECT_EQ(bad, 0u) << bad << " of " << compared << " texts differ";
}

TEST(TokenizerGgufSpm, MetadataDefaultsAndFlags) {
  SpmVocab v;
  for (const char* c : {"\xE2\x96\x81", "a", "b"}) v.add(c, -100);
  v.add("ab", -1);
  TempDir dir;
  // llama.cpp's SPM defaults: BOS 1, EOS 2, <unk> 0, add BOS.
  Tokenizer t = from_metadata(dir, v.metadata());
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.unk_id(), 0);
  EXPECT_EQ(t.pad_id(), -1);
  EXPECT_TRUE(t.add_bos_default());
  EXPECT_EQ(t.encode("ab", true), (Ids{1, 259, 262}));
  // Ids, flags and add_space_prefix from the metadata.
  Metadata md = v.metadata();
  GGUFValue u32, no;
  u32.type = GGUFValueType::UINT32;
  no.type = GGUFValueType::BOOL;
  no.value = false;
  u32.value = 2, md.emplace_back("tokenizer.ggml.bos_token_id", u32);
  u32.value = 1, md.emplace_back("tokenizer.ggml.eos_token_id", u32);
  u32.value = 0, md.emplace_back("tokenizer.ggml.padding_token_id", u32);
  u32.value = 100000, md.emplace_back("tokenizer.ggml.unknown_token_id", u32);  // out of range: default kept
  md.emplace_back("tokenizer.ggml.add_bos_token", no);
  md.emplace_back("tokenizer.ggml.add_space_prefix", no);
  t = from_metadata(dir, md);
  EXPECT_EQ(t.bos_id(), 2);
  EXPECT_EQ(t.eos_id(), 1);
  EXPECT_EQ(t.pad_id(), 0);
  EXPECT_EQ(t.unk_id(), 0);
  EXPECT_FALSE(t.add_bos_default());
  EXPECT_EQ(t.encode("ab a", false), (Ids{262, 259, 260}));
  EXPECT_EQ(t.decode(t.encode("ab a", false)), "ab a");
}

// ---------------------------------------------------------------------------------------------
// Errors

TEST(TokenizerGguf, MissingOrUnknownTokenizerIsAnError) {
  TempDir dir;
  const std::string path = dir.file("none.gguf");
  write_gguf(path, {});
  expect_one_line_error(error_of([&] { Tokenizer::from_gguf(GGUFFile(path)); }), "tokenizer.ggml.model");
  expect_one_line_error(error_of([&] { Tokenizer::from_gguf(GGUFFile(path)); }), path);

  SpmVocab v;
  Metadata md = v.metadata();
  md[0].second.value = "bert";
  write_gguf(path, md);
  expect_one_line_error(error_of([&] { Tokenizer::from_gguf(GGUFFile(path)); }), "'bert'");

  // Duplicate tokens (llama.cpp refuses them), a short score array.
  v.add("a", 0), v.add("a", 0);
  write_gguf(path, v.metadata());
  expect_one_line_error(error_of([&] { Tokenizer::from_gguf(GGUFFile(path)); }), "duplicate");
  SpmVocab w;
  w.add("a", 0);
  w.scores.pop_back();
  write_gguf(path, w.metadata());
  expect_one_line_error(error_of([&] { Tokenizer::from_gguf(GGUFFile(path)); }), "tokenizer.ggml.scores");

  // A gpt2 vocab without merges.
  md = SpmVocab().metadata();
  md[0].second.value = "gpt2";
  write_gguf(path, md);
  expect_one_line_error(error_of([&] { Tokenizer::from_gguf(GGUFFile(path)); }), "tokenizer.ggml.merges");
}

TEST(TokenizerGgufSpm, UserDefinedTokensAreCutOut) {
  // A user-defined "\n\n" (its characters are no tokens) is matched in the text before merging,
  // as llama.cpp's tokenizer_st_partition does; the text after it gets its own "▁".
  SpmVocab v;
  for (const char* c : {"\xE2\x96\x81", "a"}) v.add(c, -100);
  v.add("\n\n", 0);
  v.types.back() = 4;
  TempDir dir;
  Tokenizer t = from_metadata(dir, v.metadata());
  const int32_t space = 259, a = 260, nn = 261, nl = 3 + '\n';
  EXPECT_FALSE(t.is_special(nn));
  EXPECT_EQ(t.token_type(nn), Tokenizer::TokenType::UserDefined);
  EXPECT_EQ(t.encode("a\n\na\n", false), (Ids{space, a, nn, space, a, nl}));
}

TEST(TokenizerGguf, VocabularyLowbitCannotFollowIsAnError) {
  // "éa" is a token but "é" is not: llama.cpp merges the character é with a, lowbit has é as two
  // byte tokens and could not.
  SpmVocab v;
  for (const char* c : {"\xE2\x96\x81", "a"}) v.add(c, -100);
  v.add(u8(u8"éa"), -1);
  TempDir dir;
  const std::string path = dir.file("v.gguf");
  write_gguf(path, v.metadata());
  expect_one_line_error(error_of([&] { Tokenizer::from_gguf(GGUFFile(path)); }), u8(u8"éa"));
}
