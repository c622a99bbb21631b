#include "model/config.h"

#include <fstream>

#include "util/error.h"

namespace lowbit {

namespace {

const nlohmann::json& require(const nlohmann::json& j, const char* key, const std::string& origin) {
  if (!j.contains(key) || j[key].is_null()) fail("{}: missing required field '{}'", origin, key);
  return j[key];
}

template <typename T>
T get_as(const nlohmann::json& v, const char* key, const std::string& origin) {
  try {
    return v.get<T>();
  } catch (const nlohmann::json::exception&) {
    fail("{}: field '{}' has the wrong type ({})", origin, key, v.dump());
  }
}

template <typename T>
T required(const nlohmann::json& j, const char* key, const std::string& origin) {
  return get_as<T>(require(j, key, origin), key, origin);
}

template <typename T>
T optional(const nlohmann::json& j, const char* key, T fallback, const std::string& origin) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  return get_as<T>(j[key], key, origin);
}

int first_id(const nlohmann::json& j, const char* key, int fallback, const std::string& origin) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (j[key].is_array()) return j[key].empty() ? fallback : get_as<int>(j[key][0], key, origin);
  return get_as<int>(j[key], key, origin);
}

}  // namespace

ModelConfig ModelConfig::from_json(const nlohmann::json& j, const std::string& origin) {
  if (!j.is_object()) fail("{}: expected a JSON object", origin);
  ModelConfig c;
  c.model_type = required<std::string>(j, "model_type", origin);
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2")
    fail("{}: unsupported architecture '{}' (supported: llama, mistral, qwen2)", origin, c.model_type);
  c.hidden_size = required<int>(j, "hidden_size", origin);
  c.intermediate_size = required<int>(j, "intermediate_size", origin);
  c.num_layers = required<int>(j, "num_hidden_layers", origin);
  c.num_heads = required<int>(j, "num_attention_heads", origin);
  c.num_kv_heads = optional<int>(j, "num_key_value_heads", c.num_heads, origin);
  c.head_dim = optional<int>(j, "head_dim", c.num_heads ? c.hidden_size / c.num_heads : 0, origin);
  c.vocab_size = required<int>(j, "vocab_size", origin);
  c.max_position_embeddings = optional<int>(j, "max_position_embeddings", 2048, origin);
  c.rms_norm_eps = optional<double>(j, "rms_norm_eps", 1e-6, origin);
  c.rope_theta = optional<double>(j, "rope_theta", 10000.0, origin);
  c.tie_word_embeddings = optional<bool>(j, "tie_word_embeddings", false, origin);
  c.mlp_bias = optional<bool>(j, "mlp_bias", false, origin);
  if (c.model_type == "qwen2") {
    c.attention_bias = true;  // Qwen2 always has q/k/v biases, and no o_proj bias
  } else {
    c.attention_bias = optional<bool>(j, "attention_bias", false, origin);
    c.attention_out_bias = c.attention_bias;
  }
  std::string act = optional<std::string>(j, "hidden_act", "silu", origin);
  if (act != "silu") fail("{}: unsupported hidden_act '{}' (only silu)", origin, act);
  bool use_sw = optional<bool>(j, "use_sliding_window", c.model_type == "mistral", origin);
  if (use_sw) c.sliding_window = optional<int>(j, "sliding_window", 0, origin);
  c.bos_token_id = first_id(j, "bos_token_id", 1, origin);
  c.eos_token_id = first_id(j, "eos_token_id", 2, origin);

  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    const auto& rs = j["rope_scaling"];
    std::string type = optional<std::string>(rs, "rope_type", optional<std::string>(rs, "type", "", origin), origin);
    if (type == "default" || type.empty()) {
      c.rope_scaling.type = "default";
    } else if (type == "linear") {
      c.rope_scaling.type = type;
      c.rope_scaling.factor = required<double>(rs, "factor", origin);
    } else if (type == "llama3") {
      c.rope_scaling.type = type;
      c.rope_scaling.factor = required<double>(rs, "factor", origin);
      c.rope_scaling.low_freq_factor = required<double>(rs, "low_freq_factor", origin);
      c.rope_scaling.high_freq_factor = required<double>(rs, "high_freq_factor", origin);
      c.rope_scaling.original_max_position_embeddings =
          required<int>(rs, "original_max_position_embeddings", origin);
    } else {
      fail("{}: unsupported rope_scaling type '{}' (supported: default, linear, llama3)", origin, type);
    }
  }
  c.validate(origin);
  return c;
}

void ModelConfig::validate(const std::string& origin) const {
  auto positive = [&](int v, const char* name) {
    if (v <= 0) fail("{}: '{}' must be positive, got {}", origin, name, v);
  };
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(num_layers, "num_hidden_layers");
  positive(num_heads, "num_attention_heads");
  positive(num_kv_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  positive(vocab_size, "vocab_size");
  if (num_heads % num_kv_heads != 0)
    fail("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", origin, num_heads, num_kv_heads);
  if (head_dim % 2 != 0) fail("{}: head_dim {} must be even for RoPE", origin, head_dim);
}

ModelConfig ModelConfig::from_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("cannot open {}", path);
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    fail("{}: invalid JSON ({})", path, e.what());
  }
  return from_json(j, path);
}

nlohmann::json ModelConfig::to_json() const {
  nlohmann::json j = {
      {"architectures", {model_type == "qwen2" ? "Qwen2ForCausalLM"
                         : model_type == "mistral" ? "MistralForCausalLM" : "LlamaForCausalLM"}},
      {"model_type", model_type},
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"num_hidden_layers", num_layers},
      {"num_attention_heads", num_heads},
      {"num_key_value_heads", num_kv_heads},
      {"head_dim", head_dim},
      {"vocab_size", vocab_size},
      {"max_position_embeddings", max_position_embeddings},
      {"rms_norm_eps", rms_norm_eps},
      {"rope_theta", rope_theta},
      {"hidden_act", "silu"},
      {"tie_word_embeddings", tie_word_embeddings},
      {"bos_token_id", bos_token_id},
      {"eos_token_id", eos_token_id},
      {"mlp_bias", mlp_bias},
      {"torch_dtype", "float32"},
  };
  if (model_type != "qwen2") j["attention_bias"] = attention_bias;
  if (sliding_window > 0) {
    j["sliding_window"] = sliding_window;
    j["use_sliding_window"] = true;
  }
  if (rope_scaling.type == "linear") {
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", rope_scaling.factor}};
  } else if (rope_scaling.type == "llama3") {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", rope_scaling.factor},
                         {"low_freq_factor", rope_scaling.low_freq_factor},
                         {"high_freq_factor", rope_scaling.high_freq_factor},
                         {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings}};
  }
  return j;
}

}  // namespace lowbit
