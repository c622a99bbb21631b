#pragma once
// Gradients of the language-model loss with respect to every decoder linear weight, for
// gradient-aware outlier selection (GWQ, outliers.h).
//
// The loss is the mean next-token cross-entropy over N calibration windows [N, T]: every window's
// positions 0..T-2 predict its tokens 1..T-1, and the loss is the mean over all N·(T-1)
// predictions (no BOS is added; the windows are scored as given).
//
// Memory stays bounded by recomputation instead of a whole-model graph:
//   1. forward without a graph, block by block, keeping only each block's input (checkpoints:
//      num_layers+1 tensors of [N, T, hidden]);
//   2. the output head in chunks of head_chunk positions, each chunk's logits and their graph
//      freed before the next, giving dLoss/d(last hidden state);
//   3. backward block by block, last to first: the block is recomputed with a graph for one batch
//      of windows, the incoming gradient is back-propagated through it, its seven weight
//      gradients are accumulated, and the gradient of its input is passed down. A block's
//      checkpoint is freed once used, and its linears' results are handed to the callback as
//      soon as every batch has passed, so only one block's accumulators are alive.
// Peak memory beyond the weights: the checkpoints and one batch's gradient per window batch
// ([N, T, hidden] in all; in RAM or on disk, activation_budget_bytes), one block's graph for one
// batch, one chunk of logits ([batch, head_chunk, vocab] and its softmax), and the current block's
// accumulators (one or two tensors per linear, the block's weight size each). One block is
// materialized at a time, whatever the model's ModelMemory allows: each is dropped once the
// forward pass, and again once the backward pass, is done with it.
//
// Runs on the model's device in the model's dtype (fp32; a model whose tensors were replaced by
// float64 ones gives float64 gradients). The model is borrowed: each block's linear weights are
// replaced by requires-grad aliases of the same storage during its recomputation and restored
// afterwards (also when an exception leaves), and nothing is written into them. An activation
// fake-quantizer on a linear's input (Linear::input_quant) passes no gradient to that input.
#include <torch/types.h>

#include <functional>
#include <map>
#include <string>

#include "model/llama_model.h"

namespace lowbit {

struct GradientOptions {
  int batch = 1;             // windows per recomputation (with keep_fisher: always one window)
  int64_t head_chunk = 256;  // positions per pass through the output head
  bool keep_grad = true;     // LayerGradient::grad
  bool keep_fisher = false;  // LayerGradient::fisher (then each window is back-propagated alone)
  bool progress = false;
  // The checkpoints and the incoming gradients (num_layers + 2 tensors of [N, T, hidden] fp32)
  // stay in RAM within this many bytes (< 0: always), else in scratch files in spill_dir (default:
  // the system's temporary directory). Either way the results are the same.
  int64_t activation_budget_bytes = -1;
  std::string spill_dir;
};

// What is kept of one linear weight's gradients ([out, in], the weight's dtype and device).
struct LayerGradient {
  // dL/dW of the mean loss L over all windows (= the mean of the windows' own gradients).
  torch::Tensor grad;
  // The empirical Fisher diagonal: the mean over windows b of (dL_b/dW)², L_b window b's mean
  // loss. With one window it is grad².
  torch::Tensor fisher;
};

// Called once per decoder linear, blocks last to first, the seven of a block in
// DecoderLayer::linear_names() order. name is the HF weight name ("model.layers.3.mlp.up_proj.weight").
using GradientCallback = std::function<void(int layer, const std::string& name, LayerGradient&& gradient)>;

// tokens: [N, T] int64 with N >= 1, T >= 2. Returns the loss L. Throws lowbit::Error for bad
// shapes or options.
double compute_gradients(LlamaModel& model, const torch::Tensor& tokens, const GradientOptions& options,
                         const GradientCallback& callback);

// The same, collected by HF weight name (every decoder linear; memory: one or two tensors of
// the size of all decoder linears). *loss receives L if given.
std::map<std::string, LayerGradient> compute_gradients(LlamaModel& model, const torch::Tensor& tokens,
                                                       const GradientOptions& options, double* loss = nullptr);

}  // namespace lowbit
