#pragma once
// Element types of stored (safetensors) tensors, with their on-disk names and sizes, and the
// conversions between the floating-point ones and float. Buffers may be unaligned: tensors in a
// safetensors file are packed back to back, so a pointer into one is only as aligned as the
// byte sizes before it.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace lowbit {

enum class DType : uint8_t {
  F32, F16, BF16, F64,
  I8, U8, I16, U16, I32, U32, I64, U64,
  BOOL,
  F8_E4M3, F8_E5M2,  // stored and copied as bytes; no float conversion
};

std::string_view dtype_name(DType t);  // safetensors spelling: "F32", "BF16", "F8_E4M3", ...
size_t dtype_size(DType t);            // bytes per element
std::optional<DType> dtype_from_name(std::string_view name);
bool dtype_is_float16or32(DType t);    // F32, F16 or BF16: the ones to_float/from_float accept

// n elements of t at src (any alignment) to float. Throws Error for any t but F32/F16/BF16.
void to_float(DType t, const void* src, float* dst, size_t n);
// n floats to t at dst (any alignment); F16/BF16 round to nearest even. Same types as to_float.
void from_float(DType t, const float* src, void* dst, size_t n);

}  // namespace lowbit
