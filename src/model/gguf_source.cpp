// Weights from a GGUF file (F32, F16, BF16 or the block types io/ggml_blocks.h decodes), presented with Hugging Face names and
// layouts. llama.cpp's converter permutes the rows of q/k for llama-architecture models (it
// rotates adjacent pairs where HF rotates halves); this source undoes that permutation.
#include <torch/torch.h>

#include <filesystem>

#include "format/ggml_formats.h"
#include "format/quantized_tensor.h"
#include "io/ggml_blocks.h"
#include "io/gguf.h"
#include "model/gguf_names.h"
#include "model/weight_source.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace lowbit {

namespace {

ModelConfig config_from_gguf(const GGUFFile& f) {
  const std::string arch = f.get_string("general.architecture");
  if (arch != "llama" && arch != "qwen2")
    fail("{}: unsupported GGUF architecture '{}' (supported: llama, qwen2)", f.path(), arch);
  auto key = [&](const char* k) { return arch + "." + k; };
  nlohmann::json j;
  j["model_type"] = arch;
  j["hidden_size"] = f.get_int(key("embedding_length"));
  j["intermediate_size"] = f.get_int(key("feed_forward_length"));
  j["num_hidden_layers"] = f.get_int(key("block_count"));
  int64_t heads = f.get_int(key("attention.head_count"));
  j["num_attention_heads"] = heads;
  j["num_key_value_heads"] = f.get_int(key("attention.head_count_kv"), heads);
  int64_t hidden = j["hidden_size"];
  j["head_dim"] = f.get_int(key("attention.key_length"), f.get_int(key("rope.dimension_count"), hidden / heads));
  j["rms_norm_eps"] = f.get_float(key("attention.layer_norm_rms_epsilon"));
  j["rope_theta"] = f.get_float(key("rope.freq_base"), 10000.0);
  j["max_position_embeddings"] = f.get_int(key("context_length"), 2048);
  const GGUFTensor& emb = f.tensor("token_embd.weight");
  j["vocab_size"] = emb.shape.at(0);
  j["tie_word_embeddings"] = f.find_tensor("output.weight") == nullptr;
  j["bos_token_id"] = f.get_int("tokenizer.ggml.bos_token_id", 1);
  j["eos_token_id"] = f.get_int("tokenizer.ggml.eos_token_id", 2);
  std::string scaling = f.get_string(key("rope.scaling.type"), "none");
  if (scaling == "linear") {
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", f.get_float(key("rope.scaling.factor"))}};
  } else if (scaling != "none") {
    fail("{}: unsupported rope scaling type '{}' in GGUF", f.path(), scaling);
  }
  if (f.find_tensor("rope_freqs.weight"))
    fail("{}: unsupported: per-frequency rope factors (rope_freqs.weight); load the Hugging Face copy", f.path());
  return ModelConfig::from_json(j, f.path());
}

class GGUFSource : public WeightSource {
 public:
  explicit GGUFSource(const std::string& path) : file_(path), config_(config_from_gguf(file_)) {
    arch_ = file_.get_string("general.architecture");
    for (const GGUFTensor& t : file_.tensors()) {
      std::string n = hf_name_of_gguf(t.name);
      if (!n.empty()) by_hf_name_.emplace(n, &t);
    }
    std::filesystem::path dir = std::filesystem::path(path).parent_path();
    if (std::filesystem::exists(dir / "tokenizer.json")) tokenizer_dir_ = dir.string();
  }

  const ModelConfig& config() const override { return config_; }
  bool has(const std::string& name) const override { return by_hf_name_.count(name) > 0; }
  std::string tokenizer_dir() const override { return tokenizer_dir_; }
  std::string description() const override { return file_.path(); }

  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    for (const auto& [n, t] : by_hf_name_) out.push_back(n);
    return out;
  }

  std::vector<int64_t> shape(const std::string& name) const override { return find(name).shape; }

  // A block-quantized matrix as stored (ggml blocks run by the packed kernels), rows in HF order.
  std::optional<QuantizedTensor> get_quantized(const std::string& name) const override {
    const GGUFTensor& t = find(name);
    std::optional<FormatSpec> spec = gguf_spec(GGMLType(t.type));
    if (!spec || !ggml_blocks_supported(GGMLType(t.type)) || t.shape.size() != 2) return std::nullopt;
    const int64_t rows = t.shape[0], cols = t.shape[1], row_bytes = ggml_row_bytes(*spec, cols);
    if (int64_t(t.nbytes) != rows * row_bytes)
      fail("{}: tensor '{}' ({}) holds {} bytes, expected {}", file_.path(), t.name, t.type_name(), t.nbytes, rows * row_bytes);
    std::vector<uint8_t> blocks(t.data, t.data + t.nbytes);
    if (int64_t heads = permuted_heads(name)) {
      // Row h*D + j of llama.cpp's order holds HF row h*D + (j % 2) * D/2 + j / 2.
      const int64_t D = config_.head_dim;
      if (rows != heads * D) fail("{}: tensor '{}' has {} rows, expected {}", file_.path(), t.name, rows, heads * D);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t h = r / D, j = r % D, hf = h * D + (j % 2) * (D / 2) + j / 2;
        std::copy_n(t.data + r * row_bytes, row_bytes, blocks.data() + hf * row_bytes);
      }
    }
    release_mapped_pages(t.data, t.nbytes);  // copied: the packed copy is what stays resident
    return from_ggml_blocks(*spec, rows, cols, std::move(blocks));
  }

  torch::Tensor get(const std::string& name) const override {
    const GGUFTensor& t = find(name);
    torch::Tensor out = counted_float_tensor(t.shape);
    t.to_float(out.data_ptr<float>());
    if (int64_t heads = permuted_heads(name)) out = counted_copy(unpermute(out, heads));
    return out;
  }

 private:
  GGUFFile file_;
  ModelConfig config_;
  std::string arch_, tokenizer_dir_;
  std::map<std::string, const GGUFTensor*> by_hf_name_;

  const GGUFTensor& find(const std::string& name) const {
    auto it = by_hf_name_.find(name);
    if (it == by_hf_name_.end()) fail("{}: no tensor for '{}'", file_.path(), name);
    return *it->second;
  }

  // The heads of a q/k weight whose rows llama.cpp permuted, or 0.
  int64_t permuted_heads(const std::string& name) const {
    if (arch_ != "llama") return 0;
    if (name.find("q_proj.") != std::string::npos) return config_.num_heads;
    if (name.find("k_proj.") != std::string::npos) return config_.num_kv_heads;
    return 0;
  }

  // llama.cpp stores each head's rows as interleaved pairs (r0, r_{D/2}, r1, r_{D/2+1}, ...);
  // HF keeps the two halves apart. [heads, D/2, 2, ...] -> [heads, 2, D/2, ...].
  torch::Tensor unpermute(const torch::Tensor& w, int64_t heads) const {
    std::vector<int64_t> shape = {heads, config_.head_dim / 2, 2};
    for (int64_t i = 1; i < w.dim(); ++i) shape.push_back(w.size(i));
    return w.reshape(shape).transpose(1, 2).reshape(w.sizes()).contiguous();
  }
};

}  // namespace

std::shared_ptr<WeightSource> open_gguf_weights(const std::string& file) {
  return std::make_shared<GGUFSource>(file);
}

}  // namespace lowbit
