// The two source formats agree, and bad configs or weights fail with a clear error.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "model/llama_model.h"
#include "util/error.h"

using namespace lowbit;
namespace fs = std::filesystem;

namespace {

const std::string kStories = std::string(LOWBIT_ASSETS) + "/models/stories260K";

// The GGUF stores q/k rows permuted and was converted independently of the safetensors copy, so
// equal logits check both loaders (and the un-permutation) at once.
TEST(ModelSources, GgufAndSafetensorsGiveSameLogits) {
  auto hf = open_weights(kStories);
  auto gguf = open_weights(kStories + "/stories260K.gguf");
  EXPECT_EQ(gguf->config().hidden_size, 64);
  EXPECT_EQ(gguf->config().num_kv_heads, 4);
  EXPECT_EQ(gguf->config().vocab_size, 512);
  // llama2.c's export wrote output.weight as its own tensor, so the GGUF copy is untied.
  EXPECT_TRUE(gguf->has("lm_head.weight"));
  LlamaModel a(hf), b(gguf);
  torch::manual_seed(0);
  torch::Tensor tokens = torch::randint(3, 512, {2, 64}, torch::kLong);
  torch::Tensor la = a.forward(tokens), lb = b.forward(tokens);
  EXPECT_LT((la - lb).abs().max().item<double>(), 1e-5);
  EXPECT_TRUE(torch::equal(hf->get("model.layers.0.self_attn.q_proj.weight"),
                           gguf->get("model.layers.0.self_attn.q_proj.weight")));
}

nlohmann::json stories_config() {
  std::ifstream in(kStories + "/config.json");
  return nlohmann::json::parse(in);
}

void expect_error_mentions(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an error mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(ModelConfig, MissingFieldIsNamed) {
  for (const char* field : {"hidden_size", "num_hidden_layers", "vocab_size", "model_type"}) {
    nlohmann::json j = stories_config();
    j.erase(field);
    expect_error_mentions([&] { ModelConfig::from_json(j, "config.json"); }, field);
  }
}

TEST(ModelConfig, UnsupportedArchitectureAndFieldsAreNamed) {
  nlohmann::json j = stories_config();
  j["model_type"] = "gpt_neox";
  expect_error_mentions([&] { ModelConfig::from_json(j, "config.json"); }, "gpt_neox");
  j = stories_config();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  expect_error_mentions([&] { ModelConfig::from_json(j, "config.json"); }, "yarn");
  j = stories_config();
  j["hidden_act"] = "gelu";
  expect_error_mentions([&] { ModelConfig::from_json(j, "config.json"); }, "gelu");
  j = stories_config();
  j["num_key_value_heads"] = 3;
  expect_error_mentions([&] { ModelConfig::from_json(j, "config.json"); }, "num_key_value_heads");
}

TEST(ModelConfig, Qwen2AlwaysHasQkvBias) {
  nlohmann::json j = stories_config();
  j["model_type"] = "qwen2";
  ModelConfig c = ModelConfig::from_json(j, "config.json");
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.attention_out_bias);
}

// A config that does not match the weights is caught when the model loads.
TEST(ModelSources, ShapeMismatchIsAnError) {
  fs::path dir = fs::path(testing::TempDir()) / "stories_wrong_shape";
  fs::create_directories(dir);
  nlohmann::json j = stories_config();
  j["intermediate_size"] = 128;
  std::ofstream(dir / "config.json") << j.dump();
  fs::copy_file(kStories + "/model.safetensors", dir / "model.safetensors", fs::copy_options::overwrite_existing);
  auto src = open_weights(dir.string());
  expect_error_mentions([&] { LlamaModel m(src); }, "gate_proj");
}

TEST(ModelSources, NotAModel) {
  expect_error_mentions([] { open_weights("/nonexistent/model"); }, "does not exist");
  fs::path dir = fs::path(testing::TempDir()) / "empty_model_dir";
  fs::create_directories(dir);
  expect_error_mentions([&] { open_weights(dir.string()); }, "config.json");
}

// Llama 3.1 RoPE scaling, worked by hand for three frequencies of a head_dim 128, theta 500000
// model: a high frequency is kept, a low one divided by the factor, a middle one interpolated.
TEST(Rope, Llama3ScalingByHand) {
  nlohmann::json j = stories_config();
  j["head_dim"] = 128;
  j["hidden_size"] = 1024;
  j["rope_theta"] = 500000.0;
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  ModelConfig c = ModelConfig::from_json(j, "config.json");
  torch::Tensor inv = rope_inverse_frequencies(c);
  auto f = [](int i) { return 1.0 / std::pow(500000.0, 2.0 * i / 128); };
  // i=0: wavelength 2π < 8192/4: unchanged.
  EXPECT_DOUBLE_EQ(inv[0].item<double>(), f(0));
  // i=63: wavelength 2π/f(63) ≈ 2.9e6 > 8192: divided by 8.
  EXPECT_NEAR(inv[63].item<double>(), f(63) / 8, 1e-15);
  // i=40: wavelength = 2π·500000^(80/128) ≈ 2.30e4... > 8192 as well; i=30: 2π·500000^(60/128)
  // ≈ 3.04e3, between 2048 and 8192: smooth = (8192/λ - 1)/3, value = (1-s)·f/8 + s·f.
  double lam = 2 * M_PI / f(30), s = (8192 / lam - 1) / 3;
  ASSERT_GT(lam, 2048);
  ASSERT_LT(lam, 8192);
  EXPECT_NEAR(inv[30].item<double>(), (1 - s) * f(30) / 8 + s * f(30), 1e-15);
}

}  // namespace
