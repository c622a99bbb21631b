#pragma once
// Hyper-parameters of a Llama-family decoder (llama, mistral, qwen2), read from a Hugging Face
// config.json or from GGUF metadata. Anything lowbit cannot run exactly is rejected by name.
#include <nlohmann/json.hpp>
#include <string>

namespace lowbit {

struct RopeScaling {
  std::string type = "default";  // "default", "linear" or "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3 only
  int original_max_position_embeddings = 8192;           // llama3 only
};

struct ModelConfig {
  std::string model_type;  // llama | mistral | qwen2
  int hidden_size = 0, intermediate_size = 0, num_layers = 0;
  int num_heads = 0, num_kv_heads = 0, head_dim = 0, vocab_size = 0;
  int max_position_embeddings = 0;
  double rms_norm_eps = 1e-6, rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // biases on q/k/v (qwen2 always has them)
  bool attention_out_bias = false;
  bool mlp_bias = false;
  int sliding_window = 0;  // 0: full attention
  int bos_token_id = 1, eos_token_id = 2;

  static ModelConfig from_json(const nlohmann::json& j, const std::string& origin);
  static ModelConfig from_file(const std::string& config_json_path);
  nlohmann::json to_json() const;  // Hugging Face config.json layout
  void validate(const std::string& origin) const;
};

}  // namespace lowbit
