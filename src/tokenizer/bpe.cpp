#include "tokenizer/bpe.h"

#include <algorithm>
#include <bit>

namespace lowbit {

void MergeTable::reserve(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n + 2) cap *= 2;
  if (cap <= keys_.size()) return;
  std::vector<uint64_t> old_keys = std::move(keys_);
  std::vector<Entry> old_entries = std::move(entries_);
  keys_.assign(cap, kEmpty);
  entries_.assign(cap, Entry{0, 0});
  mask_ = cap - 1;
  shift_ = 64 - std::countr_zero(cap);
  count_ = 0;
  for (size_t i = 0; i < old_keys.size(); ++i) {
    if (old_keys[i] == kEmpty) continue;
    size_t j = slot(old_keys[i]);
    while (keys_[j] != kEmpty) j = (j + 1) & mask_;
    keys_[j] = old_keys[i];
    entries_[j] = old_entries[i];
    ++count_;
  }
}

void MergeTable::grow() { reserve(std::max<size_t>(count_ + 1, count_ * 2)); }

void MergeTable::add(int32_t left, int32_t right, int32_t result, int32_t rank) {
  if (2 * (count_ + 1) + 2 > keys_.size()) grow();
  uint64_t key = pack(left, right);
  size_t i = slot(key);
  while (keys_[i] != kEmpty && keys_[i] != key) i = (i + 1) & mask_;
  if (keys_[i] == kEmpty) {
    keys_[i] = key;
    ++count_;
  }
  entries_[i] = Entry{rank, result};
}

namespace {

// A candidate merge of the symbol at pos with its right neighbour. Ordered by (rank, pos).
struct Candidate {
  uint64_t key;  // rank << 32 | pos
  int32_t result;
  bool operator>(const Candidate& o) const { return key > o.key; }
};

struct Workspace {
  std::vector<int32_t> prev, next;
  std::vector<Candidate> heap;
};

}  // namespace

void bpe_merge(std::vector<int32_t>& sym, const MergeTable& merges) {
  const size_t n = sym.size();
  if (n < 2 || merges.size() == 0) return;
  thread_local Workspace ws;  // reused so short words cost no allocation
  auto& prev = ws.prev;
  auto& next = ws.next;
  auto& heap = ws.heap;
  prev.resize(n);
  next.resize(n);
  heap.clear();
  for (size_t i = 0; i < n; ++i) {
    prev[i] = int32_t(i) - 1;
    next[i] = i + 1 < n ? int32_t(i + 1) : -1;
  }
  auto push = [&](int32_t pos, const MergeTable::Entry& e) {
    heap.push_back({(uint64_t(uint32_t(e.rank)) << 32) | uint32_t(pos), e.result});
    std::push_heap(heap.begin(), heap.end(), std::greater<>());
  };
  for (size_t i = 0; i + 1 < n; ++i)
    if (const auto* e = merges.find(sym[i], sym[i + 1]))
      heap.push_back({(uint64_t(uint32_t(e->rank)) << 32) | uint32_t(i), e->result});
  std::make_heap(heap.begin(), heap.end(), std::greater<>());

  constexpr int32_t kRemoved = -1;
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    Candidate top = heap.back();
    heap.pop_back();
    int32_t pos = int32_t(top.key & 0xffffffffu);
    if (sym[pos] == kRemoved) continue;
    int32_t right = next[pos];
    if (right < 0) continue;
    // Skip entries made stale by an earlier merge: the pair here must still produce this token.
    const auto* cur = merges.find(sym[pos], sym[right]);
    if (!cur || cur->result != top.result) continue;
    sym[pos] = top.result;
    sym[right] = kRemoved;
    next[pos] = next[right];
    if (next[pos] >= 0) prev[next[pos]] = pos;
    if (prev[pos] >= 0)
      if (const auto* e = merges.find(sym[prev[pos]], sym[pos])) push(prev[pos], *e);
    if (next[pos] >= 0)
      if (const auto* e = merges.find(sym[pos], sym[next[pos]])) push(pos, *e);
  }
  sym.erase(std::remove(sym.begin(), sym.end(), kRemoved), sym.end());
}

}  // namespace lowbit
