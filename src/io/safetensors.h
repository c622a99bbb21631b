#pragma once
// Reading and writing Hugging Face safetensors files.
//
// Layout (https://huggingface.co/docs/safetensors): 8-byte little-endian header length N, N bytes
// of UTF-8 JSON {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [b, e]}},
// then the data region; offsets are relative to its start. Readers map the file and hand out
// pointers into the mapping, so a model larger than RAM is paged in only as tensors are touched.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "io/dtype.h"
#include "util/atomic_file.h"
#include "util/mapped_file.h"

namespace lowbit {

struct SafetensorsTensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;     // row-major, outermost first; {} is a scalar
  const uint8_t* data = nullptr;  // into the file mapping; may be unaligned (see io/dtype.h)
  size_t nbytes = 0;
  std::string file;               // path of the file holding it, for messages

  int64_t numel() const;
  // Converts F32/F16/BF16 data; any other dtype is an Error naming the tensor and file.
  void to_float(float* dst) const;  // dst holds numel() floats
  std::vector<float> to_float() const;
};

// One .safetensors file, mapped read-only. Every header field is validated on open; a malformed
// file is an Error naming the file and the problem. Movable; tensor pointers stay valid on move.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return file_->path(); }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }  // __metadata__
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }  // in data order
  const SafetensorsTensor* find(std::string_view name) const;  // nullptr if absent
  const SafetensorsTensor& tensor(std::string_view name) const;  // Error if absent
  bool contains(std::string_view name) const { return find(name) != nullptr; }

 private:
  std::unique_ptr<MappedFile> file_;
  std::map<std::string, std::string> metadata_;
  std::vector<SafetensorsTensor> tensors_;
  std::unordered_map<std::string, size_t> by_name_;
};

// A Hugging Face model's weights: a directory holding model.safetensors, or a sharded
// model.safetensors.index.json whose weight_map names the shard of every tensor. Also accepts the
// path of a .safetensors file or of an index file. Every shard is mapped and validated up front
// (mapping is cheap), so a missing shard or a tensor absent from its shard fails at open.
class SafetensorsModel {
 public:
  explicit SafetensorsModel(const std::string& path);

  const std::string& path() const { return path_; }
  bool sharded() const { return sharded_; }
  const std::vector<SafetensorsFile>& files() const { return files_; }  // shards, by file name
  std::vector<std::string> names() const;  // shard order, then data order: sequential reads
  size_t size() const { return order_.size(); }
  const SafetensorsTensor* find(std::string_view name) const;
  const SafetensorsTensor& tensor(std::string_view name) const;  // Error if absent
  bool contains(std::string_view name) const { return find(name) != nullptr; }

 private:
  std::string path_;
  bool sharded_ = false;
  std::vector<SafetensorsFile> files_;
  std::vector<const SafetensorsTensor*> order_;
  std::unordered_map<std::string, const SafetensorsTensor*> by_name_;

  void open_single(const std::string& file);
  void open_index(const std::string& index_path);
};

// Writes a safetensors file atomically, streaming tensor data so that a checkpoint larger than
// RAM never has to be held at once.
//
// Design: the header must precede the data and holds every tensor's offsets, and AtomicFile
// writes sequentially. So all tensors are declared first (name, dtype, shape: that fixes every
// byte size and offset), the header is written when the first data arrives, and then tensor data
// is streamed in declaration order, each tensor in one or more consecutive write() calls. Data is
// packed back to back with no gaps (the reference reader rejects gaps); the JSON header is padded
// with spaces to a multiple of 8 bytes so the data region starts 8-byte aligned. Nothing appears
// at `path` until finish() succeeds; a writer destroyed before that leaves no file behind.
class SafetensorsWriter {
 public:
  explicit SafetensorsWriter(const std::string& path, std::map<std::string, std::string> metadata = {});

  void declare(const std::string& name, DType dtype, std::vector<int64_t> shape);
  // Appends the next n bytes of `name`, which must be the first tensor not yet complete.
  void write(std::string_view name, const void* data, size_t n);
  void finish();  // Error if any declared tensor is incomplete; otherwise commits the file

  size_t data_bytes() const { return data_size_; }  // total of every declared tensor

  // One-shot helper for tensors already in memory.
  struct Input {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    const void* data;  // numel * dtype_size bytes
  };
  static void write_file(const std::string& path, const std::map<std::string, std::string>& metadata,
                         const std::vector<Input>& tensors);

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    size_t begin, end;
  };
  std::string path_;
  std::map<std::string, std::string> metadata_;
  std::unique_ptr<AtomicFile> out_;
  std::vector<Entry> entries_;
  std::unordered_map<std::string, size_t> by_name_;
  size_t data_size_ = 0;
  bool started_ = false, finished_ = false;
  size_t cur_ = 0;       // first tensor with bytes still to write
  size_t cur_done_ = 0;  // bytes of it written so far

  void start();
  void skip_complete();
};

}  // namespace lowbit
