#pragma once
// Minifloats ExMy: 1 sign bit, x exponent bits, y mantissa bits, bias 2^(x-1) - 1, OCP semantics.
//  - exponent field 0 is subnormal: 0.m * 2^(1-bias); otherwise 1.m * 2^(e-bias).
//  - fewer than 8 bits (FP4 E2M1, FP6 E2M3/E3M2, and every other split such as E1M2, E3M0):
//    no inf, no NaN; every code is a number.
//  - FP8 E4M3 (OCP): no inf; S.1111.111 is NaN; max 448.
//  - FP8 E5M2: IEEE-style inf (S.11111.00) and NaN (S.11111.xx); max 57344.
//  - other 8-bit splits (E3M4, E2M5, ...) have no agreed inf/NaN rule and are rejected.
// Supported splits: 1 <= x <= 5, y >= 0, 3 <= 1+x+y <= 8. Encoding follows codec.h: nearest,
// ties to even mantissa, saturation to +-max (inf too), NaN -> NaN code (E4M3/E5M2) or an error.
//
// E8M0 (the MX scale): 8 exponent bits, no sign, no mantissa; code e is 2^(e-127), 255 is NaN.
// Its encode() is the generic nearest-value rule (ties at 1.5 x 2^k go to the even code); the MX
// scale itself is chosen by the OCP floor rule in block_formats.h, not by rounding.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "format/codec.h"
#include "format/spec.h"

namespace lowbit {

const Codec& minifloat_codec(int exp_bits, int man_bits);  // throws for unsupported splits
const Codec& e8m0_codec();

// Canonical token of a split: "fp4_e2m1".
std::string minifloat_token(int exp_bits, int man_bits);

// Registry matcher for "fp<b>_e<x>m<y>" and the short form "e<x>m<y>".
std::optional<ElementDef> match_minifloat(std::string_view token);
std::vector<std::string> minifloat_tokens();  // every supported split

}  // namespace lowbit
