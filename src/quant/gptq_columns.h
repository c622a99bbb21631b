#pragma once
// Internal (gptq.cpp): GPTQ's per-column loop over a span of one lazy-update block, fused into
// one pass over tiles of rows on every thread (gptq_columns.cpp). Bit for bit the tensor loop in
// quantize_gptq, which stays for CUDA and GGUF types.
#include <torch/types.h>

#include <vector>

#include "format/format.h"

namespace lowbit {

// The block being quantized, as quantize_gptq holds it (T = float32 or float64, the working dtype).
struct GptqColumnSpan {
  torch::Tensor W1;    // [count, rows] T, contiguous: the block's columns, updated in place
  torch::Tensor Err1;  // [count, rows] T: each column's error / d_j, written
  torch::Tensor V1;    // [count, rows] float32: grid values, written
  torch::Tensor Q1;    // [count, rows] float32: dequantized values, written
  torch::Tensor U;     // [cols, cols] T (any strides): upper factor of the damped inverse Hessian
  const double* ud = nullptr;  // U's diagonal
  int64_t i1 = 0;              // position of the block's first column
  // Per column of the block: its slots' step and zero point ([rows], or [1] for one slot per
  // tensor; float32, contiguous; zero undefined for symmetric formats). Set for the span run.
  std::vector<torch::Tensor> step, zero;
  torch::Tensor keep;                        // [cols, rows] bool in position order, or undefined
  const std::vector<bool>* col_kept = nullptr;  // position j has a kept element
};

// Whether the fused loop serves this format on this device: every format but GGUF's, on the CPU.
bool gptq_columns_apply(const FormatSpec& spec, torch::Device device);

// Quantizes the block's columns ia .. ib-1 (block-relative), each updating the block's later
// columns, exactly as quantize_gptq's tensor loop does.
void gptq_quantize_columns(const FormatSpec& spec, const GptqColumnSpan& span, int64_t ia, int64_t ib);

}  // namespace lowbit
