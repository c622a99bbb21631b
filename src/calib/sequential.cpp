#include "calib/sequential.h"

#include <torch/torch.h>

#include <cstdio>

#include "util/error.h"
#include "util/progress.h"

namespace lowbit {

const std::vector<std::vector<std::string>>& sequential_groups() {
  static const std::vector<std::vector<std::string>> groups = {
      {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"},
      {"self_attn.o_proj"},
      {"mlp.gate_proj", "mlp.up_proj"},
      {"mlp.down_proj"}};
  return groups;
}

namespace {

// Streaming accumulation of one input's statistics, as the GPTQ reference does it: a running
// mean, so H stays well scaled however many tokens arrive.
class StatsAccumulator {
 public:
  StatsAccumulator(const SequentialOptions& o) : opt_(o) {}

  void add(const torch::Tensor& input) {
    torch::Tensor x = input.reshape({-1, input.size(-1)}).to(torch::kFloat32);
    const int64_t m = x.size(0);
    stats_.input_absmax = std::max(stats_.input_absmax, x.abs().max().item<double>());
    if (opt_.hessian) {
      if (!stats_.hessian.defined()) stats_.hessian = torch::zeros({x.size(1), x.size(1)}, x.options());
      double n = double(stats_.tokens);
      stats_.hessian.mul_(n / (n + m));
      torch::Tensor xs = x * std::sqrt(2.0 / (n + m));
      stats_.hessian.addmm_(xs.t(), xs);
    }
    if (opt_.input_sample_rows > 0) {
      int64_t have = stats_.input_sample.defined() ? stats_.input_sample.size(0) : 0;
      int64_t take = std::min(opt_.input_sample_rows - have, m);
      if (take > 0) {
        torch::Tensor rows = x.narrow(0, 0, take).clone();
        stats_.input_sample = have ? torch::cat({stats_.input_sample, rows}) : rows;
      }
    }
    stats_.tokens += m;
  }

  const LinearInputStats& stats() const { return stats_; }

 private:
  const SequentialOptions& opt_;
  LinearInputStats stats_;
};

}  // namespace

void calibrate_block(LlamaModel& model, int l, ActivationStore& xs, ActivationStore& ctxs,
                     const SequentialOptions& opt, const QuantizeLinear& quantize_linear) {
  torch::NoGradGuard no_grad;
  auto quantize_group = [&](const std::vector<std::string>& group, const StatsAccumulator& acc) {
    for (const std::string& short_name : group)
      quantize_linear(l, fmt::format("model.layers.{}.{}.weight", l, short_name), model.layer(l).linear(short_name),
                      acc.stats());
  };
  const auto& groups = sequential_groups();
  const int64_t nb = xs.batches();
  // Each stage's input is computed once per batch from the previous stage's result, with the
  // earlier groups of the block already quantized: about one forward pass per block in all.
  StatsAccumulator qkv(opt), o(opt), gate_up(opt), down(opt);
  for (int64_t b = 0; b < nb; ++b) qkv.add(model.attn_norm(l, xs.get(b)));
  quantize_group(groups[0], qkv);

  for (int64_t b = 0; b < nb; ++b) {
    torch::Tensor ctx = model.attention(l, model.attn_norm(l, xs.get(b)));
    o.add(ctx);
    ctxs.put(b, ctx);
  }
  quantize_group(groups[1], o);

  for (int64_t b = 0; b < nb; ++b) {
    torch::Tensor r = model.attention_residual(l, xs.get(b), ctxs.get(b));
    xs.put(b, r);  // xs now holds the residual stream r
    gate_up.add(model.mlp_norm(l, r));
  }
  quantize_group(groups[2], gate_up);

  for (int64_t b = 0; b < nb; ++b) down.add(model.mlp_hidden(l, model.mlp_norm(l, xs.get(b))));
  quantize_group(groups[3], down);

  for (int64_t b = 0; b < nb; ++b) {
    torch::Tensor r = xs.get(b);
    xs.put(b, model.mlp_residual(l, r, model.mlp_hidden(l, model.mlp_norm(l, r))));
  }
}

void calibrate_block(LlamaModel& model, int l, std::vector<torch::Tensor>& xs, const SequentialOptions& opt,
                     const QuantizeLinear& quantize_linear) {
  if (xs.empty()) return;
  const int64_t batch = xs[0].size(0);
  int64_t windows = 0;
  for (const torch::Tensor& x : xs) {
    if (x.size(0) > batch || (x.size(0) < batch && &x != &xs.back()))
      fail("internal: calibration batches must all have {} windows but the last", batch);
    windows += x.size(0);
  }
  ActivationStore in(windows, xs[0].size(1), xs[0].size(2), batch, xs[0].device()),
      ctx(windows, xs[0].size(1), xs[0].size(2), batch, xs[0].device());
  for (size_t b = 0; b < xs.size(); ++b) in.put(int64_t(b), xs[b]);
  calibrate_block(model, l, in, ctx, opt, quantize_linear);
  for (size_t b = 0; b < xs.size(); ++b) xs[b] = in.get(int64_t(b));
}

void quantize_sequentially(LlamaModel& model, const torch::Tensor& calib_tokens, const SequentialOptions& opt,
                           const QuantizeLinear& quantize_linear) {
  torch::NoGradGuard no_grad;
  if (calib_tokens.dim() != 2) fail("calibration tokens must be [samples, seqlen]");
  const int64_t n = calib_tokens.size(0), seqlen = calib_tokens.size(1), batch = std::max(1, opt.batch);
  const int64_t hidden = model.config().hidden_size;
  const int layers = model.config().num_layers;
  if (opt.first_block < 0 || opt.first_block > layers) fail("internal: resume at block {} of {}", opt.first_block, layers);

  ActivationPlan plan = plan_activations(n, seqlen, hidden, 2, opt.activation_budget_bytes, scratch_dir_or_temp(opt.spill_dir));
  if (opt.progress) std::fprintf(stderr, "%s\n", plan.line.c_str());
  const std::string dir = plan.dir();
  ActivationStore xs(n, seqlen, hidden, batch, model.device(), dir), ctxs(n, seqlen, hidden, batch, model.device(), dir);
  if (opt.first_block > 0) {
    xs.load(opt.first_inputs);
  } else {
    for (int64_t b = 0; b < xs.batches(); ++b) xs.put(b, model.embed(calib_tokens.narrow(0, b * batch, xs.batch_windows(b))));
  }

  Progress progress("quantize", size_t(layers - opt.first_block) * 7, opt.progress);
  size_t done = 0;
  for (int l = opt.first_block; l < layers; ++l) {
    calibrate_block(model, l, xs, ctxs, opt, [&](int l, const std::string& name, Linear& linear, const LinearInputStats& st) {
      quantize_linear(l, name, linear, st);
      // "model.layers.3.mlp.up_proj.weight" is shown as "layer 4/8 mlp.up_proj"
      const size_t from = name.find('.', std::string_view("model.layers.").size()) + 1;
      progress.update(++done, fmt::format("layer {}/{} {}", l + 1, layers,
                                          name.substr(from, name.size() - from - std::string_view(".weight").size())));
    });
    if (opt.after_block == SequentialOptions::AfterBlock::Release) model.release_layer(l);
    if (opt.after_block == SequentialOptions::AfterBlock::Unpin) model.unpin_layer(l);
    if (opt.block_done) opt.block_done(l, xs);
  }
  progress.finish();
}

}  // namespace lowbit
