#pragma once
// The ggml tensor type ids used in GGUF files, with their block geometry, so that reader and
// writer can size any tensor, including block-quantized ones they cannot decode.
// Ids and sizes follow ggml.h / ggml-common.h (block_size = elements per block, block_bytes =
// sizeof the block struct). Ids that ggml has retired from GGUF files are kept by name so a file
// using one is reported clearly; they have block_size 0.
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace lowbit {

enum class GGMLType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3,
  Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23,
  I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28,
  IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35,
  MXFP4 = 39, NVFP4 = 40, Q1_0 = 41,
};

struct GGMLTypeInfo {
  uint32_t id;
  std::string_view name;
  uint32_t block_size;   // elements per block; 0 for a retired id
  uint32_t block_bytes;  // bytes per block
  bool retired() const { return block_size == 0; }
};

const GGMLTypeInfo* ggml_type_info(uint32_t id);  // nullptr for an id ggml never defined
const GGMLTypeInfo& ggml_type_info(GGMLType t);
std::optional<GGMLType> ggml_type_from_name(std::string_view name);  // "Q4_K" -> Q4_K; not retired ones
std::string_view ggml_type_name(uint32_t id);  // "Q4_K", or "unknown" for an undefined id
const std::vector<GGMLTypeInfo>& ggml_types();  // every entry, retired ones included

// Bytes of a tensor with dims ne (innermost first) of type t, or nullopt when ne[0] is not a
// multiple of the block size, a dim is negative, or the size overflows 64 bits.
std::optional<uint64_t> ggml_nbytes(const GGMLTypeInfo& t, const std::vector<int64_t>& ne);

}  // namespace lowbit
