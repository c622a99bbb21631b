// Golden tests: lowbit's forward pass against an independent float64 PyTorch reference
// (tests/golden/reference_llama.py), which wrote input tokens and logits to fixture files.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <fstream>

#include "model/llama_model.h"

using namespace lowbit;

namespace {

struct Golden {
  torch::Tensor tokens, logits;
};

Golden read_golden(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  char magic[8];
  in.read(magic, 8);
  EXPECT_EQ(std::string(magic, 8), "LBGOLD01");
  uint32_t dims[3];
  in.read(reinterpret_cast<char*>(dims), sizeof dims);
  int64_t B = dims[0], T = dims[1], V = dims[2];
  Golden g;
  g.tokens = torch::empty({B, T}, torch::kInt);
  g.logits = torch::empty({B, T, V}, torch::kFloat);
  in.read(reinterpret_cast<char*>(g.tokens.data_ptr()), B * T * 4);
  in.read(reinterpret_cast<char*>(g.logits.data_ptr()), B * T * V * 4);
  EXPECT_TRUE(in.good()) << "truncated fixture " << path;
  return g;
}

std::string model_path(const std::string& name) {
  if (name == "tiny-qwen2") return std::string(LOWBIT_SOURCE_DIR) + "/tests/fixtures/golden/tiny-qwen2";
  return std::string(LOWBIT_ASSETS) + "/models/" + name;
}

// Tolerance: fp32 against fp64 over a few layers; logits are O(1..10).
constexpr double kAbsTol = 2e-4;

void expect_close(const torch::Tensor& got, const torch::Tensor& want, const std::string& what) {
  torch::Tensor diff = (got - want).abs();
  double max_diff = diff.max().item<double>();
  if (max_diff > kAbsTol) {
    auto idx = diff.flatten().argmax().item<int64_t>();
    ADD_FAILURE() << what << ": max |diff| " << max_diff << " at flat index " << idx << " (got "
                  << got.flatten()[idx].item<float>() << ", want " << want.flatten()[idx].item<float>() << ")";
  }
}

class GoldenTest : public testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, LogitsMatchReference) {
  Golden g = read_golden(std::string(LOWBIT_SOURCE_DIR) + "/tests/fixtures/golden/" + GetParam() + ".bin");
  auto src = open_hf_weights(model_path(GetParam()));
  LlamaModel model(src);
  torch::Tensor logits = model.forward(g.tokens.to(torch::kLong));
  ASSERT_EQ(logits.sizes(), g.logits.sizes());
  expect_close(logits, g.logits, GetParam());
}

// Decoding one token at a time through the KV cache must give the same logits as one pass.
TEST_P(GoldenTest, KvCacheMatchesFullPass) {
  Golden g = read_golden(std::string(LOWBIT_SOURCE_DIR) + "/tests/fixtures/golden/" + GetParam() + ".bin");
  auto src = open_hf_weights(model_path(GetParam()));
  LlamaModel model(src);
  torch::Tensor tokens = g.tokens.to(torch::kLong);
  const int64_t B = tokens.size(0), T = tokens.size(1);
  KVCache cache = model.make_cache(B, T);
  // A prefill of 5 tokens, then single steps.
  std::vector<torch::Tensor> parts = {model.forward(tokens.narrow(1, 0, 5), &cache)};
  for (int64_t t = 5; t < T; ++t) parts.push_back(model.forward(tokens.narrow(1, t, 1), &cache));
  EXPECT_EQ(cache.length, T);
  expect_close(torch::cat(parts, 1), g.logits, GetParam() + " (cached)");
}

INSTANTIATE_TEST_SUITE_P(Models, GoldenTest, testing::Values("stories260K", "gutenberg-6m", "tiny-qwen2"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& c : s)
                             if (!isalnum(c)) c = '_';
                           return s;
                         });

}  // namespace
