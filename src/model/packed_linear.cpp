#include "model/packed_linear.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>

#include "kernels/kernels.h"
#include "util/error.h"
#include "util/half.h"

namespace lowbit {

int64_t PackedWeight::resident_bytes() const {
  return int64_t(q.codes.size() + q.scales.size() * sizeof(float) + q.zeros.size() + q.blocks.size() +
                 (row_ptr.size() + col.size() + value.size()) * 4);
}

std::shared_ptr<const PackedWeight> PackedWeight::make(QuantizedTensor q, const std::optional<StoredOutliers>& outliers,
                                                       const std::string& name) {
  try {
    check_kernel_layout(q);
  } catch (const Error& e) {
    fail("{}: {}", name, e.what());
  }
  auto w = std::make_shared<PackedWeight>();
  w->q = std::move(q);
  if (!outliers || outliers->col.empty()) return w;
  const StoredOutliers& o = *outliers;
  const int64_t rows = w->q.rows, cols = w->q.cols;
  if (o.rows != rows || o.cols != cols) fail("{}: outliers do not match its {}x{} shape", name, rows, cols);
  if (std::optional<OutliersProblem> p = find_outliers_problem(o, rows, cols)) fail("{}: {} {}", name, p->part, p->why);
  w->row_ptr = o.row_ptr;
  w->col = o.col;
  w->value.resize(o.values.size());
  // The sparse part is added to the low-bit part, so it holds the outlier minus whatever the
  // low-bit part has there: exactly the fp16 value wherever (as lowbit writes them) that is 0.
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    if (o.row_ptr[r] == o.row_ptr[r + 1]) continue;
    dequantize_row(w->q, r, row.data());
    for (int32_t k = o.row_ptr[r]; k < o.row_ptr[r + 1]; ++k) w->value[k] = fp16_to_float(o.values[k]) - row[o.col[k]];
  }
  return w;
}

namespace {

// y[i, r] += sum_k value[k] * x[i, col[k]] for rows [r0, r1) of the sparse part.
void add_outliers(const PackedWeight& w, const float* x, int64_t n, int64_t r0, int64_t r1, float* y) {
  const int64_t rows = w.rows(), cols = w.cols();
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * cols;
    float* yi = y + i * rows;
    for (int64_t r = r0; r < r1; ++r) {
      float acc = 0;
      for (int32_t k = w.row_ptr[r]; k < w.row_ptr[r + 1]; ++k) acc += w.value[k] * xi[w.col[k]];
      yi[r] += acc;
    }
  }
}

}  // namespace

torch::Tensor packed_linear(const torch::Tensor& x, const PackedWeight& w) {
  if (x.scalar_type() != torch::kFloat32 || !x.device().is_cpu())
    fail("packed linear: input must be float32 on the CPU, got {} on {}", std::string(c10::toString(x.scalar_type())),
         x.device().str());
  if (x.dim() < 1 || x.size(-1) != w.cols())
    fail("packed linear: input's last dimension is {}, the weight has {} columns", x.dim() ? x.size(-1) : 0, w.cols());
  const torch::Tensor xc = x.reshape({-1, w.cols()}).contiguous();
  const int64_t n = xc.size(0), rows = w.rows();
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = rows;
  torch::Tensor y = torch::empty({n, rows}, torch::kFloat32);
  if (n == 0) return y.view(shape);
  const float* xp = xc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const SimdLevel level = active_simd_level();  // read once: every thread runs the same kernels
  const int64_t blocks = (rows + kPackedRowBlock - 1) / kPackedRowBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    const int64_t r0 = b0 * kPackedRowBlock, r1 = std::min(rows, b1 * kPackedRowBlock);
    qmatmul_rows(xp, n, w.q, r0, r1, yp + r0, rows, level);
    if (!w.value.empty()) add_outliers(w, xp, n, r0, r1, yp);
  });
  return y.view(shape);
}

}  // namespace lowbit
