#include "tokenizer/tokenizer.h"

#include <cctype>

#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"
#include "util/error.h"
#include "util/text_file.h"

namespace lowbit {

namespace {

bool is_word_char(uint32_t cp) {
  return cp == '_' || (cp < 0x80 ? std::isalnum(int(cp)) != 0 : !utf8::is_space(cp));
}

// The code point that ends just before byte offset `end` (which is on a character boundary).
uint32_t prev_char(std::string_view s, size_t end, size_t& start) {
  start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xc0) == 0x80) --start;
  size_t i = start;
  return utf8::next(s, i);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Encoding

// One pre-token (for SentencePiece style, the whole text): cut where no merge can reach across
// (see Impl::joined), then BPE each part.
void Tokenizer::Impl::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (ignore_merges) {  // Llama 3: a pre-token that is itself a piece is never split
    if (auto it = vocab.find(word); it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (!can_cut || word.size() < 32) {
    encode_chunk(word, out);
    return;
  }
  size_t start = 0, i = 0;
  uint32_t prev = utf8::next(word, i);
  bool prev_known = char_id(prev) >= 0;  // never cut beside an unknown char (fuse_unk runs)
  while (i < word.size()) {
    size_t at = i;
    uint32_t cp = utf8::next(word, i);
    bool known = char_id(cp) >= 0;
    if (prev_known && known && !joined(prev, cp)) {
      encode_chunk(word.substr(start, at - start), out);
      start = at;
    }
    prev = cp;
    prev_known = known;
  }
  encode_chunk(word.substr(start), out);
}

// Characters -> ids (bytes or <unk> for characters outside the vocab), then merges.
void Tokenizer::Impl::encode_chunk(std::string_view word, std::vector<int32_t>& out) const {
  thread_local std::vector<int32_t> sym;
  sym.clear();
  bool pending_unk = false;  // an <unk> not yet emitted, so fuse_unk can fold a run into one
  for (size_t i = 0; i < word.size();) {
    size_t start = i;
    int32_t id = char_id(utf8::next(word, i));
    if (id >= 0) {
      if (pending_unk) sym.push_back(unk), pending_unk = false;
      sym.push_back(id);
      continue;
    }
    if (byte_fallback) {
      bool all = true;
      for (size_t k = start; k < i; ++k) all = all && byte_ids[uint8_t(word[k])] >= 0;
      if (all) {
        for (size_t k = start; k < i; ++k) sym.push_back(byte_ids[uint8_t(word[k])]);
        continue;
      }
    }
    if (unk < 0) continue;  // HF drops a character it cannot represent at all
    if (pending_unk && !fuse_unk) sym.push_back(unk);
    pending_unk = true;
  }
  if (pending_unk) sym.push_back(unk);
  bpe_merge(sym, merge_table);
  out.insert(out.end(), sym.begin(), sym.end());
}

void Tokenizer::Impl::encode_text(std::string_view text, bool at_start, std::vector<int32_t>& out) const {
  std::string normalized = normalizer.apply(text);
  std::vector<std::string> words;
  pre_tokenizer.split(normalized, at_start, words);
  for (const auto& w : words) encode_word(w, out);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos) const {
  return encode(text, add_bos, false);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos, bool parse_special) const {
  if (size_t bad = find_invalid_utf8(text); bad != std::string_view::npos)
    fail("cannot tokenize: text is not valid UTF-8 (first bad byte at offset {})", bad);
  const Impl& m = *impl_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_bos && bos_ >= 0) out.push_back(bos_);

  const AddedMatcher& matcher = parse_special ? m.match_all : m.match_plain;
  if (matcher.empty) {
    m.encode_text(text, true, out);
    return out;
  }
  // Cut the text at added tokens (leftmost, then longest); the plain text between is encoded.
  size_t gap = 0, i = 0, n = text.size();
  while (i < n) {
    const AddedToken* hit = nullptr;
    for (uint32_t idx : matcher.by_first[static_cast<unsigned char>(text[i])]) {
      const AddedToken& t = m.added[idx];
      if (text.compare(i, t.content.size(), t.content) != 0) continue;
      if (t.single_word) {
        size_t s, e = i + t.content.size();
        if (i > 0 && is_word_char(prev_char(text, i, s))) continue;
        if (e < n && is_word_char(utf8::next(text, e))) continue;
      }
      hit = &t;
      break;
    }
    if (!hit) {
      ++i;
      continue;
    }
    size_t b = i, e = i + hit->content.size();
    if (hit->lstrip)
      for (size_t s; b > gap && utf8::is_space(prev_char(text, b, s));) b = s;
    if (hit->rstrip)
      for (size_t k = e; e < n && utf8::is_space(utf8::next(text, k));) e = k;
    if (b > gap) m.encode_text(text.substr(gap, b - gap), gap == 0, out);
    out.push_back(hit->id);
    gap = i = e;
  }
  if (gap < n) m.encode_text(text.substr(gap), gap == 0, out);
  return out;
}

std::vector<std::string> Tokenizer::pre_tokenize(std::string_view text) const {
  if (size_t bad = find_invalid_utf8(text); bad != std::string_view::npos)
    fail("cannot tokenize: text is not valid UTF-8 (first bad byte at offset {})", bad);
  std::vector<std::string> words;
  impl_->pre_tokenizer.split(impl_->normalizer.apply(text), true, words);
  return words;
}

// ---------------------------------------------------------------------------------------------
// Decoding and accessors

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const { return decode(ids, false); }

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  const Impl& m = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) fail("cannot decode token id {}: vocabulary has {} ids", id, vocab_size());
    if (skip_special && m.special[id]) continue;
    if (m.types[id] == TokenType::Unused) continue;
    tokens.push_back(m.pieces[id]);
  }
  return m.decoder.decode(std::move(tokens));
}

std::string Tokenizer::token_text(int32_t id) const {
  if (id < 0 || id >= vocab_size()) fail("token id {} out of range: vocabulary has {} ids", id, vocab_size());
  return impl_->pieces[id];
}

int32_t Tokenizer::vocab_size() const { return int32_t(impl_->pieces.size()); }
int32_t Tokenizer::bos_id() const { return bos_; }
int32_t Tokenizer::eos_id() const { return eos_; }
int32_t Tokenizer::unk_id() const { return impl_->unk; }
bool Tokenizer::add_bos_default() const { return add_bos_; }
Tokenizer::Kind Tokenizer::kind() const { return impl_->kind; }
const std::vector<std::string>& Tokenizer::pieces() const { return impl_->pieces; }
const std::vector<Tokenizer::AddedToken>& Tokenizer::added_tokens() const { return impl_->added; }
std::vector<std::string> Tokenizer::split_patterns() const { return impl_->pre_tokenizer.patterns(); }

Tokenizer::TokenType Tokenizer::token_type(int32_t id) const {
  if (id < 0 || id >= vocab_size()) fail("token id {} out of range: vocabulary has {} ids", id, vocab_size());
  return impl_->types[id];
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size() && impl_->special[id];
}

std::vector<int32_t> Tokenizer::special_ids() const {
  std::vector<int32_t> out;
  for (int32_t id = 0; id < vocab_size(); ++id)
    if (impl_->special[id]) out.push_back(id);
  return out;
}

std::vector<std::pair<std::string, std::string>> Tokenizer::merges() const {
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(impl_->merge_list.size());
  for (auto [a, b] : impl_->merge_list) out.emplace_back(impl_->pieces[a], impl_->pieces[b]);
  return out;
}

std::vector<float> Tokenizer::spm_scores() const {
  const Impl& m = *impl_;
  const float floor = -float(m.merge_list.size());
  std::vector<float> scores(m.pieces.size());
  for (size_t id = 0; id < scores.size(); ++id) scores[id] = floor - float(id);
  std::vector<uint8_t> seen(m.pieces.size(), 0);
  for (size_t r = 0; r < m.merge_result.size(); ++r) {
    int32_t id = m.merge_result[r];
    if (!seen[id]) scores[id] = -float(r), seen[id] = 1;
  }
  return scores;
}

void Tokenizer::set_bos_id(int32_t id) {
  if (id >= vocab_size()) fail("BOS id {} out of range: vocabulary has {} ids", id, vocab_size());
  bos_ = id < 0 ? -1 : id;
}

void Tokenizer::set_eos_id(int32_t id) {
  if (id >= vocab_size()) fail("EOS id {} out of range: vocabulary has {} ids", id, vocab_size());
  eos_ = id < 0 ? -1 : id;
}

}  // namespace lowbit
