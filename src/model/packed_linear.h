#pragma once
// A quantized linear layer run as stored: the packed codes and scales of a QuantizedTensor go
// straight to the kernels (src/kernels), with GWQ's fp16 outliers added by a CSR product. No
// dequantized copy of the weight is ever made, so the layer's memory is its packed bytes.
//
//   y = x · Ŵᵀ + x · Sᵀ     Ŵ the low-bit part, S the outliers minus what Ŵ holds at their
//                           places (so that Ŵ + S is the checkpoint's weight exactly)
//
// The product is threaded over blocks of output rows (at::parallel_for); each block's rows are
// computed as the single-threaded kernel computes them, so every thread count gives the same bits.
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "format/quantized_tensor.h"
#include "io/quantized_checkpoint.h"

namespace lowbit {

struct PackedWeight {
  QuantizedTensor q;
  // The outliers in CSR form (empty when there are none): row r's are entries
  // row_ptr[r] .. row_ptr[r+1]-1, at columns col[k], adding value[k]: the fp16 outlier minus the
  // low-bit value there (the fp16 value itself where the quantizer left 0, as lowbit's do).
  std::vector<int32_t> row_ptr, col;
  std::vector<float> value;

  int64_t rows() const { return q.rows; }
  int64_t cols() const { return q.cols; }
  int64_t nnz() const { return int64_t(value.size()); }
  int64_t resident_bytes() const;  // what it holds in memory

  // Validates q against its format (kernels.h check_kernel_layout) and the outliers against its
  // shape; throws lowbit::Error naming `name`. Every format of the registry is served, GGUF
  // block types included.
  static std::shared_ptr<const PackedWeight> make(QuantizedTensor q, const std::optional<StoredOutliers>& outliers,
                                                  const std::string& name);
};

// x [..., cols] (float32, CPU) times the packed weight: [..., rows] float32.
torch::Tensor packed_linear(const torch::Tensor& x, const PackedWeight& w);

// Output rows per thread block (each thread takes whole blocks).
inline constexpr int64_t kPackedRowBlock = 64;

}  // namespace lowbit
