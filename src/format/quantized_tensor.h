#pragma once
// A quantized weight matrix and the whole-tensor reference quantize / dequantize.
//
// GPTQ and other column-by-column quantizers fit params themselves (scaling.h: fit_group,
// quantize_value) and then assemble the result with QuantizedTensor::from_codes.
#include <cstdint>
#include <vector>

#include "format/scaling.h"
#include "format/spec.h"

namespace lowbit {

struct QuantizedTensor {
  FormatSpec spec;
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> codes;   // packed as in packing.h: row r starts at r * packed_row_bytes
  std::vector<float> scales;    // one per slot (spec.h slot_index), the exact stored value;
                                // encode_scale() gives the raw fp16 / E8M0 / E4M3 bits
  std::vector<uint8_t> zeros;   // one per slot when spec.asymmetric, else empty
  float tensor_scale = 1.0f;    // NVFP4's fp32 tensor scale; 1 for every other format

  uint8_t code(int64_t row, int64_t col) const;
  GroupParams params(int64_t slot) const;

  // From codes and params produced elsewhere. codes: rows*cols unpacked codes, row-major.
  // params: num_slots(spec, rows, cols) entries (only scale and zero are read). Everything is
  // validated: code range, scales storable exactly, zero points in range.
  static QuantizedTensor from_codes(const FormatSpec& spec, int64_t rows, int64_t cols,
                                    const uint8_t* codes, const std::vector<GroupParams>& params,
                                    float tensor_scale = 1.0f);
};

// Round-to-nearest quantization of a row-major rows x cols matrix. Weights must be finite.
QuantizedTensor quantize(const float* w, int64_t rows, int64_t cols, const FormatSpec& spec,
                         const QuantizeOptions& options = {});

// rows*cols floats, row-major.
std::vector<float> dequantize(const QuantizedTensor& q);

}  // namespace lowbit
