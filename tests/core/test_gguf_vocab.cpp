// GGUF tokenizer metadata (tokenizer/gguf_vocab.h). The exported SentencePiece-style vocabularies
// are checked the way llama.cpp would use them: an independent re-implementation of llama.cpp's
// SPM tokenizer (llm_tokenizer_spm) runs on the exported tokens and scores and must give
// lowbit's ids on every reference line and on the start of WikiText-2. Byte-level vocabularies
// are checked on hand-built tokenizer.json fixtures written to a temporary directory.
#include <gtest/gtest.h>
#include <sentencepiece_processor.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <unistd.h>
#include <unordered_map>

#include "io/gguf.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/sentencepiece_model.h"
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

const Tokenizer& stories() {
  static const Tokenizer t = Tokenizer::from_file(asset("models/stories260K/tokenizer.json"));
  return t;
}
const Tokenizer& gutenberg() {
  static const Tokenizer t = Tokenizer::from_file(asset("models/gutenberg-6m/tokenizer.json"));
  return t;
}

std::vector<std::string> reference_texts(const std::string& model) {
  std::ifstream in(asset("models/" + model + "/tokenizer_reference.jsonl"));
  EXPECT_TRUE(in) << model;
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(json::parse(line).at("text").get<std::string>());
  return out;
}

// The first n lines of wiki.test.raw, each with and without its newline.
std::vector<std::string> wiki_lines(size_t n) {
  std::string wiki = read_text_file(asset("data/wikitext2/wiki.test.raw"));
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

const GGUFValue* find(const Metadata& md, const std::string& key) {
  for (const auto& [k, v] : md)
    if (k == key) return &v;
  return nullptr;
}
const GGUFValue& get(const Metadata& md, const std::string& key) {
  const GGUFValue* v = find(md, key);
  if (!v) throw std::runtime_error("no metadata key " + key);
  return *v;
}
std::vector<std::string> keys(const Metadata& md) {
  std::vector<std::string> out;
  for (const auto& [k, v] : md) out.push_back(k);
  return out;
}
template <typename T>
std::vector<T> array_of(const Metadata& md, const std::string& key) {
  return get(md, key).value.get<std::vector<T>>();
}

// A fresh empty directory under the system temp dir, removed at the end of the scope.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = fs::temp_directory_path() /
           ("lowbit_gguf_vocab_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
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
  std::string str() const { return path.string(); }
};

// ---------------------------------------------------------------------------------------------
// llama.cpp's SPM tokenizer, written from its description, on exported tokens and scores:
//   - the text gets a leading " " (add_space_prefix) and every " " becomes "▁";
//   - it is cut into UTF-8 characters;
//   - while some adjacent pair concatenates to a token (any token, as llama.cpp's text_to_token
//     looks in the whole vocabulary), the pair whose token has the highest score is merged, the
//     leftmost pair on equal scores;
//   - each final symbol is its token, or (a character outside the vocabulary) its UTF-8 bytes
//     as <0xXX> tokens.
class LlamaCppSpm {
 public:
  explicit LlamaCppSpm(const Metadata& md) {
    EXPECT_EQ(get(md, "tokenizer.ggml.model").value, "llama");
    tokens_ = array_of<std::string>(md, "tokenizer.ggml.tokens");
    for (double s : array_of<double>(md, "tokenizer.ggml.scores")) scores_.push_back(float(s));
    const GGUFValue* prefix = find(md, "tokenizer.ggml.add_space_prefix");
    add_space_prefix_ = !prefix || prefix->value.get<bool>();
    init();
  }
  LlamaCppSpm(std::vector<std::string> tokens, std::vector<float> scores)
      : tokens_(std::move(tokens)), scores_(std::move(scores)) {
    init();
  }

  Ids encode(const std::string& raw) const {
    if (raw.empty()) return {};
    std::string text;
    for (char c : (add_space_prefix_ ? " " : "") + raw) text += c == ' ' ? u8(u8"\u2581") : std::string(1, c);
    std::vector<std::string> sym;
    for (size_t i = 0; i < text.size();) {
      unsigned char c = text[i];
      size_t n = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
      sym.push_back(text.substr(i, n));
      i += n;
    }
    // pair[i]: the score of sym[i] + sym[i+1] if that is a token.
    std::vector<std::optional<float>> pair(sym.empty() ? 0 : sym.size() - 1);
    auto score_of = [&](size_t i) -> std::optional<float> {
      auto it = ids_.find(sym[i] + sym[i + 1]);
      if (it == ids_.end()) return std::nullopt;
      return scores_[it->second];
    };
    for (size_t i = 0; i < pair.size(); ++i) pair[i] = score_of(i);
    for (;;) {
      size_t best = pair.size();
      for (size_t i = 0; i < pair.size(); ++i)
        if (pair[i] && (best == pair.size() || *pair[i] > *pair[best])) best = i;  // strict: leftmost wins ties
      if (best == pair.size()) break;
      sym[best] += sym[best + 1];
      sym.erase(sym.begin() + best + 1);
      pair.erase(pair.begin() + best);
      if (best > 0) pair[best - 1] = score_of(best - 1);
      if (best < pair.size()) pair[best] = score_of(best);
    }
    Ids out;
    for (const auto& s : sym) {
      if (auto it = ids_.find(s); it != ids_.end()) {
        out.push_back(it->second);
        continue;
      }
      for (unsigned char b : s) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        out.push_back(ids_.at(name));
      }
    }
    return out;
  }

 private:
  void init() {
    EXPECT_EQ(tokens_.size(), scores_.size());
    for (size_t id = 0; id < tokens_.size(); ++id) ids_.emplace(tokens_[id], int32_t(id));
  }
  std::vector<std::string> tokens_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> ids_;
  bool add_space_prefix_ = true;
};

// Every text must give lowbit's ids; reports the first few differences in full.
void expect_same_ids(const LlamaCppSpm& spm, const Tokenizer& tok, const std::vector<std::string>& texts,
                     const std::string& what) {
  int shown = 0;
  size_t bad = 0;
  for (const auto& text : texts) {
    Ids want = tok.encode(text, false), got = spm.encode(text);
    if (got == want) continue;
    ++bad;
    if (shown++ < 3)
      ADD_FAILURE() << what << ": llama.cpp SPM and lowbit differ on \"" << text << "\"\n  llama.cpp: "
                    << testing::PrintToString(got) << "\n  lowbit:    " << testing::PrintToString(want);
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << texts.size() << " texts differ";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// SentencePiece-style vocabularies

TEST(GgufVocabSpm, Stories260KMatchesItsGguf) {
  Metadata md = gguf_tokenizer_metadata(stories(), asset("models/stories260K"));
  EXPECT_EQ(keys(md), (std::vector<std::string>{
                          "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                          "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                          "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_bos_token",
                          "tokenizer.ggml.add_eos_token"}));
  GGUFFile gguf(asset("models/stories260K/stories260K.gguf"));
  EXPECT_EQ(get(md, "tokenizer.ggml.model").value, gguf.get_string("tokenizer.ggml.model"));
  EXPECT_EQ(get(md, "tokenizer.ggml.pre").value, "default");
  EXPECT_EQ(array_of<std::string>(md, "tokenizer.ggml.tokens"), gguf.get_string_array("tokenizer.ggml.tokens"));
  EXPECT_EQ(array_of<int64_t>(md, "tokenizer.ggml.token_type"), gguf.get_int_array("tokenizer.ggml.token_type"));
  for (const char* key : {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id"}) {
    EXPECT_EQ(get(md, key).type, GGUFValueType::UINT32) << key;
    EXPECT_EQ(get(md, key).value.get<int64_t>(), gguf.get_int(key)) << key;
  }
  EXPECT_EQ(get(md, "tokenizer.ggml.bos_token_id").value, 1);
  EXPECT_EQ(get(md, "tokenizer.ggml.eos_token_id").value, 2);
  EXPECT_EQ(get(md, "tokenizer.ggml.unknown_token_id").value, 0);
  EXPECT_EQ(get(md, "tokenizer.ggml.add_bos_token").type, GGUFValueType::BOOL);
  EXPECT_EQ(get(md, "tokenizer.ggml.add_bos_token").value, true);
  EXPECT_EQ(get(md, "tokenizer.ggml.add_eos_token").value, false);
  const GGUFValue& tokens = get(md, "tokenizer.ggml.tokens");
  EXPECT_EQ(tokens.type, GGUFValueType::ARRAY);
  EXPECT_EQ(tokens.array_type, GGUFValueType::STRING);
  EXPECT_EQ(get(md, "tokenizer.ggml.scores").array_type, GGUFValueType::FLOAT32);
  EXPECT_EQ(get(md, "tokenizer.ggml.token_type").array_type, GGUFValueType::INT32);
  // No tokenizer.model: the scores are the derived ones.
  auto scores = array_of<double>(md, "tokenizer.ggml.scores");
  auto derived = stories().spm_scores();
  ASSERT_EQ(scores.size(), derived.size());
  for (size_t i = 0; i < scores.size(); ++i) EXPECT_EQ(float(scores[i]), derived[i]) << i;
}

TEST(GgufVocabSpm, Stories260KDerivedScoresReproduceEncode) {
  Metadata md = gguf_tokenizer_metadata(stories(), asset("models/stories260K"));
  LlamaCppSpm spm(md);
  expect_same_ids(spm, stories(), reference_texts("stories260K"), "stories260K reference");
  expect_same_ids(spm, stories(), wiki_lines(200), "stories260K wiki");
  // The comparison can fail: with the scores turned upside down (the last merge first) the
  // same algorithm gives other ids.
  std::vector<float> flipped;
  for (double s : array_of<double>(md, "tokenizer.ggml.scores")) flipped.push_back(-float(s));
  LlamaCppSpm wrong(array_of<std::string>(md, "tokenizer.ggml.tokens"), flipped);
  std::string text = reference_texts("stories260K")[0];
  EXPECT_NE(wrong.encode(text), stories().encode(text, false));
}

// The scores llama2.c wrote into the original GGUF lead to the same ids (a check on the test's
// SPM re-implementation as much as on lowbit: the reference ids came from llama.cpp on that file).
TEST(GgufVocabSpm, Stories260KOriginalGgufScoresAgree) {
  GGUFFile gguf(asset("models/stories260K/stories260K.gguf"));
  std::vector<float> scores;
  for (double s : gguf.get_float_array("tokenizer.ggml.scores")) scores.push_back(float(s));
  LlamaCppSpm spm(gguf.get_string_array("tokenizer.ggml.tokens"), scores);
  expect_same_ids(spm, stories(), reference_texts("stories260K"), "stories260K.gguf reference");
  expect_same_ids(spm, stories(), wiki_lines(200), "stories260K.gguf wiki");
}

TEST(GgufVocabSpm, GutenbergScoresComeFromSentencePiece) {
  Metadata md = gguf_tokenizer_metadata(gutenberg(), asset("models/gutenberg-6m"));
  sentencepiece::SentencePieceProcessor sp;
  ASSERT_TRUE(sp.Load(asset("models/gutenberg-6m/tokenizer.model")).ok());
  ASSERT_EQ(sp.GetPieceSize(), 4096);
  auto tokens = array_of<std::string>(md, "tokenizer.ggml.tokens");
  auto scores = array_of<double>(md, "tokenizer.ggml.scores");
  auto types = array_of<int>(md, "tokenizer.ggml.token_type");
  ASSERT_EQ(tokens.size(), 4096u);
  ASSERT_EQ(scores.size(), 4096u);
  ASSERT_EQ(types.size(), 4096u);
  size_t differ = 0;
  for (int id = 0; id < 4096; ++id) {
    EXPECT_EQ(tokens[id], sp.IdToPiece(id)) << id;
    differ += float(scores[id]) != sp.GetScore(id);
    int want = sp.IsUnknown(id) ? 2 : sp.IsControl(id) ? 3 : sp.IsUnused(id) ? 5 : sp.IsByte(id) ? 6 : 1;
    EXPECT_EQ(types[id], want) << id;
  }
  EXPECT_EQ(differ, 0u);
  EXPECT_EQ(sp.GetScore(1000), float(scores[1000]));
  EXPECT_NE(scores[1000], gutenberg().spm_scores()[1000]);  // really not the derived ones
  EXPECT_EQ(get(md, "tokenizer.ggml.bos_token_id").value, 1);
  EXPECT_EQ(get(md, "tokenizer.ggml.eos_token_id").value, 2);
  EXPECT_EQ(get(md, "tokenizer.ggml.add_bos_token").value, true);
  EXPECT_EQ(find(md, "tokenizer.ggml.add_space_prefix"), nullptr);
}

TEST(GgufVocabSpm, GutenbergSentencePieceScoresReproduceEncode) {
  Metadata md = gguf_tokenizer_metadata(gutenberg(), asset("models/gutenberg-6m"));
  LlamaCppSpm spm(md);
  expect_same_ids(spm, gutenberg(), reference_texts("gutenberg-6m"), "gutenberg-6m reference");
  expect_same_ids(spm, gutenberg(), wiki_lines(200), "gutenberg-6m wiki");
}

// Without tokenizer.model beside it, the same vocabulary gets derived scores; they must do too.
TEST(GgufVocabSpm, GutenbergDerivedScoresReproduceEncode) {
  TempDir dir;
  dir.write("tokenizer.json", read_text_file(asset("models/gutenberg-6m/tokenizer.json")));
  dir.write("tokenizer_config.json", read_text_file(asset("models/gutenberg-6m/tokenizer_config.json")));
  Tokenizer tok = Tokenizer::from_file((dir.path / "tokenizer.json").string());
  Metadata md = gguf_tokenizer_metadata(tok, dir.str());
  auto scores = array_of<double>(md, "tokenizer.ggml.scores");
  EXPECT_EQ(float(scores[1000]), tok.spm_scores()[1000]);
  LlamaCppSpm spm(md);
  expect_same_ids(spm, tok, reference_texts("gutenberg-6m"), "gutenberg-6m (derived) reference");
  expect_same_ids(spm, tok, wiki_lines(200), "gutenberg-6m (derived) wiki");
}

TEST(GgufVocabSpm, ConfigPaddingAndPadToken) {
  // config.json's vocab_size above the tokenizer's: [PAD<id>] rows of type Unused, as the
  // converter writes them; pad_token from tokenizer_config.json.
  TempDir dir;
  dir.write("tokenizer.json", read_text_file(asset("models/stories260K/tokenizer.json")));
  dir.write("tokenizer_config.json", R"({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>"})");
  dir.write("config.json", R"({"vocab_size": 520})");
  Tokenizer tok = Tokenizer::from_file((dir.path / "tokenizer.json").string());
  Metadata md = gguf_tokenizer_metadata(tok, dir.str());
  auto tokens = array_of<std::string>(md, "tokenizer.ggml.tokens");
  auto types = array_of<int>(md, "tokenizer.ggml.token_type");
  auto scores = array_of<double>(md, "tokenizer.ggml.scores");
  ASSERT_EQ(tokens.size(), 520u);
  ASSERT_EQ(scores.size(), 520u);
  EXPECT_EQ(tokens[511], stories().token_text(511));
  EXPECT_EQ(tokens[512], "[PAD512]");
  EXPECT_EQ(tokens[519], "[PAD519]");
  EXPECT_EQ(types[515], 5);
  for (int id = 512; id < 520; ++id)
    for (int j = 0; j < 512; ++j) ASSERT_LT(scores[id], scores[j]);
  EXPECT_EQ(get(md, "tokenizer.ggml.padding_token_id").value, 2);
  EXPECT_EQ(keys(md)[8], "tokenizer.ggml.padding_token_id");  // after bos, eos, unk
  // No tokenizer_config.json: config.json's pad_token_id.
  fs::remove(dir.path / "tokenizer_config.json");
  dir.write("config.json", R"({"vocab_size": 512, "pad_token_id": 0})");
  md = gguf_tokenizer_metadata(tok, dir.str());
  EXPECT_EQ(get(md, "tokenizer.ggml.padding_token_id").value, 0);
  // A config vocabulary smaller than the tokenizer's cannot hold its ids.
  dir.write("config.json", R"({"vocab_size": 500})");
  EXPECT_THROW(gguf_tokenizer_metadata(tok, dir.str()), Error);
}

TEST(GgufVocabSpm, TokenizerModelMustAgree) {
  // gutenberg-6m's tokenizer.model beside stories260K's vocabulary: pieces differ.
  TempDir dir;
  fs::copy_file(asset("models/gutenberg-6m/tokenizer.model"), dir.path / "tokenizer.model");
  try {
    gguf_tokenizer_metadata(stories(), dir.str());
    ADD_FAILURE() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.model"), std::string::npos) << e.what();
  }
}

namespace {

// A small SentencePiece-style tokenizer.json: <unk> <s> </s>, bytes 3..258, "▁" "a" "b" "▁a"
// "a▁" ("▁▁" with extra_piece), merges "▁ a" and "a ▁".
json spm_fixture(bool byte_fallback, json normalizer, json pre_tokenizer, bool extra_piece = false) {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    snprintf(name, sizeof name, "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  vocab[u8(u8"▁")] = 259;
  vocab["a"] = 260;
  vocab["b"] = 261;
  vocab[u8(u8"▁a")] = 262;
  json merges = {u8(u8"▁ a")};
  if (extra_piece) {
    vocab[u8(u8"a▁")] = 263;
    merges.push_back(u8(u8"a ▁"));
  }
  return {{"added_tokens", json::array({{{"id", 0}, {"content", "<unk>"}, {"special", true}},
                                        {{"id", 1}, {"content", "<s>"}, {"special", true}},
                                        {{"id", 2}, {"content", "</s>"}, {"special", true}}})},
          {"normalizer", normalizer},
          {"pre_tokenizer", pre_tokenizer},
          {"decoder", nullptr},
          {"model", {{"type", "BPE"}, {"unk_token", "<unk>"}, {"fuse_unk", true}, {"byte_fallback", byte_fallback},
                     {"vocab", vocab}, {"merges", merges}}}};
}

json legacy_normalizer() {
  return {{"type", "Sequence"}, {"normalizers", json::array({
              {{"type", "Prepend"}, {"prepend", u8(u8"▁")}},
              {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", u8(u8"▁")}}})}};
}

json metaspace(const char* prepend_scheme, bool split) {
  return {{"type", "Metaspace"}, {"replacement", u8(u8"▁")}, {"prepend_scheme", prepend_scheme}, {"split", split}};
}

Metadata export_json(const json& j, const std::string& config = "") {
  TempDir dir;
  dir.write("tokenizer.json", j.dump());
  if (!config.empty()) dir.write("tokenizer_config.json", config);
  Tokenizer tok = Tokenizer::from_file((dir.path / "tokenizer.json").string());
  return gguf_tokenizer_metadata(tok, dir.str());
}

std::string export_error(const json& j) {
  try {
    export_json(j);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(GgufVocabSpm, ShapesLlamaCppCanAndCannotFollow) {
  // Legacy Prepend + Replace and Metaspace(prepend first, no split): llama.cpp's defaults.
  Metadata md = export_json(spm_fixture(true, legacy_normalizer(), nullptr));
  EXPECT_EQ(find(md, "tokenizer.ggml.add_space_prefix"), nullptr);
  EXPECT_EQ(find(export_json(spm_fixture(true, nullptr, metaspace("first", false))), "tokenizer.ggml.add_space_prefix"),
            nullptr);
  // No prefix: add_space_prefix false.
  md = export_json(spm_fixture(true, nullptr, metaspace("never", false)));
  ASSERT_NE(find(md, "tokenizer.ggml.add_space_prefix"), nullptr);
  EXPECT_EQ(get(md, "tokenizer.ggml.add_space_prefix").value, false);
  EXPECT_EQ(keys(md).back(), "tokenizer.ggml.add_space_prefix");
  // Splitting at each ▁ is harmless while every ▁ in a token is its first character...
  EXPECT_NO_THROW(export_json(spm_fixture(true, nullptr, metaspace("first", true))));
  // ... but not with "a▁", which llama.cpp can form across the cut and lowbit cannot.
  EXPECT_NE(export_error(spm_fixture(true, nullptr, metaspace("first", true), true)).find(u8(u8"a▁")),
            std::string::npos);
  // Without byte fallback lowbit writes <unk> where llama.cpp writes bytes.
  EXPECT_NE(export_error(spm_fixture(false, legacy_normalizer(), nullptr)).find("<0x00>"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Byte-level vocabularies

namespace {

const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// GPT-2's bytes_to_unicode: printable bytes keep their code point, the rest get 256, 257, ...
std::string gpt2_char(int b) {
  bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  int extra = 0;
  for (int x = 0; x < b; ++x)
    extra += !((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255));
  int cp = keep ? b : 256 + extra;
  std::string s;
  if (cp < 0x80) s += char(cp);
  else s += char(0xc0 | (cp >> 6)), s += char(0x80 | (cp & 0x3f));
  return s;
}

// Bytes 0..255, merge results 256.. in rank order, specials 260 and 261, an unused id 262 and a
// non-special added token 263.
const std::vector<std::pair<std::string, std::string>> kMerges = {
    {"Ġ", "w"}, {"o", "r"}, {"Ġw", "or"}, {"H", "e"}};

json byte_level_fixture(json pre_tokenizer, bool ignore_merges) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[gpt2_char(b)] = b;
  json merges = json::array();
  for (size_t r = 0; r < kMerges.size(); ++r) {
    vocab[kMerges[r].first + kMerges[r].second] = 256 + int(r);
    merges.push_back({kMerges[r].first, kMerges[r].second});  // the newer array form
  }
  return {{"added_tokens", json::array({{{"id", 260}, {"content", "<|begin_of_text|>"}, {"special", true}},
                                        {{"id", 261}, {"content", "<|end_of_text|>"}, {"special", true}},
                                        {{"id", 263}, {"content", "<tool>"}, {"special", false}}})},
          {"normalizer", nullptr},
          {"pre_tokenizer", pre_tokenizer},
          {"post_processor",
           {{"type", "TemplateProcessing"},
            {"single", json::array({{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
                                    {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
            {"special_tokens", {{"<|begin_of_text|>", {{"id", "<|begin_of_text|>"}, {"ids", {260}},
                                                        {"tokens", {"<|begin_of_text|>"}}}}}}}},
          {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
          {"model", {{"type", "BPE"}, {"unk_token", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
                     {"ignore_merges", ignore_merges}, {"vocab", vocab}, {"merges", merges}}}};
}

json split(const char* pattern, const char* behavior = "Isolated") {
  return {{"type", "Split"}, {"pattern", {{"Regex", pattern}}}, {"behavior", behavior}, {"invert", false}};
}
json byte_level(bool use_regex, bool add_prefix_space = false) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", add_prefix_space}, {"trim_offsets", true}, {"use_regex", use_regex}};
}
json sequence(std::vector<json> steps) { return {{"type", "Sequence"}, {"pretokenizers", steps}}; }
json digits(bool individual) { return {{"type", "Digits"}, {"individual_digits", individual}}; }

std::string pre_name(const json& pre, bool ignore_merges = false) {
  return get(export_json(byte_level_fixture(pre, ignore_merges)), "tokenizer.ggml.pre").value.get<std::string>();
}

}  // namespace

TEST(GgufVocabByteLevel, Llama3Export) {
  Metadata md = export_json(byte_level_fixture(sequence({split(kLlama3Pattern), byte_level(false)}), true));
  EXPECT_EQ(keys(md), (std::vector<std::string>{
                          "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
                          "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
                          "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token"}));
  EXPECT_EQ(get(md, "tokenizer.ggml.model").value, "gpt2");
  EXPECT_EQ(get(md, "tokenizer.ggml.pre").value, "llama-bpe");
  EXPECT_EQ(get(md, "tokenizer.ggml.merges").array_type, GGUFValueType::STRING);
  EXPECT_EQ(array_of<std::string>(md, "tokenizer.ggml.merges"),
            (std::vector<std::string>{"Ġ w", "o r", "Ġw or", "H e"}));
  auto tokens = array_of<std::string>(md, "tokenizer.ggml.tokens");
  auto types = array_of<int>(md, "tokenizer.ggml.token_type");
  ASSERT_EQ(tokens.size(), 264u);
  EXPECT_EQ(tokens[32], "Ġ");
  EXPECT_EQ(tokens[10], "Ċ");
  EXPECT_EQ(tokens[258], "Ġwor");
  EXPECT_EQ(tokens[260], "<|begin_of_text|>");
  EXPECT_EQ(tokens[262], "[PAD262]");
  EXPECT_EQ(tokens[263], "<tool>");
  EXPECT_EQ(types[65], 1);
  EXPECT_EQ(types[260], 3);
  EXPECT_EQ(types[262], 5);
  EXPECT_EQ(types[263], 4);
  EXPECT_EQ(get(md, "tokenizer.ggml.bos_token_id").value, 260);
  EXPECT_EQ(get(md, "tokenizer.ggml.eos_token_id").value, 261);
  EXPECT_EQ(get(md, "tokenizer.ggml.add_bos_token").value, true);
  EXPECT_EQ(get(md, "tokenizer.ggml.add_eos_token").value, false);
  // add_bos_token from tokenizer_config.json wins over the template, as in transformers.
  md = export_json(byte_level_fixture(sequence({split(kLlama3Pattern), byte_level(false)}), true),
                   R"({"add_bos_token": false, "pad_token": "<|end_of_text|>"})");
  EXPECT_EQ(get(md, "tokenizer.ggml.add_bos_token").value, false);
  EXPECT_EQ(get(md, "tokenizer.ggml.padding_token_id").value, 261);
}

TEST(GgufVocabByteLevel, PreTokenizerNames) {
  EXPECT_EQ(pre_name(sequence({split(kQwen2Pattern), byte_level(false)})), "qwen2");
  EXPECT_EQ(pre_name(byte_level(true)), "gpt-2");
  EXPECT_EQ(pre_name(sequence({digits(true), byte_level(true)})), "smollm");
  EXPECT_EQ(pre_name(sequence({split(R"([\p{P}\$\+<=>\^~\|]+)"),
                               split(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))"),
                               split(R"(\p{N}+)"), split("[0-9][0-9][0-9]"), byte_level(false)})),
            "default");
  // llama.cpp's own spelling of a pattern names the same pre-tokenizer.
  EXPECT_EQ(gguf_pre_tokenizer_name({R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}),
            "llama-bpe");
  EXPECT_EQ(gguf_pre_tokenizer_name({kLlama3Pattern}), "llama-bpe");
  EXPECT_EQ(gguf_pre_tokenizer_name({kGpt2Pattern}), "gpt-2");
  EXPECT_EQ(gguf_pre_tokenizer_name({kGpt2Pattern, kGpt2Pattern}), "");
  EXPECT_EQ(gguf_pre_tokenizer_name({}), "");
}

TEST(GgufVocabByteLevel, UnknownOrDifferentPreTokenizerThrows) {
  // A pattern llama.cpp does not know: the error names it.
  const char* odd = R"(\p{L}+|\p{N}+|\s+|.)";
  std::string e = export_error(byte_level_fixture(sequence({split(odd), byte_level(false)}), false));
  EXPECT_NE(e.find(odd), std::string::npos) << e;
  EXPECT_NE(e.find("no pre-tokenizer"), std::string::npos) << e;
  // Known patterns that split differently: digit runs kept whole, a prefix space, a removed split.
  e = export_error(byte_level_fixture(sequence({digits(false), byte_level(true)}), false));
  EXPECT_NE(e.find("smollm"), std::string::npos) << e;
  EXPECT_NE(export_error(byte_level_fixture(byte_level(true, true), false)).find("gpt-2"), std::string::npos);
  EXPECT_NE(export_error(byte_level_fixture(sequence({split(kQwen2Pattern, "Removed"), byte_level(false)}), false))
                .find("qwen2"),
            std::string::npos);
  // ignore_merges must be what llama.cpp assumes for the name (on for llama-bpe only).
  EXPECT_NE(export_error(byte_level_fixture(sequence({split(kLlama3Pattern), byte_level(false)}), false))
                .find("ignore_merges"),
            std::string::npos);
  EXPECT_NE(export_error(byte_level_fixture(sequence({split(kQwen2Pattern), byte_level(false)}), true))
                .find("ignore_merges"),
            std::string::npos);
}

// The tokenizer.model reader (the library above is the reference for its values): broken files
// are one-line errors naming the file, never a crash or a silently short vocabulary.
TEST(SentencePieceModelReader, MalformedFilesAreErrors) {
  std::ifstream in(asset("models/gutenberg-6m/tokenizer.model"), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(bytes.size(), 1000u);
  EXPECT_EQ(read_sentencepiece_model(asset("models/gutenberg-6m/tokenizer.model")).size(), 4096u);
  const std::string path = (fs::temp_directory_path() / ("lowbit_spm_" + std::to_string(getpid()))).string();
  auto expect_error = [&](const std::string& content, const char* what) {
    { std::ofstream(path, std::ios::binary) << content; }
    try {
      read_sentencepiece_model(path);
      ADD_FAILURE() << what << ": accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
  };
  expect_error(bytes.substr(0, 501), "truncated");
  expect_error("", "empty");
  expect_error(std::string("\x0a\xff\xff\xff\xff\x0f", 6), "length past the end");
  expect_error(std::string("\x0f", 1), "wire type 7");
  std::string bad_type = bytes;
  size_t at = bad_type.find(std::string("\x18\x02", 2));  // the first piece's type field (<unk>: 2)
  ASSERT_NE(at, std::string::npos);
  bad_type[at + 1] = 9;
  expect_error(bad_type, "piece type 9");
  fs::remove(path);
}
