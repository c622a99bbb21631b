// Weights from a lowbit quantized checkpoint (io/quantized_checkpoint.h). Quantized tensors are
// dequantized on demand, so the model runs the exact values the checkpoint stores.
#include <torch/torch.h>

#include <filesystem>

#include "format/quantized_tensor.h"
#include "io/quantized_checkpoint.h"
#include "model/weight_source.h"
#include "quant/outliers.h"
#include "util/error.h"

namespace lowbit {

namespace {

// The stored pieces of a quantized weight (quantized_checkpoint.h), not tensors of their own.
bool is_quantized_part(const std::string& n) {
  for (const char* suffix : {".qcodes", ".qscales", ".qzeros", ".qblocks", ".outlier_rowptr", ".outlier_cols",
                             ".outlier_values"})
    if (n.ends_with(suffix)) return true;
  return false;
}

class QuantizedSource : public WeightSource {
 public:
  explicit QuantizedSource(const std::string& dir)
      : dir_(dir), config_(ModelConfig::from_file((std::filesystem::path(dir) / "config.json").string())),
        weights_(dir), qconfig_(read_quantization_config(weights_)) {
    if (!qconfig_.contains("tensors") || !qconfig_["tensors"].is_object())
      fail("{}: quantization_config has no 'tensors' object", dir);
  }

  const ModelConfig& config() const override { return config_; }
  std::string tokenizer_dir() const override { return dir_; }
  std::string description() const override { return dir_; }
  nlohmann::json quantization_config() const override { return qconfig_; }

  bool has(const std::string& name) const override {
    return qconfig_["tensors"].contains(name) || weights_.contains(name);
  }

  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    for (const auto& [name, tc] : qconfig_["tensors"].items()) out.push_back(name);
    for (const std::string& n : weights_.names())
      if (!is_quantized_part(n)) out.push_back(n);
    return out;
  }

  std::vector<int64_t> shape(const std::string& name) const override {
    if (qconfig_["tensors"].contains(name)) return qconfig_["tensors"][name].value("shape", std::vector<int64_t>{});
    return weights_.tensor(name).shape;
  }

  std::optional<QuantizedTensor> get_quantized(const std::string& name) const override {
    if (!qconfig_["tensors"].contains(name)) return std::nullopt;
    return read_quantized_tensor(weights_, name, qconfig_["tensors"][name]);
  }

  std::optional<StoredOutliers> get_outliers(const std::string& name) const override {
    if (!qconfig_["tensors"].contains(name) || !qconfig_["tensors"][name].contains("outliers")) return std::nullopt;
    std::vector<int64_t> shape = this->shape(name);
    if (shape.size() != 2) fail("{}: outliers of '{}', which is not a matrix", dir_, name);
    return read_outliers(weights_, name, shape[0], shape[1]);
  }

  std::optional<StoredTensorView> get_stored(const std::string& name) const override {
    if (qconfig_["tensors"].contains(name)) return std::nullopt;
    const SafetensorsTensor& t = weights_.tensor(name);
    if (!dtype_is_float16or32(t.dtype)) return std::nullopt;
    return StoredTensorView{t.dtype, t.shape, t.data, t.nbytes};
  }

  torch::Tensor get(const std::string& name) const override {
    if (auto q = get_quantized(name)) {
      std::vector<float> w = dequantize(*q);
      torch::Tensor W = counted_copy(torch::from_blob(w.data(), {q->rows, q->cols}, torch::kFloat32));
      if (!qconfig_["tensors"][name].contains("outliers")) return W;
      return counted_copy(SparseOutliers::from_stored(read_outliers(weights_, name, q->rows, q->cols)).apply(W));
    }
    const SafetensorsTensor& t = weights_.tensor(name);
    torch::Tensor out = counted_float_tensor(t.shape);
    t.to_float(out.data_ptr<float>());
    return out;
  }

 private:
  std::string dir_;
  ModelConfig config_;
  SafetensorsModel weights_;
  nlohmann::json qconfig_;
};

}  // namespace

std::shared_ptr<WeightSource> open_quantized_weights(const std::string& dir) {
  return std::make_shared<QuantizedSource>(dir);
}

}  // namespace lowbit
