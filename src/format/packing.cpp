#include "format/packing.h"

#include "util/error.h"

namespace lowbit {

static void check_bits(int bits) {
  if (bits < 1 || bits > 8) fail("codes must have 1..8 bits, not {}", bits);
}

int64_t packed_row_bytes(int64_t cols, int bits) { return (cols * bits + 7) / 8; }

std::vector<uint8_t> pack_codes(const uint8_t* codes, int64_t rows, int64_t cols, int bits) {
  check_bits(bits);
  int64_t row_bytes = packed_row_bytes(cols, bits);
  std::vector<uint8_t> out(size_t(rows * row_bytes), 0);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* dst = out.data() + r * row_bytes;
    for (int64_t c = 0; c < cols; ++c) {
      uint32_t code = codes[r * cols + c];
      if (code >> bits) fail("code {} does not fit in {} bits (row {}, column {})", code, bits, r, c);
      int64_t bit = c * bits;
      // A code spans at most two bytes; write its low part, then any spill into the next byte.
      uint32_t shifted = code << (bit % 8);
      dst[bit / 8] |= uint8_t(shifted);
      if (shifted >> 8) dst[bit / 8 + 1] |= uint8_t(shifted >> 8);
    }
  }
  return out;
}

uint8_t packed_code(const uint8_t* packed, int64_t cols, int bits, int64_t row, int64_t col) {
  const uint8_t* src = packed + row * packed_row_bytes(cols, bits);
  int64_t bit = col * bits;
  uint32_t word = src[bit / 8];
  if (bit % 8 + bits > 8) word |= uint32_t(src[bit / 8 + 1]) << 8;
  return uint8_t((word >> (bit % 8)) & ((1u << bits) - 1u));
}

std::vector<uint8_t> unpack_codes(const uint8_t* packed, int64_t rows, int64_t cols, int bits) {
  check_bits(bits);
  std::vector<uint8_t> out(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = packed_code(packed, cols, bits, r, c);
  return out;
}

}  // namespace lowbit
