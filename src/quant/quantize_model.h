#pragma once
// Quantizing a whole model: every linear layer of every decoder block, with one format, a
// per-layer choice among candidates (MoFQ) or a per-layer plan (mixed_precision.h), by RTN, GPTQ
// or FlexRound, optionally with fp16 outliers (GWQ / SpQR) or static activation quantization
// (W8A8), written as a lowbit quantized checkpoint.
#include <nlohmann/json.hpp>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "calib/calib_data.h"
#include "io/quantized_checkpoint.h"
#include "model/gguf_export.h"
#include "model/llama_model.h"
#include "quant/flexround.h"
#include "quant/quantizer.h"
#include "quant/scheme.h"

namespace lowbit {

struct QuantizeJob {
  std::string model, tokenizer;       // model path; tokenizer.json (default: beside the model)
  std::string out;                    // output directory; empty for a dry run
  bool replace = false;               // out may be an older lowbit checkpoint, replaced (--force)
  std::vector<FormatSpec> candidates; // one: that format; several: MoFQ chooses per layer
  MofqMetric metric = MofqMetric::WeightMse;
  LayerQuantOptions layer;
  bool quantize_activations = false;  // W8A8: activations in the layer's chosen element format
  CalibOptions calib;                 // used when calibration is needed (calib.file non-empty)
  int calib_batch = 8;
  bool progress = true;
  // Calibrated methods: how many decoder blocks stay materialized (model/llama_model.h). The
  // default keeps every block; the CLI passes its --max-memory budget.
  ModelMemory memory;
  // Calibration activations stay in RAM within this many bytes (< 0: always), else in a scratch
  // file beside the output (calib/activation_store.h). Results do not depend on it.
  int64_t activation_budget_bytes = -1;
  // Shards of the output close at a block boundary once they hold this many bytes.
  size_t max_shard_bytes = QuantizedCheckpointWriter::kDefaultShardBytes;
  // Continue an interrupted run of the same command from its last closed shard (quant/resume.h).
  bool resume = false;
  // Token embedding and output head, quantized by RTN before everything else. Unset: kept in
  // the source's dtype, except in GGUF jobs (every candidate a gguf: type), which use llama-quantize's choice
  // (gguf_embedding_type) so that the checkpoint is exactly what its GGUF export will hold.
  std::optional<FormatSpec> embed_format, output_format;

  // Outliers (outliers.h): every layer keeps this share of its weights in fp16, chosen by
  // gradients of the full-precision model (GWQ) on the first gwq_samples calibration windows, or
  // by SpQR's Hessian rule; per layer, or by one threshold over all layers (outliers_global,
  // gradient rules only).
  std::optional<OutlierRule> outliers;
  bool outliers_global = false;
  int gwq_samples = 8;
  // A mixed-precision plan (lowbit plan): the scheme of every decoder linear by HF weight name,
  // outliers included; replaces candidates, outliers and metric.
  std::map<std::string, LayerScheme> plan;
  // FlexRound (flexround.h) instead of layer.method: one format or a plan, no outliers, no W8A8.
  std::optional<FlexRoundOptions> flexround;
  // Write a GGUF file instead of a checkpoint (out empty), in the same pass: for jobs that
  // writes_gguf_in_one_pass() accepts. Others write a checkpoint and export it.
  std::optional<GgufExportOptions> gguf_out;
};

// Whether quantize_model can write the job's GGUF file as it goes: every linear's type is known
// before any work (one format, or a plan) and the job needs no calibration, which is also what
// --resume would be for.
bool writes_gguf_in_one_pass(const QuantizeJob& job);

// Whether the job needs calibration data (GPTQ, FlexRound, outliers, the output-error metric,
// or activations).
bool needs_calibration(const QuantizeJob& job);

struct LayerReport {
  std::string name;
  std::string format;          // the chosen format
  std::vector<double> errors;  // per candidate, under the job's metric
  double weight_mse = 0, output_error = 0, bits_per_weight = 0;
  int64_t rows = 0, cols = 0;
  std::string note;            // e.g. a GGUF type's fallback for this row length
  int64_t outliers = 0;        // weights kept in fp16 (counted in bits_per_weight)
};

struct QuantizeReport {
  std::vector<LayerReport> layers;
  double bits_per_weight = 0;  // over every quantized linear weight, scales and outliers included
  int64_t quantized_weights = 0;
  uint64_t file_bytes = 0;     // the checkpoint's safetensors or the GGUF file (0: dry run)
  double seconds = 0;
  nlohmann::json quantization_config;  // what the checkpoint stores
  std::optional<GgufExportReport> gguf;  // the GGUF file written in the same pass (job.gguf_out)
  nlohmann::json to_json() const;
};

QuantizeReport quantize_model(const QuantizeJob& job);

}  // namespace lowbit
