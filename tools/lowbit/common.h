#pragma once
// What every CLI command shares: loading a model with its tokenizer, thread setup, JSON output.
#include <CLI/CLI.hpp>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "model/llama_model.h"
#include "model/weight_source.h"
#include "tokenizer/tokenizer.h"

namespace lowbit::cli {

struct LoadedModel {
  std::shared_ptr<WeightSource> source;
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
};

// Loads weights and the tokenizer (tokenizer.json beside the weights, or `tokenizer_path`), and
// refuses a tokenizer whose vocabulary does not fit the model's.
LoadedModel load_model(const std::string& path, const std::string& tokenizer_path, torch::Device device);

// --threads (0: all cores) and --device options shared by commands that run the model.
struct RuntimeOptions {
  int threads = 0;
  std::string device = "cpu";
  void add_to(CLI::App* app);
  void apply() const;
  torch::Device torch_device() const;
};

void write_json(const std::string& path, const nlohmann::json& j);  // atomic

}  // namespace lowbit::cli
