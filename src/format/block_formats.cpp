#include "format/block_formats.h"

#include <algorithm>
#include <cmath>

#include "format/minifloat.h"
#include "util/error.h"

namespace lowbit {

int element_emax(const Codec& element) {
  int e;
  std::frexp(element.max(), &e);  // max = f * 2^e, f in [0.5, 1)
  return e - 1;
}

float mx_block_scale(float amax, const Codec& element) {
  if (!(amax > 0)) return std::ldexp(1.0f, -127);
  int e;
  std::frexp(amax, &e);  // floor(log2(amax)) = e - 1, exactly
  int s = std::clamp(e - 1 - element_emax(element), -127, 127);
  return std::ldexp(1.0f, s);
}

float nvfp4_tensor_scale(float amax) {
  float s = amax / (448.0f * 6.0f);
  return s > 0 ? s : 1.0f;
}

float nvfp4_block_scale(float amax, float tensor_scale) {
  const Codec& e4m3 = minifloat_codec(4, 3);
  return e4m3.decode(e4m3.encode(amax / (6.0f * tensor_scale)));
}

namespace {
struct MxName {
  const char* token;
  const char* alias;
  int x, y;
};
constexpr MxName kMx[] = {{"mxfp4", nullptr, 2, 1},        {"mxfp6_e2m3", "mxfp6", 2, 3},
                          {"mxfp6_e3m2", nullptr, 3, 2},   {"mxfp8_e4m3", "mxfp8", 4, 3},
                          {"mxfp8_e5m2", nullptr, 5, 2}};
}  // namespace

std::optional<ElementDef> match_mx(std::string_view token) {
  for (const MxName& mx : kMx) {
    if (token != mx.token && !(mx.alias && token == mx.alias)) continue;
    ElementDef def;
    def.token = mx.token;
    def.codec = &minifloat_codec(mx.x, mx.y);
    def.scaling = Scaling::MX;
    def.default_granularity = Granularity::Group;
    def.default_group_size = 32;
    return def;
  }
  if (token.starts_with("mx"))
    fail("'{}': MX formats are mxfp4, mxfp6[_e2m3|_e3m2], mxfp8[_e4m3|_e5m2]", token);
  return std::nullopt;
}

std::vector<std::string> mx_tokens() {
  std::vector<std::string> out;
  for (const MxName& mx : kMx) out.push_back(mx.token);
  return out;
}

std::optional<ElementDef> match_nvfp4(std::string_view token) {
  if (token != "nvfp4") return std::nullopt;
  ElementDef def;
  def.token = "nvfp4";
  def.codec = &minifloat_codec(2, 1);
  def.scaling = Scaling::NV;
  def.default_granularity = Granularity::Group;
  def.default_group_size = 16;
  return def;
}

std::vector<std::string> nvfp4_tokens() { return {"nvfp4"}; }

}  // namespace lowbit
