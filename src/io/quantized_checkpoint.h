#pragma once
// lowbit's quantized checkpoint: a Hugging Face-style directory whose safetensors hold, for each
// quantized weight NAME, its packed codes and stored scales:
//   NAME.qcodes  U8  [rows, ceil(cols*bits/8)]   codes as in format/packing.h
//   NAME.qscales F16 [slots] (plain formats: the fp16 scales) or U8 [slots] (E8M0 / E4M3 bytes)
//   NAME.qzeros  U8  [slots]                      zero points, asymmetric integers only
// or, for GGUF types (format/ggml_formats.h), ggml's own blocks:
//   NAME.qblocks U8  [rows, row bytes]            exactly as a GGUF file stores the rows
// Every other tensor (embeddings, norms, biases) is stored as F32 under its own name.
// The safetensors metadata key "quantization_config" holds a JSON object that records, per
// tensor, its format, method and parameters ("tensors"), and per linear input its activation
// format and static scale ("activations"). config.json carries the model config plus a short
// "quantization_config" marking the directory as lowbit's.
//
// Writing is atomic and streaming: tensors are buffered up to a shard size and written to shard
// files in a temporary directory beside the output, which is renamed into place by finish().
// One shard is named model.safetensors; several become model-0000i-of-0000N.safetensors plus
// model.safetensors.index.json.
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "format/quantized_tensor.h"
#include "io/dtype.h"
#include "io/safetensors.h"

namespace lowbit {

constexpr const char* kQuantMethodName = "lowbit";

class QuantizedCheckpointWriter {
 public:
  // hf_config: the model's config.json object. max_shard_bytes bounds the memory held.
  QuantizedCheckpointWriter(const std::string& out_dir, nlohmann::json hf_config,
                            size_t max_shard_bytes = size_t(2) << 30);
  ~QuantizedCheckpointWriter();  // an unfinished output is removed

  void add_float(const std::string& name, std::vector<int64_t> shape, const float* data);
  void add_quantized(const std::string& name, const QuantizedTensor& q);

  // Writes the last shard, the index, config.json, copies tokenizer files from tokenizer_dir (if
  // not empty), and moves the directory into place (replacing an older output).
  void finish(const nlohmann::json& quantization_config, const std::string& tokenizer_dir);

 private:
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::string out_, tmp_;
  nlohmann::json hf_config_;
  size_t max_shard_bytes_, pending_bytes_ = 0;
  std::vector<Pending> pending_;
  std::vector<std::string> shard_files_;                 // temporary shard names, in order
  std::vector<std::vector<std::string>> shard_tensors_;  // tensor names per shard
  bool finished_ = false;

  void add(Pending p);
  void maybe_flush();
  void flush(const nlohmann::json& quantization_config);
};

// Rebuilds a QuantizedTensor from the stored tensors of NAME and its entry in "tensors".
QuantizedTensor read_quantized_tensor(const SafetensorsModel& weights, const std::string& name,
                                      const nlohmann::json& tensor_config);

// The "quantization_config" of a quantized checkpoint directory's safetensors (Error if absent).
nlohmann::json read_quantization_config(const SafetensorsModel& weights);

// True if config.json marks the directory as a lowbit quantized checkpoint.
bool is_quantized_checkpoint(const nlohmann::json& hf_config);

}  // namespace lowbit
