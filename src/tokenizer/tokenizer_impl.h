#pragma once
// Internal state of a loaded Tokenizer, shared by tokenizer.cpp (encode/decode) and
// tokenizer_load.cpp (parsing tokenizer.json).
#include <array>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "tokenizer/bpe.h"
#include "tokenizer/pipeline.h"
#include "tokenizer/tokenizer.h"

namespace lowbit {

// Lets the vocab map be searched with a string_view without building a std::string.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using PieceMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// Added tokens to look for in raw text: indices into Impl::added by first byte, longest first.
struct AddedMatcher {
  std::array<std::vector<uint32_t>, 256> by_first;
  bool empty = true;
};

struct Tokenizer::Impl {
  std::string origin;
  Kind kind = Kind::SentencePieceBPE;
  std::vector<std::string> pieces;  // id -> piece (added tokens included)
  std::vector<TokenType> types;
  std::vector<uint8_t> special;
  PieceMap vocab;  // the BPE model's own vocab (not added tokens that lie outside it)
  std::array<int32_t, 128> ascii_ids;
  std::unordered_map<uint32_t, int32_t> char_ids;  // single-character pieces beyond ASCII
  std::array<int32_t, 256> byte_ids;               // <0xXX> pieces, with byte_fallback
  MergeTable merge_table;
  std::vector<std::pair<int32_t, int32_t>> merge_list;  // rank order
  std::vector<int32_t> merge_result;                    // rank -> merged id
  // Character pairs that occur side by side inside some merge result. A long word can be cut
  // between two characters that never do: no merge can ever join across that point, so the
  // pieces encode independently with the same result (and far faster than one 1 MB word).
  std::vector<uint64_t> ascii_joined;         // 128x128 bit matrix
  std::unordered_set<uint64_t> joined_pairs;  // the pairs involving non-ASCII characters
  bool can_cut = false;  // false when merges involve byte or <unk> tokens, or with ignore_merges
  int32_t unk = -1;
  bool byte_fallback = false, fuse_unk = false, ignore_merges = false;
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  Decoder decoder;
  std::vector<AddedToken> added;
  AddedMatcher match_all, match_plain;  // with and without special tokens

  int32_t char_id(uint32_t cp) const {
    if (cp < 128) return ascii_ids[cp];
    auto it = char_ids.find(cp);
    return it == char_ids.end() ? -1 : it->second;
  }
  bool joined(uint32_t a, uint32_t b) const {
    if (a < 128 && b < 128) return (ascii_joined[a * 2 + (b >> 6)] >> (b & 63)) & 1;
    return joined_pairs.count((uint64_t(a) << 32) | b) != 0;
  }
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  void encode_chunk(std::string_view chunk, std::vector<int32_t>& out) const;
  void encode_text(std::string_view text, bool at_start, std::vector<int32_t>& out) const;
};

}  // namespace lowbit
