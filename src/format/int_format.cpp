#include "format/int_format.h"

#include <array>
#include <memory>

#include "format/token.h"
#include "util/error.h"

namespace lowbit {

static Codec make_int_codec(int bits, bool is_signed) {
  int n = 1 << bits;
  std::vector<float> values(n);
  std::vector<uint8_t> off_grid;
  for (int c = 0; c < n; ++c) values[c] = float(is_signed && c >= n / 2 ? c - n : c);
  if (is_signed) off_grid.push_back(uint8_t(n / 2));  // -2^(b-1): restricted range
  return Codec(fmt::format("{}int{}", is_signed ? "" : "u", bits), bits, values, off_grid);
}

const Codec& int_codec(int bits, bool is_signed) {
  static const auto codecs = [] {
    std::array<std::array<std::unique_ptr<Codec>, 2>, 9> all;
    for (int b = 2; b <= 8; ++b)
      for (int s = 0; s < 2; ++s) all[b][s] = std::make_unique<Codec>(make_int_codec(b, s == 1));
    return all;
  }();
  if (bits < 2 || bits > 8) fail("integer formats have 2..8 bits, not {}", bits);
  return *codecs[bits][is_signed ? 1 : 0];
}

bool is_int_codec(const Codec& codec, bool is_signed) {
  const int b = codec.bits();
  return b >= 2 && b <= 8 && &codec == &int_codec(b, is_signed);
}

std::optional<ElementDef> match_int(std::string_view token) {
  if (!token.starts_with("int")) return std::nullopt;
  auto bits = parse_count(token.substr(3));
  if (!bits || *bits < 2 || *bits > 8) fail("'{}': integer formats are int2 .. int8", token);
  int b = int(*bits);
  ElementDef def;
  def.token = fmt::format("int{}", b);
  def.codec = &int_codec(b, true);
  def.asym_codec = &int_codec(b, false);
  // 8-bit weights are usually scaled per channel; narrower ones need groups.
  def.default_granularity = b == 8 ? Granularity::Channel : Granularity::Group;
  def.default_group_size = b == 8 ? 0 : 128;
  return def;
}

std::vector<std::string> int_tokens() {
  std::vector<std::string> out;
  for (int b = 2; b <= 8; ++b) out.push_back(fmt::format("int{}", b));
  return out;
}

}  // namespace lowbit
