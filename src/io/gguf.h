#pragma once
// Reading GGUF (v2 and v3, little-endian) model files, as written by llama.cpp.
//
// Layout: "GGUF", u32 version, u64 tensor count, u64 metadata count; metadata as (string key,
// u32 value type, value); tensor infos as (string name, u32 n_dims, u64 ne[n_dims], u32 ggml
// type, u64 offset); then, at the next multiple of general.alignment (default 32), the data
// section that tensor offsets are relative to. Strings are u64 length + bytes (no terminator).
// The file is mapped; every count, length and offset is checked against its size before use.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/ggml_type.h"
#include "util/mapped_file.h"

namespace lowbit {

enum class GGUFValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6,
  BOOL = 7, STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
std::string_view gguf_value_type_name(GGUFValueType t);  // "UINT32", ...

// One metadata value, keeping its exact GGUF type so it can be written back unchanged.
struct GGUFValue {
  GGUFValueType type = GGUFValueType::UINT8;
  GGUFValueType array_type = GGUFValueType::UINT8;  // element type, when type == ARRAY
  // Scalars as JSON number/bool/string (integers keep their signedness, FLOAT32 widened to
  // double exactly); arrays as a JSON array, nested arrays as nested JSON arrays. Strings are
  // raw bytes, not necessarily valid UTF-8: dump() with error_handler_t::replace if printing.
  nlohmann::json value;
  std::vector<GGUFValue> nested;  // arrays of arrays only: each inner array with its own types

  bool is_integer() const;  // any of the 8 integer types
  bool is_float() const;    // FLOAT32 or FLOAT64
};

struct GGUFTensor {
  std::string name;
  std::vector<int64_t> ne;     // ggml order, innermost first: ne[0] is the row length
  std::vector<int64_t> shape;  // row-major, outermost first (ne reversed), like safetensors
  uint32_t type = 0;           // ggml type id (see io/ggml_type.h)
  uint64_t offset = 0;         // relative to the data section
  const uint8_t* data = nullptr;  // into the mapping; aligned to the file's alignment
  size_t nbytes = 0;
  std::string file;            // path of the file holding it, for messages

  int64_t numel() const;
  std::string_view type_name() const { return ggml_type_name(type); }
  // F32, F16, BF16 and the block types dequantize_ggml decodes (Q8_0, Q4_0, Q4_1, IQ4_NL, Q4_K,
  // Q6_K; io/ggml_blocks.h), bit-exact with ggml's dequantize_row_*; any other type is an Error
  // naming tensor, file and type.
  void to_float(float* dst) const;  // dst holds numel() floats
  std::vector<float> to_float() const;
};

class GGUFFile {
 public:
  explicit GGUFFile(const std::string& path);

  const std::string& path() const { return file_->path(); }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // file offset of the data section

  // Metadata, in file order.
  const std::vector<std::pair<std::string, GGUFValue>>& metadata() const { return kv_; }
  const GGUFValue* find(std::string_view key) const;  // nullptr if absent
  bool has(std::string_view key) const { return find(key) != nullptr; }
  const GGUFValue& get(std::string_view key) const;  // Error if absent
  // Typed getters: Error naming file and key if absent or of another type. get_int/get_uint
  // accept any integer type whose value fits; get_float accepts FLOAT32/FLOAT64.
  std::string get_string(std::string_view key) const;
  int64_t get_int(std::string_view key) const;
  uint64_t get_uint(std::string_view key) const;
  double get_float(std::string_view key) const;
  bool get_bool(std::string_view key) const;
  // With a fallback for an absent key (a present key of the wrong type is still an Error).
  std::string get_string(std::string_view key, const std::string& fallback) const;
  int64_t get_int(std::string_view key, int64_t fallback) const;
  double get_float(std::string_view key, double fallback) const;
  bool get_bool(std::string_view key, bool fallback) const;
  // Arrays of a matching element type (ints: any integer type; floats: FLOAT32/FLOAT64).
  std::vector<std::string> get_string_array(std::string_view key) const;
  std::vector<int64_t> get_int_array(std::string_view key) const;
  std::vector<double> get_float_array(std::string_view key) const;

  const std::vector<GGUFTensor>& tensors() const { return tensors_; }  // in file (info) order
  const GGUFTensor* find_tensor(std::string_view name) const;  // nullptr if absent
  const GGUFTensor& tensor(std::string_view name) const;  // Error if absent

 private:
  std::unique_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GGUFValue>> kv_;
  std::unordered_map<std::string, size_t> kv_index_;
  std::vector<GGUFTensor> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;

  [[noreturn]] void wrong_type(std::string_view key, const GGUFValue& v, std::string_view want) const;
};

}  // namespace lowbit
