#include "io/ggml_type.h"

#include "util/error.h"

namespace lowbit {

namespace {
constexpr uint32_t QK_K = 256;

// Block sizes are sizeof(block_*) from ggml-common.h. Q8_1 is 36 (two halves + 32 int8) as in
// ggml; gguf-py's table still says 40 from an older layout. Q8_1 and Q8_K are ggml's internal
// activation formats and should not appear in model files, but are sized all the same.
const std::vector<GGMLTypeInfo> kTable = {
    {0, "F32", 1, 4},
    {1, "F16", 1, 2},
    {2, "Q4_0", 32, 2 + 16},
    {3, "Q4_1", 32, 2 + 2 + 16},
    {4, "Q4_2", 0, 0},  // retired
    {5, "Q4_3", 0, 0},  // retired
    {6, "Q5_0", 32, 2 + 4 + 16},
    {7, "Q5_1", 32, 2 + 2 + 4 + 16},
    {8, "Q8_0", 32, 2 + 32},
    {9, "Q8_1", 32, 2 + 2 + 32},
    {10, "Q2_K", QK_K, 2 + 2 + QK_K / 16 + QK_K / 4},                   // 84
    {11, "Q3_K", QK_K, 2 + QK_K / 4 + QK_K / 8 + 12},                   // 110
    {12, "Q4_K", QK_K, 2 + 2 + 12 + QK_K / 2},                          // 144
    {13, "Q5_K", QK_K, 2 + 2 + 12 + QK_K / 8 + QK_K / 2},               // 176
    {14, "Q6_K", QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16},            // 210
    {15, "Q8_K", QK_K, 4 + QK_K + 2 * (QK_K / 16)},                     // 292
    {16, "IQ2_XXS", QK_K, 2 + 2 * (QK_K / 8)},                          // 66
    {17, "IQ2_XS", QK_K, 2 + 2 * (QK_K / 8) + QK_K / 32},               // 74
    {18, "IQ3_XXS", QK_K, 2 + 3 * (QK_K / 8)},                          // 98
    {19, "IQ1_S", QK_K, 2 + QK_K / 8 + 2 * (QK_K / 32)},                // 50
    {20, "IQ4_NL", 32, 2 + 16},
    {21, "IQ3_S", QK_K, 2 + QK_K / 4 + QK_K / 32 + QK_K / 8 + QK_K / 64},  // 110
    {22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 32 + QK_K / 32},          // 82
    {23, "IQ4_XS", QK_K, 2 + 2 + QK_K / 64 + QK_K / 2},                 // 136
    {24, "I8", 1, 1},
    {25, "I16", 1, 2},
    {26, "I32", 1, 4},
    {27, "I64", 1, 8},
    {28, "F64", 1, 8},
    {29, "IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32},              // 56, scale packed in
    {30, "BF16", 1, 2},
    {31, "Q4_0_4_4", 0, 0},  // retired: runtime repacks of Q4_0, removed from GGUF files
    {32, "Q4_0_4_8", 0, 0},
    {33, "Q4_0_8_8", 0, 0},
    {34, "TQ1_0", QK_K, 2 + (QK_K - 4 * QK_K / 64) / 5 + QK_K / 64},    // 54
    {35, "TQ2_0", QK_K, 2 + QK_K / 4},                                  // 66
    {36, "IQ4_NL_4_4", 0, 0},  // retired repacks
    {37, "IQ4_NL_4_8", 0, 0},
    {38, "IQ4_NL_8_8", 0, 0},
    {39, "MXFP4", 32, 1 + 16},  // E8M0 scale + 32 x 4-bit
    // Recent additions (gguf-py constants): E4M3 scale per 16, 4 per block; 1-bit with a half scale.
    {40, "NVFP4", 64, 4 + 32},
    {41, "Q1_0", 128, 2 + 16},
};
}  // namespace

const std::vector<GGMLTypeInfo>& ggml_types() { return kTable; }

const GGMLTypeInfo* ggml_type_info(uint32_t id) {
  for (const auto& t : kTable)
    if (t.id == id) return &t;
  return nullptr;
}

const GGMLTypeInfo& ggml_type_info(GGMLType t) {
  if (const auto* i = ggml_type_info(uint32_t(t))) return *i;
  fail("invalid GGMLType value {}", uint32_t(t));
}

std::optional<GGMLType> ggml_type_from_name(std::string_view name) {
  for (const auto& t : kTable)
    if (t.name == name && !t.retired()) return GGMLType(t.id);
  return std::nullopt;
}

std::string_view ggml_type_name(uint32_t id) {
  const auto* t = ggml_type_info(id);
  return t ? t->name : std::string_view("unknown");
}

std::optional<uint64_t> ggml_nbytes(const GGMLTypeInfo& t, const std::vector<int64_t>& ne) {
  if (t.retired()) return std::nullopt;
  uint64_t n = t.block_bytes;
  for (size_t i = 0; i < ne.size(); ++i) {
    if (ne[i] < 0) return std::nullopt;
    uint64_t d = uint64_t(ne[i]);
    if (i == 0) {
      if (d % t.block_size) return std::nullopt;
      d /= t.block_size;
    }
    if (__builtin_mul_overflow(n, d, &n)) return std::nullopt;
  }
  if (ne.empty() && t.block_size != 1) return std::nullopt;  // a scalar is not a whole block
  return n;
}

}  // namespace lowbit
