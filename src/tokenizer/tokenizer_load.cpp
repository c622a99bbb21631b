// Parsing tokenizer.json (and the optional tokenizer_config.json beside it) into Tokenizer::Impl.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"
#include "util/error.h"
#include "util/json_file.h"

namespace lowbit {

using nlohmann::json;

namespace {

constexpr int64_t kMaxId = int64_t(1) << 24;  // far above any real vocabulary; guards allocation

int32_t checked_id(const json& v, const std::string& origin, const char* what, std::string_view piece) {
  if (!v.is_number_integer()) fail("{}: {} '{}' has a non-integer id {}", origin, what, piece, v.dump());
  int64_t id = v.get<int64_t>();
  if (id < 0 || id >= kMaxId) fail("{}: {} '{}' has id {} out of range [0, {})", origin, what, piece, id, kMaxId);
  return int32_t(id);
}

template <typename T>
T value_or(const json& j, const char* key, T def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  return it->get<T>();
}

// "<s>" or {"content": "<s>", ...} as tokenizer_config.json writes special tokens.
std::string config_token(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content")) return v["content"].get<std::string>();
  return {};
}

int32_t find_id(const Tokenizer::Impl& m, std::string_view piece) {
  for (const auto& t : m.added)
    if (t.content == piece) return t.id;
  auto it = m.vocab.find(piece);
  return it == m.vocab.end() ? -1 : it->second;
}

void load_vocab(Tokenizer::Impl& m, const json& model, const json& added, const std::string& origin) {
  const json& vocab = model.at("vocab");
  if (!vocab.is_object()) fail("{}: model.vocab must be an object of piece -> id", origin);
  int64_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it)
    max_id = std::max<int64_t>(max_id, checked_id(it.value(), origin, "vocab entry", it.key()));
  if (added.is_array())
    for (const auto& t : added)
      max_id = std::max<int64_t>(max_id, checked_id(t.at("id"), origin, "added token",
                                                    value_or<std::string>(t, "content", "")));
  if (max_id < 0) fail("{}: the vocabulary is empty", origin);

  m.pieces.assign(size_t(max_id + 1), std::string());
  std::vector<uint8_t> assigned(m.pieces.size(), 0);
  m.vocab.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    int32_t id = it.value().get<int32_t>();
    if (assigned[id]) fail("{}: id {} is given to both '{}' and '{}'", origin, id, m.pieces[id], it.key());
    assigned[id] = 1;
    m.pieces[id] = it.key();
    m.vocab.emplace(it.key(), id);
  }

  m.special.assign(m.pieces.size(), 0);
  if (!added.is_null() && !added.is_array()) fail("{}: added_tokens must be an array", origin);
  if (added.is_array()) {
    for (const auto& t : added) {
      Tokenizer::AddedToken a;
      a.content = t.at("content").get<std::string>();
      a.id = t.at("id").get<int32_t>();
      a.special = value_or(t, "special", false);
      a.lstrip = value_or(t, "lstrip", false);
      a.rstrip = value_or(t, "rstrip", false);
      a.single_word = value_or(t, "single_word", false);
      a.normalized = value_or(t, "normalized", !a.special);
      if (a.content.empty()) fail("{}: added token {} has empty content", origin, a.id);
      if (assigned[a.id] && m.pieces[a.id] != a.content)
        fail("{}: added token '{}' has id {}, which the vocab gives to '{}'", origin, a.content, a.id,
             m.pieces[a.id]);
      assigned[a.id] = 1;
      m.pieces[a.id] = a.content;
      m.special[a.id] = a.special;
      m.added.push_back(std::move(a));
    }
  }
  m.types.assign(m.pieces.size(), Tokenizer::TokenType::Normal);
  for (size_t id = 0; id < m.pieces.size(); ++id)
    if (!assigned[id]) m.types[id] = Tokenizer::TokenType::Unused;
}

void load_merges(Tokenizer::Impl& m, const json& model, const std::string& origin) {
  auto it = model.find("merges");
  if (it == model.end() || it->is_null()) return;
  if (!it->is_array()) fail("{}: model.merges must be an array", origin);
  const json& merges = *it;
  m.merge_table.reserve(merges.size());
  m.merge_list.reserve(merges.size());
  auto lookup = [&](const std::string& piece, size_t rank) {
    auto v = m.vocab.find(piece);
    if (v == m.vocab.end()) fail("{}: merge #{} uses '{}', which is not in the vocab", origin, rank, piece);
    return v->second;
  };
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& e = merges[rank];
    std::string a, b;
    if (e.is_string()) {  // "a b"
      const std::string& s = e.get_ref<const std::string&>();
      size_t sp = s.find(' ');
      if (sp == std::string::npos || sp == 0 || sp + 1 == s.size())
        fail("{}: merge #{} '{}' is not two pieces separated by a space", origin, rank, s);
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {  // ["a", "b"]
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      fail("{}: merge #{} must be \"a b\" or [\"a\", \"b\"], not {}", origin, rank, e.dump());
    }
    int32_t ia = lookup(a, rank), ib = lookup(b, rank), ir = lookup(a + b, rank);
    m.merge_table.add(ia, ib, ir, int32_t(rank));
    m.merge_list.emplace_back(ia, ib);
    m.merge_result.push_back(ir);
  }
}

void load_model_options(Tokenizer::Impl& m, const json& model, const std::string& origin) {
  if (!value_or<std::string>(model, "continuing_subword_prefix", "").empty() ||
      !value_or<std::string>(model, "end_of_word_suffix", "").empty())
    fail("{}: BPE with continuing_subword_prefix / end_of_word_suffix is not supported", origin);
  // dropout is a training-time regulariser; encoding here is always deterministic.
  m.byte_fallback = value_or(model, "byte_fallback", false);
  m.fuse_unk = value_or(model, "fuse_unk", false);
  m.ignore_merges = value_or(model, "ignore_merges", false);
  std::string unk = value_or<std::string>(model, "unk_token", "");
  if (!unk.empty()) {
    auto it = m.vocab.find(unk);
    if (it == m.vocab.end()) fail("{}: unk_token '{}' is not in the vocab", origin, unk);
    m.unk = it->second;
  }

  m.ascii_ids.fill(-1);
  for (const auto& [piece, id] : m.vocab) {
    size_t i = 0;
    uint32_t cp = utf8::next(piece, i);
    if (i != piece.size()) continue;  // not a single character
    if (cp < 128) m.ascii_ids[cp] = id;
    else m.char_ids.emplace(cp, id);
  }
  m.byte_ids.fill(-1);
  if (m.byte_fallback)
    for (int b = 0; b < 256; ++b) {
      auto it = m.vocab.find(fmt::format("<0x{:02X}>", b));
      if (it == m.vocab.end()) continue;
      m.byte_ids[b] = it->second;
      m.types[it->second] = Tokenizer::TokenType::Byte;
    }
  for (const auto& a : m.added)
    m.types[a.id] = a.special ? Tokenizer::TokenType::Control : Tokenizer::TokenType::UserDefined;
  if (m.unk >= 0) m.types[m.unk] = Tokenizer::TokenType::Unknown;
}

void find_cut_points(Tokenizer::Impl& m) {
  m.ascii_joined.assign(128 * 2, 0);
  m.can_cut = !m.ignore_merges;
  for (size_t r = 0; r < m.merge_list.size() && m.can_cut; ++r) {
    auto [a, b] = m.merge_list[r];
    for (int32_t id : {a, b})
      if (id == m.unk || m.types[id] == Tokenizer::TokenType::Byte) m.can_cut = false;
    const std::string& joined = m.pieces[m.merge_result[r]];
    size_t i = 0;
    uint32_t prev = utf8::next(joined, i);
    while (i < joined.size()) {
      uint32_t cp = utf8::next(joined, i);
      if (prev < 128 && cp < 128) m.ascii_joined[prev * 2 + (cp >> 6)] |= uint64_t(1) << (cp & 63);
      else m.joined_pairs.insert((uint64_t(prev) << 32) | cp);
      prev = cp;
    }
  }
}

void build_matchers(Tokenizer::Impl& m) {
  for (uint32_t i = 0; i < m.added.size(); ++i) {
    const auto& a = m.added[i];
    uint8_t first = static_cast<uint8_t>(a.content[0]);
    m.match_all.by_first[first].push_back(i);
    m.match_all.empty = false;
    if (!a.special) {
      m.match_plain.by_first[first].push_back(i);
      m.match_plain.empty = false;
    }
  }
  for (auto* mt : {&m.match_all, &m.match_plain})
    for (auto& bucket : mt->by_first)
      std::stable_sort(bucket.begin(), bucket.end(), [&](uint32_t x, uint32_t y) {
        return m.added[x].content.size() > m.added[y].content.size();
      });
}

// Special tokens a TemplateProcessing post-processor puts before and after a single sequence.
struct Template {
  std::vector<int32_t> prefix, suffix;
};

void find_template(const json& pp, const Tokenizer::Impl& m, Template& t) {
  if (!pp.is_object()) return;
  std::string type = value_or<std::string>(pp, "type", "");
  if (type == "Sequence") {
    for (const auto& sub : value_or(pp, "processors", json::array())) find_template(sub, m, t);
    return;
  }
  if (type != "TemplateProcessing" || !pp.contains("single")) return;
  bool after = false;
  for (const auto& item : pp["single"]) {
    if (item.contains("Sequence")) {
      after = true;
      continue;
    }
    if (!item.contains("SpecialToken")) continue;
    std::string name = item["SpecialToken"].at("id").get<std::string>();
    int32_t id = -1;
    const json& st = value_or(pp, "special_tokens", json::object());
    if (st.contains(name) && st[name].contains("ids") && !st[name]["ids"].empty())
      id = st[name]["ids"][0].get<int32_t>();
    else
      id = find_id(m, name);
    if (id >= 0) (after ? t.suffix : t.prefix).push_back(id);
  }
}

// Conventional names, for files that say nothing else about BOS/EOS.
int32_t find_named(const Tokenizer::Impl& m, std::initializer_list<const char*> names) {
  for (const char* n : names)
    for (const auto& a : m.added)
      if (a.content == n) return a.id;
  return -1;
}

}  // namespace

Tokenizer Tokenizer::from_json(const json& j, const std::string& origin) {
  auto m = std::make_shared<Impl>();
  m->origin = origin;
  Template tmpl;
  try {
    if (!j.is_object()) fail("{}: a tokenizer.json must be a JSON object", origin);
    if (!j.contains("model") || !j["model"].is_object()) fail("{}: tokenizer.json has no \"model\" object", origin);
    const json& model = j["model"];
    std::string type = value_or<std::string>(model, "type", model.contains("merges") ? "BPE" : "(none)");
    if (type != "BPE")
      fail("{}: unsupported tokenizer model type '{}' (lowbit supports BPE tokenizers only)", origin, type);
    load_vocab(*m, model, value_or(j, "added_tokens", json()), origin);
    load_merges(*m, model, origin);
    load_model_options(*m, model, origin);
    build_matchers(*m);
    find_cut_points(*m);
    m->normalizer = Normalizer::parse(value_or(j, "normalizer", json()), origin);
    m->pre_tokenizer = PreTokenizer::parse(value_or(j, "pre_tokenizer", json()), origin);
    m->decoder = Decoder::parse(value_or(j, "decoder", json()), origin);
    m->kind = m->pre_tokenizer.has_byte_level() ? Kind::ByteLevelBPE : Kind::SentencePieceBPE;
    find_template(value_or(j, "post_processor", json()), *m, tmpl);
  } catch (const json::exception& e) {
    fail("{}: malformed tokenizer.json: {}", origin, e.what());
  }
  Tokenizer t(m);
  t.bos_ = !tmpl.prefix.empty() ? tmpl.prefix[0]
                                : find_named(*m, {"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"});
  t.eos_ = !tmpl.suffix.empty() ? tmpl.suffix.back()
                                : find_named(*m, {"</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"});
  t.add_bos_ = !tmpl.prefix.empty();
  return t;
}

Tokenizer Tokenizer::from_file(const std::string& path) {
  Tokenizer t = from_json(read_json_file(path, "tokenizer file"), path);
  // tokenizer_config.json is what transformers reads for bos/eos and whether BOS is added.
  auto config_path = std::filesystem::path(path).parent_path() / "tokenizer_config.json";
  if (!std::filesystem::exists(config_path)) return t;
  json c = read_json_file(config_path.string(), "tokenizer config");
  if (!c.is_object()) return t;
  auto resolve = [&](const char* key, int32_t& slot) {
    if (!c.contains(key)) return;
    if (c[key].is_null()) {
      slot = -1;
      return;
    }
    std::string name = config_token(c[key]);
    if (name.empty()) return;
    int32_t id = find_id(*t.impl_, name);
    if (id < 0) fail("{}: {} '{}' is not a token of {}", config_path.string(), key, name, path);
    slot = id;
  };
  try {
    resolve("bos_token", t.bos_);
    resolve("eos_token", t.eos_);
    if (c.contains("add_bos_token") && c["add_bos_token"].is_boolean()) t.add_bos_ = c["add_bos_token"].get<bool>();
  } catch (const json::exception& e) {
    fail("{}: malformed tokenizer config: {}", config_path.string(), e.what());
  }
  if (t.bos_ < 0) t.add_bos_ = false;
  return t;
}

}  // namespace lowbit
