#include "format/scaling.h"

#include <algorithm>
#include <cmath>

#include "format/block_formats.h"
#include "format/minifloat.h"
#include "util/error.h"
#include "util/half.h"

namespace lowbit {

static float absmax(const float* w, int64_t n) {
  float m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(w[i]));
  return m;
}

static float round_to_fp16(float x) {
  float r = fp16_to_float(float_to_fp16(x));
  if (std::isinf(r)) fail("scale {} is beyond fp16's range", x);
  return r;
}

float fit_tensor_scale(const FormatSpec& spec, const float* w, int64_t n) {
  return spec.scaling() == Scaling::NV ? nvfp4_tensor_scale(absmax(w, n)) : 1.0f;
}

GroupParams fit_group(const FormatSpec& spec, const float* w, int64_t n,
                      const QuantizeOptions& options, float tensor_scale) {
  float clip = options.clip_ratio;
  if (!(clip > 0 && clip <= 1)) fail("clip ratio must be in (0, 1], not {}", clip);
  const Codec& codec = spec.codec();
  GroupParams p;
  switch (spec.scaling()) {
    case Scaling::Plain:
      if (spec.asymmetric) {
        float lo = 0, hi = 0;
        for (int64_t i = 0; i < n; ++i) lo = std::min(lo, w[i]), hi = std::max(hi, w[i]);
        lo *= clip, hi *= clip;
        p.scale = round_to_fp16((hi - lo) / codec.max());
        if (p.scale > 0)
          p.zero = int(std::clamp(std::nearbyint(-lo / p.scale), 0.0f, codec.max()));
      } else {
        p.scale = round_to_fp16(clip * absmax(w, n) / codec.max());
      }
      break;
    case Scaling::MX: p.scale = mx_block_scale(clip * absmax(w, n), codec); break;
    case Scaling::NV: p.scale = nvfp4_block_scale(clip * absmax(w, n), tensor_scale); break;
  }
  p.step = spec.scaling() == Scaling::NV ? p.scale * tensor_scale : p.scale;
  return p;
}

GroupParams make_group_params(const FormatSpec& spec, float scale, int zero, float tensor_scale) {
  encode_scale(spec, scale);  // throws unless representable
  if (!(scale >= 0)) fail("negative scale {}", scale);
  int max_zero = spec.asymmetric ? int(spec.codec().max()) : 0;
  if (zero < 0 || zero > max_zero) fail("zero point {} outside [0, {}]", zero, max_zero);
  if (spec.scaling() == Scaling::NV && !(tensor_scale > 0 && std::isfinite(tensor_scale)))
    fail("NVFP4 tensor scale must be positive and finite, not {}", tensor_scale);
  float step = spec.scaling() == Scaling::NV ? scale * tensor_scale : scale;
  return GroupParams{scale, zero, step};
}

uint8_t quantize_value(const FormatSpec& spec, const GroupParams& p, float x) {
  const Codec& codec = spec.codec();
  if (spec.asymmetric) {
    if (std::isnan(x)) fail("{} cannot represent NaN", spec.str());
    if (p.step == 0) return uint8_t(p.zero);
    float q = std::nearbyint(x / p.step) + float(p.zero);
    return uint8_t(std::clamp(q, 0.0f, codec.max()));
  }
  return codec.encode(p.step == 0 ? 0.0f : x / p.step);
}

float dequantize_value(const FormatSpec& spec, const GroupParams& p, uint8_t code) {
  if (spec.asymmetric) return (float(code) - float(p.zero)) * p.step;
  return spec.codec().decode(code) * p.step;
}

uint16_t encode_scale(const FormatSpec& spec, float scale) {
  uint16_t raw = 0;
  switch (spec.scaling()) {
    case Scaling::Plain: raw = float_to_fp16(scale); break;
    case Scaling::MX: raw = e8m0_codec().encode(scale); break;
    case Scaling::NV: raw = minifloat_codec(4, 3).encode(scale); break;
  }
  if (decode_scale(spec, raw) != scale) fail("scale {} is not exactly storable for {}", scale, spec.str());
  return raw;
}

float decode_scale(const FormatSpec& spec, uint16_t raw) {
  switch (spec.scaling()) {
    case Scaling::Plain: return fp16_to_float(raw);
    case Scaling::MX: return e8m0_codec().decode(uint8_t(raw));
    case Scaling::NV: return minifloat_codec(4, 3).decode(uint8_t(raw));
  }
  return 0;
}

}  // namespace lowbit
