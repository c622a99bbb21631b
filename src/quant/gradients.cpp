#include "quant/gradients.h"

#include <torch/torch.h>

#include <array>
#include <cstdio>
#include <memory>

#include "calib/activation_store.h"
#include "util/error.h"
#include "util/progress.h"

namespace lowbit {

namespace {

using torch::Tensor;

// During one block's recomputation its seven linear weights are requires-grad aliases (same
// storage, new leaves) of the model's own tensors, which are put back on destruction. The block is
// pinned meanwhile; one that was not pinned before may be dropped again afterwards.
class GradWeights {
 public:
  GradWeights(LlamaModel& model, int l) : model_(model), l_(l), was_pinned_(model.is_pinned(l)), layer_(model.layer(l)) {
    const auto& names = DecoderLayer::linear_names();
    for (size_t k = 0; k < names.size(); ++k) {
      Linear& lin = layer_.linear(names[k]);
      saved_[k] = lin.weight;
      lin.weight = lin.weight.detach().requires_grad_(true);
      leaves_[k] = lin.weight;
    }
  }
  ~GradWeights() {
    const auto& names = DecoderLayer::linear_names();
    for (size_t k = 0; k < names.size(); ++k) layer_.linear(names[k]).weight = saved_[k];
    if (!was_pinned_) {
      model_.unpin_layer(l_);
      model_.drop_layer(l_);  // the backward pass is done with it
    }
  }
  GradWeights(const GradWeights&) = delete;
  GradWeights& operator=(const GradWeights&) = delete;
  const std::array<Tensor, 7>& leaves() const { return leaves_; }

 private:
  LlamaModel& model_;
  int l_;
  bool was_pinned_;
  DecoderLayer& layer_;
  std::array<Tensor, 7> saved_, leaves_;
};

}  // namespace

double compute_gradients(LlamaModel& model, const Tensor& tokens, const GradientOptions& o,
                         const GradientCallback& callback) {
  if (tokens.dim() != 2 || tokens.size(0) < 1 || tokens.size(1) < 2)
    fail("gradients: tokens must be [windows >= 1, length >= 2]");
  if (o.batch < 1) fail("gradients: batch must be positive, not {}", o.batch);
  if (o.head_chunk < 1) fail("gradients: head_chunk must be positive, not {}", o.head_chunk);
  if (!o.keep_grad && !o.keep_fisher) fail("gradients: nothing to keep (keep_grad and keep_fisher are both off)");
  if (DecoderLayer::linear_names().size() != 7) fail("internal: expected seven linears per block");
  const int64_t N = tokens.size(0), T = tokens.size(1);
  const int L = model.config().num_layers;
  const int64_t batch = o.keep_fisher ? 1 : o.batch;
  const Tensor tok = tokens.to(model.device(), torch::kLong);
  std::vector<std::pair<int64_t, int64_t>> ranges;  // [start, count) of each window batch
  for (int64_t s = 0; s < N; s += batch) ranges.emplace_back(s, std::min(batch, N - s));
  const size_t nb = ranges.size();
  const double predictions = double(N) * double(T - 1);

  // 1. Checkpoints: inputs[l] holds block l's inputs, inputs[L] the final hidden states, by batch.
  const int64_t hidden = model.config().hidden_size;
  const ActivationPlan plan = plan_activations(N, T, hidden, L + 2, o.activation_budget_bytes,
                                               scratch_dir_or_temp(o.spill_dir), "gradients",
                                               "block inputs and their gradients");
  if (o.progress) std::fprintf(stderr, "%s\n", plan.line.c_str());
  auto store = [&] { return std::make_unique<ActivationStore>(N, T, hidden, batch, model.device(), plan.dir()); };
  std::vector<std::unique_ptr<ActivationStore>> inputs;
  for (int l = 0; l <= L; ++l) inputs.push_back(store());
  {
    // Block by block, every batch through block l before block l + 1, which then is dropped:
    // only the backward pass needs it again, last block first (so the last one is kept).
    torch::NoGradGuard no_grad;
    for (size_t b = 0; b < nb; ++b) inputs[0]->put(int64_t(b), model.embed(tok.narrow(0, ranges[b].first, ranges[b].second)));
    for (int l = 0; l < L; ++l) {
      for (size_t b = 0; b < nb; ++b) inputs[size_t(l) + 1]->put(int64_t(b), model.layer_forward(l, inputs[size_t(l)]->get(int64_t(b))));
      if (l + 1 < L) model.drop_layer(l);
    }
  }

  torch::AutoGradMode enable_grad(true);
  Progress progress("gradients", size_t(L) + 1, o.progress);

  // 2. The head, in chunks of positions: dL/dx for the final hidden states (zero at the last
  // position, which predicts nothing).
  double loss = 0;
  std::unique_ptr<ActivationStore> gx = store();
  for (size_t b = 0; b < nb; ++b) {
    const Tensor x = inputs[size_t(L)]->get(int64_t(b));
    const Tensor targets = tok.narrow(0, ranges[b].first, ranges[b].second);
    Tensor g = torch::zeros_like(x);
    for (int64_t t0 = 0; t0 < T - 1; t0 += o.head_chunk) {
      const int64_t n = std::min(o.head_chunk, T - 1 - t0);
      Tensor xc = x.narrow(1, t0, n).detach().requires_grad_(true);
      Tensor logp = torch::log_softmax(model.head(xc), -1);
      Tensor tgt = targets.narrow(1, t0 + 1, n).unsqueeze(-1);
      Tensor chunk_loss = -logp.gather(-1, tgt).sum() / predictions;
      loss += chunk_loss.item<double>();
      g.narrow(1, t0, n).copy_(torch::autograd::grad({chunk_loss}, {xc})[0]);
    }
    gx->put(int64_t(b), g);
  }
  inputs[size_t(L)].reset();
  progress.update(1, "head");

  // 3. Blocks, last to first.
  const auto& names = DecoderLayer::linear_names();
  for (int l = L - 1; l >= 0; --l) {
    std::array<Tensor, 7> grad_acc, fisher_acc;
    {
      GradWeights weights(model, l);
      for (size_t b = 0; b < nb; ++b) {
        const bool need_input_grad = l > 0;
        Tensor x = inputs[size_t(l)]->get(int64_t(b)).detach().requires_grad_(need_input_grad);
        Tensor y = model.layer_forward(l, x);
        std::vector<Tensor> wrt(weights.leaves().begin(), weights.leaves().end());
        if (need_input_grad) wrt.push_back(x);
        std::vector<Tensor> g = torch::autograd::grad({y}, wrt, {gx->get(int64_t(b))}, /*retain_graph=*/false,
                                                      /*create_graph=*/false, /*allow_unused=*/true);
        y = Tensor();
        for (size_t k = 0; k < 7; ++k) {
          Tensor gk = g[k].defined() ? g[k] : torch::zeros_like(weights.leaves()[k]);
          if (o.keep_grad) grad_acc[k] = grad_acc[k].defined() ? grad_acc[k].add_(gk) : gk.clone();
          if (o.keep_fisher) {
            // One window per batch: its own mean loss's gradient is N times its share of L's.
            Tensor f = gk.square().mul_(double(N));  // (N g)² / N
            fisher_acc[k] = fisher_acc[k].defined() ? fisher_acc[k].add_(f) : f;
          }
        }
        if (need_input_grad) gx->put(int64_t(b), g.back());
      }
      inputs[size_t(l)].reset();
    }
    for (size_t k = 0; k < 7; ++k) {
      LayerGradient lg;
      lg.grad = std::move(grad_acc[k]);
      lg.fisher = std::move(fisher_acc[k]);
      callback(l, fmt::format("model.layers.{}.{}.weight", l, names[k]), std::move(lg));
    }
    progress.update(size_t(L - l) + 1, fmt::format("layer {}", l));
  }
  progress.finish();
  return loss;
}

std::map<std::string, LayerGradient> compute_gradients(LlamaModel& model, const Tensor& tokens,
                                                       const GradientOptions& options, double* loss) {
  std::map<std::string, LayerGradient> out;
  double l = compute_gradients(model, tokens, options,
                               [&](int, const std::string& name, LayerGradient&& g) { out[name] = std::move(g); });
  if (loss) *loss = l;
  return out;
}

}  // namespace lowbit
