#pragma once
// Base-model log-probabilities saved for KL-divergence runs (--save-logits / --kld-base).
//
// Layout (little-endian):
//   magic "LBLOGP01", u32 vocab, u32 ctx, u32 protocol (0 llamacpp, 1 windows), u32 rows_per_chunk,
//   u32 chunks, u64 n_tokens, then n_tokens i32 token ids of the evaluated stream (so a comparison
//   against a different text or tokenizer is refused), then `chunks * rows_per_chunk` rows.
// A row is the log-softmax of one scored position, stored compactly as f32 lo followed by `vocab`
// u16 codes: logp ≈ lo * (1 - code/65535). lo = max(min logp, -30); anything below e^-30 is
// clamped there, which changes no KLD figure at the printed precision.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "util/atomic_file.h"
#include "util/mapped_file.h"

namespace lowbit {

struct LogitsHeader {
  uint32_t vocab = 0, ctx = 0, protocol = 0, rows_per_chunk = 0, chunks = 0;
  std::vector<int32_t> tokens;
};

class LogitsWriter {
 public:
  LogitsWriter(const std::string& path, const LogitsHeader& header);
  void add_row(const float* logp);  // `vocab` log-probabilities
  void commit();                    // checks the row count, then renames into place

 private:
  LogitsHeader header_;
  AtomicFile file_;
  uint64_t rows_ = 0;
  std::vector<uint16_t> codes_;
};

class LogitsReader {
 public:
  explicit LogitsReader(const std::string& path);  // validates the layout and size
  const LogitsHeader& header() const { return header_; }
  uint64_t rows() const { return uint64_t(header_.chunks) * header_.rows_per_chunk; }
  void read_row(uint64_t row, float* logp) const;

 private:
  LogitsHeader header_;
  std::unique_ptr<MappedFile> file_;
  size_t rows_offset_ = 0;
};

constexpr size_t kLogitsRowBytes(uint32_t vocab) { return 4 + size_t(vocab) * 2; }

}  // namespace lowbit
