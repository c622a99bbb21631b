#pragma once
// What the LibTorch tests share: asset paths, the test environment (two threads, freed memory
// kept), calibration windows, decoder weights by HF name, and a whole-graph gradient reference.
// Header-only; each test file is its own executable.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <string>

#include "calib/calib_data.h"
#include "model/llama_model.h"
#include "util/allocator.h"

namespace lowbit::test_support {

using torch::Tensor;

inline const std::string kAssets = LOWBIT_ASSETS;
inline const std::string kStories = kAssets + "/models/stories260K";
inline const std::string kGutenberg = kAssets + "/models/gutenberg-6m";
inline const std::string kCalib = kAssets + "/data/wikitext2/tok_valid.txt";

struct Env : testing::Environment {
  void SetUp() override {
    keep_freed_memory();
    at::set_num_threads(2);
  }
};
inline testing::Environment* const env = testing::AddGlobalTestEnvironment(new Env);

inline Tensor calibration(const Tokenizer& tok, int nsamples, int seqlen, uint64_t seed = 0) {
  CalibOptions c;
  c.file = kCalib;
  c.nsamples = nsamples;
  c.seqlen = seqlen;
  c.seed = seed;
  return sample_calibration(tok, c);
}

// A decoder linear, and its weight, by HF name ("model.layers.3.mlp.up_proj.weight").
inline Linear& linear_of(LlamaModel& model, const std::string& name) {
  const std::string prefix = "model.layers.";
  size_t dot = name.find('.', prefix.size());
  int layer = std::stoi(name.substr(prefix.size(), dot - prefix.size()));
  std::string short_name = name.substr(dot + 1, name.size() - dot - 1 - std::string(".weight").size());
  return model.layers().at(size_t(layer)).linear(short_name);
}
inline Tensor& weight_of(LlamaModel& model, const std::string& name) { return linear_of(model, name).weight; }

// The reference: one graph through the whole model, every decoder linear weight a leaf, the loss
// by torch's own cross_entropy (mean over every predicted token), one backward.
inline std::map<std::string, Tensor> full_graph_gradients(LlamaModel& model, const Tensor& tokens, double* loss) {
  std::map<std::string, Tensor> saved, leaves;
  const int L = model.config().num_layers;
  for (int l = 0; l < L; ++l)
    for (const std::string& n : DecoderLayer::linear_names()) {
      std::string name = "model.layers." + std::to_string(l) + "." + n + ".weight";
      Linear& lin = model.layers()[l].linear(n);
      saved[name] = lin.weight;
      lin.weight = lin.weight.detach().requires_grad_(true);
      leaves[name] = lin.weight;
    }
  Tensor x = model.embed(tokens);
  for (int l = 0; l < L; ++l) x = model.layer_forward(l, x);
  Tensor logits = model.head(x);
  const int64_t N = tokens.size(0), T = tokens.size(1), V = logits.size(-1);
  Tensor l = torch::nn::functional::cross_entropy(logits.narrow(1, 0, T - 1).reshape({-1, V}),
                                                 tokens.narrow(1, 1, T - 1).reshape({-1}));
  EXPECT_EQ(N * (T - 1), logits.narrow(1, 0, T - 1).reshape({-1, V}).size(0));
  l.backward();
  *loss = l.item<double>();
  std::map<std::string, Tensor> out;
  for (auto& [name, leaf] : leaves) out[name] = leaf.grad().clone();
  for (int l2 = 0; l2 < L; ++l2)
    for (const std::string& n : DecoderLayer::linear_names())
      model.layers()[l2].linear(n).weight = saved["model.layers." + std::to_string(l2) + "." + n + ".weight"];
  return out;
}

}  // namespace lowbit::test_support
