#pragma once
// Fixed block formats, no options allowed in their spec strings:
//  - OCP MX (Microscaling v1.0): blocks of 32 along a row, one E8M0 scale X = 2^s per block with
//      s = floor(log2(amax)) - emax_elem, clamped to E8M0's [-127, 127]; elements are V/X
//      rounded to nearest (ties to even) with saturation. An all-zero block gets X = 2^-127.
//      mxfp4 (E2M1, emax 2), mxfp6_e2m3 (emax 2), mxfp6_e3m2 (emax 4), mxfp8_e4m3 (emax 8),
//      mxfp8_e5m2 (emax 15); mxfp6 and mxfp8 alone mean E2M3 and E4M3.
//  - NVFP4: blocks of 16 E2M1 elements, an E4M3 scale per block and one fp32 scale per tensor:
//      tensor_scale = amax(tensor) / (448 * 6), block_scale = E4M3(amax(block) / (6 * tensor_scale)),
//      element = E2M1(x / (block_scale * tensor_scale)), x' = element * (block_scale * tensor_scale).
// A row whose length is not a multiple of the block ends in a partial block (lowbit's extension;
// the specs assume whole blocks). It is scaled from its own elements, as if zero-padded.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "format/codec.h"
#include "format/spec.h"

namespace lowbit {

// Largest exponent of an element format: floor(log2(max)).
int element_emax(const Codec& element);

// The MX shared scale 2^s for a block whose absmax is amax (already clipped by the caller).
float mx_block_scale(float amax, const Codec& element);

// NVFP4's fp32 tensor scale for a tensor whose absmax is amax; 1 for an all-zero tensor.
float nvfp4_tensor_scale(float amax);
// NVFP4's block scale (an E4M3 value) for a block whose absmax is amax.
float nvfp4_block_scale(float amax, float tensor_scale);

std::optional<ElementDef> match_mx(std::string_view token);
std::vector<std::string> mx_tokens();
std::optional<ElementDef> match_nvfp4(std::string_view token);
std::vector<std::string> nvfp4_tokens();

}  // namespace lowbit
