#include "format/minifloat.h"

#include <cmath>
#include <map>
#include <memory>

#include "format/token.h"
#include "util/error.h"

namespace lowbit {

static bool supported_split(int x, int y) {
  int bits = 1 + x + y;
  if (x < 1 || x > 5 || y < 0 || bits < 3 || bits > 8) return false;
  return bits < 8 || (x == 4 && y == 3) || (x == 5 && y == 2);
}

static float minifloat_value(int x, int y, uint32_t code) {
  uint32_t sign = (code >> (x + y)) & 1u;
  uint32_t e = (code >> y) & ((1u << x) - 1u);
  uint32_t m = code & ((1u << y) - 1u);
  int bias = (1 << (x - 1)) - 1;
  uint32_t e_all_ones = (1u << x) - 1u;
  float v;
  if (x == 4 && y == 3 && e == e_all_ones && m == 7) {
    v = NAN;
  } else if (x == 5 && y == 2 && e == e_all_ones) {
    v = m == 0 ? INFINITY : NAN;
  } else if (e == 0) {
    v = std::ldexp(float(m), 1 - bias - y);
  } else {
    v = std::ldexp(float((1u << y) + m), int(e) - bias - y);
  }
  return sign ? -v : v;
}

std::string minifloat_token(int x, int y) { return fmt::format("fp{}_e{}m{}", 1 + x + y, x, y); }

const Codec& minifloat_codec(int x, int y) {
  static const auto codecs = [] {
    std::map<std::pair<int, int>, std::unique_ptr<Codec>> all;
    for (int x = 1; x <= 5; ++x)
      for (int y = 0; y <= 7; ++y) {
        if (!supported_split(x, y)) continue;
        int bits = 1 + x + y;
        std::vector<float> values(size_t(1) << bits);
        for (uint32_t c = 0; c < values.size(); ++c) values[c] = minifloat_value(x, y, c);
        std::optional<uint8_t> nan;
        if (x == 4 && y == 3) nan = 0x7f;
        if (x == 5 && y == 2) nan = 0x7e;  // quiet NaN
        all[{x, y}] = std::make_unique<Codec>(minifloat_token(x, y), bits, values,
                                              std::vector<uint8_t>{}, nan);
      }
    return all;
  }();
  auto it = codecs.find({x, y});
  if (it == codecs.end())
    fail("e{}m{}: minifloats need 1..5 exponent bits and 3..8 bits in all; at 8 bits only e4m3 "
         "and e5m2",
         x, y);
  return *it->second;
}

const Codec& e8m0_codec() {
  static const Codec codec = [] {
    std::vector<float> values(256);
    for (int e = 0; e < 255; ++e) values[e] = std::ldexp(1.0f, e - 127);
    values[255] = NAN;
    return Codec("e8m0", 8, values, {}, uint8_t(255));
  }();
  return codec;
}

// "e<x>m<y>" -> {x, y}
static std::optional<std::pair<int, int>> parse_split(std::string_view s) {
  if (!s.starts_with("e")) return std::nullopt;
  size_t m = s.find('m');
  if (m == std::string_view::npos) return std::nullopt;
  auto x = parse_count(s.substr(1, m - 1));
  std::string_view ys = s.substr(m + 1);
  auto y = ys == "0" ? std::optional<int64_t>(0) : parse_count(ys);
  if (!x || !y || *x > 99 || *y > 99) return std::nullopt;
  return std::pair{int(*x), int(*y)};
}

std::optional<ElementDef> match_minifloat(std::string_view token) {
  std::optional<std::pair<int, int>> split;
  if (token.starts_with("fp")) {
    size_t us = token.find('_');
    if (us == std::string_view::npos)
      fail("'{}': minifloats are written fp<bits>_e<x>m<y>, e.g. fp4_e2m1", token);
    auto bits = parse_count(token.substr(2, us - 2));
    split = parse_split(token.substr(us + 1));
    if (!bits || !split) fail("'{}': minifloats are written fp<bits>_e<x>m<y>, e.g. fp4_e2m1", token);
    if (*bits != 1 + split->first + split->second)
      fail("'{}': e{}m{} has {} bits, not {}", token, split->first, split->second,
           1 + split->first + split->second, *bits);
  } else {
    split = parse_split(token);
    if (!split) return std::nullopt;
  }
  auto [x, y] = *split;
  ElementDef def;
  def.codec = &minifloat_codec(x, y);
  def.token = def.codec->name();
  def.default_granularity = 1 + x + y == 8 ? Granularity::Channel : Granularity::Group;
  def.default_group_size = 1 + x + y == 8 ? 0 : 128;
  return def;
}

std::vector<std::string> minifloat_tokens() {
  std::vector<std::string> out;
  for (int x = 1; x <= 5; ++x)
    for (int y = 0; y <= 7; ++y)
      if (supported_split(x, y)) out.push_back(minifloat_token(x, y));
  return out;
}

}  // namespace lowbit
