#pragma once
// lowbit's quantized checkpoint: a Hugging Face-style directory whose safetensors hold, for each
// quantized weight NAME, its packed codes and stored scales:
//   NAME.qcodes  U8  [rows, ceil(cols*bits/8)]   codes as in format/packing.h
//   NAME.qscales F16 [slots] (plain formats: the fp16 scales) or U8 [slots] (E8M0 / E4M3 bytes)
//   NAME.qzeros  U8  [slots]                      zero points, asymmetric integers only
// or, for GGUF types (format/ggml_formats.h), ggml's own blocks:
//   NAME.qblocks U8  [rows, row bytes]            exactly as a GGUF file stores the rows
// A weight quantized with outliers (GWQ / SpQR: a few weights kept in fp16 beside the low-bit
// part, quant/outliers.h) also has, in CSR form:
//   NAME.outlier_rowptr I32 [rows + 1]   row r's outliers are entries rowptr[r] .. rowptr[r+1]-1
//   NAME.outlier_cols   U16 [nnz]        (I32 when cols > 65535), increasing within a row
//   NAME.outlier_values F16 [nnz]        the value the layer computes with at that position
// and its "tensors" entry an "outliers" object ({"rule": "gradient:1", "count": nnz}).
// Every other tensor (embeddings, norms, biases) is stored under its own name in the dtype it
// was given: the source checkpoint's, unless it was quantized too.
// The safetensors metadata key "quantization_config" holds a JSON object that records, per
// tensor, its format, method and parameters ("tensors"), and per linear input its activation
// format and static scale ("activations"). config.json carries the model config plus a short
// "quantization_config" marking the directory as lowbit's.
//
// Writing is atomic and streaming: tensors are buffered and written to shard files in the scratch
// directory beside the output (io/output_path.h), which finish() moves into place. A shard is
// closed at end_block() once it holds max_shard_bytes, so shards end at decoder-block boundaries:
// the layout depends only on the tensors and the shard size, which is what lets an interrupted
// run resume (quant/resume.h) to the same bytes. An existing output is replaced only if it is a
// lowbit quantized checkpoint and `replace`.
// One shard is named model.safetensors; several become model-0000i-of-0000N.safetensors plus
// model.safetensors.index.json.
#include <functional>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "format/quantized_tensor.h"
#include "io/dtype.h"
#include "io/output_path.h"
#include "io/safetensors.h"

namespace lowbit {

constexpr const char* kQuantMethodName = "lowbit";

// The sparse part of a weight with outliers, as stored (no LibTorch here; quant/outliers.h
// converts to and from SparseOutliers).
struct StoredOutliers {
  int64_t rows = 0, cols = 0;
  std::vector<int32_t> row_ptr;  // [rows + 1]
  std::vector<int32_t> col;      // [nnz]
  std::vector<uint16_t> values;  // [nnz] fp16 bit patterns
};

class QuantizedCheckpointWriter {
 public:
  // hf_config: the model's config.json object. max_shard_bytes bounds the memory held (plus the
  // tensors of one block). reuse: keep what an interrupted run left in the scratch directory, for
  // restore().
  QuantizedCheckpointWriter(const std::string& out_dir, nlohmann::json hf_config, bool replace = false,
                            size_t max_shard_bytes = kDefaultShardBytes, bool reuse = false);
  ~QuantizedCheckpointWriter();  // an unfinished output is removed, unless keep_scratch()
  static constexpr size_t kDefaultShardBytes = size_t(512) << 20;

  void add_float(const std::string& name, std::vector<int64_t> shape, const float* data);
  // A tensor kept as stored: `bytes` hold shape's elements in `dtype`, copied.
  void add_stored(const std::string& name, DType dtype, std::vector<int64_t> shape, const uint8_t* bytes, size_t n);
  void add_quantized(const std::string& name, const QuantizedTensor& q);
  void add_outliers(const std::string& name, const StoredOutliers& o);  // after add_quantized(name)

  // Whether end_block() would close a shard now (it holds max_shard_bytes).
  bool shard_full() const { return pending_bytes_ >= max_shard_bytes_ && !pending_.empty(); }
  // The end of a decoder block (or of any unit a resume may restart at): closes the shard if
  // shard_full(), and writes it on a background thread while the caller goes on with the next
  // block (one shard in flight: a second waits for the first). True if it closed one. Once that
  // shard is on disk, written(state) runs on that thread with the state() that lists it: the
  // moment to record a resume point. A failed write is thrown by the next end_block,
  // close_shards or wait_written.
  bool end_block(std::function<void(const nlohmann::json& state)> written = {});
  void wait_written();  // until the shard in flight is on disk (rethrows its error)
  // Writes the last shard (with the quantization_config in its metadata).
  void close_shards(const nlohmann::json& quantization_config);
  // close_shards() if not done, then the final shard names, the index, config.json, the tokenizer
  // files from tokenizer_dir (if not empty), and moves the directory into place (replacing an
  // older output). Each step can be redone after an interruption.
  void finish(const nlohmann::json& quantization_config, const std::string& tokenizer_dir);
  uint64_t weight_file_bytes() const { return file_bytes_; }  // of the safetensors shards written so far

  // Resume (quant/resume.h): the closed shards, and a writer rebuilt from them. restore() removes
  // every file in the scratch directory the state does not list (a shard cut off by a crash).
  nlohmann::json state() const;
  void restore(const nlohmann::json& state);
  std::string resume_dir() const;  // inside the scratch directory, never part of the output
  void keep_scratch(bool keep = true) { dir_->keep_scratch(keep); }
  const std::string& scratch_dir() const { return dir_->path(); }

 private:
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::unique_ptr<StagedDirectory> dir_;
  nlohmann::json hf_config_;
  size_t max_shard_bytes_, pending_bytes_ = 0;
  uint64_t file_bytes_ = 0;
  std::vector<Pending> pending_;
  std::future<void> writing_;  // the shard in flight
  std::vector<std::string> shard_files_;                 // temporary shard names, in order
  std::vector<std::vector<std::string>> shard_tensors_;  // tensor names per shard
  bool closed_ = false, finished_ = false;

  void add(Pending p);
  // Closes the pending tensors as the next shard; returns the job that writes it.
  std::function<void()> close_shard(const nlohmann::json& quantization_config);
};

// Rebuilds a QuantizedTensor from the stored tensors of NAME and its entry in "tensors".
QuantizedTensor read_quantized_tensor(const SafetensorsModel& weights, const std::string& name,
                                      const nlohmann::json& tensor_config);

// The outliers stored for NAME ([rows, cols]), validated: pointers monotone from 0 to nnz, columns
// in range and increasing within each row, values finite. Error naming the file otherwise.
StoredOutliers read_outliers(const SafetensorsModel& weights, const std::string& name, int64_t rows, int64_t cols);

// What is wrong with outliers of a rows x cols weight, or nothing: `part` names the stored piece
// ("outlier_rowptr", "outlier_cols", "outlier_values"), `why` the problem. Checks the sizes, row
// pointers from 0 to nnz and monotone, columns in range and increasing per row, finite values.
struct OutliersProblem {
  std::string part, why;
};
std::optional<OutliersProblem> find_outliers_problem(const StoredOutliers& o, int64_t rows, int64_t cols);

// The "quantization_config" of a quantized checkpoint directory's safetensors (Error if absent).
nlohmann::json read_quantization_config(const SafetensorsModel& weights);

// Copies tokenizer.json, tokenizer.model and tokenizer_config.json, those that exist, from
// from_dir (nothing if empty) to to_dir.
void copy_tokenizer_files(const std::string& from_dir, const std::string& to_dir);

// True if config.json marks the directory as a lowbit quantized checkpoint.
bool is_quantized_checkpoint(const nlohmann::json& hf_config);

}  // namespace lowbit
