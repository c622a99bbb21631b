#pragma once
// An element codec: the grid of one element before scaling (INT, ExMy minifloat, NF4, E8M0 ...).
// Every codec here has at most 8 bits, so it is fully described by the value of each code; one
// table-driven class serves all of them and is the scalar reference the SIMD kernels are tested
// against.
//
// encode(x) rules, the same for every codec:
//  - nearest grid value; a tie between two neighbours goes to the EVEN code (for minifloats the
//    even mantissa, for integers the even integer);
//  - values beyond the grid (including +-inf) saturate to the smallest / largest grid value;
//  - sign-magnitude codecs keep the sign of zero: -0.0 and small negatives that round to zero give
//    the negative-zero code;
//  - NaN gives the codec's NaN code if it has one (E4M3 0x7F, E5M2 0x7E, E8M0 0xFF), otherwise
//    encode throws lowbit::Error.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace lowbit {

class Codec {
 public:
  // value_of_code has 2^bits entries. Codes listed in off_grid still decode, but encode never
  // produces them (the -2^(b-1) code of a restricted-symmetric integer). Non-finite values and the
  // negative zero are never on the grid either. nan_code is what encode(NaN) gives; it must
  // decode to NaN.
  Codec(std::string name, int bits, std::vector<float> value_of_code,
        std::vector<uint8_t> off_grid = {}, std::optional<uint8_t> nan_code = std::nullopt);

  const std::string& name() const { return name_; }
  int bits() const { return bits_; }
  int num_codes() const { return 1 << bits_; }

  float decode(uint8_t code) const { return value_of_code_[code]; }
  uint8_t encode(float x) const;

  // All values encode can produce, sorted ascending and distinct, and the code of each.
  // Vectorized nearest-grid-point code must break ties towards the even grid_codes() entry to
  // match encode().
  const std::vector<float>& grid() const { return grid_; }
  const std::vector<uint8_t>& grid_codes() const { return grid_codes_; }
  float max() const { return grid_.back(); }
  float min() const { return grid_.front(); }

  std::optional<uint8_t> nan_code() const { return nan_code_; }
  std::optional<uint8_t> negative_zero_code() const { return negative_zero_code_; }

 private:
  std::string name_;
  int bits_;
  std::vector<float> value_of_code_;
  std::vector<float> grid_;
  std::vector<uint8_t> grid_codes_;
  std::optional<uint8_t> nan_code_, negative_zero_code_;
};

}  // namespace lowbit
