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
#include "io/ggml_type.h"
#include "util/half.h"

namespace lowbit::kernels {

// How a level turns codes into unscaled values.
enum class ElementKind {
  Small,        // at most 4 bits: a 16-entry table held in registers
  SignedInt,    // lut[c] = c sign-extended from `bits` bits: a conversion, no table
  UnsignedInt,  // lut[c] = c
  Table,        // anything else (fp6, fp8, ...): a table look-up
};

inline ElementKind classify_element(const float* lut, int bits) {
  if (bits <= 4) return ElementKind::Small;
  int n = 1 << bits;
  bool is_signed = true, is_unsigned = true;
  for (int c = 0; c < n; ++c) {
    is_signed = is_signed && lut[c] == float(c >= n / 2 ? c - n : c);
    is_unsigned = is_unsigned && lut[c] == float(c);
  }
  return is_signed ? ElementKind::SignedInt
                   : is_unsigned ? ElementKind::UnsignedInt : ElementKind::Table;
}

// Whether the top bit of a code is a sign bit: lut[c + 2^(b-1)] is lut[c] with the float's sign
// bit flipped, bit for bit (NaN codes included). True for every minifloat; a look-up then needs
// only the first half of the table.
inline bool is_sign_magnitude(const float* lut, int bits) {
  int half = 1 << (bits - 1);
  for (int c = 0; c < half; ++c)
    if ((float_to_bits(lut[c]) ^ 0x80000000u) != float_to_bits(lut[c + half])) return false;
  return true;
}

// FP8 codes that F16C can convert: E5M2 is the top byte of an fp16; E4M3 moved into fp16's
// fields, (c & 0x80) << 8 | (c & 0x7f) << 7, is its value / 256 (subnormals included). NaN codes
// convert to something else and are replaced by the table's NaN.
enum class Fp8Kind { None, E4M3, E5M2 };

// Whether code c of the kind is one whose conversion is replaced (its table value is used).
inline bool fp8_special(Fp8Kind kind, uint32_t c) {
  return kind == Fp8Kind::E4M3 ? (c & 0x7f) == 0x7f : (c & 0x7f) > 0x7c;
}

inline Fp8Kind classify_fp8(const float* lut, int bits) {
  if (bits != 8 || !is_sign_magnitude(lut, bits)) return Fp8Kind::None;
  for (Fp8Kind kind : {Fp8Kind::E4M3, Fp8Kind::E5M2}) {
    bool ok = true;
    for (uint32_t c = 0; c < 256 && ok; ++c) {
      float v = kind == Fp8Kind::E5M2
                    ? fp16_to_float(uint16_t(c << 8))
                    : fp16_to_float(uint16_t((c & 0x80) << 8 | (c & 0x7f) << 7)) * 256.0f;
      // Special codes must hold one NaN pattern per sign: the replacement is that of code 0xff
      // with the code's sign.
      ok = fp8_special(kind, c) ? float_to_bits(lut[c]) == (float_to_bits(lut[0xff]) &
                                                             0x7fffffffu) + (c & 0x80u) * (1u << 24)
                                : float_to_bits(v) == float_to_bits(lut[c]);
    }
    if (ok) return kind;
  }
  return Fp8Kind::None;
}


// A codec's table and what the SIMD levels need to know about it, computed once per codec
// (element_info caches it; codecs are the registry's static objects).
struct ElementInfo {
  alignas(64) float lut[256] = {};  // lut[c] = codec.decode(c) for c < 2^bits; 0 beyond
  int bits = 0;
  ElementKind kind = ElementKind::Table;
  bool sign_magnitude = false;
  Fp8Kind fp8 = Fp8Kind::None;
};
const ElementInfo& element_info(const Codec& codec);

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
  const ElementInfo* element = nullptr;
  const float* lut = nullptr;  // element->lut, 64-byte aligned

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

// How a format's step and zero point are found, for kernels specialized on it.
enum class ScaleKind {
  Any,    // decided at run time
  Plain,  // step = scale, no zero point
  Asym,   // step = scale, zero point
  Nv,     // step = scale * tensor scale, no zero point
};
inline ScaleKind scale_kind(const WeightView& w) {
  return w.asym ? ScaleKind::Asym : w.nv ? ScaleKind::Nv : ScaleKind::Plain;
}

// Row r's steps and zero points, indexed by segment (for the SIMD loops).
struct RowParams {
  const float* scales;
  const uint8_t* zeros;  // null when symmetric
  float factor;
  template <ScaleKind S = ScaleKind::Any>
  float step(int64_t j) const {
    if constexpr (S == ScaleKind::Plain || S == ScaleKind::Asym) return scales[j];
    return scales[j] * factor;
  }
  template <ScaleKind S = ScaleKind::Any>
  float zero(int64_t j) const {
    if constexpr (S == ScaleKind::Plain || S == ScaleKind::Nv) return 0.0f;
    if constexpr (S == ScaleKind::Asym) return float(zeros[j]);
    return zeros ? float(zeros[j]) : 0.0f;
  }
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

// One kernel level. `applies` says whether the level's vector code handles the view (else the
// scalar kernels run).
struct KernelSet {
  bool (*applies)(const WeightView& w);
  // Rows [begin, end) of Ŵ; row r goes to out + (r - begin) * out_stride.
  void (*dequantize_rows)(const WeightView& w, int64_t begin, int64_t end, float* out,
                          int64_t out_stride);
  // y[i, r] for i < n, r < w.rows, at y + i * ldy + r.
  void (*matmul)(const float* x, int64_t n, const WeightView& w, float* y, int64_t ldy);
};

// Each is defined in its own file; a level the build's architecture lacks returns nullptr.
const KernelSet* scalar_kernels();
const KernelSet* avx2_kernels();
const KernelSet* avx512_kernels();
bool cpu_has_avx2();    // AVX2, FMA, F16C
bool cpu_has_avx512();  // AVX-512 F, BW, VL, DQ, plus cpu_has_avx2()

// Decodes rows [r0, r1), columns [k0, k1) of a weight into out (row r at out + (r - r0) * ld).
using TileDecodeFn = void (*)(const WeightView& w, int64_t r0, int64_t r1, float* out, int64_t ld, int64_t k0,
                              int64_t k1);
// y = x · Ŵᵀ through tiles that `decode` fills (kernels_avx512.cpp's fp32 GEMM), y[i, r] at
// y + i * ldy + r. Needs AVX-512.
void gemm_tiles_avx512(const float* x, int64_t n, const WeightView& w, float* y, int64_t ldy, TileDecodeFn decode);

// ggml's blocks as stored (kernels_ggml_avx512.cpp): a view with codes = the blocks, row_bytes =
// one row's blocks, rows and cols set (nothing else is read). Types: Q4_0, Q4_1, Q8_0, IQ4_NL,
// Q4_K, Q6_K, and F16 / BF16 with cols a multiple of 16, on a CPU with AVX-512.
bool ggml_avx512_supports(GGMLType t);
void ggml_matmul_avx512(const float* x, int64_t n, const WeightView& w, GGMLType t, float* y, int64_t ldy);

// Whether segments of the view can be walked in chunks of 16 columns that start on byte
// boundaries: every segment but a row's last is a multiple of 16 columns.
inline bool chunks_of_16(const WeightView& w) {
  return w.segs_per_row == 1 || w.seg_len % 16 == 0;
}

}  // namespace lowbit::kernels
