// Weights from a Hugging Face directory: config.json plus model.safetensors or a sharded index.
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "io/dtype.h"
#include "io/quantized_checkpoint.h"
#include "io/safetensors.h"
#include "model/weight_source.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace lowbit {

namespace {

class HFSource : public WeightSource, public std::enable_shared_from_this<HFSource> {
 public:
  explicit HFSource(const std::string& dir)
      : dir_(dir), config_(ModelConfig::from_file((std::filesystem::path(dir) / "config.json").string())),
        weights_(dir) {}

  const ModelConfig& config() const override { return config_; }
  bool has(const std::string& name) const override { return weights_.contains(name); }
  std::vector<std::string> names() const override { return weights_.names(); }
  std::vector<int64_t> shape(const std::string& name) const override { return weights_.tensor(name).shape; }
  std::string tokenizer_dir() const override { return dir_; }
  std::string description() const override { return dir_; }

  std::optional<StoredTensorView> get_stored(const std::string& name) const override {
    const SafetensorsTensor& t = weights_.tensor(name);
    if (!dtype_is_float16or32(t.dtype)) return std::nullopt;
    return StoredTensorView{t.dtype, t.shape, t.data, t.nbytes};
  }

  torch::Tensor get(const std::string& name) const override {
    const SafetensorsTensor& t = weights_.tensor(name);
    if (!dtype_is_float16or32(t.dtype))
      fail("{}: tensor '{}' has dtype {}, expected F32, F16 or BF16", t.file, name, dtype_name(t.dtype));
    std::vector<int64_t> shape = t.shape;
    // Aligned F32 is used in place: the tensor keeps the mapping alive, and pages load on demand.
    if (t.dtype == DType::F32 && reinterpret_cast<uintptr_t>(t.data) % alignof(float) == 0)
      return counted_alias(t.data, shape, shared_from_this());
    torch::Tensor out = counted_float_tensor(shape);
    // In slices on every thread: the conversion (and first touch of the new pages) is most of a
    // plain RTN run's serial time.
    float* dst = out.data_ptr<float>();
    const size_t element = dtype_size(t.dtype);
    at::parallel_for(0, t.numel(), int64_t(1) << 18, [&](int64_t begin, int64_t end) {
      to_float(t.dtype, t.data + size_t(begin) * element, dst + begin, size_t(end - begin));
    });
    release_mapped_pages(t.data, t.nbytes);  // converted: the stored bytes are not needed again soon
    return out;
  }

 private:
  std::string dir_;
  ModelConfig config_;
  SafetensorsModel weights_;
};

}  // namespace

std::shared_ptr<WeightSource> open_hf_weights(const std::string& dir) { return std::make_shared<HFSource>(dir); }

std::shared_ptr<WeightSource> open_weights(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) fail("model path {} does not exist", path);
  if (fs::is_directory(path, ec)) {
    fs::path config = fs::path(path) / "config.json";
    if (!fs::exists(config, ec)) fail("{}: no config.json in this model directory", path);
    std::ifstream in(config);
    nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (is_quantized_checkpoint(j)) return open_quantized_weights(path);
    return open_hf_weights(path);
  }
  if (fs::path(path).extension() == ".gguf") return open_gguf_weights(path);
  fail("{}: not a model (expected a Hugging Face directory with config.json, or a .gguf file)", path);
}

}  // namespace lowbit
