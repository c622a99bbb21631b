#include "format/quantized_tensor.h"

#include <cmath>

#include "format/ggml_formats.h"
#include "format/packing.h"
#include "io/ggml_blocks.h"
#include "util/error.h"

namespace lowbit {

static void check_shape(int64_t rows, int64_t cols) {
  if (rows < 1 || cols < 1) fail("cannot quantize an empty {}x{} matrix", rows, cols);
}

static void check_not_ggml(const FormatSpec& spec) {
  if (spec.scaling() == Scaling::Ggml)
    fail("{} is stored as ggml blocks, not as codes and scales", spec.str());
}

uint8_t QuantizedTensor::code(int64_t row, int64_t col) const {
  check_not_ggml(spec);
  return packed_code(codes.data(), cols, spec.bits(), row, col);
}

GroupParams QuantizedTensor::params(int64_t slot) const {
  check_not_ggml(spec);
  int zero = spec.asymmetric ? zeros[slot] : 0;
  float step = spec.scaling() == Scaling::NV ? scales[slot] * tensor_scale : scales[slot];
  return GroupParams{scales[slot], zero, step};
}

QuantizedTensor QuantizedTensor::from_codes(const FormatSpec& spec, int64_t rows, int64_t cols,
                                            const uint8_t* codes,
                                            const std::vector<GroupParams>& params,
                                            float tensor_scale) {
  check_shape(rows, cols);
  check_not_ggml(spec);
  int64_t slots = num_slots(spec, rows, cols);
  if (int64_t(params.size()) != slots)
    fail("{} on {}x{} needs {} scales, got {}", spec.str(), rows, cols, slots, params.size());
  if (spec.scaling() != Scaling::NV && tensor_scale != 1.0f)
    fail("{} has no tensor scale (got {})", spec.str(), tensor_scale);
  QuantizedTensor q;
  q.spec = spec;
  q.rows = rows;
  q.cols = cols;
  q.tensor_scale = tensor_scale;
  for (const GroupParams& p : params) {
    make_group_params(spec, p.scale, p.zero, tensor_scale);  // validates
    q.scales.push_back(p.scale);
    if (spec.asymmetric) q.zeros.push_back(uint8_t(p.zero));
  }
  q.codes = pack_codes(codes, rows, cols, spec.bits());
  return q;
}

QuantizedTensor quantize(const float* w, int64_t rows, int64_t cols, const FormatSpec& spec,
                         const QuantizeOptions& options) {
  check_shape(rows, cols);
  check_not_ggml(spec);
  for (int64_t i = 0; i < rows * cols; ++i)
    if (!std::isfinite(w[i]))
      fail("weight [{}, {}] is {}; only finite weights can be quantized", i / cols, i % cols, w[i]);
  float tensor_scale = fit_tensor_scale(spec, w, rows * cols);
  std::vector<GroupParams> params(size_t(num_slots(spec, rows, cols)));
  std::vector<uint8_t> codes(size_t(rows * cols));
  auto quantize_span = [&](int64_t begin, int64_t n, int64_t slot) {
    params[slot] = fit_group(spec, w + begin, n, options, tensor_scale);
    for (int64_t i = begin; i < begin + n; ++i) codes[i] = quantize_value(spec, params[slot], w[i]);
  };
  switch (spec.granularity) {
    case Granularity::Tensor: quantize_span(0, rows * cols, 0); break;
    case Granularity::Channel:
      for (int64_t r = 0; r < rows; ++r) quantize_span(r * cols, cols, r);
      break;
    case Granularity::Group:
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; c += spec.group_size)
          quantize_span(r * cols + c, std::min(spec.group_size, cols - c),
                        slot_index(spec, cols, r, c));
      break;
  }
  return QuantizedTensor::from_codes(spec, rows, cols, codes.data(), params, tensor_scale);
}

int64_t ggml_row_bytes(const FormatSpec& spec, int64_t cols) {
  const GGMLTypeInfo& t = ggml_type_info(ggml_type_of(spec));
  auto n = ggml_nbytes(t, {cols});
  if (!n) fail("{} cannot hold rows of {} (blocks of {})", spec.str(), cols, t.block_size);
  return int64_t(*n);
}

QuantizedTensor from_ggml_blocks(const FormatSpec& spec, int64_t rows, int64_t cols, std::vector<uint8_t> blocks) {
  check_shape(rows, cols);
  const int64_t row_bytes = ggml_row_bytes(spec, cols);
  if (int64_t(blocks.size()) != rows * row_bytes)
    fail("{} on {}x{} needs {} bytes of blocks, got {}", spec.str(), rows, cols, rows * row_bytes, blocks.size());
  QuantizedTensor q;
  q.spec = spec;
  q.rows = rows, q.cols = cols;
  q.blocks = std::move(blocks);
  return q;
}

std::vector<float> dequantize(const QuantizedTensor& q) {
  std::vector<float> out(size_t(q.rows * q.cols));
  if (q.spec.scaling() == Scaling::Ggml) {
    const int64_t row_bytes = ggml_row_bytes(q.spec, q.cols);
    for (int64_t r = 0; r < q.rows; ++r)
      dequantize_ggml(ggml_type_of(q.spec), q.blocks.data() + r * row_bytes, q.cols, out.data() + r * q.cols);
    return out;
  }
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t c = 0; c < q.cols; ++c) {
      GroupParams p = q.params(slot_index(q.spec, q.cols, r, c));
      out[r * q.cols + c] = dequantize_value(q.spec, p, q.code(r, c));
    }
  return out;
}

}  // namespace lowbit
