// Tokenizer tests. SentencePiece-style BPE is checked against reference ids from llama.cpp
// (stories260K) and the SentencePiece library (gutenberg-6m) and against whole-file token counts;
// byte-level BPE against small tokenizer.json fixtures built by hand below, with every expected
// sequence worked out in a comment.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "tokenizer/nfc.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/text_file.h"

using namespace lowbit;
using nlohmann::json;
using Ids = std::vector<int32_t>;

namespace {

std::string asset(const std::string& rel) { return std::string(LOWBIT_ASSETS) + "/" + rel; }

struct RefLine {
  std::string text;
  Ids ids;
};

std::vector<RefLine> read_reference(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << path;
  std::vector<RefLine> out;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) {
      json j = json::parse(line);
      out.push_back({j.at("text").get<std::string>(), j.at("ids").get<Ids>()});
    }
  return out;
}

const Tokenizer& stories() {
  static const Tokenizer t = Tokenizer::from_file(asset("models/stories260K/tokenizer.json"));
  return t;
}
const Tokenizer& gutenberg() {
  static const Tokenizer t = Tokenizer::from_file(asset("models/gutenberg-6m/tokenizer.json"));
  return t;
}
const std::string& wiki() {
  static const std::string t = read_text_file(asset("data/wikitext2/wiki.test.raw"));
  return t;
}

template <typename F>
double seconds(F&& f) {
  auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string u8(const char8_t* s) { return reinterpret_cast<const char*>(s); }

// llama.cpp's SentencePiece tokenizer (llm_tokenizer_spm), written out independently: merge the
// adjacent pair whose concatenation is a piece with the highest score (leftmost on ties), then
// pieces not in the vocab become <0xXX> bytes. Used to check Tokenizer::spm_scores().
Ids llama_cpp_spm(const Tokenizer& tok, const std::vector<float>& scores, const std::string& text) {
  std::map<std::string, int32_t> vocab;
  for (int32_t id = 0; id < tok.vocab_size(); ++id)
    if (tok.token_type(id) == Tokenizer::TokenType::Normal) vocab.emplace(tok.pieces()[id], id);
  std::string s = u8(u8"\u2581");
  for (char c : text) s += c == ' ' ? u8(u8"\u2581") : std::string(1, c);
  std::vector<std::string> sym;
  for (size_t i = 0; i < s.size();) {
    size_t n = (s[i] & 0x80) == 0 ? 1 : (s[i] & 0xe0) == 0xc0 ? 2 : (s[i] & 0xf0) == 0xe0 ? 3 : 4;
    sym.push_back(s.substr(i, n));
    i += n;
  }
  for (;;) {
    int best = -1;
    float best_score = 0;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      auto it = vocab.find(sym[i] + sym[i + 1]);
      if (it != vocab.end() && (best < 0 || scores[it->second] > best_score))
        best = int(i), best_score = scores[it->second];
    }
    if (best < 0) break;
    sym[best] += sym[best + 1];
    sym.erase(sym.begin() + best + 1);
  }
  Ids ids;
  for (const auto& p : sym) {
    auto it = vocab.find(p);
    if (it != vocab.end()) {
      ids.push_back(it->second);
      continue;
    }
    for (unsigned char b : p) {
      char name[8];
      snprintf(name, sizeof name, "<0x%02X>", b);
      for (int32_t id = 0; id < tok.vocab_size(); ++id)
        if (tok.pieces()[id] == name) ids.push_back(id);
    }
  }
  return ids;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// SentencePiece-style BPE on the shared models

TEST(TokenizerSpm, Stories260KMatchesLlamaCpp) {
  auto lines = read_reference(asset("models/stories260K/tokenizer_reference.jsonl"));
  ASSERT_EQ(lines.size(), 15u);
  // The reference ids carry no BOS: "a" is the single piece "▁a" (261), not [1, 261].
  EXPECT_EQ(stories().token_text(261), u8(u8"\u2581a"));
  for (const auto& r : lines) {
    EXPECT_EQ(stories().encode(r.text, false), r.ids) << r.text;
    EXPECT_EQ(stories().decode(r.ids), r.text);
    Ids with_bos = r.ids;
    with_bos.insert(with_bos.begin(), 1);
    EXPECT_EQ(stories().encode(r.text, true), with_bos);
  }
}

TEST(TokenizerSpm, GutenbergMatchesSentencePiece) {
  auto lines = read_reference(asset("models/gutenberg-6m/tokenizer_reference.jsonl"));
  ASSERT_EQ(lines.size(), 15u);
  for (const auto& r : lines) {
    EXPECT_EQ(gutenberg().encode(r.text, false), r.ids) << r.text;
    EXPECT_EQ(gutenberg().decode(r.ids), r.text);
  }
}

TEST(TokenizerSpm, WholeFileTokenCounts) {
  std::string held = read_text_file(asset("data/gutenberg/heldout.txt"));
  size_t n_stories = 0, n_held = 0, n_wiki = 0;
  double t = seconds([&] { n_stories = stories().encode(wiki(), false).size(); });
  EXPECT_EQ(n_stories, 809289u);
  EXPECT_LT(t, 1.5) << "encoding wiki.test.raw must stay fast";
  t = seconds([&] { n_held = gutenberg().encode(held, false).size(); });
  EXPECT_EQ(n_held, 554948u);
  EXPECT_LT(t, 1.5);
  n_wiki = gutenberg().encode(wiki(), false).size();
  EXPECT_EQ(n_wiki, 452930u);
}

TEST(TokenizerSpm, DecodeInvertsEncode) {
  std::string head = wiki().substr(0, 100000);
  while ((head.back() & 0xc0) == 0x80) head.pop_back();  // keep whole characters
  if (static_cast<unsigned char>(head.back()) >= 0xc0) head.pop_back();
  for (const Tokenizer* t : {&stories(), &gutenberg()}) {
    EXPECT_EQ(t->decode(t->encode(head, false)), head);
    EXPECT_EQ(t->decode(t->encode(wiki(), false)), wiki());
  }
  // With BOS: decoding keeps the special token as text, skip_special drops it.
  EXPECT_EQ(stories().decode(stories().encode("Hi there", true)), "<s> Hi there");
  EXPECT_EQ(stories().decode(stories().encode("Hi there", true), true), "Hi there");
}

TEST(TokenizerSpm, EdgeCases) {
  const Tokenizer& t = stories();
  EXPECT_TRUE(t.encode("", false).empty());              // Prepend leaves empty text alone
  EXPECT_EQ(t.encode("", true), Ids{1});
  EXPECT_EQ(t.decode({}), "");
  // Specials in the text are plain text by default (llama.cpp perplexity), parsed on request.
  Ids plain = t.encode("<s>", false);
  EXPECT_GT(plain.size(), 1u);
  EXPECT_EQ(t.decode(plain), "<s>");
  EXPECT_EQ(t.encode("<s>a", false, true), (Ids{1, 261}));  // "a" after <s> is its own "▁a"
  // Byte fallback: U+4E2D 中 is not in the 512-piece vocab -> E4 B8 AD as <0xE4><0xB8><0xAD>.
  Ids zh = t.encode(u8(u8"中"), false);
  EXPECT_EQ(zh, (Ids{410, 3 + 0xe4, 3 + 0xb8, 3 + 0xad}));  // "▁" 410, then bytes (id = 3 + byte)
  EXPECT_EQ(t.decode(zh), u8(u8"中"));
  // An incomplete UTF-8 sequence of byte tokens decodes to U+FFFD per byte (HF ByteFallback).
  EXPECT_EQ(t.decode({3 + 0xe4, 3 + 0xb8}), u8(u8"\uFFFD\uFFFD"));
  EXPECT_THROW(t.encode("bad \xff utf8", false), Error);
  EXPECT_THROW(t.decode({512}), Error);
  EXPECT_THROW(t.decode({-1}), Error);
}

TEST(TokenizerSpm, ExportAccessors) {
  const Tokenizer& t = stories();
  EXPECT_EQ(t.kind(), Tokenizer::Kind::SentencePieceBPE);
  EXPECT_EQ(t.vocab_size(), 512);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.unk_id(), 0);
  EXPECT_TRUE(t.add_bos_default());
  EXPECT_EQ(t.token_text(1), "<s>");
  EXPECT_EQ(t.token_type(0), Tokenizer::TokenType::Unknown);
  EXPECT_EQ(t.token_type(1), Tokenizer::TokenType::Control);
  EXPECT_EQ(t.token_type(3), Tokenizer::TokenType::Byte);  // <0x00>
  EXPECT_EQ(t.token_type(259), Tokenizer::TokenType::Normal);
  EXPECT_EQ(t.special_ids(), (Ids{0, 1, 2}));
  auto merges = t.merges();
  ASSERT_EQ(merges.size(), 165u);
  EXPECT_EQ(merges[0], std::make_pair(u8(u8"\u2581"), std::string("t")));
  EXPECT_EQ(merges[164], std::make_pair(u8(u8"\u2581"), std::string("k")));
  EXPECT_TRUE(t.split_patterns().empty());
  EXPECT_THROW(t.token_text(512), Error);
}

// llama.cpp ranks SentencePiece merges by the score of the merged piece, HF by merge rank. The
// scores spm_scores() gives must make llama.cpp's algorithm reproduce the reference ids.
TEST(TokenizerSpm, ScoresReproduceLlamaCppAlgorithm) {
  for (const char* model : {"stories260K", "gutenberg-6m"}) {
    const Tokenizer& t = std::string(model) == "stories260K" ? stories() : gutenberg();
    auto scores = t.spm_scores();
    ASSERT_EQ(scores.size(), size_t(t.vocab_size()));
    for (const auto& r : read_reference(asset(std::string("models/") + model + "/tokenizer_reference.jsonl")))
      EXPECT_EQ(llama_cpp_spm(t, scores, r.text), r.ids) << model << ": " << r.text;
    std::string chunk = wiki().substr(0, 3000);
    EXPECT_EQ(llama_cpp_spm(t, scores, chunk), t.encode(chunk, false)) << model;
  }
}

// ---------------------------------------------------------------------------------------------
// Hand-built SentencePiece-style fixture: the long-word cutting must never cut where a merge
// could join, and unknown characters must fall back to bytes or <unk>.

namespace {

json spm_fixture(bool byte_fallback, json merges) {
  // ids: <unk> 0, <s> 1, </s> 2, <0x00>..<0xFF> 3..258, "▁" 259, "a" 260, "b" 261, then merges.
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    snprintf(name, sizeof name, "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  vocab[u8(u8"▁")] = 259;
  vocab["a"] = 260;
  vocab["b"] = 261;
  vocab[u8(u8"a▁")] = 262;
  vocab[u8(u8"▁a")] = 263;
  vocab["ab"] = 264;
  vocab[u8(u8"▁ab")] = 265;
  return {
      {"added_tokens", json::array({{{"id", 0}, {"content", "<unk>"}, {"special", true}},
                                    {{"id", 1}, {"content", "<s>"}, {"special", true}},
                                    {{"id", 2}, {"content", "</s>"}, {"special", true}}})},
      {"normalizer", {{"type", "Sequence"}, {"normalizers", json::array({
           {{"type", "Prepend"}, {"prepend", u8(u8"▁")}},
           {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", u8(u8"▁")}}})}}},
      {"pre_tokenizer", nullptr},
      {"decoder", {{"type", "Sequence"}, {"decoders", json::array({
           {{"type", "Replace"}, {"pattern", {{"String", u8(u8"▁")}}}, {"content", " "}},
           {{"type", "ByteFallback"}}, {{"type", "Fuse"}},
           {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
      {"model", {{"type", "BPE"}, {"unk_token", "<unk>"}, {"fuse_unk", true},
                 {"byte_fallback", byte_fallback}, {"vocab", vocab}, {"merges", merges}}}};
}

}  // namespace

TEST(TokenizerSpmFixture, NoCutWhereAMergeJoins) {
  // Merges: "a ▁" (rank 0) before "▁ a" (rank 1). "a a a ... a" (20 a's, a 40-byte word) is
  // "▁a▁a▁a...▁a": rank 0 joins every a with the ▁ after it, leftmost first, leaving
  // ▁, a▁ x19, a. Cutting before each ▁ (as a whitespace pre-tokenizer would) would instead
  // give ▁a x20 - so this checks that a boundary inside a merge result is never cut.
  auto t = Tokenizer::from_json(spm_fixture(true, {u8(u8"a ▁"), u8(u8"▁ a")}), "fixture");
  std::string text;
  for (int i = 0; i < 20; ++i) text += i ? " a" : "a";
  Ids want{259};
  for (int i = 0; i < 19; ++i) want.push_back(262);
  want.push_back(260);
  EXPECT_EQ(t.encode(text, false), want);
  EXPECT_EQ(t.decode(want), text);
}

TEST(TokenizerSpmFixture, CutsBetweenWords) {
  // Merges "a b" (0), "▁ ab" (1); "▁" and "b" never join, so the text is cut before each ▁.
  // "ab ab ... ab" (16 words): each "▁ab" is ▁ a b -> ▁ ab -> ▁ab = 265.
  auto t = Tokenizer::from_json(spm_fixture(true, {"a b", u8(u8"▁ ab")}), "fixture");
  std::string text;
  for (int i = 0; i < 16; ++i) text += i ? " ab" : "ab";
  EXPECT_EQ(t.encode(text, false), Ids(16, 265));
  // "ba" has no merge: ▁ b a -> 259 261 260.
  EXPECT_EQ(t.encode("ba", false), (Ids{259, 261, 260}));
}

TEST(TokenizerSpmFixture, UnknownCharacters) {
  // é = C3 A9. With byte fallback: ▁ <0xC3> <0xA9> a = 259, 3+0xC3, 3+0xA9, 260.
  auto with_bytes = Tokenizer::from_json(spm_fixture(true, json::array()), "fixture");
  EXPECT_EQ(with_bytes.encode(u8(u8"éa"), false), (Ids{259, 3 + 0xc3, 3 + 0xa9, 260}));
  // Without it, a run of unknown characters is one fused <unk>: ▁ <unk> a <unk>.
  auto no_bytes = Tokenizer::from_json(spm_fixture(false, json::array()), "fixture");
  EXPECT_EQ(no_bytes.encode(u8(u8"éèaé"), false), (Ids{259, 0, 260, 0}));
}

TEST(TokenizerSpmFixture, MetaspacePreTokenizer) {
  // Newer Llama/Mistral files (legacy: false) say the same thing with a Metaspace pre-tokenizer
  // instead of Prepend + Replace normalizers. Merges "a b", "▁ ab" as in CutsBetweenWords.
  json j = spm_fixture(true, {"a b", u8(u8"▁ ab")});
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", u8(u8"▁")}, {"prepend_scheme", "first"}, {"split", false}};
  auto t = Tokenizer::from_json(j, "metaspace fixture");
  EXPECT_EQ(t.encode("ab ab", false), (Ids{265, 265}));
  // A leading space already gives the ▁, so none is prepended: "▁ab" (the Prepend normalizer
  // would make it "▁▁ab" -> 259 265).
  EXPECT_EQ(t.encode(" ab", false), Ids{265});
  j["pre_tokenizer"]["split"] = true;  // split before each ▁: words "▁ab" "▁" "▁ab"
  j["decoder"] = {{"type", "Metaspace"}, {"replacement", u8(u8"▁")}, {"prepend_scheme", "always"}};
  auto s = Tokenizer::from_json(j, "metaspace fixture");
  EXPECT_EQ(s.pre_tokenize("ab  ab"), (std::vector<std::string>{u8(u8"▁ab"), u8(u8"▁"), u8(u8"▁ab")}));
  EXPECT_EQ(s.encode("ab  ab", false), (Ids{265, 259, 265}));
  EXPECT_EQ(s.decode({265, 259, 265}), "ab  ab");  // the first token's ▁ is the prepended one
}

// ---------------------------------------------------------------------------------------------
// Hand-built byte-level BPE fixtures (GPT-2 / Llama 3 / Qwen2 style)

namespace {

const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// GPT-2's bytes_to_unicode, transcribed from the Python original (independently of the library):
// printable bytes !..~, ¡..¬, ®..ÿ keep their code point; the rest get 256, 257, ... in order.
std::string gpt2_char(int b) {
  static const std::vector<std::string> table = [] {
    std::vector<std::string> t(256);
    int extra = 0;
    for (int x = 0; x < 256; ++x) {
      bool keep = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255);
      int cp = keep ? x : 256 + extra++;
      std::string s;
      if (cp < 0x80) s += char(cp);
      else s += char(0xc0 | (cp >> 6)), s += char(0x80 | (cp & 0x3f));
      t[x] = s;
    }
    return t;
  }();
  return table[b];
}

// Vocab: byte b -> id b (as its GPT-2 character); merges get 256 + rank (each result is new);
// then "Ġxyz" (270, no merge makes it) and the specials <|begin_of_text|> 271, <|end_of_text|> 272.
//   rank 0 "Ġ w" -> Ġw 256      rank 5 "H e" -> He 261       rank 10 "1 2" -> 12 266
//   rank 1 "o r" -> or 257      rank 6 "l l" -> ll 262       rank 11 "Ġ Ġ" -> ĠĠ 267
//   rank 2 "Ġw or" -> Ġwor 258  rank 7 "He ll" -> Hell 263   rank 12 "Ã ©" -> Ã© 268 (é = C3 A9)
//   rank 3 "l d" -> ld 259      rank 8 "Hell o" -> Hello 264 rank 13 "e l" -> el 269
//   rank 4 "Ġwor ld" -> Ġworld 260  rank 9 "' s" -> 's 265
const std::vector<std::pair<std::string, std::string>> kMerges = {
    {"Ġ", "w"}, {"o", "r"}, {"Ġw", "or"}, {"l", "d"}, {"Ġwor", "ld"}, {"H", "e"}, {"l", "l"},
    {"He", "ll"}, {"Hell", "o"}, {"'", "s"}, {"1", "2"}, {"Ġ", "Ġ"}, {"Ã", "©"}, {"e", "l"}};

json byte_level_fixture(json pre_tokenizer, bool ignore_merges, bool merges_as_arrays = false) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[gpt2_char(b)] = b;
  json merges = json::array();
  for (size_t r = 0; r < kMerges.size(); ++r) {
    vocab[kMerges[r].first + kMerges[r].second] = 256 + int(r);
    if (merges_as_arrays) merges.push_back({kMerges[r].first, kMerges[r].second});
    else merges.push_back(kMerges[r].first + " " + kMerges[r].second);
  }
  vocab["Ġxyz"] = 270;
  return {
      {"added_tokens", json::array({{{"id", 271}, {"content", "<|begin_of_text|>"}, {"special", true}},
                                    {{"id", 272}, {"content", "<|end_of_text|>"}, {"special", true}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer", pre_tokenizer},
      {"post_processor", {{"type", "Sequence"}, {"processors", json::array({
           {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}},
           {{"type", "TemplateProcessing"},
            {"single", json::array({{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
                                    {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
            {"special_tokens", {{"<|begin_of_text|>", {{"id", "<|begin_of_text|>"}, {"ids", {271}},
                                                        {"tokens", {"<|begin_of_text|>"}}}}}}}})}}},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"fuse_unk", false},
                 {"byte_fallback", false}, {"ignore_merges", ignore_merges}, {"vocab", vocab}, {"merges", merges}}}};
}

json split_then_bytes(const char* pattern) {
  return {{"type", "Sequence"}, {"pretokenizers", json::array({
      {{"type", "Split"}, {"pattern", {{"Regex", pattern}}}, {"behavior", "Isolated"}, {"invert", false}},
      {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}})}};
}

Tokenizer llama3_like(bool ignore_merges = true) {
  return Tokenizer::from_json(byte_level_fixture(split_then_bytes(kLlama3Pattern), ignore_merges), "llama3 fixture");
}

}  // namespace

TEST(TokenizerByteLevel, ByteAlphabet) {
  // Space -> U+0120 'Ġ', newline -> U+010A 'Ċ', 0xff -> 'ÿ' (printable, kept), '!' -> '!',
  // 0x00 -> U+0100 'Ā' (first non-printable), 0x7f -> U+0121 'ġ' (the 34th), 0xad -> U+0143 'Ń' (last).
  EXPECT_EQ(gpt2_char(' '), u8(u8"\u0120"));
  EXPECT_EQ(gpt2_char('\n'), u8(u8"\u010A"));
  EXPECT_EQ(gpt2_char(0xff), u8(u8"ÿ"));
  EXPECT_EQ(gpt2_char(0x00), u8(u8"\u0100"));
  EXPECT_EQ(gpt2_char(0x7f), u8(u8"\u0121"));
  EXPECT_EQ(gpt2_char(0xad), u8(u8"\u0143"));
  // The library's mapping agrees for every byte: single bytes encode to their alphabet id.
  auto t = llama3_like();
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(t.token_text(b), gpt2_char(b));
    if (b < 0x80) {
      EXPECT_EQ(t.pre_tokenize(std::string(1, char(b))), std::vector<std::string>{gpt2_char(b)});
    }
  }
  EXPECT_EQ(t.kind(), Tokenizer::Kind::ByteLevelBPE);
}

TEST(TokenizerByteLevel, Llama3PatternSplit) {
  // "Hello world's 123  x\n" under the Llama 3 pattern (alternatives tried in order at each point):
  //   "Hello"  [^\r\n\p{L}\p{N}]?\p{L}+
  //   " world" same, with the optional leading space
  //   "'s"     (?i:'s)
  //   " "      \s+ (one space: " 1" fits no earlier alternative, \s+(?!\S) fails before '1')
  //   "123"    \p{N}{1,3}
  //   " "      \s+(?!\S): of the two spaces, the first (the second is followed by "x")
  //   " x"     [^\r\n\p{L}\p{N}]?\p{L}+
  //   "\n"     \s*[\r\n]+
  // then every byte through the alphabet: space -> Ġ, \n -> Ċ.
  auto t = llama3_like();
  std::vector<std::string> want{"Hello", "Ġworld", "'s", "Ġ", "123", "Ġ", "Ġx", "Ċ"};
  EXPECT_EQ(t.pre_tokenize("Hello world's 123  x\n"), want);
  // Case-insensitive contractions, digits in threes, punctuation runs keep trailing newlines.
  EXPECT_EQ(t.pre_tokenize("DON'T 12345 ?!\n\nok"),
            (std::vector<std::string>{"DON", "'T", "Ġ", "123", "45", "Ġ?!ĊĊ", "ok"}));
  EXPECT_EQ(t.split_patterns(), std::vector<std::string>{kLlama3Pattern});
}

TEST(TokenizerByteLevel, Gpt2DefaultPattern) {
  // ByteLevel alone with use_regex uses GPT-2's pattern; " ?\p{N}+" keeps " 123" whole and
  // add_prefix_space puts a space before the first word.
  json pre = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  auto t = Tokenizer::from_json(byte_level_fixture(pre, false), "gpt2 fixture");
  EXPECT_EQ(t.pre_tokenize("Hello world's 123  x\n"),
            (std::vector<std::string>{"Hello", "Ġworld", "'s", "Ġ123", "Ġ", "Ġx", "Ċ"}));
  pre["add_prefix_space"] = true;
  auto p = Tokenizer::from_json(byte_level_fixture(pre, false), "gpt2 fixture");
  EXPECT_EQ(p.pre_tokenize("Hi"), std::vector<std::string>{"ĠHi"});
  EXPECT_EQ(p.pre_tokenize(" Hi"), std::vector<std::string>{"ĠHi"});  // no second space
}

TEST(TokenizerByteLevel, Qwen2DigitsOneByOne) {
  auto t = Tokenizer::from_json(byte_level_fixture(split_then_bytes(kQwen2Pattern), false), "qwen2 fixture");
  EXPECT_EQ(t.pre_tokenize("x 2026"), (std::vector<std::string>{"x", "Ġ", "2", "0", "2", "6"}));
}

TEST(TokenizerByteLevel, EncodeHandChecked) {
  auto t = llama3_like();
  // Pre-tokens as in Llama3PatternSplit, then merges by rank:
  //   "Hello":  H e l l o: He(5) < ll(6) < el(13): He, then ll -> He ll o -> Hell(7) -> Hello(8) = 264
  //             (and with ignore_merges it is a vocab piece anyway)
  //   "Ġworld": Ġw(0) -> or(1) -> Ġwor(2) -> ld(3) -> Ġworld(4) = 260
  //   "'s" = 265;  "Ġ" = 32;  "123": 12(10) then 3 -> 266, 51;  "Ġ" = 32;  "Ġx" -> 32, 120;  "Ċ" = 10
  Ids want{264, 260, 265, 32, 266, 51, 32, 32, 120, 10};
  EXPECT_EQ(t.encode("Hello world's 123  x\n", false), want);
  EXPECT_EQ(t.decode(want), "Hello world's 123  x\n");
  // BOS comes from the TemplateProcessing post-processor; EOS from its conventional name.
  EXPECT_EQ(t.bos_id(), 271);
  EXPECT_EQ(t.eos_id(), 272);
  EXPECT_TRUE(t.add_bos_default());
  want.insert(want.begin(), 271);
  EXPECT_EQ(t.encode("Hello world's 123  x\n", true), want);
}

TEST(TokenizerByteLevel, MergeRankOrder) {
  // "Hell": H e l l. Pairs He(5), el(13), ll(6): rank 5 first -> He l l; then ll(6) -> He ll;
  // then Hell(7) = 263. If "e l" were applied first (by position) we would get H el l instead.
  auto t = llama3_like(false);
  EXPECT_EQ(t.encode("Hell", false), Ids{263});
  // "ell": e l l. el(13) vs ll(6): ll first -> e ll = 101, 262 (not el l = 269, 108).
  EXPECT_EQ(t.encode("ell", false), (Ids{101, 262}));
  // Equal ranks go leftmost first: "lll" -> ll l = 262, 108.
  EXPECT_EQ(t.encode("lll", false), (Ids{262, 108}));
  // "    x": pre-tokens "   " (\s+(?!\S)) and " x". "ĠĠĠ": ĠĠ(11) leftmost -> ĠĠ Ġ = 267, 32.
  EXPECT_EQ(t.encode("    x", false), (Ids{267, 32, 32, 120}));
}

TEST(TokenizerByteLevel, IgnoreMerges) {
  // " xyz" is the pre-token "Ġxyz", a vocab piece (270) that no merge builds. With ignore_merges
  // (Llama 3) it is emitted whole; without, BPE has no merge for it: Ġ x y z = 32 120 121 122.
  EXPECT_EQ(llama3_like(true).encode("a xyz", false), (Ids{97, 270}));
  EXPECT_EQ(llama3_like(false).encode("a xyz", false), (Ids{97, 32, 120, 121, 122}));
}

TEST(TokenizerByteLevel, MergesAsArrays) {
  auto strings = llama3_like();
  auto arrays = Tokenizer::from_json(byte_level_fixture(split_then_bytes(kLlama3Pattern), true, true), "arrays");
  std::string text = "Hello world's 123  x\n and more world";
  EXPECT_EQ(arrays.encode(text, false), strings.encode(text, false));
  EXPECT_EQ(arrays.merges(), strings.merges());
  EXPECT_EQ(arrays.merges()[12], std::make_pair(std::string("Ã"), std::string("©")));
}

TEST(TokenizerByteLevel, NonAsciiRoundTrip) {
  auto t = llama3_like();
  // "café": \p{L}+ takes all four letters; bytes c a f C3 A9 -> c a f Ã © -> "Ã ©" merges (rank
  // 12) -> 99 97 102 268. " 🙂": U+1F642 is a symbol, so " ?[^\s\p{L}\p{N}]+" takes " 🙂";
  // bytes 20 F0 9F 99 82 -> ids 32 240 159 153 130 (F0 -> 'ð'; 9F, 99, 82 -> U+0141, U+013B, U+0124).
  Ids want{99, 97, 102, 268, 32, 240, 159, 153, 130};
  EXPECT_EQ(t.encode(u8(u8"café 🙂"), false), want);
  EXPECT_EQ(t.pre_tokenize(u8(u8"café 🙂")), (std::vector<std::string>{"cafÃ©", u8(u8"ĠðŁĻĤ")}));
  EXPECT_EQ(t.decode(want), u8(u8"café 🙂"));
  // Partial characters decode lossily: F0 9F alone is one truncated sequence -> one U+FFFD.
  EXPECT_EQ(t.decode({240, 159}), u8(u8"\uFFFD"));
  EXPECT_EQ(t.decode({99, 0xff}), u8(u8"c\uFFFD"));
  std::string mixed = u8(u8"Zürich — 東京 🚀🙂 naïve\r\n\ttabs");
  EXPECT_EQ(t.decode(t.encode(mixed, false)), mixed);
  EXPECT_EQ(t.decode(t.encode(wiki().substr(0, 20000), false)), wiki().substr(0, 20000));
}

TEST(TokenizerNfc, ComposesCanonically) {
  EXPECT_EQ(nfc("plain ASCII"), "plain ASCII");
  EXPECT_EQ(nfc(u8(u8"e\u0301")), u8(u8"\u00E9"));                // e + acute -> é
  EXPECT_EQ(nfc(u8(u8"\u212B")), u8(u8"\u00C5"));                 // Angstrom sign -> Å (singleton)
  EXPECT_EQ(nfc(u8(u8"\u1100\u1161\u11A8")), u8(u8"\uAC01"));   // Hangul L V T -> 각
  // e + circumflex (230) + dot below (220): reordered to dot below first, then ẹ + ̂ -> ệ.
  EXPECT_EQ(nfc(u8(u8"e\u0302\u0323")), u8(u8"\u1EC7"));
  EXPECT_EQ(nfc(u8(u8"\u0958")), u8(u8"\u0915\u093C"));          // excluded from composition
  EXPECT_EQ(nfc(u8(u8"\u0301a")), u8(u8"\u0301a"));               // leading combining mark stays
  // The evaluation texts are already NFC (checked with Python's unicodedata): unchanged.
  EXPECT_EQ(nfc(wiki()), wiki());
  std::string held = read_text_file(asset("data/gutenberg/heldout.txt"));
  EXPECT_EQ(nfc(held), held);
}

TEST(TokenizerByteLevel, NfcNormalizer) {
  json j = byte_level_fixture(split_then_bytes(kQwen2Pattern), false);
  j["normalizer"] = {{"type", "NFC"}};
  auto t = Tokenizer::from_json(j, "qwen2 fixture");
  // "e" + U+0301 becomes é (C3 A9) before splitting: c a f Ã © -> "Ã ©" merges (rank 12).
  EXPECT_EQ(t.pre_tokenize(u8(u8"cafe\u0301")), std::vector<std::string>{"cafÃ©"});
  EXPECT_EQ(t.encode(u8(u8"cafe\u0301"), false), (Ids{99, 97, 102, 268}));
}

TEST(TokenizerByteLevel, StripAndRegexReplaceNormalizers) {
  json j = byte_level_fixture(split_then_bytes(kLlama3Pattern), false);
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array({
      {{"type", "Strip"}, {"strip_left", true}, {"strip_right", true}},
      {{"type", "Replace"}, {"pattern", {{"Regex", R"(\s+)"}}}, {"content", " "}}})}};
  auto t = Tokenizer::from_json(j, "fixture");
  // "  a \t\n b\u3000" -> strip (U+3000 is Unicode space) -> "a \t\n b" -> "a b" -> "a", "Ġb".
  EXPECT_EQ(t.pre_tokenize(u8(u8"  a \t\n b\u3000")), (std::vector<std::string>{"a", "Ġb"}));
}

TEST(TokenizerByteLevel, WholeWikiIsFastAndExact) {
  auto t = llama3_like();
  Ids ids;
  double secs = seconds([&] { ids = t.encode(wiki(), false); });
  EXPECT_LT(secs, 1.5);
  EXPECT_EQ(t.decode(ids), wiki());
}

TEST(TokenizerByteLevel, SpecialTokens) {
  auto t = llama3_like();
  // Parsed only on request; otherwise "<|end_of_text|>" is text (bytes, no merges apply).
  EXPECT_EQ(t.encode("Hi<|end_of_text|>", false, true), (Ids{72, 105, 272}));
  Ids plain = t.encode("Hi<|end_of_text|>", false);
  EXPECT_EQ(plain.size(), 2u + 15u);
  EXPECT_EQ(t.decode(plain), "Hi<|end_of_text|>");
  EXPECT_EQ(t.decode({72, 105, 272}), "Hi<|end_of_text|>");
  EXPECT_EQ(t.decode({271, 72, 105, 272}, true), "Hi");
  EXPECT_EQ(t.special_ids(), (Ids{271, 272}));
  EXPECT_EQ(t.token_type(271), Tokenizer::TokenType::Control);
  EXPECT_EQ(t.vocab_size(), 273);
}

TEST(TokenizerByteLevel, NonSpecialAddedTokensAlwaysMatch) {
  json j = byte_level_fixture(split_then_bytes(kLlama3Pattern), true);
  j["added_tokens"].push_back({{"id", 273}, {"content", "<tool>"}, {"special", false}});
  auto t = Tokenizer::from_json(j, "fixture");
  // "a<tool>b" -> "a", <tool>, "b" even without parse_special (HF and llama.cpp both do this).
  EXPECT_EQ(t.encode("a<tool>b", false), (Ids{97, 273, 98}));
  EXPECT_EQ(t.token_type(273), Tokenizer::TokenType::UserDefined);
  EXPECT_EQ(t.decode({97, 273, 98}), "a<tool>b");
}

TEST(TokenizerByteLevel, AddedTokenOptions) {
  json j = byte_level_fixture(split_then_bytes(kLlama3Pattern), true);
  j["added_tokens"].push_back({{"id", 273}, {"content", "<m>"}, {"lstrip", true}, {"rstrip", true}});
  j["added_tokens"].push_back({{"id", 274}, {"content", "ab"}, {"single_word", true}});
  auto t = Tokenizer::from_json(j, "fixture");
  // lstrip/rstrip: the spaces on both sides belong to <m>: "x", <m>, "y".
  EXPECT_EQ(t.encode("x <m>  y", false), (Ids{120, 273, 121}));
  // single_word: "ab" alone matches; inside "cab" it does not: <ab>, " cab" = Ġ c a b.
  EXPECT_EQ(t.encode("ab cab", false), (Ids{274, 32, 99, 97, 98}));
}

TEST(TokenizerByteLevel, ConcurrentEncode) {
  auto t = llama3_like();
  std::vector<std::string> texts;
  for (int i = 0; i < 4; ++i) texts.push_back(wiki().substr(i * 50000, 50000));
  std::vector<Ids> serial, parallel(texts.size());
  for (const auto& x : texts) serial.push_back(t.encode(x, false));
  std::vector<std::thread> threads;
  for (size_t i = 0; i < texts.size(); ++i)
    threads.emplace_back([&, i] { parallel[i] = t.encode(texts[i], false); });
  for (auto& th : threads) th.join();
  EXPECT_EQ(parallel, serial);
}

TEST(TokenizerByteLevel, FromFileReadsTokenizerConfig) {
  auto dir = std::filesystem::path(testing::TempDir()) / "lowbit_tok_cfg";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << byte_level_fixture(split_then_bytes(kQwen2Pattern), false).dump();
  // Qwen2 style: no BOS at all, EOS named by the config.
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"bos_token": null, "eos_token": "<|begin_of_text|>", "add_bos_token": false})";
  auto t = Tokenizer::from_file((dir / "tokenizer.json").string());
  EXPECT_EQ(t.bos_id(), -1);
  EXPECT_EQ(t.eos_id(), 271);
  EXPECT_FALSE(t.add_bos_default());
  EXPECT_EQ(t.encode("x", true), Ids{120});
  std::filesystem::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Bad input: every failure is an Error whose message says what is wrong.

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("non-lowbit exception: ") + e.what();
  }
  return "(no error)";
}

std::string load_error(json j) {
  return error_of([&] { Tokenizer::from_json(j, "bad.json"); });
}

}  // namespace

TEST(TokenizerErrors, Files) {
  EXPECT_NE(error_of([] { Tokenizer::from_file("/nonexistent/tokenizer.json"); }).find("/nonexistent/tokenizer.json"),
            std::string::npos);
  auto path = std::filesystem::path(testing::TempDir()) / "lowbit_bad_tokenizer.json";
  std::ofstream(path) << "{\"model\": {\"type\": \"BPE\", ";
  std::string msg = error_of([&] { Tokenizer::from_file(path.string()); });
  EXPECT_NE(msg.find("not valid JSON"), std::string::npos) << msg;
  std::filesystem::remove(path);
}

TEST(TokenizerErrors, UnsupportedModels) {
  for (const char* type : {"Unigram", "WordPiece", "WordLevel"}) {
    json j = byte_level_fixture(split_then_bytes(kLlama3Pattern), false);
    j["model"]["type"] = type;
    std::string msg = load_error(j);
    EXPECT_NE(msg.find(type), std::string::npos) << msg;
    EXPECT_NE(msg.find("bad.json"), std::string::npos) << msg;
  }
  EXPECT_NE(load_error(json::array()).find("object"), std::string::npos);
  EXPECT_NE(load_error({{"version", "1.0"}}).find("model"), std::string::npos);
}

TEST(TokenizerErrors, BadVocabAndMerges) {
  json base = byte_level_fixture(split_then_bytes(kLlama3Pattern), false);
  json j = base;
  j["model"]["vocab"]["neg"] = -1;
  EXPECT_NE(load_error(j).find("out of range"), std::string::npos) << load_error(j);
  j = base;
  j["model"]["vocab"]["huge"] = int64_t(1) << 40;
  EXPECT_NE(load_error(j).find("out of range"), std::string::npos);
  j = base;
  j["model"]["vocab"]["dup"] = 5;  // id 5 is already byte 0x05
  EXPECT_NE(load_error(j).find("id 5"), std::string::npos) << load_error(j);
  j = base;
  j["model"]["vocab"]["str"] = "7";
  EXPECT_NE(load_error(j).find("non-integer"), std::string::npos) << load_error(j);
  j = base;
  j["added_tokens"].push_back({{"id", -3}, {"content", "<x>"}});
  EXPECT_NE(load_error(j).find("out of range"), std::string::npos);
  j = base;
  j["added_tokens"].push_back({{"id", 65}, {"content", "<not A>"}});
  EXPECT_NE(load_error(j).find("<not A>"), std::string::npos);
  j = base;
  j["model"]["merges"].push_back("q zz");
  EXPECT_NE(load_error(j).find("'zz'"), std::string::npos) << load_error(j);
  j = base;
  j["model"]["merges"].push_back("nospace");
  EXPECT_NE(load_error(j).find("nospace"), std::string::npos);
  j = base;
  j["model"]["merges"].push_back(json::array({"a"}));
  EXPECT_NE(load_error(j).find("merge #14"), std::string::npos) << load_error(j);
  j = base;
  j["model"]["vocab"] = json::array();
  EXPECT_NE(load_error(j).find("vocab"), std::string::npos);
}

TEST(TokenizerErrors, UnsupportedPipelineParts) {
  json j = byte_level_fixture({{"type", "BertPreTokenizer"}}, false);
  EXPECT_NE(load_error(j).find("BertPreTokenizer"), std::string::npos);
  j = byte_level_fixture(split_then_bytes(kLlama3Pattern), false);
  j["normalizer"] = {{"type", "BertNormalizer"}};
  EXPECT_NE(load_error(j).find("BertNormalizer"), std::string::npos);
  j = byte_level_fixture(split_then_bytes(kLlama3Pattern), false);
  j["decoder"] = {{"type", "WordPiece"}};
  EXPECT_NE(load_error(j).find("WordPiece"), std::string::npos);
  j = byte_level_fixture(split_then_bytes("(unclosed"), false);
  EXPECT_NE(load_error(j).find("(unclosed"), std::string::npos) << load_error(j);
}
