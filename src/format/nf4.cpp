#include "format/nf4.h"

namespace lowbit {

const Codec& nf4_codec() {
  // bitsandbytes' NF4 table (create_normal_map), as float.
  static const Codec codec("nf4", 4,
                           {-1.0f, -0.6961928009986877f, -0.5250730514526367f,
                            -0.39491748809814453f, -0.28444138169288635f, -0.18477343022823334f,
                            -0.09105003625154495f, 0.0f, 0.07958029955625534f,
                            0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
                            0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f});
  return codec;
}

std::optional<ElementDef> match_nf4(std::string_view token) {
  if (token != "nf4") return std::nullopt;
  ElementDef def;
  def.token = "nf4";
  def.codec = &nf4_codec();
  def.default_granularity = Granularity::Group;
  def.default_group_size = 64;
  return def;
}

std::vector<std::string> nf4_tokens() { return {"nf4"}; }

}  // namespace lowbit
