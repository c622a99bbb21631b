#include "calib/sequential.h"

#include <torch/torch.h>

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

void quantize_sequentially(LlamaModel& model, const torch::Tensor& calib_tokens, const SequentialOptions& opt,
                           const QuantizeLinear& quantize_linear) {
  torch::NoGradGuard no_grad;
  if (calib_tokens.dim() != 2) fail("calibration tokens must be [samples, seqlen]");
  const int64_t n = calib_tokens.size(0), batch = std::max(1, opt.batch);
  const int layers = model.config().num_layers;

  // Inputs of the current block, kept as a list of batches.
  std::vector<torch::Tensor> xs;
  for (int64_t s = 0; s < n; s += batch) xs.push_back(model.embed(calib_tokens.narrow(0, s, std::min(batch, n - s))));

  Progress progress("quantize", size_t(layers) * 7, opt.progress);
  size_t done = 0;
  for (int l = 0; l < layers; ++l) {
    DecoderLayer& layer = model.layers()[l];
    const std::string prefix = fmt::format("model.layers.{}.", l);
    for (const auto& group : sequential_groups()) {
      // Members of a group share their input, so the first member's input is the group's.
      const std::string watched = prefix + group.front() + ".weight";
      StatsAccumulator acc(opt);
      model.set_linear_input_hook([&](const std::string& name, const torch::Tensor& input) {
        if (name == watched) acc.add(input);
      });
      for (const torch::Tensor& x : xs) model.layer_forward(l, x);
      model.set_linear_input_hook(nullptr);
      for (const std::string& short_name : group) {
        quantize_linear(l, prefix + short_name + ".weight", layer.linear(short_name), acc.stats());
        progress.update(++done, fmt::format("layer {}/{} {}", l + 1, layers, short_name));
      }
    }
    for (torch::Tensor& x : xs) x = model.layer_forward(l, x);  // the quantized block feeds the next
  }
  progress.finish();
}

}  // namespace lowbit
