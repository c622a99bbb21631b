#pragma once
// Vectorized, bit-exact counterparts of the scalar reference in src/format: Codec::encode/decode
// (grid.h: Grid) and the scale fitting and quantize/dequantize of scaling.cpp (FormatGrid).
// Everything is LibTorch tensor ops (CPU or CUDA); no per-element C++ loops.
//
// Encoding strategies, all reproducing Codec::encode exactly (nearest, ties to the even code,
// saturation, negative zero kept):
//  - signed / unsigned integers: round-half-even and clamp;
//  - ExMy minifloats: exponent from the float's bits, round-half-even on the mantissa, and the
//    code as  n + (e - emin) * 2^m  (one formula covers subnormals and binade carries);
//  - any other grid (NF4, E8M0): "count the decision boundaries below t". A boundary is the
//    midpoint of two neighbours, moved down to the float just below it when it is not a float
//    (then no float ties with it) or when the tie goes to the upper code (so a strict compare
//    sends the tie up). Small-range grids use a uniform look-up of the count plus one compare,
//    others torch::bucketize.
#include <torch/types.h>

#include <optional>

#include "format/format.h"

namespace lowbit {

class Grid {
 public:
  Grid(const Codec& codec, torch::Device device);

  // codes (int32) and decoded grid values (float32) of the float32 values t (already divided by
  // the step). t must not hold NaN (callers check, see round_to_grid). Either output may be null.
  void encode(const torch::Tensor& t, torch::Tensor* codes, torch::Tensor* values) const;
  torch::Tensor decode(const torch::Tensor& codes) const;  // int codes -> float32 values

  const Codec& codec() const { return codec_; }

 private:
  enum class Kind { SignedInt, UnsignedInt, Minifloat, Lookup, Bucketize };
  const Codec& codec_;
  Kind kind_;
  torch::Tensor value_of_code_;  // float32 [2^bits]
  // Integers: the grid is [lo, hi]. Minifloats: m mantissa bits, emin, largest magnitude code.
  float lo_ = 0, hi_ = 0;
  int man_bits_ = 0, emin_ = 0, emax_ = 0, max_mag_code_ = 0, sign_code_ = 0;
  // Lookup / Bucketize: boundaries (see above), padded with +inf; code and value of each slot.
  torch::Tensor bounds_, grid_codes_, grid_values_;
  // Lookup: cell = (t - cell_lo_) * cell_inv_, base_[cell] = boundaries below the cell's margin.
  float cell_lo_ = 0, cell_inv_ = 0;
  int64_t cells_ = 0;
  torch::Tensor base_;
};

// Scale parameters of a batch of slots; tensors shaped like the values with the slot's elements
// reduced to size 1, so they broadcast against them. GGUF types with sub-block scales (Q4_K,
// Q6_K) have step, offset, sub_scale and sub_min shaped [..., sub-blocks, 1] instead: they
// broadcast against the values viewed as [..., sub-blocks, sub-block].
struct SlotParams {
  torch::Tensor scale;  // the stored scale (fp16 / E8M0 / E4M3 value; GGUF: d), float32
  torch::Tensor zero;   // zero point as float32 (asymmetric integers only, else undefined)
  torch::Tensor step;   // scale, times the tensor scale for NVFP4; GGUF K types: d * sub_scale
  bool any_zero_step = false;  // some slot's step is 0 (all-zero slot, or fp16/E4M3 underflow)
  // GGUF types only (format/ggml_formats.h); undefined where the type has none.
  torch::Tensor offset;     // added after step * grid value: Q4_1's m, Q4_K's -(dmin * mn)
  torch::Tensor min;        // the stored fp16 min: Q4_1's m, Q4_K's dmin
  torch::Tensor sub_scale;  // K types: sub-block scales (integers as float): Q4_K 0..63, Q6_K int8
  torch::Tensor sub_min;    // Q4_K: sub-block mins 0..63
};

// Why a scale could not be stored, in the same words on every quantizer path: non-finite
// weights, or a scale beyond fp16 ("weights up to" the largest of |magnitudes|).
[[noreturn]] void fail_unstorable_scale(const FormatSpec& spec, const torch::Tensor& magnitudes);

class FormatGrid {
 public:
  FormatGrid(const FormatSpec& spec, torch::Device device);

  const FormatSpec& spec() const { return spec_; }

  // NVFP4's tensor scale from all of w (float32); 1 for other formats.
  float tensor_scale(const torch::Tensor& w) const;

  // Params of slots whose elements lie along dim (default last) of x (float32), as fit_group with
  // clip ratio clip. Throws like the reference for non-finite weights or fp16 overflow.
  // GGUF types: dim must be the last, holding one (super-)block; quant/ggml_grid.cpp fits them.
  SlotParams fit(const torch::Tensor& x, float clip, float tensor_scale, int64_t dim = -1) const;

  // fit() with every clip ratio 1, 1 - (1-min)/steps, ..., min (computed in float as
  // 1 - k * ((1 - min) / steps)); per slot the one with the lowest squared error, the first on
  // ties. clip_search=false: fit(x, 1).
  SlotParams fit_search(const torch::Tensor& x, bool clip_search, int steps, float min_clip,
                        float tensor_scale, int64_t dim = -1) const;

  // Codes (int32) and dequantized values (float32) of x under broadcastable params, exactly as
  // quantize_value / dequantize_value. Either output may be null.
  void quantize(const torch::Tensor& x, const SlotParams& p, torch::Tensor* codes,
                torch::Tensor* dequantized) const;

  // quantize() in two halves, for column-at-a-time callers (GPTQ): per column the grid value
  // (the code as a float for asymmetric integers; -0 kept) and the dequantized value, then the
  // codes of many columns' grid values at once.
  void quantize_values(const torch::Tensor& x, const SlotParams& p, torch::Tensor* grid_values,
                       torch::Tensor* dequantized) const;
  torch::Tensor codes_of(const torch::Tensor& grid_values) const;

  // For column-at-a-time callers: the params of element i of slots fitted on [rows, group]
  // values, as [rows] tensors (or [1] for one slot per tensor) to pass to quantize_values.
  SlotParams column(const SlotParams& p, int64_t i) const;

 private:
  void check_finite(const torch::Tensor& scale, const torch::Tensor& amax) const;

  FormatSpec spec_;
  std::optional<Grid> grid_;  // none for GGUF's float types
  Grid e4m3_;  // NVFP4 block scales
  int mx_emax_ = 0;
};

// Clip ratio k of a search (as fit_search computes it).
float clip_ratio(int k, int steps, float min_clip);

// GGUF types (quant/ggml_grid.cpp): the fit of one (super-)block along the last dim of x, with
// every range shrunk by clip; and round-to-grid of x under such params (codes and/or
// dequantized values, either may be null). grid is null for the float types.
SlotParams fit_ggml(const FormatSpec& spec, const torch::Tensor& x, float clip);
// The LibTorch dtype of GGUF's float types (gguf:f16, bf16, f32).
torch::ScalarType ggml_float_dtype(const FormatSpec& spec);
void quantize_ggml(const FormatSpec& spec, const Grid* grid, const torch::Tensor& x, const SlotParams& p,
                   torch::Tensor* grid_values, torch::Tensor* codes, torch::Tensor* dequantized);

}  // namespace lowbit
