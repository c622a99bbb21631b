#pragma once
// Where a model's weights come from: a Hugging Face directory (safetensors), a GGUF file, or a
// lowbit quantized checkpoint. Every source speaks Hugging Face tensor names and layouts
// (e.g. "model.layers.3.self_attn.q_proj.weight", [out, in], HF q/k row order), so the model
// code never knows which file format it came from.
#include <torch/types.h>

#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "format/quantized_tensor.h"
#include "model/config.h"

namespace lowbit {

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual const ModelConfig& config() const = 0;
  virtual bool has(const std::string& name) const = 0;
  // float32 CPU tensor in HF layout. May alias a memory map (read-only): clone before writing.
  virtual torch::Tensor get(const std::string& name) const = 0;
  virtual std::vector<std::string> names() const = 0;
  virtual std::vector<int64_t> shape(const std::string& name) const = 0;  // without reading data
  // Directory holding tokenizer.json (and tokenizer.model) for this model, or "" if unknown.
  virtual std::string tokenizer_dir() const = 0;
  virtual std::string description() const = 0;  // the path, for messages
  // A quantized checkpoint's "quantization_config" (io/quantized_checkpoint.h); null otherwise.
  virtual nlohmann::json quantization_config() const { return nullptr; }
  // The stored form of a quantized weight (HF layout), for writers that keep it as it is; nullopt
  // for a weight stored as plain floats.
  virtual std::optional<QuantizedTensor> get_quantized(const std::string& name) const { return std::nullopt; }
};

// Opens a model path: a directory with config.json, or a .gguf file. Throws Error if unsupported.
// Tensors handed out may alias the source's memory maps and keep them alive by themselves.
std::shared_ptr<WeightSource> open_weights(const std::string& path);

// Weight sources for each kind of file (open_weights picks one).
std::shared_ptr<WeightSource> open_hf_weights(const std::string& dir);
std::shared_ptr<WeightSource> open_gguf_weights(const std::string& file);
std::shared_ptr<WeightSource> open_quantized_weights(const std::string& dir);

}  // namespace lowbit
