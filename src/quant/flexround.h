#pragma once
// FlexRound (Lee, Kim, Kwon, Lee, ICML 2023: "FlexRound: Learnable Rounding based on Element-wise
// Division for Post-Training Quantization"): learned rounding by element-wise division, trained
// by block-wise output reconstruction.
//
// The quantized weight of a linear layer W [rows = out, cols = in] is
//
//     Ŵ = s₁ · q( W / (s₁ · S₂ · s₃ [· s₄]) )
//
//   s₁  the grid scale of each scale slot of the format (per tensor / channel / group), initialised
//       from RTN's fit (FormatGrid::fit, or its MSE clip search with options.init);
//   S₂  one learned divisor per weight  [rows, cols];
//   s₃  one learned divisor per output row  [rows, 1];
//   s₄  one learned divisor per input column [1, cols] (optional, off by default, see below);
//   q   the format's rounding onto its element grid, clamped to the grid: round-half-even and
//       clamp for integers (asymmetric: clamp(round(t) + z, 0, 2^b-1) - z with RTN's zero point z,
//       kept fixed), the codec's exact nearest-value rounding for any other grid (FP, NF4, ...).
//
// Every factor is learned in log space: s₁ = s₁_RTN · exp(δ₁), S₂ = exp(δ₂), s₃ = exp(δ₃),
// s₄ = exp(δ₄), all δ initialised to 0 (so learning log s₁ starts at log s₁_RTN, and a layer with
// no training is exactly RTN, codes and scales). q has a straight-through gradient: forward the
// rounded value, backward the gradient of clamp(t, grid min, grid max) (so saturated elements pass
// none, as in the paper's code, which clamps after its round_ste).
//
// Divisors: the paper's division factor is S₂ ⊙ s₃ ⊙ s₄ (s₃ per output, s₄ per input channel),
// and the code of its supplementary material (as reproduced in public ports: delta1..delta4)
// creates s₄ only for 4-D convolution weights, so a linear layer divides by s₁ ⊙ S₂ ⊙ s₃.
// lowbit does the same by default; FlexRoundOptions::input_divisor adds s₄ for linears too.
//
// Other choices: the asymmetric zero point stays RTN's (an integer offset; only s₁, S₂, s₃ are
// learned). The loss is divided by its RTN value (block: over all windows; layer: exactly), which
// changes nothing for Adam but the scale of its epsilon.
//
// Outliers (GWQ / SpQR, outliers.h): a layer may keep a mask of its weights in fp16 beside the
// grid. As quantize_layer_with_outliers does for RTN, they are 0 for the grid fit and in W / (S₂ s₃)
// (so their codes are the code of 0), and Ŵ holds their fp16 values there: they take no part in
// the learned rounding but are in every reconstruction loss.
//
// Stored form: after training, the result is an ordinary grid of the format, built with
// QuantizedTensor::from_codes, so it is written and exported like any RTN or GPTQ result:
//   - Plain formats (int/fp/nf4, sym or asym, tensor/channel/group scales): s₁ is rounded to
//     fp16 (the stored scale) and the codes are computed against that rounded s₁; during
//     training s₁'s fp16 rounding is in the forward pass already (straight-through), so the
//     trained Ŵ is what is stored. Dequantization is exact given the stored data.
//   - MX (E8M0) and NVFP4 (E4M3 × fp32 tensor scale): s₁ stays RTN's stored scale (a learned s₁
//     would have to be re-encoded onto a power-of-two / E4M3 scale); S₂, s₃ (s₄) are learned.
//   - GGUF types are refused (ggml's block encodings have their own scale fitting); their exact
//     equivalents int8:g32 / int4:g32 (Q8_0 / Q4_0) export to GGUF as any lowbit checkpoint does.
//
// Training (flexround_model) follows BRECQ's block reconstruction, which FlexRound uses: blocks
// are quantized in order; for block l
//     input   x_q = the output of blocks 0..l-1 already quantized by FlexRound (the quantized
//                   model's own input to block l), on the calibration windows;
//     target  y   = the ORIGINAL full-precision block l applied to the original model's input to
//                   block l (the full-precision model's activations, carried alongside);
//     loss        = mean((block_l^Ŵ(x_q) - y)²) over a minibatch of windows,
// all seven linears of the block trained jointly with Adam, cosine-decayed learning rate
// lr · ½(1 + cos(π t / iters)), minibatches drawn by a seeded generator (an explicit
// Fisher-Yates shuffle per epoch), so every run gives the same result.
//
// Memory: three activation tensors of [samples, seqlen, hidden] (quantized input, full-precision
// input, target) plus the autograd graph of one block on one minibatch.
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "model/llama_model.h"
#include "quant/outliers.h"
#include "quant/quantizer.h"

namespace lowbit {

struct FlexRoundOptions {
  // Adam steps per block (or per layer for flexround_layer). Default 500 per block: stories260K
  // (5 blocks, 32 calibration windows of 256 tokens, batch 2) takes about 1-2 minutes on one
  // thread of a busy 2-core machine. lr and steps from a small sweep on stories260K (int3:g32,
  // int4:g32; held-out KLD on the first chunks of wiki.test.raw): 500 steps at 3e-3 beat 100-200
  // steps at 1e-3..1e-2; 500 steps at 1e-2 reached lower calibration losses but, at int4, a
  // higher held-out KLD (0.104 against 0.092: fitting the calibration windows), and on
  // synthetic layers 1e-2 was often worse than 3e-3.
  int iters = 500;
  double lr = 3e-3;        // Adam learning rate (peak of the cosine schedule), for every δ
  int batch = 2;           // calibration windows per step (flexround_model); also the chunk of
                           // windows run at once to compute targets, inputs and losses
  bool learn_scale = true; // learn s₁ (Plain formats only; MX / NVFP4 keep RTN's scale)
  bool input_divisor = false;  // also learn s₄ per input column (the paper's conv variant)
  RtnOptions init;         // how s₁ is initialised (RTN's fit; clip_search for the MSE fit)
  uint64_t seed = 0;       // minibatch order
  bool progress = true;
  // flexround_model's calibration activations (three [samples, seqlen, hidden] fp32 stores) stay
  // in RAM within this many bytes (< 0: always), else in scratch files in spill_dir (default: the
  // system's temporary directory). Either way the results are the same.
  int64_t activation_budget_bytes = -1;
  std::string spill_dir;
};

// One linear layer's FlexRound parameters and its differentiable quantized weight.
class FlexRoundWeight {
 public:
  // W [rows, cols], any float dtype (used as float32); keep: an optional bool mask [rows, cols] of
  // outliers kept in fp16. Throws lowbit::Error for GGUF types and for what RTN throws for
  // (non-finite weights, scales beyond fp16).
  FlexRoundWeight(const torch::Tensor& W, const FormatSpec& spec, const FlexRoundOptions& options,
                  const torch::Tensor& keep = {});

  // The learned δ tensors (leaves with requires_grad), for an optimizer.
  std::vector<torch::Tensor> parameters() const;

  // Ŵ [rows, cols] float32 as a differentiable function of the δs (straight-through rounding).
  // Its value equals finish().dequantized for the current δs.
  torch::Tensor forward() const;

  // The stored form of the current δs: codes and stored scales (from_codes), dequantized
  // weights equal to dequantize(q) with the outliers put back, weight_mse against W;
  // output_error left NaN.
  LayerQuantResult finish() const;

  // The kept weights (none without a mask): fp16(W) at the mask.
  const SparseOutliers& outliers() const { return outliers_; }

  const FormatSpec& spec() const { return spec_; }

 private:
  torch::Tensor pad(const torch::Tensor& x) const;    // [rows, cols] -> [rows, slots, g], zero padded
  torch::Tensor unpad(const torch::Tensor& x) const;  // the inverse view
  torch::Tensor divided() const;                      // W / (S₂ s₃ s₄), padded
  torch::Tensor stored_scale() const;                 // s₁ as stored (fp16-rounded for Plain)
  torch::Tensor with_outliers(const torch::Tensor& w_hat) const;  // the kept values put in

  FormatSpec spec_;
  torch::Tensor w_;        // [rows, cols] float32
  torch::Tensor w_grid_;   // w_ with the outliers set to 0 (w_ itself without a mask)
  torch::Tensor keep_;     // bool [rows, cols] outlier mask, or undefined
  torch::Tensor kept_;     // float32 [rows, cols]: fp16(W) at the outliers, 0 elsewhere
  SparseOutliers outliers_;
  int64_t rows_ = 0, cols_ = 0, slots_ = 1, group_ = 0;
  bool per_tensor_ = false, learn_scale_ = false;
  float tensor_scale_ = 1.0f;
  torch::Tensor scale0_;   // RTN's stored scale, broadcastable to [rows, slots, g]
  torch::Tensor step0_;    // RTN's step (scale × tensor scale for NVFP4)
  torch::Tensor zero_;     // asymmetric zero points (float), else undefined
  torch::Tensor d1_, d2_, d3_, d4_;  // log-space parameters (d1_, d4_ may be undefined)
  float grid_lo_ = 0, grid_hi_ = 0;
};

// Layer-wise FlexRound: minimises the layer's output error tr(ΔW H ΔWᵀ) (= ‖XΔWᵀ‖² · 2/n for
// H = 2/n Σ x xᵀ, quantizer.h's convention), full batch, options.iters Adam steps with cosine
// decay. keep: optional outliers (FlexRoundWeight). Returns the stored form with output_error
// filled in (the outliers included in dequantized and output_error).
LayerQuantResult flexround_layer(const torch::Tensor& W, const torch::Tensor& H, const FormatSpec& spec,
                                 const FlexRoundOptions& options, const torch::Tensor& keep = {});

struct FlexRoundResult {
  // Per HF weight name ("model.layers.3.mlp.up_proj.weight"): the stored form, the weights now
  // in the model (dequantized, exactly dequantize(q)), weight_mse. output_error is NaN.
  std::map<std::string, LayerQuantResult> layers;
  // Per block, the reconstruction loss mean((block(x_q) - y)²) over every calibration window,
  // with the RTN weights (before training, = FlexRound with 0 iterations) and with the final
  // stored FlexRound weights, on the same quantized-model inputs x_q.
  std::vector<double> loss_before, loss_after;
  std::map<std::string, SparseOutliers> outliers;  // per HF weight name, for layers that keep some
  double seconds = 0;
};

// FlexRound on every linear layer of every decoder block (not the embedding or head), with
// calibration windows calib_tokens [samples, seqlen] (calib/calib_data.h). Replaces each linear
// weight of the model with its dequantized FlexRound result.
FlexRoundResult flexround_model(LlamaModel& model, const torch::Tensor& calib_tokens, const FormatSpec& spec,
                                const FlexRoundOptions& options);

// Which weights of each layer to keep in fp16: mask_of(HF weight name, W, H) returns a bool mask
// shaped like W, or an undefined tensor for none. H is the layer's input Hessian (sequential.h's
// 2/n Σ x xᵀ) on the quantized model's inputs to the block, with the block's original weights;
// it is computed only when needs_hessian, and is undefined otherwise.
struct FlexRoundOutliers {
  std::function<torch::Tensor(const std::string&, const torch::Tensor& W, const torch::Tensor& H)> mask_of;
  bool needs_hessian = false;
};

// Streaming: called with each block's results (its layers and outliers) as soon as the block is
// trained; the block is then released from the model (LlamaModel::release_layer), and the
// returned FlexRoundResult holds the losses only.
using FlexRoundBlockDone = std::function<void(int layer, FlexRoundResult& block)>;

// The same with a format per layer (a mixed-precision plan): format_of(HF weight name), and
// optional outliers.
FlexRoundResult flexround_model(LlamaModel& model, const torch::Tensor& calib_tokens,
                                const std::function<FormatSpec(const std::string&)>& format_of,
                                const FlexRoundOptions& options, const FlexRoundOutliers& outliers = {},
                                const FlexRoundBlockDone& block_done = {});

}  // namespace lowbit
