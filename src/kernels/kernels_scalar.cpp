// The scalar kernels: the specification every SIMD level is tested against, written for clarity.
#include <vector>

#include "kernels/weight_view.h"

namespace lowbit::kernels {

// Row r of Ŵ, element by element: exactly scaling.h's dequantize_value.
static void dequantize_row_scalar(const WeightView& w, int64_t r, float* out) {
  const uint8_t* row = w.row_codes(r);
  for (int64_t j = 0; j < w.segs_per_row; ++j) {
    int64_t slot = w.slot(r, j);
    float step = w.step(slot), zero = w.zero(slot);
    for (int64_t c = w.seg_begin(j); c < w.seg_begin(j) + w.seg_size(j); ++c) {
      float v = w.lut[code_at(row, w.bits, c)];
      out[c] = w.asym ? (v - zero) * step : v * step;
    }
  }
}

static void dequantize_rows_scalar(const WeightView& w, int64_t begin, int64_t end, float* out,
                                   int64_t out_stride) {
  for (int64_t r = begin; r < end; ++r) dequantize_row_scalar(w, r, out + (r - begin) * out_stride);
}

// y[i, r] = sum_c x[i, c] * Ŵ[r, c]: dequantize a row once, then a plain fp32 dot product (in
// column order) with every row of x.
static void matmul_scalar(const float* x, int64_t n, const WeightView& w, float* y, int64_t ldy) {
  std::vector<float> row(size_t(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    dequantize_row_scalar(w, r, row.data());
    for (int64_t i = 0; i < n; ++i) {
      const float* xi = x + i * w.cols;
      float acc = 0;
      for (int64_t c = 0; c < w.cols; ++c) acc += xi[c] * row[c];
      y[i * ldy + r] = acc;
    }
  }
}

static bool always(const WeightView&) { return true; }

const KernelSet* scalar_kernels() {
  static const KernelSet set{always, dequantize_rows_scalar, matmul_scalar};
  return &set;
}

}  // namespace lowbit::kernels
