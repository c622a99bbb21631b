#pragma once
// Packing of b-bit codes (1 <= b <= 8) into bytes.
// Each row is a little-endian bit stream starting at a byte boundary: code c of the row occupies
// stream bits [c*b, c*b + b), where stream bit k is bit (k % 8) of byte k / 8 (least significant
// bit first). A row takes packed_row_bytes(cols, b) = ceil(cols*b / 8) bytes; unused high bits
// of a row's last byte are zero. For 4-bit codes: element 0 is the low nibble of byte 0,
// element 1 its high nibble (GGUF's Q4_0 interleaving differs; its writer converts).
#include <cstdint>
#include <vector>

namespace lowbit {

int64_t packed_row_bytes(int64_t cols, int bits);

// codes: rows*cols values, one per byte, each < 2^bits (checked).
std::vector<uint8_t> pack_codes(const uint8_t* codes, int64_t rows, int64_t cols, int bits);
std::vector<uint8_t> unpack_codes(const uint8_t* packed, int64_t rows, int64_t cols, int bits);

// One code of a packed matrix.
uint8_t packed_code(const uint8_t* packed, int64_t cols, int bits, int64_t row, int64_t col);

}  // namespace lowbit
