#include "quant/grid.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "format/int_format.h"
#include "util/error.h"
#include "util/half.h"

namespace lowbit {

namespace {

using torch::Tensor;

Tensor f32_tensor(const std::vector<float>& v, torch::Device d) {
  return torch::tensor(v, torch::kFloat32).to(d);
}
Tensor i32_tensor(const std::vector<int32_t>& v, torch::Device d) {
  return torch::tensor(v, torch::kInt32).to(d);
}

// Which registry minifloat this codec is, if any: {exponent bits, mantissa bits}.
std::optional<std::pair<int, int>> minifloat_split(const Codec& codec) {
  for (int x = 1; x <= 5; ++x) {
    int y = codec.bits() - 1 - x;
    if (y < 0) break;
    try {
      if (&minifloat_codec(x, y) == &codec) return std::pair{x, y};
    } catch (const Error&) {
    }
  }
  return std::nullopt;
}

// Largest float below v.
float float_below(float v) { return std::nextafter(v, -std::numeric_limits<float>::infinity()); }

// Gathers table[index] for an int tensor index of any shape.
Tensor gather(const Tensor& table, const Tensor& index) {
  return table.index_select(0, index.reshape(-1)).view(index.sizes());
}

// Bit pattern of a float32 tensor as int32 (a view, no copy).
Tensor bits_of(const Tensor& t) { return t.view(torch::kInt32); }

}  // namespace

Grid::Grid(const Codec& codec, torch::Device device) : codec_(codec) {
  std::vector<float> values(static_cast<size_t>(codec.num_codes()));
  for (int c = 0; c < codec.num_codes(); ++c) values[c] = codec.decode(uint8_t(c));
  value_of_code_ = f32_tensor(values, device);
  const std::vector<float>& grid = codec.grid();
  if (is_int_codec(codec, true)) {
    kind_ = Kind::SignedInt;
    lo_ = grid.front(), hi_ = grid.back();
    return;
  }
  if (is_int_codec(codec, false)) {
    kind_ = Kind::UnsignedInt;
    lo_ = grid.front(), hi_ = grid.back();
    return;
  }
  // With no mantissa bits a minifloat's code parity is not the rounded integer's: generic path.
  auto split = minifloat_split(codec);
  if (split && split->second > 0) {
    kind_ = Kind::Minifloat;
    man_bits_ = split->second;
    emin_ = 1 - ((1 << (split->first - 1)) - 1);
    max_mag_code_ = codec.grid_codes().back();
    sign_code_ = 1 << (split->first + split->second);
    emax_ = element_emax(codec);
    return;
  }
  // Decision boundaries: t goes to grid[i + 1] iff t > bound[i] (see grid.h).
  size_t n = grid.size();
  std::vector<float> bounds;
  for (size_t i = 0; i + 1 < n; ++i) {
    double mid = (double(grid[i]) + double(grid[i + 1])) / 2;  // exact in double
    float f = float(mid);
    bool exact = double(f) == mid;
    bool tie_up = exact && codec.grid_codes()[i] % 2 != 0;
    if (tie_up || double(f) > mid) f = float_below(f);
    bounds.push_back(f);
  }
  std::vector<int32_t> codes(codec.grid_codes().begin(), codec.grid_codes().end());
  grid_codes_ = i32_tensor(codes, device);
  grid_values_ = f32_tensor(grid, device);
  bool increasing = true;
  double min_gap = std::numeric_limits<double>::infinity(), magnitude = 0;
  for (size_t i = 0; i < bounds.size(); ++i) {
    magnitude = std::max(magnitude, std::fabs(double(bounds[i])));
    if (i > 0) {
      increasing &= bounds[i] > bounds[i - 1];
      min_gap = std::min(min_gap, double(bounds[i]) - double(bounds[i - 1]));
    }
  }
  if (bounds.empty()) {  // a one-value grid: everything maps to it
    bounds.push_back(std::numeric_limits<float>::infinity());
    bounds_ = f32_tensor(bounds, device);
    kind_ = Kind::Bucketize;
    return;
  }
  // A uniform cell holds at most one boundary, including a one-cell margin for float error in
  // the cell index: cells of a quarter of the smallest gap, few enough, and the float error of
  // (t - lo) * inv (~2^-22 of the magnitude) far below a cell.
  double w = bounds.size() > 1 ? min_gap / 4 : 1.0;
  double cells = bounds.size() > 1 ? (double(bounds.back()) - double(bounds.front())) / w + 8 : 8;
  if (increasing && cells <= 65536 && magnitude / w < double(1 << 20)) {
    kind_ = Kind::Lookup;
    cell_inv_ = float(1 / w);
    double w_eff = 1 / double(cell_inv_);
    cell_lo_ = float(double(bounds.front()) - 2 * w_eff);
    cells_ = int64_t(cells);
    std::vector<int32_t> base(static_cast<size_t>(cells_));
    for (int64_t c = 0; c < cells_; ++c) {
      double margin = double(cell_lo_) + double(c - 1) * w_eff;  // t >= margin in cell c
      int32_t k = 0;
      while (size_t(k) < bounds.size() && double(bounds[k]) < margin) ++k;
      base[c] = k;
    }
    base_ = i32_tensor(base, device);
  } else {
    kind_ = Kind::Bucketize;
  }
  bounds.push_back(std::numeric_limits<float>::infinity());  // pad: gathers at n - 1 are safe
  bounds_ = f32_tensor(bounds, device);
}

void Grid::encode(const Tensor& t, Tensor* codes, Tensor* values) const {
  switch (kind_) {
    case Kind::SignedInt:
    case Kind::UnsignedInt: {
      Tensor v = t.round().clamp_(lo_, hi_);  // round() is half-to-even: even integer = even code
      if (codes) {
        *codes = v.to(torch::kInt32);
        if (kind_ == Kind::SignedInt) codes->bitwise_and_(codec_.num_codes() - 1);  // two's complement
      }
      if (values) *values = v.add_(0.0f);  // -0 + 0 = +0: decode(code 0) is +0
      return;
    }
    case Kind::Minifloat: {
      // In float ops only: ulp = 2^(e - m), with 2^e = |t|'s leading power of two clamped to
      // [2^emin, 2^emax]; n = |t| / ulp rounded half-to-even is the mantissa with its implicit bit
      // (exact: powers of two). value = n * ulp saturated, with t's sign (-0 too);
      // code = n + (e - emin) * 2^m (one formula for subnormals and binade carries), saturated,
      // where (e - emin) * 2^23 = bits(2^e) - bits(2^emin) exactly.
      const float two_emin = std::ldexp(1.0f, emin_);
      Tensor a = t.abs();
      Tensor p2 = bits_of(a).bitwise_and(0x7F800000).view(torch::kFloat32).clamp_(two_emin, std::ldexp(1.0f, emax_));
      Tensor ulp = p2 * std::ldexp(1.0f, -man_bits_);
      Tensor n = a.div_(ulp).round_();
      if (codes) {
        // (in place on p2's bits: p2 is not needed any more)
        Tensor c = bits_of(p2).sub_(int32_t(float_to_bits(two_emin))).to(torch::kFloat32)
                       .mul_(std::ldexp(1.0f, man_bits_ - 23)).add_(n).clamp_max_(float(max_mag_code_));
        c.add_(torch::signbit(t), float(sign_code_));  // the sign bit, -0 included
        *codes = c.to(torch::kInt32);
      }
      if (values) *values = n.mul_(ulp).clamp_max_(codec_.max()).copysign_(t);
      return;
    }
    case Kind::Lookup:
    case Kind::Bucketize: {
      Tensor idx;
      if (kind_ == Kind::Lookup) {
        Tensor cell = (t - cell_lo_).mul_(cell_inv_).clamp_(0, float(cells_ - 1)).to(torch::kInt32);
        idx = gather(base_, cell);
        idx.add_(t.gt(gather(bounds_, idx)));
      } else {
        idx = torch::bucketize(t, bounds_.narrow(0, 0, bounds_.size(0) - 1), /*out_int32=*/true);
      }
      Tensor c = gather(grid_codes_, idx);
      if (auto nz = codec_.negative_zero_code()) {  // small negatives rounding to 0 keep the sign
        Tensor to_nz = bits_of(t).lt(0).logical_and_(gather(grid_values_, idx).eq(0));
        int zero_code = codec_.encode(0.0f);
        c.add_(to_nz.to(torch::kInt32).mul_(int(*nz) - zero_code));
      }
      if (values) *values = gather(value_of_code_, c);
      if (codes) *codes = std::move(c);
      return;
    }
  }
}

Tensor Grid::decode(const Tensor& codes) const { return gather(value_of_code_, codes.to(torch::kInt32)); }

// ---------------------------------------------------------------------------------------------

float clip_ratio(int k, int steps, float min_clip) {
  return steps > 0 ? 1.0f - float(k) * ((1.0f - min_clip) / float(steps)) : 1.0f;
}

FormatGrid::FormatGrid(const FormatSpec& spec, torch::Device device)
    : spec_(spec), e4m3_(minifloat_codec(4, 3), device) {
  if (spec.element.codec) grid_.emplace(spec.codec(), device);
  if (spec.scaling() == Scaling::MX) mx_emax_ = element_emax(spec.codec());
}

float FormatGrid::tensor_scale(const Tensor& w) const {
  if (spec_.scaling() != Scaling::NV) return 1.0f;
  float amax = w.abs().max().item<float>();
  if (!std::isfinite(amax)) fail("only finite weights can be quantized (absmax {})", amax);
  return nvfp4_tensor_scale(amax);
}

// Non-finite scales come from non-finite weights or fp16 overflow; say which, like the reference.
void fail_unstorable_scale(const FormatSpec& spec, const Tensor& magnitudes) {
  if (!torch::isfinite(magnitudes).all().item<bool>()) fail("only finite weights can be quantized");
  fail("{}: a scale is beyond fp16's range (weights up to {})", spec.str(), magnitudes.abs().max().item<float>());
}

void FormatGrid::check_finite(const Tensor& scale, const Tensor& amax) const {
  if (!torch::isfinite(scale).all().item<bool>()) fail_unstorable_scale(spec_, amax);
}

SlotParams FormatGrid::fit(const Tensor& x, float clip, float tensor_scale, int64_t dim) const {
  if (!(clip > 0 && clip <= 1)) fail("clip ratio must be in (0, 1], not {}", clip);
  if (spec_.scaling() == Scaling::Ggml) {
    if (dim != -1 && dim != x.dim() - 1) fail("internal: GGUF blocks must lie along the last dim");
    return fit_ggml(spec_, x, clip);
  }
  const float max = spec_.codec().max();
  SlotParams p;
  if (spec_.scaling() == Scaling::Plain && spec_.asymmetric) {
    // Same float operations as fit_group: lo, hi include 0; scale = fp16((hi - lo) / max).
    Tensor lo = x.amin(dim, true).clamp_max_(0), hi = x.amax(dim, true).clamp_min_(0);
    if (clip != 1.0f) lo.mul_(clip), hi.mul_(clip);
    p.scale = (hi - lo).div_(max).to(torch::kFloat16).to(torch::kFloat32);
    check_finite(p.scale, hi - lo);
    Tensor positive = p.scale.gt(0);
    p.zero = lo.neg().div_(p.scale.where(positive, torch::ones_like(p.scale)))
                 .round_().clamp_(0, max).mul_(positive);
    p.step = p.scale;
  } else {
    Tensor amax = x.abs().amax(dim, true);
    if (clip != 1.0f) amax.mul_(clip);
    switch (spec_.scaling()) {
      case Scaling::Plain:
        p.scale = (amax / max).to(torch::kFloat16).to(torch::kFloat32);
        check_finite(p.scale, amax);
        p.step = p.scale;
        break;
      case Scaling::MX: {
        check_finite(amax, amax);
        // 2^clamp(floor(log2 amax) - emax, -127, 127) from amax's exponent bits; a zero or
        // subnormal amax clamps to 2^-127, the one E8M0 value below float's normal range.
        Tensor s = bits_of(amax).bitwise_right_shift(23).sub_(127 + mx_emax_).clamp_(-127, 127);
        Tensor is_min = s.eq(-127).to(torch::kInt32);
        p.scale = s.add_(127).mul_(1 << 23).add_(is_min.mul_(1 << 22)).view(torch::kFloat32);
        p.step = p.scale;
        break;
      }
      case Scaling::NV:
        check_finite(amax, amax);
        e4m3_.encode(amax / (6.0f * tensor_scale), nullptr, &p.scale);
        p.step = p.scale * tensor_scale;
        break;
      case Scaling::Ggml: break;  // returned by fit_ggml above
    }
  }
  p.any_zero_step = p.step.eq(0).any().item<bool>();
  return p;
}

SlotParams FormatGrid::fit_search(const Tensor& x, bool clip_search, int steps, float min_clip,
                                  float tensor_scale, int64_t dim) const {
  if (!clip_search) return fit(x, 1.0f, tensor_scale, dim);
  if (steps < 1 || !(min_clip > 0 && min_clip <= 1))
    fail("clip search needs steps >= 1 and min_clip in (0, 1], not {} and {}", steps, min_clip);
  SlotParams best;
  Tensor best_err;
  for (int k = 0; k <= steps; ++k) {
    SlotParams p = fit(x, clip_ratio(k, steps, min_clip), tensor_scale, dim);
    Tensor deq;
    quantize(x, p, nullptr, &deq);
    Tensor err = deq.sub_(x).square_().sum(dim, true);
    if (k == 0) {
      best = p, best_err = err;
      continue;
    }
    Tensor better = err.lt(best_err);  // strict: ties keep the larger clip
    best_err = torch::where(better, err, best_err);
    // Sub-block params ([..., sub-blocks, 1]) take their slot's choice.
    auto keep_better = [&](Tensor& b, const Tensor& t) {
      if (t.defined()) b = torch::where(t.dim() > better.dim() ? better.unsqueeze(-1) : better, t, b);
    };
    keep_better(best.scale, p.scale);
    keep_better(best.step, p.step);
    keep_better(best.zero, p.zero);
    keep_better(best.offset, p.offset);
    keep_better(best.min, p.min);
    keep_better(best.sub_scale, p.sub_scale);
    keep_better(best.sub_min, p.sub_min);
  }
  best.any_zero_step = best.step.eq(0).any().item<bool>();
  return best;
}

void FormatGrid::quantize(const Tensor& x, const SlotParams& p, Tensor* codes, Tensor* dequantized) const {
  if (spec_.scaling() == Scaling::Ggml)
    return quantize_ggml(spec_, grid_ ? &*grid_ : nullptr, x, p, nullptr, codes, dequantized);
  Tensor t = x / p.step;
  if (p.any_zero_step) t.masked_fill_(p.step.eq(0), 0.0f);  // as the scalar code: encode(+0)
  if (spec_.asymmetric) {
    Tensor q = t.round_().add_(p.zero).clamp_(0, spec_.codec().max());
    if (codes) *codes = q.to(torch::kInt32);
    if (dequantized) *dequantized = q.sub_(p.zero).mul_(p.step);
    return;
  }
  Tensor values;
  grid_->encode(t, codes, dequantized ? &values : nullptr);
  if (dequantized) *dequantized = values.mul_(p.step);
}

void FormatGrid::quantize_values(const Tensor& x, const SlotParams& p, Tensor* grid_values,
                                 Tensor* dequantized) const {
  if (spec_.scaling() == Scaling::Ggml)
    return quantize_ggml(spec_, grid_ ? &*grid_ : nullptr, x, p, grid_values, nullptr, dequantized);
  Tensor t = x / p.step;
  if (p.any_zero_step) t.masked_fill_(p.step.eq(0), 0.0f);
  Tensor v;
  if (spec_.asymmetric) {
    v = t.round_().add_(p.zero).clamp_(0, spec_.codec().max());
    if (dequantized) *dequantized = (v - p.zero).mul_(p.step);
  } else {
    grid_->encode(t, nullptr, &v);
    if (dequantized) *dequantized = v * p.step;
  }
  if (grid_values) *grid_values = std::move(v);
}

Tensor FormatGrid::codes_of(const Tensor& grid_values) const {
  if (!grid_) return torch::zeros(grid_values.sizes(), grid_values.options().dtype(torch::kInt32));  // float types
  if (spec_.asymmetric) return grid_values.to(torch::kInt32);
  Tensor codes;
  grid_->encode(grid_values, &codes, nullptr);  // a grid value encodes to its own code
  return codes;
}

}  // namespace lowbit

namespace lowbit {

SlotParams FormatGrid::column(const SlotParams& p, int64_t i) const {
  // step and offset vary per sub-block in the K types; everything else is per slot.
  const int64_t sub = spec_.scaling() == Scaling::Ggml ? ggml_format_info(spec_).sub_block : 0;
  const bool has_subs = sub > 0 && sub < spec_.group_size;
  auto per_slot = [](const Tensor& t) { return t.defined() ? t.reshape({-1}) : t; };
  auto per_sub = [&](const Tensor& t) { return t.defined() && has_subs ? t.select(-2, i / sub).reshape({-1}) : per_slot(t); };
  SlotParams c;
  c.scale = per_slot(p.scale);
  c.zero = per_slot(p.zero);
  c.step = per_sub(p.step);
  c.offset = per_sub(p.offset);
  c.any_zero_step = p.any_zero_step;
  return c;
}

}  // namespace lowbit
