#pragma once
// Internal: the two layer quantizers behind quantize_layer (quantizer.h), returning tensors that
// quantizer.cpp turns into a QuantizedTensor.
#include <torch/types.h>

#include "quant/quantizer.h"

namespace lowbit {

struct QuantOutcome {
  torch::Tensor codes;        // [rows, cols] integer codes, unpacked
  torch::Tensor scale, zero;  // [num_slots] float32, slot order of spec.h; zero only if asym
  float tensor_scale = 1.0f;
  torch::Tensor dequantized;  // [rows, cols] float32
  double squared_error = 0;   // sum((W - dequantized)^2)
};

// Round to nearest over the whole matrix, in row chunks. With want_tensors=false only the error
// is computed (codes, scales and dequantized stay undefined); the error is the same either way.
QuantOutcome quantize_rtn(const torch::Tensor& W, const FormatSpec& spec, const RtnOptions& options,
                          bool want_tensors = true);

// GPTQ; group fits use options.rtn's clip search too.
QuantOutcome quantize_gptq(const torch::Tensor& W, const torch::Tensor& H, const FormatSpec& spec,
                           const LayerQuantOptions& options);

}  // namespace lowbit
