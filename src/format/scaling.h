#pragma once
// Scale fitting and the scalar quantize / dequantize of one value: the reference that RTN, GPTQ
// and the SIMD kernels agree with.
//
//   Plain, symmetric:  scale = fp16(clip * absmax / element_max)       x' = decode(code) * scale
//   Plain, asymmetric: lo = clip * min(w, 0), hi = clip * max(w, 0)    (integers only)
//                      scale = fp16((hi - lo) / (2^b - 1)), zero = clamp(round(-lo / scale))
//                      code = clamp(round(x / scale) + zero, 0, 2^b - 1)
//                      x' = (code - zero) * scale
//   MX:  scale = mx_block_scale(clip * absmax)                         x' = decode(code) * scale
//   NV:  scale = nvfp4_block_scale(clip * absmax, tensor_scale)
//        x' = decode(code) * (scale * tensor_scale)
// round() is round-half-to-even; symmetric codes are codec().encode(x / step) (codec.h rules).
// The stored fp16 scale is the one used, so dequantization is exact given the stored data. A
// zero scale (all-zero group, or one too small for fp16/E4M3) quantizes everything to 0.
// Wide grids meet fp16's limits first: fp8_e5m2 (max 57344) on weights with absmax below ~3.5
// gets an fp16-subnormal scale, a few per cent coarse for absmax ~0.05; values at the top may
// then saturate by that much. Dequantization stays exact given the stored scale.
#include <cstdint>

#include "format/spec.h"

namespace lowbit {

struct QuantizeOptions {
  // Shrinks the range the scale must cover, in (0, 1]; an MSE clipping search tries several.
  float clip_ratio = 1.0f;
};

struct GroupParams {
  float scale = 0;  // the stored scale; exactly an fp16 (Plain), E8M0 (MX) or E4M3 (NV) value
  int zero = 0;     // zero point, asymmetric integers only, in [0, 2^b - 1]
  float step = 0;   // value of one element unit: scale, times the tensor scale for NV
};

// NVFP4: the fp32 tensor scale from all weights of the tensor (clip does not apply). 1 otherwise.
float fit_tensor_scale(const FormatSpec& spec, const float* w, int64_t n);

// Scale (and zero) of one group from its n weights.
GroupParams fit_group(const FormatSpec& spec, const float* w, int64_t n,
                      const QuantizeOptions& options = {}, float tensor_scale = 1.0f);

// Params from a stored scale and zero (checks that the scale is representable in storage).
GroupParams make_group_params(const FormatSpec& spec, float scale, int zero,
                              float tensor_scale = 1.0f);

uint8_t quantize_value(const FormatSpec& spec, const GroupParams& p, float x);
float dequantize_value(const FormatSpec& spec, const GroupParams& p, uint8_t code);

// A stored scale's raw bits, as written to files: fp16 bits (Plain), an E8M0 or E4M3 byte.
uint16_t encode_scale(const FormatSpec& spec, float scale);  // throws if not exact
float decode_scale(const FormatSpec& spec, uint16_t raw);

}  // namespace lowbit
