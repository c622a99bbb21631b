#pragma once
// Quantizing one linear layer's weight matrix onto any format of the registry (src/format), on
// LibTorch so it runs wherever the tensors live (CPU, CUDA). Results are bit-exact with the
// scalar reference in src/format: the same codes, the same stored scales.
//
//   RTN   round to nearest, optionally with an MSE-optimal clipping search per scale slot
//   GPTQ  Frantar et al. 2022: Hessian-based error compensation, column by column
//         (src/quant/gptq.cpp says exactly how it follows IST-DASLab/gptq's fasterquant)
//
// Weights are [rows = out features, cols = in features], any float dtype, quantized as float32
// values; they must be finite. H is the Hessian proxy of the layer's inputs,
// H = 2/n Σ x xᵀ over n calibration tokens ([cols, cols], float32 or float64). GPTQ runs in H's
// dtype (float64 for checking against a float64 reference, float32 in production).
// Implementation: grid.h (vectorized formats), rtn.cpp, gptq.cpp, quantizer.cpp.
#include <torch/types.h>

#include <limits>
#include <string>
#include <vector>

#include "format/format.h"
#include "model/weight_source.h"  // StoredTensorView

namespace lowbit {

enum class QuantMethod { RTN, GPTQ };

struct RtnOptions {
  bool clip_search = false;  // try shrink factors of the range, keep the lowest-MSE one per slot
  int clip_steps = 20;       // factors 1, 1 - (1 - min_clip)/steps, ..., min_clip
  float min_clip = 0.5f;
};

struct GptqOptions {
  double damp = 0.01;          // added to the diagonal: damp * mean(diag(H))
  int block_size = 128;        // columns per lazy-update block
  bool act_order = false;      // quantize columns in order of decreasing diag(H)
  // Scale groups are always runs of ORIGINAL columns (spec.h slot_index; no g_idx). Dynamic
  // (default): a group is fitted on the current, error-updated weights when the first of its
  // columns is reached. Static: every group fitted up front on W (with or without act_order).
  bool static_groups = false;
  // The column loop fused in C++ on the CPU (quant/gptq_columns.h); false: LibTorch ops per column,
  // the reference it is tested against (the same bits).
  bool fused_columns = true;
  // Optional bool [rows, cols] (any device): elements kept out of the low-bit grid, as sparse
  // FP16 outliers (quant/outliers.h). They count as 0 in every group fit (and NVFP4's tensor
  // scale), store the code of 0, and at their column take their current, error-compensated value
  // rounded to fp16, so only that rounding error spreads. LayerQuantResult::dequantized then holds
  // those values (dequantize(q) holds the low-bit part: 0 there where the grid holds 0). GPTQ
  // only: for RTN, zero the elements before quantizing (outliers.h does).
  torch::Tensor keep;
};

struct LayerQuantOptions {
  QuantMethod method = QuantMethod::RTN;
  RtnOptions rtn;    // GPTQ uses clip_search too, when it fits a group's scale
  GptqOptions gptq;
  // With H, also compute output_error: one rows x cols x cols matmul, as much as GPTQ's own
  // updates; turn it off where the number is not needed.
  bool compute_output_error = true;
  // false: LayerQuantResult::dequantized stays undefined, for callers that only store the result
  // (plain RTN writes each tensor and drops it); the direct Q4_0/Q8_0/Q6_K path then never
  // allocates it.
  bool keep_dequantized = true;
};

struct LayerQuantResult {
  QuantizedTensor q;          // the stored form (codes, scales, zeros)
  torch::Tensor dequantized;  // [rows, cols] float32 on W's device; equals dequantize(q) (but at GptqOptions::keep)
  double weight_mse = 0;      // mean((W - Ŵ)²)
  double output_error = std::numeric_limits<double>::quiet_NaN();  // tr(ΔW H ΔWᵀ), if H given
};

// H is required for GPTQ and optional for RTN (then output_error is filled in). Throws
// lowbit::Error for non-finite weights, scales beyond fp16 (as the reference does), a wrongly
// shaped H, or an H that damping does not make positive definite.
LayerQuantResult quantize_layer(const torch::Tensor& W, const FormatSpec& spec, const LayerQuantOptions& options,
                                const torch::Tensor& H = {});

// tr(ΔW H ΔWᵀ): the increase of the layer's output squared error on the calibration inputs.
double output_error(const torch::Tensor& dW, const torch::Tensor& H);

// MoFQ (Zhang et al. 2023): quantize with every candidate format and keep the one with the least
// error under the metric (the first on ties), by options.method (RTN or GPTQ). errors[i] belongs
// to candidates[i]; OutputError needs H. Only the chosen format's stored form is built.
enum class MofqMetric { WeightMse, OutputError };
struct MofqChoice {
  size_t best = 0;
  std::vector<double> errors;
  LayerQuantResult result;  // the best candidate's
};
MofqChoice choose_format(const torch::Tensor& W, const std::vector<FormatSpec>& candidates, MofqMetric metric,
                         const LayerQuantOptions& options, const torch::Tensor& H = {});

// Element-wise round-to-grid of already-scaled values (x / step) with the codec's exact rules
// (nearest, ties to even, saturation, -0 kept): what activation fake-quantization and the
// vectorized quantizers use. Returns decoded grid values, same shape and dtype as x. NaN gives
// NaN where the codec has a NaN code (fp8) and throws lowbit::Error otherwise.
torch::Tensor round_to_grid(const torch::Tensor& x, const Codec& codec);

// Whether each row of a weight is quantized on its own (scales per channel or per group, or ggml's
// per-row blocks), so that a tile of rows is quantized as the whole tensor would quantize it.
bool rows_quantized_independently(const FormatSpec& spec);

// RTN of a stored 2-D tensor whose rows are quantized independently (per-channel or per-group
// scales, GGUF types) a tile of rows (tile_bytes of fp32) at a time: the same codes and scales as
// quantize_layer on the whole tensor, in a tile's memory (the dequantized tensor too, if
// options.keep_dequantized).
LayerQuantResult quantize_stored_rows(const StoredTensorView& view, const FormatSpec& spec,
                                      const LayerQuantOptions& options, int64_t tile_bytes = int64_t(64) << 20);

}  // namespace lowbit
