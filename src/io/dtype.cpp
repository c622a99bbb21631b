#include "io/dtype.h"

#include <bit>
#include <cstring>

#include "util/error.h"
#include "util/half.h"

namespace lowbit {

// Every on-disk format lowbit reads is little-endian; raw loads below rely on the host being so too.
static_assert(std::endian::native == std::endian::little, "lowbit assumes a little-endian host");

namespace {
struct DTypeInfo {
  DType type;
  std::string_view name;
  size_t size;
};
constexpr DTypeInfo kTypes[] = {
    {DType::F32, "F32", 4},   {DType::F16, "F16", 2},         {DType::BF16, "BF16", 2},
    {DType::F64, "F64", 8},   {DType::I8, "I8", 1},           {DType::U8, "U8", 1},
    {DType::I16, "I16", 2},   {DType::U16, "U16", 2},         {DType::I32, "I32", 4},
    {DType::U32, "U32", 4},   {DType::I64, "I64", 8},         {DType::U64, "U64", 8},
    {DType::BOOL, "BOOL", 1}, {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E5M2, "F8_E5M2", 1},
};

const DTypeInfo& info(DType t) {
  for (const auto& i : kTypes)
    if (i.type == t) return i;
  fail("invalid DType value {}", int(t));
}

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
}  // namespace

std::string_view dtype_name(DType t) { return info(t).name; }
size_t dtype_size(DType t) { return info(t).size; }

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& i : kTypes)
    if (i.name == name) return i.type;
  return std::nullopt;
}

bool dtype_is_float16or32(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

void to_float(DType t, const void* src, float* dst, size_t n) {
  if (!dtype_is_float16or32(t)) fail("cannot convert {} data to float (only F32, F16 and BF16)", dtype_name(t));
  if (n == 0) return;  // memcpy with a null pointer is undefined even for 0 bytes
  const auto* s = static_cast<const uint8_t*>(src);
  switch (t) {
    case DType::F32:
      std::memcpy(dst, s, n * 4);
      return;
    case DType::F16:
      for (size_t i = 0; i < n; ++i) dst[i] = fp16_to_float(load_u16(s + 2 * i));
      return;
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_float(load_u16(s + 2 * i));
      return;
    default:
      return;  // unreachable: checked above
  }
}

void from_float(DType t, const float* src, void* dst, size_t n) {
  if (!dtype_is_float16or32(t)) fail("cannot convert float to {} (only F32, F16 and BF16)", dtype_name(t));
  if (n == 0) return;
  auto* d = static_cast<uint8_t*>(dst);
  switch (t) {
    case DType::F32:
      std::memcpy(d, src, n * 4);
      return;
    case DType::F16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h = float_to_fp16(src[i]);
        std::memcpy(d + 2 * i, &h, 2);
      }
      return;
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h = float_to_bf16(src[i]);
        std::memcpy(d + 2 * i, &h, 2);
      }
      return;
    default:
      return;
  }
}

}  // namespace lowbit
