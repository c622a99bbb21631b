#pragma once
// The sequential block driver of GPTQ-style calibration:
//   1. run the calibration samples to the inputs of block 0;
//   2. for each block, quantize its linear layers in groups (q/k/v, o, gate/up, down), each
//      group with statistics of its own input gathered by a forward pass through the block as
//      it stands (earlier groups already quantized);
//   3. re-run the quantized block to produce the next block's inputs.
// Only one block's statistics are alive at a time; the activations of every window are held in
// RAM or in a scratch file (activation_store.h), within a memory budget.
#include <torch/types.h>

#include <functional>
#include <string>
#include <vector>

#include "calib/activation_store.h"
#include "model/llama_model.h"

namespace lowbit {

// Statistics of the input x of a group of linear layers (q/k/v share one input, as do gate/up).
struct LinearInputStats {
  torch::Tensor hessian;       // [in, in] float32, H = 2/n Σ x xᵀ, when requested
  torch::Tensor input_sample;  // [k, in] float32: the first k input rows, when requested
  double input_absmax = 0;     // max |x| over every calibration token
  int64_t tokens = 0;
};

struct SequentialOptions {
  bool hessian = true;
  int64_t input_sample_rows = 0;  // rows of raw inputs to keep (weight+activation format choice)
  int batch = 8;                  // calibration samples per forward pass
  bool progress = true;
  // What becomes of each block once its outputs are computed:
  //   Keep     pinned, as the callback left it (the model is used quantized afterwards);
  //   Unpin    droppable again (LlamaModel::unpin_layer): the callback put its weights back;
  //   Release  dropped for good (LlamaModel::release_layer): a driver that writes each block as
  //            it finishes holds one block at a time, not the whole quantized model.
  enum class AfterBlock { Keep, Unpin, Release };
  AfterBlock after_block = AfterBlock::Keep;
  // The calibration activations (two stores: block inputs and attention outputs) stay in RAM
  // within this many bytes (< 0: always), else in a scratch file in spill_dir (default: the
  // system's temporary directory). Either way the results are the same.
  int64_t activation_budget_bytes = -1;
  std::string spill_dir;
  // Resume: start at block first_block, whose inputs were saved in first_inputs
  // (ActivationStore::save), instead of at block 0.
  int first_block = 0;
  std::string first_inputs;
  // Called after each block with the next block's inputs, e.g. to save them for a resume.
  std::function<void(int layer, const ActivationStore& next_inputs)> block_done;
};

// Called once per linear layer, in order. `name` is the HF weight name
// ("model.layers.3.mlp.up_proj.weight"). The callback replaces linear.weight (and may set
// linear.input_quant); the driver uses the new layer for everything that follows.
using QuantizeLinear =
    std::function<void(int layer, const std::string& name, Linear& linear, const LinearInputStats& stats)>;

// The linear layers of a block in the groups that share an input, in quantization order.
const std::vector<std::vector<std::string>>& sequential_groups();

// One block of that driver: xs holds block l's inputs; each linear is passed to quantize_linear in
// order with its input's statistics, and xs becomes the block's outputs. ctxs (same shape) holds
// the attention outputs in between. A callback that leaves the weights alone gathers statistics of
// the block as it is.
void calibrate_block(LlamaModel& model, int l, ActivationStore& xs, ActivationStore& ctxs,
                     const SequentialOptions& options, const QuantizeLinear& quantize_linear);
// The same on batches held in RAM ([b, seqlen, hidden] each).
void calibrate_block(LlamaModel& model, int l, std::vector<torch::Tensor>& xs, const SequentialOptions& options,
                     const QuantizeLinear& quantize_linear);

void quantize_sequentially(LlamaModel& model, const torch::Tensor& calib_tokens, const SequentialOptions& options,
                           const QuantizeLinear& quantize_linear);

}  // namespace lowbit
