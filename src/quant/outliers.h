#pragma once
// Salient weights kept in FP16 beside the low-bit tensor, as a sparse CSR part (GWQ, SpQR).
//
//   saliency     which weights matter: by gradient (GWQ: |g|, |g·w|, g² / Fisher; gradients.h) or
//                by the Hessian rule of SpQR, (w - q(w))² / [H⁻¹]_jj
//   selection    the top p% per layer, or one threshold over all layers' saliencies together
//   storage      SparseOutliers: CSR row pointers, column indices, fp16 values; bits() counts all
//   quantizing   quantize_layer_with_outliers: the outliers are taken out before the grid is
//                fitted (RTN and GPTQ) and before GPTQ spreads errors, then put back
#include <torch/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "calib/activation_store.h"
#include "io/quantized_checkpoint.h"
#include "quant/gradients.h"
#include "quant/quantizer.h"

namespace lowbit {

// --- Saliency ---------------------------------------------------------------------------------

enum class Saliency {
  Gradient,        // |g|     (GWQ's default)
  GradientWeight,  // |g · w|
  Fisher,          // g²      (the empirical Fisher when gradients were kept per window)
  Hessian,         // (w - q(w))² / [H⁻¹]_jj  (SpQR)
};
// "gradient" | "gradient-weight" | "fisher" | "hessian"; parse throws lowbit::Error listing them.
Saliency parse_saliency(std::string_view name);
std::string saliency_name(Saliency s);

// |g|, |g·w| or g² of W ([rows, cols]) from its gradients: g is gradient.grad; Fisher uses
// gradient.fisher when kept and grad² otherwise. float32 unless the inputs are float64.
torch::Tensor gradient_saliency(Saliency rule, const torch::Tensor& W, const LayerGradient& gradient);

// SpQR's rule: the error quantizing w alone would cause, every other weight compensating,
// (w - q(w))² / [H⁻¹]_jj. q is RTN onto spec with options.rtn (clip search included); H is the
// layer's input Hessian [cols, cols], damped as GPTQ damps it (+ options.gptq.damp · mean(diag H)
// on the diagonal; dead columns, H_jj = 0, get saliency 0: their inputs are always zero).
// Computed in H's dtype (float64 H for float64 results).
torch::Tensor hessian_saliency(const torch::Tensor& W, const torch::Tensor& H, const FormatSpec& spec,
                               const LayerQuantOptions& options);

// --- Selection --------------------------------------------------------------------------------

// Weights that p% of n selects: floor(n · p / 100), never more than p% (percent in [0, 100]).
int64_t outlier_count(int64_t n, double percent);

// bool mask shaped like saliency: its outlier_count(numel, percent) largest entries. Ties at the
// threshold go to the lower row-major index, so the choice is deterministic. Saliency must not
// hold NaN.
torch::Tensor select_outliers(const torch::Tensor& saliency, double percent);

// One threshold over every layer's saliency together: outlier_count(Σ numel, percent) weights in
// all, the largest (compared as float32); ties go to the earlier layer in the list, then the lower
// row-major index. Memory: one float32 copy of all saliencies. Masks in the list's order.
std::vector<torch::Tensor> select_outliers_global(const std::vector<torch::Tensor>& saliencies, double percent);

// GWQ's selection for a whole model: the LM-loss gradients on tokens ([N, T] calibration windows,
// gradients.h) of every decoder linear, turned into saliency (Gradient, GradientWeight or Fisher)
// and masks of the top percent per layer, or over all layers together when global. Each mask is
// parked under its HF weight name as its sorted flat indices (mask_to_indices: 4 bytes per
// outlier, 0.04 bytes per weight at 1%), in RAM, or in a scratch file when
// options.activation_budget_bytes bounds memory; stored_outlier_mask() gives it back. Memory: one
// block's gradients at a time; global selection holds every layer's saliency (one float32 copy of
// the decoder linears).
std::unique_ptr<ScratchTensors> gradient_outlier_masks(LlamaModel& model, const torch::Tensor& tokens, Saliency rule,
                                                       double percent, bool global, GradientOptions options = {});

// A bool mask as the sorted row-major indices of its true entries (int32 when its size allows,
// else int64), and back to a bool [rows, cols] mask on the CPU.
torch::Tensor mask_to_indices(const torch::Tensor& mask);
torch::Tensor mask_from_indices(const torch::Tensor& indices, int64_t rows, int64_t cols);
// The mask gradient_outlier_masks parked for weight `name`, shaped like W ([rows, cols]).
torch::Tensor stored_outlier_mask(const ScratchTensors& masks, const std::string& name, const torch::Tensor& W);

// --- Storage ----------------------------------------------------------------------------------

// The outliers of one [rows, cols] weight in CSR form, on the CPU:
//   row_ptr  int32 [rows + 1]: row r's outliers are entries row_ptr[r] .. row_ptr[r+1]-1
//            (32 bits: a layer with 2^31 outliers is refused)
//   col_idx  their columns in increasing order within a row: int16 when cols <= 65535 (holding
//            the column's unsigned 16 bits, since LibTorch has no uint16; columns() decodes),
//            else int32
//   values   float16 [nnz]
struct SparseOutliers {
  int64_t rows = 0, cols = 0;
  torch::Tensor row_ptr, col_idx, values;

  int64_t nnz() const { return values.defined() ? values.numel() : 0; }

  // The entries of W (any float dtype and device) where mask is true, rounded to fp16 (nearest,
  // ties to even). Throws if a value is not finite in fp16 or the shapes differ.
  static SparseOutliers from_mask(const torch::Tensor& W, const torch::Tensor& mask);

  // The stored form (io/quantized_checkpoint.h) and back; from_stored trusts read_outliers' checks.
  StoredOutliers to_stored() const;
  static SparseOutliers from_stored(const StoredOutliers& stored);

  torch::Tensor columns() const;                                     // int64 [nnz]
  torch::Tensor mask(torch::Device device = torch::kCPU) const;      // bool [rows, cols]
  torch::Tensor dense(torch::Device device = torch::kCPU) const;     // float32 [rows, cols], 0 elsewhere

  // W_hat (the dequantized low-bit part, [rows, cols]) with the outliers put back: float32 on
  // W_hat's device, each outlier position holding its fp16 value. The quantizers below leave the
  // low-bit part exactly 0 at those positions for every format whose grid holds 0 (all but the
  // GGUF types with an offset, gguf:q4_1 and gguf:q4_k), so this is W_hat + dense(); for those
  // two types the position's low-bit value is replaced, and an engine that adds a sparse part
  // would need the residual instead.
  torch::Tensor apply(const torch::Tensor& W_hat) const;

  // Storage cost: 32 (rows + 1) pointer bits + index_bits(cols) nnz + 16 nnz value bits; 0 when
  // there is no outlier (then no sparse part is stored). The pointers cost 32 / cols bits per
  // weight: 0.008 for 4096 columns, but 0.5 for stories260K's 64.
  int64_t bits() const { return bits(rows, cols, nnz()); }
  static int64_t bits(int64_t rows, int64_t cols, int64_t nnz);  // the same for any nnz
  static int index_bits(int64_t cols) { return cols <= 65535 ? 16 : 32; }
};

// --- Quantization -----------------------------------------------------------------------------

struct OutlierQuantResult {
  // q: the low-bit part (spec's format); at the outlier positions it holds the code of 0.
  // dequantized: what the layer computes with, the low-bit part with the outliers put back;
  // weight_mse and output_error are those of dequantized against W.
  LayerQuantResult layer;
  SparseOutliers outliers;
  double bits_per_weight = 0;  // (bits_per_weight(spec) · rows · cols + outliers.bits()) / (rows · cols)
};

// Quantizes W ([rows, cols]) with the mask's weights kept in fp16 beside the low-bit tensor:
//  - RTN: the outliers are set to 0 before the grids are fitted (0 stretches no group's range
//    and quantizes to exactly 0), then the fp16 values are put back; they equal fp16(W) there.
//  - GPTQ: options.gptq.keep = mask (quantizer.h): the outliers are 0 for every group fit, and
//    at its column each outlier takes its current, error-compensated value rounded to fp16, so
//    (apart from that rounding) it has no error to spread. With a diagonal H nothing is
//    compensated and the outliers equal fp16(W).
// H: required for GPTQ, optional for RTN (output_error is then NaN). An empty mask gives exactly
// quantize_layer's result. GGUF types with an offset (q4_1, q4_k) see the zeros in their fits.
OutlierQuantResult quantize_layer_with_outliers(const torch::Tensor& W, const FormatSpec& spec,
                                                const LayerQuantOptions& options, const torch::Tensor& H,
                                                const torch::Tensor& mask);

}  // namespace lowbit
