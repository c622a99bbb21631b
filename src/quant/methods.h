#pragma once
// Internal: the two layer quantizers behind quantize_layer (quantizer.h), returning tensors that
// quantizer.cpp turns into a QuantizedTensor.
#include <torch/types.h>

#include <limits>
#include <vector>

#include "quant/grid.h"
#include "quant/quantizer.h"

namespace lowbit {

struct QuantOutcome {
  torch::Tensor codes;        // [rows, cols] integer codes, unpacked
  torch::Tensor scale, zero;  // [num_slots] float32, slot order of spec.h; zero only if asym
  // GGUF types: [num_slots] mins, [num_slots * sub-blocks] sub-block scales and mins, where
  // the type has them (grid.h SlotParams).
  torch::Tensor min, sub_scale, sub_min;
  float tensor_scale = 1.0f;
  torch::Tensor dequantized;  // [rows, cols] float32
  double squared_error = 0;   // sum((W - dequantized)^2)
  // GPTQ: tr(ΔW H ΔWᵀ) from its own column errors (gptq.cpp), without another rows x cols x cols
  // product; NaN where the quantizer does not give it.
  double output_error = std::numeric_limits<double>::quiet_NaN();
};

// GGUF types: the params beyond scale that a type stores (quant/ggml_grid.cpp), for quantizers
// that collect them slot by slot into a QuantOutcome. Empty for every other format.
struct GgmlExtra {
  torch::Tensor SlotParams::*param;
  torch::Tensor QuantOutcome::*outcome;
  int64_t per_slot;  // values per slot: 1 (min) or the number of sub-blocks
};
std::vector<GgmlExtra> ggml_extras(const FormatSpec& spec);

// Error unless a GGUF type's block divides the row length (other formats: no check).
void check_ggml_row_length(const FormatSpec& spec, int64_t cols);

// Round to nearest over the whole matrix, in row chunks. With want_tensors=false only the error
// is computed (codes, scales and dequantized stay undefined); the error is the same either way.
QuantOutcome quantize_rtn(const torch::Tensor& W, const FormatSpec& spec, const RtnOptions& options,
                          bool want_tensors = true);

// Plain RTN (no clip search) of a CPU weight onto Q4_0, Q8_0, Q6_K or a symmetric INT2/4/8
// format with fp16 scales per group or channel (int4:g128 ...), in vectorized C++ loops straight
// into the stored bytes (rtn_direct.cpp): the codes, scales and dequantized values of
// quantize_rtn, bit for bit (tests/nn/test_gguf_quant.cpp), several times faster, for these are
// what plain `quantize` spends its time on. The weight MSE is summed in another order, so its
// last digits may differ from quantize_rtn's.
bool rtn_direct_applies(const FormatSpec& spec, const RtnOptions& options);
bool rtn_direct_applies(const torch::Tensor& W, const FormatSpec& spec, const RtnOptions& options);
LayerQuantResult quantize_rtn_direct(const torch::Tensor& W, const FormatSpec& spec, bool keep_dequantized = true);
// The same straight from a checkpoint's F32/F16/BF16 bytes ([rows, cols]), each row converted as
// its thread reaches it: the weight is never materialized whole (plain `quantize` of a 7B model
// otherwise spends a third of its time converting and first-touching fp32 copies).
LayerQuantResult quantize_rtn_direct(const StoredTensorView& view, const FormatSpec& spec, bool keep_dequantized);

// What GPTQ derives from H alone (dead columns, act_order permutation, the inverse Hessian's
// Cholesky factor), so that MoFQ factors H once for all its candidates.
struct GptqHessian {
  torch::Tensor U;              // upper factor of the damped inverse, in permuted order
  torch::Tensor dead;           // bool [cols], undefined if no column is dead
  std::vector<int64_t> perm;    // perm[j]: original column processed j-th
  torch::Tensor perm_t;         // the same as a tensor on the device (act_order only)
  torch::ScalarType dtype = torch::kFloat32;  // H's: float64 or float32
  double damp = 0;
  double damping = 0;  // what was added to H's diagonal: damp * mean(diag(H))
  bool act_order = false;
};
GptqHessian prepare_gptq(const torch::Tensor& H, int64_t cols, const GptqOptions& options, torch::Device device);

// GPTQ; group fits use options.rtn's clip search too. prepared: from prepare_gptq with the same
// H and options (computed here if null). options.gptq.keep: elements kept out of the grid
// (quantizer.h); dequantized then holds their fp16 values, codes the code of 0.
QuantOutcome quantize_gptq(const torch::Tensor& W, const torch::Tensor& H, const FormatSpec& spec,
                           const LayerQuantOptions& options, const GptqHessian* prepared = nullptr);

}  // namespace lowbit
