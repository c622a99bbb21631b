// Scale fitting and round-to-grid for GGUF types (format/ggml_formats.h), vectorized over blocks.
//
// Fits follow llama.cpp's reference quantizers (ggml-quants.c, without an importance matrix),
// except that codes are always chosen against the scales as STORED (fp16 d, integer sub-block
// scales), so dequantization gives exactly what the quantizer measured. clip < 1 shrinks each
// range the fit covers, for the clipping search.
//   Q8_0    d = amax / 127
//   Q4_0    d = smax / -8        smax: the weight of largest magnitude, with its sign, so that it
//   IQ4_NL  d = smax / -127            lands on the grid's wider end (-8, or -127 of IQ4_NL)
//   Q4_1    d = (max - min) / 15, m = min
//   Q4_K    per sub-block of 32: s = (max - min') / 15 and mn' = -min', min' = min(min, 0);
//           d = max(s) / 63, dmin = max(mn') / 63, sc = round(s / d), mn = round(mn' / dmin)
//   Q6_K    per sub-block of 16: s = smax / -32; d = S / -128 with S the s of largest
//           magnitude, sc = round(s / d) in int8
// with every d, m and dmin rounded to fp16. Values: see ggml_formats.h (same float operations
// in the same order as ggml's dequantize_row_*).
#include <torch/torch.h>

#include "quant/grid.h"
#include "quant/methods.h"
#include "util/error.h"

namespace lowbit {

namespace {

using torch::Tensor;

Tensor to_fp16_value(const Tensor& t) { return t.to(torch::kFloat16).to(torch::kFloat32); }

void check_finite(const FormatSpec& spec, const Tensor& stored, const Tensor& x) {
  if (!torch::isfinite(stored).all().item<bool>()) fail_unstorable_scale(spec, x);
}

// x ([..., block]) viewed as [..., sub-blocks, sub-block], for the K types' sub-block scales.
Tensor sub_block_view(const GgmlFormatInfo& info, const Tensor& x) {
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = info.block / info.sub_block;
  shape.push_back(info.sub_block);
  return x.reshape(shape);
}

// The weight of largest magnitude along the last dim, with its sign (the first on ties).
Tensor signed_max(const Tensor& x) { return x.gather(-1, x.abs().argmax(-1, true)); }

// a / b rounded and clamped to [lo, hi], 0 where b is 0. Never -0: stored as an integer, it
// would decode as +0 and flip the sign of zero products.
Tensor ratio_code(const Tensor& a, const Tensor& b, float lo, float hi) {
  Tensor nz = b.ne(0);
  return (a / b.where(nz, torch::ones_like(b))).round_().clamp_(lo, hi).mul_(nz).add_(0.0f);
}

}  // namespace

SlotParams fit_ggml(const FormatSpec& spec, const Tensor& x, float clip) {
  const GgmlFormatInfo& info = ggml_format_info(spec);
  if (!info.is_float && x.size(-1) != info.block)
    fail("internal: {} fits blocks of {}, got {}", spec.str(), info.block, x.size(-1));
  SlotParams p;
  std::vector<int64_t> keep = x.sizes().vec();
  keep.back() = 1;
  switch (info.type) {
    case GGMLType::F16:
    case GGMLType::BF16:
    case GGMLType::F32:
      p.scale = p.step = torch::ones(keep, x.options());
      return p;
    case GGMLType::Q8_0: p.scale = to_fp16_value(x.abs().amax(-1, true).mul_(clip / 127.0f)); break;
    case GGMLType::Q4_0: p.scale = to_fp16_value(signed_max(x).mul_(clip / -8.0f)); break;
    case GGMLType::IQ4_NL: p.scale = to_fp16_value(signed_max(x).mul_(clip / -127.0f)); break;
    case GGMLType::Q4_1: {
      Tensor lo = x.amin(-1, true).mul_(clip), hi = x.amax(-1, true).mul_(clip);
      p.scale = to_fp16_value((hi - lo).div_(15.0f));
      p.min = to_fp16_value(lo);
      check_finite(spec, p.min, x);
      p.offset = p.min;
      break;
    }
    case GGMLType::Q4_K: {
      Tensor xs = sub_block_view(info, x);  // [..., 8, 32]
      Tensor lo = xs.amin(-1, true).clamp_max_(0).mul_(clip), hi = xs.amax(-1, true).mul_(clip);
      Tensor s = (hi - lo).div_(15.0f), mn = lo.neg();  // [..., 8, 1]
      p.scale = to_fp16_value(s.amax(-2).div_(63.0f));   // [..., 1]
      p.min = to_fp16_value(mn.amax(-2).div_(63.0f));
      check_finite(spec, p.min, x);
      p.sub_scale = ratio_code(s, p.scale.unsqueeze(-1), 0, 63);
      p.sub_min = ratio_code(mn, p.min.unsqueeze(-1), 0, 63);
      p.step = p.scale.unsqueeze(-1) * p.sub_scale;
      p.offset = (p.min.unsqueeze(-1) * p.sub_min).neg_();
      break;
    }
    case GGMLType::Q6_K: {
      Tensor s = signed_max(sub_block_view(info, x)).mul_(clip / -32.0f);  // [..., 16, 1]
      p.scale = to_fp16_value(signed_max(s.squeeze(-1)).div_(-128.0f));  // [..., 1]
      p.sub_scale = ratio_code(s, p.scale.unsqueeze(-1), -128, 127);
      p.step = p.scale.unsqueeze(-1) * p.sub_scale;
      break;
    }
    default: fail("internal: {} has no fit", spec.str());
  }
  check_finite(spec, p.scale, x);
  if (!p.step.defined()) p.step = p.scale;
  p.any_zero_step = p.step.eq(0).any().item<bool>();
  return p;
}

void quantize_ggml(const FormatSpec& spec, const Grid* grid, const Tensor& x, const SlotParams& p,
                   Tensor* grid_values, Tensor* codes, Tensor* dequantized) {
  const GgmlFormatInfo& info = ggml_format_info(spec);
  if (info.is_float) {
    Tensor v = x.to(ggml_float_dtype(spec)).to(torch::kFloat32);
    if (codes) *codes = torch::zeros(x.sizes(), x.options().dtype(torch::kInt32));
    if (dequantized) *dequantized = v;
    if (grid_values) *grid_values = std::move(v);
    return;
  }
  // K types: values as [..., sub-blocks, sub-block] against [..., sub-blocks, 1] params. A GPTQ
  // column (params already per element) needs no view.
  const bool view_subs = p.step.dim() == x.dim() + 1;
  const Tensor xs = view_subs ? sub_block_view(info, x) : x;
  Tensor t = p.offset.defined() ? (xs - p.offset).div_(p.step) : xs / p.step;
  if (p.any_zero_step) t.masked_fill_(p.step.eq(0), 0.0f);
  Tensor v;
  grid->encode(t, codes, &v);
  if (dequantized) {
    Tensor d = v * p.step;
    if (p.offset.defined()) d.add_(p.offset);
    *dequantized = view_subs ? d.reshape(x.sizes()) : d;
  }
  if (codes && view_subs) *codes = codes->reshape(x.sizes());
  if (grid_values) *grid_values = view_subs ? v.reshape(x.sizes()) : v;
}

torch::ScalarType ggml_float_dtype(const FormatSpec& spec) {
  switch (ggml_type_of(spec)) {
    case GGMLType::F16: return torch::kFloat16;
    case GGMLType::BF16: return torch::kBFloat16;
    case GGMLType::F32: return torch::kFloat32;
    default: fail("internal: {} is not a float type", spec.str());
  }
}

std::vector<GgmlExtra> ggml_extras(const FormatSpec& spec) {
  if (spec.scaling() != Scaling::Ggml) return {};
  const GgmlFormatInfo& info = ggml_format_info(spec);
  const int64_t subs = info.block / info.sub_block;
  std::vector<GgmlExtra> out;
  if (info.has_min) out.push_back({&SlotParams::min, &QuantOutcome::min, 1});
  if (subs > 1) out.push_back({&SlotParams::sub_scale, &QuantOutcome::sub_scale, subs});
  if (subs > 1 && info.has_min) out.push_back({&SlotParams::sub_min, &QuantOutcome::sub_min, subs});
  return out;
}

void check_ggml_row_length(const FormatSpec& spec, int64_t cols) {
  if (spec.scaling() != Scaling::Ggml) return;
  const GgmlFormatInfo& info = ggml_format_info(spec);
  if (!info.is_float && cols % info.block != 0)
    fail("{} stores rows in blocks of {}, and a row here has {} values (gguf_format_for_shape gives the "
         "fallback)", spec.str(), info.block, cols);
}

}  // namespace lowbit
