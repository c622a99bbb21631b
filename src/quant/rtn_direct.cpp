// Plain RTN onto Q4_0, Q8_0, Q6_K and symmetric INT2/4/8 with fp16 scales per group or channel,
// block by block in C++ loops, straight into the stored bytes (methods.h). Each step is the float
// operation quantize_rtn's tensor ops perform (quant/grid.cpp, quant/ggml_grid.cpp), in the same
// order, so codes, scales and dequantized values are the same bits. smax(v) is the signed value
// of the largest |v|, the first one on ties (torch's argmax).
//   Q4_0  d = fp16(smax(x) * (1 / -8));  q in -8..7
//   Q8_0  d = fp16(max |x| * (1 / 127)); q in -127..127
//   Q6_K  per sub-block of 16: s = smax(x) * (1 / -32); per super-block of 256:
//         d = fp16(smax(s) / -128), sc = clamp(rne(s / d), -128, 127) (0 where d is 0),
//         step = d * sc; q in -32..31
//   INT   scale = fp16(max |x| / max) per group; q in -max..max (max = 2^(b-1) - 1)
//   t = x / step (0 where step is 0); q = clamp(rne(t), grid); value = q * step (+0 for q = 0).
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "format/ggml_formats.h"
#include "format/int_format.h"
#include "format/packing.h"
#include "io/dtype.h"
#include "io/ggml_blocks.h"
#include "quant/methods.h"
#include "util/error.h"
#include "util/half.h"

namespace lowbit {

namespace {

// Adding and subtracting 1.5 * 2^23 rounds a float to an integer, half to even, for |t| < 2^22
// (every ratio here is at most a few times the grid's end), in two plain additions the compiler
// keeps.
constexpr float kRound = 12582912.0f;
#define LOWBIT_INLINE inline __attribute__((always_inline))
LOWBIT_INLINE float round_even(float t) { return (t + kRound) - kRound; }
LOWBIT_INLINE float clamp(float v, float lo, float hi) { return v < lo ? lo : v > hi ? hi : v; }
LOWBIT_INLINE bool finite(float v) { return std::fabs(v) <= std::numeric_limits<float>::max(); }

// The loops below run over 8 lanes of independent elements (and a tail) in GCC's vector types,
// so that every build computes the same lanes in the same order: AVX registers in the AVX-512
// and AVX2 builds of the row functions (chosen at load time), two SSE halves in the plain x86-64
// one. Every lane computes what the scalar formula does.
typedef float F8 __attribute__((vector_size(32)));
typedef int I8 __attribute__((vector_size(32)));

struct Magnitude {
  float abs_max = 0, signed_max = 0;
  bool finite = true;
};
LOWBIT_INLINE Magnitude magnitude(const float* __restrict x, int n) {
  const I8 abs_bits = I8{} + 0x7fffffff, inf_bits = I8{} + 0x7f800000;
  I8 bad{};  // Inf or NaN, from the bits of |x|
  // Started from x[0] (a -0 splats as +0, which compares equal: only the tie case below reads a
  // zero's sign, from x itself).
  F8 hi = F8{} + x[0], lo = hi;
  const int n8 = n / 8 * 8;
  for (int i = 0; i < n8; i += 8) {
    F8 v;
    std::memcpy(&v, x + i, sizeof v);
    I8 bits;
    std::memcpy(&bits, &v, sizeof bits);
    bad |= (bits & abs_bits) >= inf_bits;
    hi = v > hi ? v : hi;
    lo = v < lo ? v : lo;
  }
  float max = hi[0], min = lo[0];
  int any_bad = 0;
  for (int k = 0; k < 8; ++k) max = std::max(max, hi[k]), min = std::min(min, lo[k]), any_bad |= bad[k];
  for (int j = n8; j < n; ++j) {
    any_bad |= !finite(x[j]);
    max = std::max(max, x[j]), min = std::min(min, x[j]);
  }
  if (any_bad) return {0, 0, false};
  // The signed value of the largest |x| is max or min, unless both are as large (a tie, zeros
  // included): then the first such element, as torch's argmax.
  if (max > -min) return {max, max, true};
  if (-min > max) return {-min, min, true};
  const float abs_max = std::fabs(max);
  int first = 0;
  while (std::fabs(x[first]) != abs_max) ++first;
  return {abs_max, x[first], true};
}

// Rounds x / step onto [lo, hi] into q, the values back into deq; returns the squared error,
// summed per lane (lane k: elements k, k+8, ... in order) and then in a fixed order.
LOWBIT_INLINE float quantize_run(const float* __restrict x, int n, float step, float lo, float hi, int* __restrict q,
                                 float* __restrict deq) {
  // A zero step (step may be -0) quantizes everything to 0.
  auto level = [&](float v) { return step == 0 ? 0.0f : clamp(round_even(v / step), lo, hi); };
  F8 lane{};
  const int n8 = n / 8 * 8;
  // Every lane set, not 0 + v: a step of -0 must stay -0 (its values are -0, as the grid's).
  const F8 vlo = {lo, lo, lo, lo, lo, lo, lo, lo}, vhi = {hi, hi, hi, hi, hi, hi, hi, hi};
  const F8 vstep = {step, step, step, step, step, step, step, step};
  const F8 round = {kRound, kRound, kRound, kRound, kRound, kRound, kRound, kRound};
  for (int i = 0; i < n8; i += 8) {
    F8 xv;
    std::memcpy(&xv, x + i, sizeof xv);
    F8 v{};
    if (step != 0) {
      v = (xv / vstep + round) - round;
      v = v < vlo ? vlo : v;
      v = v > vhi ? vhi : v;
    }
    const I8 qi = __builtin_convertvector(v, I8);
    const F8 d = (v + 0.0f) * vstep;  // +0 for q = 0, as the grid's decoded value
    const F8 e = d - xv;
    lane += e * e;
    std::memcpy(q + i, &qi, sizeof qi);
    std::memcpy(deq + i, &d, sizeof d);
  }
  for (int j = n8; j < n; ++j) {
    const float v = level(x[j]);
    q[j] = int(v);
    deq[j] = (v + 0.0f) * step;
    const float e = deq[j] - x[j];
    lane[j - n8] += e * e;
  }
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

enum class Fault { None, NonFinite, Overflow };

// One row of Q4_0 or Q8_0 blocks of 32 into ggml's bytes.
__attribute__((target_clones("avx512f", "avx2", "default")))
Fault quantize_row_32(GGMLType type, const float* x, int64_t cols, float* deq, uint8_t* out, double& sse) {
  const bool q4 = type == GGMLType::Q4_0;
  const size_t block_bytes = q4 ? 18 : 34;
  double row_sse = 0;  // kept in a register: `out` may alias anything
  for (int64_t b = 0; b < cols / 32; ++b, x += 32, deq += 32, out += block_bytes) {
    const Magnitude m = magnitude(x, 32);
    if (!m.finite) return Fault::NonFinite;
    const uint16_t d16 = float_to_fp16(q4 ? m.signed_max * (1.0f / -8.0f) : m.abs_max * (1.0f / 127.0f));
    const float d = fp16_to_float(d16);
    if (!finite(d)) return Fault::Overflow;
    int q[32];
    row_sse += quantize_run(x, 32, d, q4 ? -8.0f : -127.0f, q4 ? 7.0f : 127.0f, q, deq);
    out[0] = uint8_t(d16 & 0xFF), out[1] = uint8_t(d16 >> 8);
    if (q4)
      for (int j = 0; j < 16; ++j) out[2 + j] = uint8_t((q[j] + 8) | ((q[j + 16] + 8) << 4));
    else
      for (int j = 0; j < 32; ++j) out[2 + j] = uint8_t(int8_t(q[j]));
  }
  sse += row_sse;
  return Fault::None;
}

// One row of Q6_K super-blocks; ggml_blocks.h packs them.
__attribute__((target_clones("avx512f", "avx2", "default")))
Fault quantize_row_q6_k(const float* x, int64_t cols, float* deq, uint8_t* out, double& sse) {
  const int64_t nb = cols / 256;
  GGMLBlocks b;
  b.q.resize(size_t(cols)), b.d.resize(size_t(nb)), b.sub_scale.resize(size_t(16 * nb));
  int q[16];
  for (int64_t s = 0; s < nb; ++s) {
    const float* xs = x + s * 256;
    float sub[16];
    for (int i = 0; i < 16; ++i) {
      const Magnitude m = magnitude(xs + 16 * i, 16);
      if (!m.finite) return Fault::NonFinite;
      sub[i] = m.signed_max * (1.0f / -32.0f);
    }
    const uint16_t d16 = float_to_fp16(magnitude(sub, 16).signed_max / -128.0f);
    const float d = fp16_to_float(d16);
    if (!finite(d)) return Fault::Overflow;
    b.d[size_t(s)] = d16;
    for (int i = 0; i < 16; ++i) {
      const float sc = d == 0 ? 0.0f : clamp(round_even(sub[i] / d), -128.0f, 127.0f) + 0.0f;
      b.sub_scale[size_t(16 * s + i)] = uint8_t(int8_t(int(sc)));
      const int64_t at = s * 256 + 16 * i;
      sse += quantize_run(x + at, 16, d * sc, -32.0f, 31.0f, q, deq + at);
      for (int j = 0; j < 16; ++j) b.q[size_t(at + j)] = uint8_t(q[j] + 32);
    }
  }
  pack_ggml_blocks(GGMLType::Q6_K, b, cols, out);
  return Fault::None;
}

// One row of a symmetric integer format with fp16 scales per group of g (g = cols: per channel):
// scale = fp16(max |x| / max), one per group into scales; codes (two's complement, mask bits)
// packed as packing.h into out.
__attribute__((target_clones("avx512f", "avx2", "default")))
Fault quantize_row_int(const float* x, int64_t cols, int64_t g, int bits, float* deq, float* scales, int* q,
                       uint8_t* out, double& sse) {
  const float max = float((1 << (bits - 1)) - 1);  // the restricted range: -max .. max
  for (int64_t c0 = 0, s = 0; c0 < cols; c0 += g, ++s) {
    const int n = int(std::min(g, cols - c0));
    const Magnitude m = magnitude(x + c0, n);
    if (!m.finite) return Fault::NonFinite;
    const float scale = fp16_to_float(float_to_fp16(m.abs_max / max));
    if (!finite(scale)) return Fault::Overflow;
    scales[s] = scale;
    sse += quantize_run(x + c0, n, scale, -max, max, q + c0, deq + c0);
  }
  // Whole codes per byte, low bits first; a constant code width lets the loop vectorize.
  auto pack = [&]<int B>() {
    constexpr int mask = (1 << B) - 1, per_byte = 8 / B;
    const int64_t whole = cols / per_byte * per_byte;
    for (int64_t c = 0; c < whole; c += per_byte) {
      uint8_t byte = 0;
      for (int k = 0; k < per_byte; ++k) byte |= uint8_t((q[c + k] & mask) << (k * B));
      out[c / per_byte] = byte;
    }
    if (whole < cols) {
      uint8_t byte = 0;
      for (int64_t c = whole; c < cols; ++c) byte |= uint8_t((q[c] & mask) << ((c - whole) * B));
      out[whole / per_byte] = byte;
    }
  };
  if (bits == 2) pack.template operator()<2>();
  else if (bits == 4) pack.template operator()<4>();
  else pack.template operator()<8>();
  return Fault::None;
}

// Symmetric integers of 2, 4 or 8 bits (whole codes per byte) with fp16 scales per group or channel.
bool plain_symmetric_int(const FormatSpec& spec) {
  if (spec.scaling() != Scaling::Plain || spec.asymmetric) return false;
  if (spec.granularity != Granularity::Group && spec.granularity != Granularity::Channel) return false;
  const int b = spec.bits();
  return (b == 2 || b == 4 || b == 8) && is_int_codec(spec.codec(), true);
}

}  // namespace

bool rtn_direct_applies(const FormatSpec& spec, const RtnOptions& options) {
  if (options.clip_search) return false;
  if (plain_symmetric_int(spec)) return true;
  if (spec.scaling() != Scaling::Ggml) return false;
  const GGMLType t = ggml_type_of(spec);
  return t == GGMLType::Q4_0 || t == GGMLType::Q8_0 || t == GGMLType::Q6_K;
}

bool rtn_direct_applies(const torch::Tensor& W, const FormatSpec& spec, const RtnOptions& options) {
  return W.is_cpu() && W.dim() == 2 && rtn_direct_applies(spec, options);
}

namespace {

// The weight's rows as float32: in place from a float32 tensor, or converted from the stored
// bytes into a scratch row (the same floats: conversion is exact), so that a stored weight is
// never materialized whole.
struct RowReader {
  const float* floats = nullptr;           // [rows, cols], or
  const StoredTensorView* view = nullptr;  // F32, F16 or BF16 rows
  int64_t cols = 0;
  const float* row(int64_t r, float* scratch) const {
    if (floats) return floats + r * cols;
    const size_t row_bytes = view->nbytes / size_t(view->shape[0]);
    to_float(view->dtype, view->data + size_t(r) * row_bytes, scratch, size_t(cols));
    return scratch;
  }
  torch::Tensor stored_whole() const {  // for an error message only
    torch::Tensor t = torch::empty({view->shape[0], cols}, torch::kFloat32);
    to_float(view->dtype, view->data, t.data_ptr<float>(), size_t(t.numel()));
    return t;
  }
};

LayerQuantResult quantize_rows(const RowReader& in, int64_t rows, const FormatSpec& spec, bool keep_dequantized,
                               const std::function<void()>& fail_on_fault) {
  const int64_t cols = in.cols;
  check_ggml_row_length(spec, cols);
  const bool ggml = spec.scaling() == Scaling::Ggml;
  if (!ggml && !plain_symmetric_int(spec)) fail("internal: no direct RTN for {}", spec.str());
  const GGMLType type = ggml ? ggml_type_of(spec) : GGMLType::F32;
  const size_t row_bytes = size_t(ggml ? ggml_row_bytes(spec, cols) : packed_row_bytes(cols, spec.bits()));
  const int64_t group = spec.granularity == Granularity::Group ? spec.group_size : cols;
  const int64_t spr = ggml ? 0 : slots_per_row(spec, cols);

  LayerQuantResult out;
  if (keep_dequantized) out.dequantized = torch::empty({rows, cols}, torch::kFloat32);
  std::vector<uint8_t> bytes(size_t(rows) * row_bytes);
  std::vector<float> scales(size_t(rows * spr));
  std::vector<double> row_sse(static_cast<size_t>(rows));
  std::atomic<int> fault{int(Fault::None)};
  float* deq_all = keep_dequantized ? out.dequantized.data_ptr<float>() : nullptr;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> row_values(deq_all ? 0 : size_t(cols));  // the values, when not kept
    std::vector<float> row_in(in.floats ? 0 : size_t(cols));   // a converted stored row
    std::vector<int> row_q(ggml ? 0 : size_t(cols));
    for (int64_t r = begin; r < end && fault == int(Fault::None); ++r) {
      double sse = 0;
      uint8_t* o = bytes.data() + size_t(r) * row_bytes;
      float* deq = deq_all ? deq_all + r * cols : row_values.data();
      const float* xr = in.row(r, row_in.data());
      Fault f = !ggml                     ? quantize_row_int(xr, cols, group, spec.bits(), deq, &scales[size_t(r * spr)],
                                                             row_q.data(), o, sse)
                : type == GGMLType::Q6_K ? quantize_row_q6_k(xr, cols, deq, o, sse)
                                         : quantize_row_32(type, xr, cols, deq, o, sse);
      if (f != Fault::None) fault = int(f);
      row_sse[size_t(r)] = sse;
    }
  });
  if (fault != int(Fault::None)) fail_on_fault();
  double sse = 0;
  for (double s : row_sse) sse += s;  // in row order: the same on any number of threads
  out.weight_mse = sse / double(rows * cols);
  if (ggml) {
    out.q = from_ggml_blocks(spec, rows, cols, std::move(bytes));
  } else {
    out.q.spec = spec, out.q.rows = rows, out.q.cols = cols;
    out.q.codes = std::move(bytes);
    out.q.scales = std::move(scales);
  }
  return out;
}

}  // namespace

LayerQuantResult quantize_rtn_direct(const torch::Tensor& W, const FormatSpec& spec, bool keep_dequantized) {
  if (W.dim() != 2 || W.numel() == 0) fail("quantize: expected a non-empty 2-D weight matrix");
  torch::NoGradGuard no_grad;
  const torch::Tensor w = W.to(torch::kFloat32).contiguous();
  RowReader in;
  in.floats = w.data_ptr<float>(), in.cols = w.size(1);
  return quantize_rows(in, w.size(0), spec, keep_dequantized, [&] { fail_unstorable_scale(spec, w); });
}

LayerQuantResult quantize_rtn_direct(const StoredTensorView& view, const FormatSpec& spec, bool keep_dequantized) {
  if (view.shape.size() != 2 || view.shape[0] == 0 || view.shape[1] == 0)
    fail("quantize: expected a non-empty 2-D weight matrix");
  if (!dtype_is_float16or32(view.dtype)) fail("internal: direct RTN of a stored {} tensor", dtype_name(view.dtype));
  RowReader in;
  in.view = &view, in.cols = view.shape[1];
  return quantize_rows(in, view.shape[0], spec, keep_dequantized, [&] { fail_unstorable_scale(spec, in.stored_whole()); });
}

}  // namespace lowbit
