#include "format/codec.h"

#include <algorithm>
#include <cmath>

#include "util/error.h"

namespace lowbit {

Codec::Codec(std::string name, int bits, std::vector<float> value_of_code,
             std::vector<uint8_t> off_grid, std::optional<uint8_t> nan_code)
    : name_(std::move(name)), bits_(bits), value_of_code_(std::move(value_of_code)),
      nan_code_(nan_code) {
  if (bits_ < 1 || bits_ > 8 || int(value_of_code_.size()) != (1 << bits_))
    fail("codec {}: needs 2^bits values for 1..8 bits", name_);
  if (nan_code_ && (*nan_code_ >= num_codes() || !std::isnan(value_of_code_[*nan_code_])))
    fail("codec {}: NaN code {} does not decode to NaN", name_, *nan_code_);
  std::vector<int> order;
  for (int c = 0; c < num_codes(); ++c) {
    float v = value_of_code_[c];
    bool negative_zero = v == 0 && std::signbit(v);
    if (negative_zero) negative_zero_code_ = uint8_t(c);
    bool off = std::find(off_grid.begin(), off_grid.end(), uint8_t(c)) != off_grid.end();
    if (std::isfinite(v) && !negative_zero && !off) order.push_back(c);
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return value_of_code_[a] < value_of_code_[b]; });
  for (int c : order) {
    if (!grid_.empty() && grid_.back() == value_of_code_[c])
      fail("codec {}: codes {} and {} have the same value", name_, grid_codes_.back(), c);
    grid_.push_back(value_of_code_[c]);
    grid_codes_.push_back(uint8_t(c));
  }
  if (grid_.empty()) fail("codec {}: no finite values", name_);
}

uint8_t Codec::encode(float x) const {
  if (std::isnan(x)) {
    if (nan_code_) return *nan_code_;
    fail("{} cannot represent NaN", name_);
  }
  // First grid value >= x; the answer is it or its lower neighbour.
  size_t i = std::lower_bound(grid_.begin(), grid_.end(), x) - grid_.begin();
  size_t pick;
  if (i == 0) {
    pick = 0;
  } else if (i == grid_.size()) {
    pick = i - 1;
  } else {
    // Midpoint of two floats is exact in double, so the comparison is exact.
    double mid = (double(grid_[i - 1]) + double(grid_[i])) / 2;
    if (x < mid) pick = i - 1;
    else if (x > mid) pick = i;
    else pick = (grid_codes_[i - 1] % 2 == 0) ? i - 1 : i;
  }
  if (grid_[pick] == 0 && std::signbit(x) && negative_zero_code_) return *negative_zero_code_;
  return grid_codes_[pick];
}

}  // namespace lowbit
