// GPTQ's column loop inside one lazy-update block, in plain C++ on the CPU (gptq_columns.h).
//
// quantize_gptq's LibTorch loop runs about 20 small ops per column, each a pass over all rows,
// and its rank-1 update streams the rest of the block through memory once per column. Here the
// block is split into tiles of rows; a tile runs every column of the span on its own (rows never
// interact inside a block), so its part of the block stays in cache, tiles run on every thread,
// and the result is the same on any number of threads. Each value goes through the tensor loop's
// float operations in the same order: x / step (0 where the step is 0), round-half-even and clamp
// for integers or the codec's nearest grid value (the scalar reference the tensor grid
// reproduces), times the step; kept elements quantize 0 and take fp16(x); err = (w - q) / d_j;
// w_k -= u_jk * err rounded once, as addr_'s vector body does (a fused multiply-add; nothing else
// is contracted: -ffp-contract=off). So the bits are those of the tensor loop wherever addr_ runs
// its vector body (tests/nn/test_quantizer.cpp compares both).
#include "quant/gptq_columns.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "format/int_format.h"
#include "kernels/kernels.h"
#include "util/error.h"
#include "util/half.h"

namespace lowbit {

namespace {

constexpr int64_t kTileRows = 256;

// w[r] -= u * e[r] for r < n, rounded once (a fused multiply-add), as LibTorch's addr_ computes
// it on the CPU: the later columns' share of one column's error. Compiled for AVX-512 and AVX2
// with FMA and chosen by the CPU's level (kernels.h); the plain build's std::fma is exact but slow
// where the CPU has no FMA.
#define LOWBIT_SUBTRACT_SCALED(name, attr)                                        \
  attr void name(float* w, float u, const float* e, int64_t n) {                  \
    for (int64_t r = 0; r < n; ++r) w[r] = std::fma(-u, e[r], w[r]);               \
  }                                                                               \
  attr void name(double* w, double u, const double* e, int64_t n) {               \
    for (int64_t r = 0; r < n; ++r) w[r] = std::fma(-u, e[r], w[r]);               \
  }
LOWBIT_SUBTRACT_SCALED(subtract_scaled_avx512, __attribute__((target("avx512f,fma"))))
LOWBIT_SUBTRACT_SCALED(subtract_scaled_avx2, __attribute__((target("avx2,fma"))))
LOWBIT_SUBTRACT_SCALED(subtract_scaled_plain, )
#undef LOWBIT_SUBTRACT_SCALED

template <typename T>
void subtract_scaled(SimdLevel level, T* w, T u, const T* e, int64_t n) {
  switch (level) {
    case SimdLevel::Avx512: return subtract_scaled_avx512(w, u, e, n);
    case SimdLevel::Avx2: return subtract_scaled_avx2(w, u, e, n);
    case SimdLevel::Scalar: return subtract_scaled_plain(w, u, e, n);
  }
}

enum class Rule { Asymmetric, Integer, Codec };

struct ElementRule {
  Rule rule;
  const Codec* codec = nullptr;
  float lo = 0, hi = 0;  // Integer: the grid's ends; Asymmetric: [0, largest code]

  // The grid value of t (the code as a float for asymmetric integers) and the dequantized value.
  void quantize(float t, float step, float zero, float* v, float* q) const {
    switch (rule) {
      case Rule::Asymmetric:
        *v = std::min(std::max(std::nearbyint(t) + zero, lo), hi);
        *q = (*v - zero) * step;
        return;
      case Rule::Integer:
        *v = std::min(std::max(std::nearbyint(t), lo), hi) + 0.0f;  // -0 + 0 = +0, as decode(0)
        *q = *v * step;
        return;
      case Rule::Codec:
        *v = codec->decode(codec->encode(t));
        *q = *v * step;
        return;
    }
  }
};

ElementRule element_rule(const FormatSpec& spec) {
  const Codec& codec = spec.codec();
  ElementRule e;
  if (spec.asymmetric) {
    e.rule = Rule::Asymmetric, e.lo = 0, e.hi = codec.max();
  } else if (is_int_codec(codec, true)) {
    e.rule = Rule::Integer, e.lo = codec.min(), e.hi = codec.max();
  } else {
    e.rule = Rule::Codec, e.codec = &codec;
  }
  return e;
}

template <typename T>
void run_columns(const ElementRule& er, const GptqColumnSpan& s, int64_t ia, int64_t ib) {
  const int64_t rows = s.W1.size(1), count = s.W1.size(0), u_row = s.U.stride(0), u_col = s.U.stride(1);
  T* W1 = s.W1.data_ptr<T>();
  T* Err1 = s.Err1.data_ptr<T>();
  float* V1 = s.V1.data_ptr<float>();
  float* Q1 = s.Q1.data_ptr<float>();
  const T* U = s.U.data_ptr<T>();
  const bool* keep = s.keep.defined() ? s.keep.data_ptr<bool>() : nullptr;
  const SimdLevel level = best_simd_level();
  at::parallel_for(0, (rows + kTileRows - 1) / kTileRows, 1, [&](int64_t t0, int64_t t1) {
    const int64_t r0 = t0 * kTileRows, r1 = std::min(rows, t1 * kTileRows), n = r1 - r0;
    for (int64_t i = ia; i < ib; ++i) {
      const int64_t j = s.i1 + i;
      const float* step = s.step[size_t(i)].data_ptr<float>();
      const float* zero = s.zero[size_t(i)].defined() ? s.zero[size_t(i)].data_ptr<float>() : nullptr;
      const int64_t per_row = s.step[size_t(i)].numel() == 1 ? 0 : 1;  // one slot per tensor: [1]
      const bool* kept = keep && (*s.col_kept)[size_t(j)] ? keep + j * rows : nullptr;
      T* w = W1 + i * rows;
      T* err = Err1 + i * rows;
      float* v = V1 + i * rows;
      float* q = Q1 + i * rows;
      const T d = T(s.ud[j]);
      for (int64_t r = r0; r < r1; ++r) {
        const float x = float(w[r]);
        const bool k = kept && kept[r];
        const float st = step[r * per_row];
        const float t = st == 0 ? 0.0f : (k ? 0.0f : x) / st;
        er.quantize(t, st, zero ? zero[r * per_row] : 0.0f, &v[r], &q[r]);
        if (k) q[r] = fp16_to_float(float_to_fp16(x));
        err[r] = (w[r] - T(q[r])) / d;
      }
      const T* u = U + j * u_row + s.i1 * u_col;  // U[j, i1 + k] = u[k * u_col]
      for (int64_t k = i + 1; k < count; ++k) subtract_scaled(level, W1 + k * rows + r0, u[k * u_col], err + r0, n);
    }
  });
}

}  // namespace

bool gptq_columns_apply(const FormatSpec& spec, torch::Device device) {
  return device.is_cpu() && spec.scaling() != Scaling::Ggml;
}

void gptq_quantize_columns(const FormatSpec& spec, const GptqColumnSpan& s, int64_t ia, int64_t ib) {
  if (!gptq_columns_apply(spec, s.W1.device())) fail("internal: gptq_quantize_columns for {}", spec.str());
  const ElementRule er = element_rule(spec);
  if (s.W1.scalar_type() == torch::kFloat64) run_columns<double>(er, s, ia, ib);
  else run_columns<float>(er, s, ia, ib);
}

}  // namespace lowbit
