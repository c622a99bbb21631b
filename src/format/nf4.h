#pragma once
// NF4 (QLoRA / bitsandbytes): 16 fixed values in [-1, 1], scaled by the group's absmax.
// Codes are indices 0..15 into the ascending table; code 7 is 0. QLoRA uses blocks of 64, so
// nf4 defaults to g64. The scale is stored as fp16 like every Plain format.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "format/codec.h"
#include "format/spec.h"

namespace lowbit {

const Codec& nf4_codec();

std::optional<ElementDef> match_nf4(std::string_view token);
std::vector<std::string> nf4_tokens();

}  // namespace lowbit
