#pragma once
// The BPE merge engine shared by both tokenizer styles. Merges are applied in the exact order of
// Hugging Face tokenizers: repeatedly the adjacent pair with the lowest merge rank, leftmost first.
// A SentencePiece-style word is the whole text (up to megabytes), so this is a heap of candidate
// pairs over a doubly linked list of symbols, with stale heap entries skipped lazily: O(n log n).
#include <cstddef>
#include <cstdint>
#include <vector>

namespace lowbit {

// (left id, right id) -> (rank, merged id), open addressing over 64-bit pair keys.
class MergeTable {
 public:
  struct Entry {
    int32_t rank;
    int32_t result;
  };
  void reserve(size_t n);
  // A pair listed twice keeps the later rank, as Hugging Face's HashMap insert does.
  void add(int32_t left, int32_t right, int32_t result, int32_t rank);
  const Entry* find(int32_t left, int32_t right) const {
    if (keys_.empty()) return nullptr;
    uint64_t key = pack(left, right);
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      if (keys_[i] == key) return &entries_[i];
      if (keys_[i] == kEmpty) return nullptr;
    }
  }
  size_t size() const { return count_; }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  static uint64_t pack(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  // Fibonacci hashing: the top bits of the product depend on every bit of the key.
  size_t slot(uint64_t key) const { return size_t((key * 0x9e3779b97f4a7c15ull) >> shift_); }
  void grow();

  std::vector<uint64_t> keys_;
  std::vector<Entry> entries_;
  size_t mask_ = 0, count_ = 0;
  int shift_ = 64;
};

// Merges the symbols of one word in place and returns them (ids in text order).
void bpe_merge(std::vector<int32_t>& symbols, const MergeTable& merges);

}  // namespace lowbit
