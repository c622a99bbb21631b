#pragma once
// A runnable model: weights, the network on a device, and the tokenizer that belongs to it.
#include <memory>
#include <string>

#include "model/llama_model.h"
#include "model/weight_source.h"
#include "tokenizer/tokenizer.h"

namespace lowbit {

struct LoadedModel {
  std::shared_ptr<WeightSource> source;
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::string tokenizer_dir;  // the folder of the tokenizer's files; "" for a GGUF file's own
};

// Loads weights and the tokenizer (tokenizer.json beside the weights, or `tokenizer_path`), and
// refuses a tokenizer whose vocabulary does not fit the model's.
LoadedModel load_model(const std::string& path, const std::string& tokenizer_path = "",
                       torch::Device device = torch::kCPU, ModelMemory memory = {});

// The tokenizer of a model: tokenizer_path if given, else tokenizer.json beside the weights, else
// a GGUF file's own metadata; checked against the model's vocabulary. *tokenizer_dir (if given)
// receives the folder of the tokenizer files, "" when the tokenizer came from GGUF metadata.
Tokenizer load_tokenizer(const WeightSource& source, const std::string& model_path, const std::string& tokenizer_path,
                         std::string* tokenizer_dir = nullptr);

// Throws Error unless a tokenizer of `tokenizer_vocab` ids can drive a model of `model_vocab`.
void check_vocab_fits(int64_t tokenizer_vocab, int64_t model_vocab, const std::string& tokenizer_path,
                      const std::string& model_path);

}  // namespace lowbit
