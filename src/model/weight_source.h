#pragma once
// Where a model's weights come from: a Hugging Face directory (safetensors), a GGUF file, or a
// lowbit quantized checkpoint. Every source speaks Hugging Face tensor names and layouts
// (e.g. "model.layers.3.self_attn.q_proj.weight", [out, in], HF q/k row order), so the model
// code never knows which file format it came from.
#include <torch/types.h>

#include <atomic>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "format/quantized_tensor.h"
#include "io/dtype.h"
#include "io/quantized_checkpoint.h"
#include "model/config.h"

namespace lowbit {

// A tensor's bytes exactly as its file stores them (a view into the memory map).
struct StoredTensorView {
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
};

// Weight bytes a source has handed out and that are still alive (converted copies, and tensors
// aliasing its memory maps, whose pages become resident as they are read), with their peak: the
// memory the model's weights take, which the memory-bound tests count; and their running total,
// which counts how often weights are re-read.
struct MaterializedBytes {
  std::atomic<int64_t> live{0}, peak{0}, total{0};
  void add(int64_t n);
  void sub(int64_t n) { live -= n; }
};

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  int64_t materialized_bytes() const { return counter_->live; }
  int64_t peak_materialized_bytes() const { return counter_->peak; }
  void reset_peak_materialized_bytes() const { counter_->peak = counter_->live.load(); }
  int64_t total_materialized_bytes() const { return counter_->total; }

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
  // The fp16 outliers stored beside a quantized weight (GWQ), validated; nullopt if none.
  virtual std::optional<StoredOutliers> get_outliers(const std::string& name) const { return std::nullopt; }
  // A plain float tensor (F32, F16, BF16) whose stored bytes are already in HF layout, for writers
  // that keep it in its own dtype; nullopt where the file's form differs (GGUF, quantized). Valid
  // while the source lives.
  virtual std::optional<StoredTensorView> get_stored(const std::string& name) const { return std::nullopt; }

 protected:
  // A float32 CPU tensor of `shape` that counts as materialized until its storage is freed.
  torch::Tensor counted_float_tensor(const std::vector<int64_t>& shape) const;
  // A float32 tensor over `data` (a mapping `keep` keeps alive), counted the same way.
  torch::Tensor counted_alias(const void* data, const std::vector<int64_t>& shape, std::shared_ptr<const void> keep) const;
  // `t` (float32, contiguous) copied into a counted tensor.
  torch::Tensor counted_copy(const torch::Tensor& t) const;

 private:
  std::shared_ptr<MaterializedBytes> counter_ = std::make_shared<MaterializedBytes>();
};

// Opens a model path: a directory with config.json, or a .gguf file. Throws Error if unsupported.
// Tensors handed out may alias the source's memory maps and keep them alive by themselves.
std::shared_ptr<WeightSource> open_weights(const std::string& path);

// Weight sources for each kind of file (open_weights picks one).
std::shared_ptr<WeightSource> open_hf_weights(const std::string& dir);
std::shared_ptr<WeightSource> open_gguf_weights(const std::string& file);
std::shared_ptr<WeightSource> open_quantized_weights(const std::string& dir);

}  // namespace lowbit
