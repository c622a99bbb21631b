#pragma once
// Internal to src/kernels: one flat description of a QuantizedTensor that every kernel level
// reads, and the per-level kernel tables.
//
// A row is cut into segments, each with one scale slot: groups of spec.group_size columns (the
// last one may be partial), or the whole row for per-channel and per-tensor scales. The element
// table `lut` makes every format uniform: the unscaled value of code c is lut[c], so element
//   w = lut[code] * step              (symmetric)
//   w = (lut[code] - zero) * step     (asymmetric; lut[c] = c)
// with step = scale (times the tensor scale for NVFP4, as QuantizedTensor::params computes it).
#include <cstdint>

#include "format/quantized_tensor.h"

namespace lowbit::kernels {

struct WeightView {
  const uint8_t* codes = nullptr;  // packed; row r starts at codes + r * row_bytes
  int64_t rows = 0, cols = 0, row_bytes = 0;
  int bits = 0;
  bool asym = false;
  bool nv = false;              // step = scale * tensor_scale
  int64_t seg_len = 0;          // columns per segment (the last one of a row may be shorter)
  int64_t segs_per_row = 0;
  int64_t slots_per_row = 0;    // 0: one slot for the whole tensor
  const float* scales = nullptr;
  const uint8_t* zeros = nullptr;  // asym only
  float tensor_scale = 1.0f;
  alignas(64) float lut[256] = {};  // lut[c] for c < 2^bits; 0 beyond

  // Scale slot of segment j of row r.
  int64_t slot(int64_t r, int64_t j) const {
    return slots_per_row == 0 ? 0 : r * slots_per_row + j;
  }
  float step(int64_t slot) const { return nv ? scales[slot] * tensor_scale : scales[slot]; }
  float zero(int64_t slot) const { return asym ? float(zeros[slot]) : 0.0f; }
  int64_t seg_begin(int64_t j) const { return j * seg_len; }
  int64_t seg_size(int64_t j) const {
    int64_t b = j * seg_len;
    return cols - b < seg_len ? cols - b : seg_len;
  }
  const uint8_t* row_codes(int64_t r) const { return codes + r * row_bytes; }

  // For the SIMD loops: segment j of row r has scale row_scales(r)[j] and zero point
  // row_zeros(r)[j] (only per-group scales have more than one segment per row, and their slots
  // are consecutive), and step = scale * step_factor, where step_factor is NVFP4's tensor scale
  // and 1 otherwise (x * 1 == x exactly).
  const float* row_scales(int64_t r) const { return scales + slot(r, 0); }
  const uint8_t* row_zeros(int64_t r) const { return asym ? zeros + slot(r, 0) : nullptr; }
  float step_factor() const { return nv ? tensor_scale : 1.0f; }
};

// Row r's steps and zero points, indexed by segment (for the SIMD loops).
struct RowParams {
  const float* scales;
  const uint8_t* zeros;  // null when symmetric
  float factor;
  float step(int64_t j) const { return scales[j] * factor; }
  float zero(int64_t j) const { return zeros ? float(zeros[j]) : 0.0f; }
};
inline RowParams row_params(const WeightView& w, int64_t r) {
  return {w.row_scales(r), w.row_zeros(r), w.step_factor()};
}

// Builds the view; throws lowbit::Error if q's arrays do not match its shape and spec.
void make_view(const QuantizedTensor& q, WeightView& view);

// One code of a packed row (the bit stream of packing.h).
inline uint32_t code_at(const uint8_t* row, int bits, int64_t col) {
  int64_t bit = col * bits;
  uint32_t word = row[bit / 8];
  if (bit % 8 + bits > 8) word |= uint32_t(row[bit / 8 + 1]) << 8;
  return (word >> (bit % 8)) & ((1u << bits) - 1u);
}

// How a level turns codes into unscaled values.
enum class ElementKind {
  Small,        // at most 4 bits: a 16-entry table held in registers
  SignedInt,    // lut[c] = c sign-extended from `bits` bits: a conversion, no table
  UnsignedInt,  // lut[c] = c
  Table,        // anything else (fp6, fp8, ...): a table look-up
};

inline ElementKind element_kind(const WeightView& w) {
  if (w.bits <= 4) return ElementKind::Small;
  int n = 1 << w.bits;
  bool is_signed = true, is_unsigned = true;
  for (int c = 0; c < n; ++c) {
    is_signed = is_signed && w.lut[c] == float(c >= n / 2 ? c - n : c);
    is_unsigned = is_unsigned && w.lut[c] == float(c);
  }
  return is_signed ? ElementKind::SignedInt
                   : is_unsigned ? ElementKind::UnsignedInt : ElementKind::Table;
}

// One kernel level. `applies` says whether the level's vector code handles the view (else the
// scalar kernels run).
struct KernelSet {
  bool (*applies)(const WeightView& w);
  // Rows [begin, end) of Ŵ; row r goes to out + (r - begin) * out_stride.
  void (*dequantize_rows)(const WeightView& w, int64_t begin, int64_t end, float* out,
                          int64_t out_stride);
  void (*matmul)(const float* x, int64_t n, const WeightView& w, float* y);
};

// Each is defined in its own file; a level the build's architecture lacks returns nullptr.
const KernelSet* scalar_kernels();
const KernelSet* avx2_kernels();
const KernelSet* avx512_kernels();
bool cpu_has_avx2();    // AVX2, FMA, F16C, BMI2
bool cpu_has_avx512();  // AVX-512 F, BW, VL, DQ, plus cpu_has_avx2()

// Whether segments of the view can be walked in chunks of 16 columns that start on byte
// boundaries: every segment but a row's last is a multiple of 16 columns.
inline bool chunks_of_16(const WeightView& w) {
  return w.segs_per_row == 1 || w.seg_len % 16 == 0;
}

}  // namespace lowbit::kernels
