#pragma once
// Integer grids INT2..INT8.
//  - symmetric (signed): RESTRICTED range [-(2^(b-1)-1), 2^(b-1)-1], two's-complement codes, so
//    absmax scaling maps +amax and -amax to +-qmax alike. The code -2^(b-1) (0b100..0) decodes to
//    -2^(b-1) but encode never produces it. int2 symmetric is therefore ternary {-1, 0, 1}.
//  - asymmetric (unsigned): [0, 2^b - 1], x = scale * (q - zero).
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "format/codec.h"
#include "format/spec.h"

namespace lowbit {

const Codec& int_codec(int bits, bool is_signed);  // bits 2..8
// Whether `codec` is int_codec(bits, is_signed) for its own bit width (quantizers take integer
// shortcuts for these: round, clamp, no grid search).
bool is_int_codec(const Codec& codec, bool is_signed);

// Registry matcher for "int2".."int8".
std::optional<ElementDef> match_int(std::string_view token);
std::vector<std::string> int_tokens();

}  // namespace lowbit
