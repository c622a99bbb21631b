#pragma once
// A quantized weight matrix and the whole-tensor reference quantize / dequantize.
//
// GPTQ and other column-by-column quantizers fit params themselves (scaling.h: fit_group,
// quantize_value) and then assemble the result with QuantizedTensor::from_codes.
//
// GGUF types (format/ggml_formats.h) are stored as ggml's own blocks instead: `blocks` holds
// them and codes, scales and zeros stay empty. Their quantizers live in src/quant only.
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
  std::vector<uint8_t> blocks;  // GGUF types: row r's ggml blocks start at r * ggml_row_bytes

  uint8_t code(int64_t row, int64_t col) const;
  GroupParams params(int64_t slot) const;

  // From codes and params produced elsewhere. codes: rows*cols unpacked codes, row-major.
  // params: num_slots(spec, rows, cols) entries (only scale and zero are read). Everything is
  // validated: code range, scales storable exactly, zero points in range.
  static QuantizedTensor from_codes(const FormatSpec& spec, int64_t rows, int64_t cols,
                                    const uint8_t* codes, const std::vector<GroupParams>& params,
                                    float tensor_scale = 1.0f);
};

// Bytes of one row of a GGUF-typed tensor (ggml_nbytes of {cols}); Error if cols does not fit.
int64_t ggml_row_bytes(const FormatSpec& spec, int64_t cols);

// A GGUF-typed tensor from its rows of ggml blocks (rows * ggml_row_bytes bytes).
QuantizedTensor from_ggml_blocks(const FormatSpec& spec, int64_t rows, int64_t cols, std::vector<uint8_t> blocks);

// Round-to-nearest quantization of a row-major rows x cols matrix. Weights must be finite.
// Not for GGUF types (quantize them with quant/quantizer.h).
QuantizedTensor quantize(const float* w, int64_t rows, int64_t cols, const FormatSpec& spec,
                         const QuantizeOptions& options = {});

// rows*cols floats, row-major.
std::vector<float> dequantize(const QuantizedTensor& q);

}  // namespace lowbit
