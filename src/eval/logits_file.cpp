#include "eval/logits_file.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "util/error.h"

namespace lowbit {

namespace {
constexpr char kMagic[8] = {'L', 'B', 'L', 'O', 'G', 'P', '0', '1'};
constexpr float kFloor = -30.0f;
constexpr size_t kFixedHeader = 8 + 5 * 4 + 8;
}  // namespace

LogitsWriter::LogitsWriter(const std::string& path, const LogitsHeader& h)
    : header_(h), file_(path), codes_(h.vocab) {
  file_.write(kMagic, 8);
  uint32_t fields[5] = {h.vocab, h.ctx, h.protocol, h.rows_per_chunk, h.chunks};
  file_.write(fields, sizeof fields);
  uint64_t n = h.tokens.size();
  file_.write(&n, 8);
  file_.write(h.tokens.data(), n * 4);
}

void LogitsWriter::add_row(const float* logp) {
  float lo = 0.0f;
  for (uint32_t i = 0; i < header_.vocab; ++i) lo = std::min(lo, logp[i]);
  lo = std::max(lo, kFloor);
  if (lo >= 0.0f) lo = -1e-6f;  // a one-hot row: keep the scale finite
  for (uint32_t i = 0; i < header_.vocab; ++i) {
    float t = std::clamp(1.0f - logp[i] / lo, 0.0f, 1.0f);  // 0 at lo, 1 at logp 0
    codes_[i] = uint16_t(std::lround(t * 65535.0f));
  }
  file_.write(&lo, 4);
  file_.write(codes_.data(), codes_.size() * 2);
  ++rows_;
}

void LogitsWriter::commit() {
  uint64_t expect = uint64_t(header_.chunks) * header_.rows_per_chunk;
  if (rows_ != expect) fail("logits file: wrote {} rows, expected {}", rows_, expect);
  file_.commit();
}

LogitsReader::LogitsReader(const std::string& path) : file_(std::make_unique<MappedFile>(path)) {
  const uint8_t* p = file_->data();
  size_t size = file_->size();
  if (size < kFixedHeader || std::memcmp(p, kMagic, 8) != 0)
    fail("{} is not a lowbit logits file (bad magic or too short)", path);
  uint32_t fields[5];
  std::memcpy(fields, p + 8, sizeof fields);
  header_.vocab = fields[0];
  header_.ctx = fields[1];
  header_.protocol = fields[2];
  header_.rows_per_chunk = fields[3];
  header_.chunks = fields[4];
  uint64_t n;
  std::memcpy(&n, p + 28, 8);
  if (n > (size - kFixedHeader) / 4) fail("{}: token count {} exceeds the file size", path, n);
  header_.tokens.resize(n);
  std::memcpy(header_.tokens.data(), p + kFixedHeader, n * 4);
  rows_offset_ = kFixedHeader + n * 4;
  size_t expect = rows_offset_ + rows() * kLogitsRowBytes(header_.vocab);
  if (header_.vocab == 0 || size != expect)
    fail("{}: size {} bytes does not match its header ({} bytes expected): truncated or corrupt", path, size,
         expect);
}

void LogitsReader::read_row(uint64_t row, float* logp) const {
  const uint8_t* p = file_->data() + rows_offset_ + row * kLogitsRowBytes(header_.vocab);
  float lo;
  std::memcpy(&lo, p, 4);
  const uint8_t* codes = p + 4;
  for (uint32_t i = 0; i < header_.vocab; ++i) {
    uint16_t c;
    std::memcpy(&c, codes + 2 * i, 2);
    logp[i] = lo * (1.0f - float(c) / 65535.0f);
  }
}

}  // namespace lowbit
