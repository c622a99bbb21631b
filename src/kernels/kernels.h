#pragma once
// Kernels on quantized weights: dequantization and the quantized matrix product that runs a
// quantized Linear layer. Every format of the registry (src/format) is served.
//
// The scalar kernels (kernels_scalar.cpp) are the specification; the AVX2 and AVX-512 ones
// (kernels_avx2.cpp, kernels_avx512.cpp) must agree with them:
//  - dequantization is bit-exact with format's dequantize(): element i of a row is
//      LUT[code] * step            (symmetric; LUT[c] = codec.decode(c), step as in scaling.h)
//      (LUT[code] - zero) * step   (asymmetric integers)
//    computed in float with one rounding, exactly as scaling.h's dequantize_value does;
//  - qmatmul computes the products of the exact dequantized weights with x in fp32 (FMA) and
//    sums them in an order of its own; each level's error is within the classic bound for a sum
//    of K products, |y - y_exact| <= (K + 2) * 2^-24 * sum_k |x_k * w_k|, K = cols.
//
// The level is chosen at run time: the best the CPU supports, unless the environment variable
// LOWBIT_SIMD=scalar|avx2|avx512 (or auto) or force_simd_level() says otherwise. The SIMD levels
// handle group sizes that are multiples of 16 (every MX and NVFP4 block, g32, g64, g128 ...),
// per-channel and per-tensor scales, and a partial last group; other group sizes (g24, g100)
// run the scalar kernels at any level.
//
// Kernels are single-threaded and reentrant: callers may run them on several threads at once
// (disjoint rows of x for qmatmul, row ranges for dequantize_rows).
#include <cstdint>
#include <optional>
#include <string_view>

#include "format/quantized_tensor.h"

namespace lowbit {

enum class SimdLevel { Scalar = 0, Avx2 = 1, Avx512 = 2 };

const char* simd_level_name(SimdLevel level);       // "scalar", "avx2", "avx512"
SimdLevel parse_simd_level(std::string_view name);  // throws lowbit::Error on unknown names
bool simd_level_supported(SimdLevel level);         // by this CPU (AVX2 means AVX2+FMA+F16C;
                                                    // AVX-512 means F+BW+VL+DQ, and AVX2)
SimdLevel best_simd_level();                        // the highest supported level
// The level used when none is given: the forced level, else LOWBIT_SIMD (read once), else the
// best. Throws lowbit::Error if LOWBIT_SIMD is malformed or names a level this CPU lacks.
SimdLevel active_simd_level();
// Forces a level for the whole process (tests, benchmarks); nullopt goes back to the default.
// Throws lowbit::Error if the CPU does not support the level.
void force_simd_level(std::optional<SimdLevel> level);

// Forces a level for the lifetime of the object, then restores the previous setting.
class ScopedSimdLevel {
 public:
  explicit ScopedSimdLevel(SimdLevel level);
  ~ScopedSimdLevel();
  ScopedSimdLevel(const ScopedSimdLevel&) = delete;
  ScopedSimdLevel& operator=(const ScopedSimdLevel&) = delete;

 private:
  std::optional<SimdLevel> previous_;
};

// Whether `level` runs its own vector code on q, or falls back to the scalar kernels because of
// q's group size (see above).
bool simd_kernels_apply(const QuantizedTensor& q, SimdLevel level);

// Row `row` of Ŵ: q.cols floats into out.
void dequantize_row(const QuantizedTensor& q, int64_t row, float* out);
void dequantize_row(const QuantizedTensor& q, int64_t row, float* out, SimdLevel level);

// Rows [begin, end) of Ŵ, row-major, (end - begin) * q.cols floats into out.
void dequantize_rows(const QuantizedTensor& q, int64_t begin, int64_t end, float* out);
void dequantize_rows(const QuantizedTensor& q, int64_t begin, int64_t end, float* out,
                     SimdLevel level);

// y[n, w.rows] = x[n, w.cols] · Ŵᵀ; x and y row-major and not overlapping. n >= 0 (n = 1 is a
// matrix-vector product for decoding; prefill and evaluation pass thousands of rows).
void qmatmul(const float* x, int64_t n, const QuantizedTensor& w, float* y);
void qmatmul(const float* x, int64_t n, const QuantizedTensor& w, float* y, SimdLevel level);

// Output rows [r0, r1) of that product: y[i, r] at y[i * ldy + r - r0], the rest untouched. Each
// row is computed exactly as qmatmul computes it, so callers that split the rows over threads
// get qmatmul's bits. GGUF block types are served too: their rows are decoded as ggml does
// (io/ggml_blocks.h) and multiplied in fp32, within the same bound.
void qmatmul_rows(const float* x, int64_t n, const QuantizedTensor& w, int64_t r0, int64_t r1,
                  float* y, int64_t ldy, SimdLevel level);

// Throws lowbit::Error if q's stored arrays do not match its shape and format (code bytes, scale
// and zero counts, ggml block bytes): what the kernels check before reading.
void check_kernel_layout(const QuantizedTensor& q);

}  // namespace lowbit
