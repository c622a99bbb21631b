#pragma once
// Per-layer sensitivity for mixed precision (`lowbit plan`, mixed_precision.h): for every decoder
// linear and every candidate scheme (scheme.h), the damage of quantizing THAT LAYER ALONE, the rest
// of the model in full precision, and the exact storage bits. Three metrics:
//
//   hessian  tr(ΔW H ΔWᵀ), H = 2/n Σ x xᵀ the layer's input Hessian from the full-precision model
//            on every calibration window (quantize_sequentially with a callback that leaves the
//            weights alone, so every statistic is the full-precision model's).
//   fisher   Σ F_ij ΔW_ij², F the empirical Fisher diagonal of the LM loss on every calibration
//            window (gradients.h, keep_fisher: the mean over windows of the squared per-window
//            gradient; with one window it is grad²).
//   kld      the measured mean KL divergence KL(p_fp ‖ p_q) of the next-token distribution over
//            every position of the first kld_samples calibration windows, with only this layer
//            quantized. The inputs of every block on those windows and the full-precision
//            log-probabilities are cached once (KldProbe); a layer of block l then costs blocks
//            l..L-1 and the head.
//
// ΔW = Ŵ − W, Ŵ from the method the plan will be used with (RTN or GPTQ, options.layer), with the
// candidate's outliers kept in fp16 when it has an outlier rule (quantize_layer_with_outliers):
// gradient rules (gradient, gradient-weight, fisher) take their masks from gradient_outlier_masks,
// computed once per distinct rule on the first gwq_samples windows (top percent per layer); the
// hessian rule from hessian_saliency + select_outliers with the layer's own H.
// GGUF types are supported: a row length a type cannot hold falls back as `quantize` does
// (gguf_format_for_shape), and both bits and damage are those of the fallback; the candidate keeps
// the name it was given (so tied layers keep identical lists) and the layer records a note.
//
// Output-activation entropy (LUQ, Bhatnagar et al. 2025, "LUQ: Layerwise Ultra-Low Bit
// Quantization for Multimodal Large Language Models"): LUQ ranks layers by the Shannon entropy of
// their output activations on calibration data and gives ultra-low (< 4) bits to the low-entropy
// ones; it discretizes the activations with K-means, K = 100 (the value at which its layer ranking
// stops changing). Here: every output value y = x Wᵀ + b of the layer over the first
// entropy_tokens calibration tokens is one sample; 1-D K-means (K = entropy_clusters, default 100;
// exact Lloyd iterations from equal-count quantile initialisation, on the sorted values) gives the
// bins, and the entropy is -Σ p_k log2 p_k of the bin shares, in bits (0 .. log2 K).
//
// Memory: one block's Hessians (four [in, in] float32) at a time, never all layers'; blocks are
// materialized as the model's ModelMemory allows (each measured block is put back as it was); the
// kld metric keeps L block inputs and the log-probabilities of the kld windows ([kld_samples, T,
// hidden] each and [kld_samples, T, vocab]); the fisher metric keeps the Fisher diagonal of every
// decoder linear (one float32 copy of them), and each distinct gradient outlier rule its masks (4
// bytes per outlier). All of these are on disk when activation_budget_bytes is exceeded (the
// Fisher diagonal and masks: whenever it is set). Entropy keeps at most entropy_tokens input rows
// of the current linear.
//
// Determinism: the same model, tokens, candidates and options (and thread count) give the same
// numbers: no randomness anywhere, K-means is initialised from quantiles.
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "calib/activation_store.h"
#include "model/llama_model.h"
#include "quant/gradients.h"
#include "quant/mixed_precision.h"
#include "quant/quantizer.h"
#include "quant/scheme.h"

namespace lowbit {

enum class SensitivityMetric { Hessian, Fisher, Kld };
SensitivityMetric parse_sensitivity(std::string_view name);  // "hessian" | "fisher" | "kld"
std::string sensitivity_name(SensitivityMetric m);

struct LayerSensitivity {
  std::string name;  // HF weight name, "model.layers.3.mlp.up_proj.weight"
  int layer = 0;
  std::string short_name;  // "mlp.up_proj"
  int64_t rows = 0, cols = 0;
  double entropy = std::numeric_limits<double>::quiet_NaN();  // bits; NaN without entropy_tokens
  // One per candidate, in the order given: format = the candidate's LayerScheme::str(), bits =
  // exact storage bits (scales and outliers included), damage under the metric.
  std::vector<PlanCandidate> candidates;
  std::string note;  // GGUF fallbacks for this row length
};

struct SensitivityOptions {
  SensitivityMetric metric = SensitivityMetric::Kld;
  LayerQuantOptions layer = [] {  // the method the plan is used with; GPTQ by default
    LayerQuantOptions o;
    o.method = QuantMethod::GPTQ;
    return o;
  }();
  int kld_samples = 8;            // kld: the first windows of the calibration tokens
  int batch = 8;                  // windows per forward pass
  int64_t entropy_tokens = 8192;  // first calibration tokens whose outputs give the entropy; 0: none
  int entropy_clusters = 100;
  int gwq_samples = 8;            // gradient outlier rules: masks from the first windows, as
                                  // quantize --gwq-samples chooses them
  GradientOptions gradients;      // fisher and gradient outlier rules (batch, head_chunk)
  // Calibration activations, the KLD probe's inputs, the Fisher diagonal and the outlier masks:
  // in RAM within this many bytes each (< 0: always), else in scratch files in spill_dir
  // (default: the system's temporary directory). Either way the results are the same.
  int64_t activation_budget_bytes = -1;
  std::string spill_dir;
  bool progress = true;
  // Resume (plan --resume): layers an interrupted run measured, by name, are taken as they are
  // (the calibration passes still run; the candidates' quantization and KLD suffixes do not);
  // on_measured is called after each layer measured now, e.g. to record it.
  std::map<std::string, LayerSensitivity> measured_before;
  std::function<void(const LayerSensitivity&)> on_measured;
};


nlohmann::json to_json(const LayerSensitivity& l);  // every field; doubles round-trip exactly
LayerSensitivity layer_sensitivity_from_json(const nlohmann::json& j);

struct SensitivityReport {
  SensitivityMetric metric = SensitivityMetric::Kld;
  std::vector<LayerSensitivity> layers;  // every decoder linear, blocks in order, linear_names() order
  double seconds = 0;
};

// tokens: [N, T] calibration windows. The model is borrowed: weights are replaced while a
// candidate is measured and restored afterwards (also when an exception leaves). Throws
// lowbit::Error for no candidates, bad shapes, or a quantizer failure.
SensitivityReport estimate_sensitivity(LlamaModel& model, const torch::Tensor& tokens,
                                       const std::vector<LayerScheme>& candidates, const SensitivityOptions& options);

// --- Pieces, exposed for tests ----------------------------------------------------------------

// Shannon entropy in bits of the 1-D K-means histogram of values (any shape and float dtype; at
// most K non-empty bins; equal values share a bin). 0 for fewer than two distinct values.
double activation_entropy(const torch::Tensor& values, int clusters = 100);

// The cached-suffix KL divergence: construction runs the model once over tokens ([n, T]) and keeps
// every block's input and the log-probabilities. A measurement is the mean over all n·T positions
// of Σ_v p(v) (log p(v) − log q(v)), p the cached (construction-time) distribution and q that of
// the model as it is now from block l on. The block inputs and full-precision log-probabilities
// are in RAM within activation_budget_bytes (< 0: always), else in scratch files in spill_dir
// (default: the system's temporary directory).
//
// Cost: every measurement of block l runs blocks l..L-1, so the metric is O(L²) in compute. The
// suffix is shared: block_output(l) keeps block l's output under one change, and kld_after(l, ...)
// carries every such output through the suffix block by block, so each suffix block is
// materialized once per measured block rather than once per layer and candidate.
class KldProbe {
 public:
  KldProbe(const LlamaModel& model, const torch::Tensor& tokens, int batch = 8, int64_t activation_budget_bytes = -1,
           const std::string& spill_dir = "", bool progress = false, int extra_stores = 0);
  // kld_after(layer, {block_output(layer)}).
  double kld_from(int layer) const;
  // Block `layer` of the model as it is now on its cached inputs (in RAM or on disk as the
  // budget planned, counting extra_stores such outputs).
  std::unique_ptr<ActivationStore> block_output(int layer) const;
  // The KL divergence of each output of block `layer` carried through blocks layer+1..L-1 and the
  // head of the model as it is now. The outputs are consumed (overwritten). after_step is called
  // after each suffix block and after the head, for progress.
  std::vector<double> kld_after(int layer, const std::vector<ActivationStore*>& outputs,
                                const std::function<void()>& after_step = {}) const;
  // Block passes of one measurement of block `layer`: its own, the suffix's and the head.
  int passes_from(int layer) const;

 private:
  const LlamaModel& model_;
  std::vector<std::unique_ptr<ActivationStore>> inputs_;  // per block, its inputs by batch
  std::unique_ptr<ActivationStore> base_logp_;            // [windows, T, vocab]
  int64_t windows_ = 0, seqlen_ = 0, batch_ = 1, positions_ = 0;
  std::string store_dir_;  // where block outputs go: "" (RAM) or the spill directory
};

// --- Building the plan's input ----------------------------------------------------------------

// The report as the integer program's layers (weights = rows·cols; candidates as measured).
std::vector<PlanLayer> plan_layers(const SensitivityReport& report);

// LUQ's restriction. Decisions are the tied groups (ranked by the mean entropy of their members)
// and every layer outside them; they are ranked by entropy, lowest first (ties: the decision whose
// first layer comes first). The ceil(fraction · decisions) lowest keep every candidate; every other
// layer keeps only the candidates whose format has >= 4 element bits (FormatSpec::bits()), so
// tied layers keep identical lists. fraction in (0, 1]. Throws if a layer is left without
// candidates or an entropy is NaN. Returns, per layer, whether it may use < 4-bit candidates.
std::vector<bool> apply_luq(std::vector<PlanLayer>& layers, const std::vector<double>& entropy,
                            const std::vector<std::vector<size_t>>& tied_groups, double fraction);

// Every layer with the same candidate: the reference a mixed plan must beat.
struct UniformBaseline {
  std::string format;
  double total_bits = 0, total_damage = 0, bits_per_weight = 0;
  bool fits = false;  // total_bits <= budget.max_bits
};
// One per candidate format present in every layer, in the first layer's order.
std::vector<UniformBaseline> uniform_baselines(const std::vector<PlanLayer>& layers, const PlanBudget& budget);

// "2500000", "2.5M", "512K", "1G" (K/M/G/T: powers of 1024; an optional trailing B or iB) -> bytes.
// Throws lowbit::Error on anything else or a non-positive size.
double parse_byte_size(std::string_view text);

}  // namespace lowbit
