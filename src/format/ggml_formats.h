#pragma once
// GGUF types as lowbit formats: "gguf:q4_0", "gguf:q4_k", ... Quantizing to one of these makes
// RTN and GPTQ choose values on exactly that type's grid, scale encoding included, so that the
// export to GGUF stores the quantizer's decisions bit for bit. The stored form is ggml's own
// block layout (io/ggml_blocks.h).
//
//   spec         ggml    block  grid of one element q            value
//   gguf:q8_0    Q8_0     32    -127..127                         d * q
//   gguf:q4_0    Q4_0     32    -8..7                             d * q
//   gguf:q4_1    Q4_1     32    0..15                             d * q + m
//   gguf:iq4_nl  IQ4_NL   32    kvalues_iq4nl (-127..113)         d * q
//   gguf:q4_k    Q4_K    256    0..15, sub-blocks of 32           (d * sc) * q - dmin * mn
//   gguf:q6_k    Q6_K    256    -32..31, sub-blocks of 16         (d * sc) * q
//   gguf:f16, gguf:bf16, gguf:f32: the weight rounded to that float type (no scales).
// d, m, dmin are fp16; sc, mn are 6-bit (Q4_K) or int8 (Q6_K) sub-block scales.
//
// Scales are fitted per block from the weights (quant/ggml_grid.cpp says how). A row length
// that is not a multiple of the block cannot be stored: gguf_format_for_shape applies the
// fallback rule.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "format/spec.h"
#include "io/ggml_type.h"

namespace lowbit {

struct GgmlFormatInfo {
  GGMLType type;
  int64_t block;      // elements per (super-)block: the scale slot
  int64_t sub_block;  // elements per sub-block scale; == block when there is none
  bool has_min;       // an additive min per block (Q4_1) or sub-block (Q4_K)
  bool is_float;      // F16 / BF16 / F32
};

const GgmlFormatInfo& ggml_format_info(const FormatSpec& spec);  // Error unless Scaling::Ggml

// The ggml type of a GGUF spec, and the spec of a ggml type this family supports.
GGMLType ggml_type_of(const FormatSpec& spec);
std::optional<FormatSpec> gguf_spec(GGMLType type);

// Fallback rule for a row length the type cannot hold:
//   Q4_K -> Q4_1 and Q6_K -> Q8_0 when cols is not a multiple of 256 (32-blocks, at least as
//   precise); then any type -> F16 when cols is not a multiple of 32.
// Returns spec itself when it fits, and any non-GGUF spec unchanged.
FormatSpec gguf_format_for_shape(const FormatSpec& spec, int64_t cols);

// llama-quantize's type for the token embedding or the output head of a model whose linear
// weights are mostly linear_type: the output head (the embedding, when tied) gets Q6_K (Q8_0
// stays Q8_0), an untied embedding linear_type; float linear types keep both as linear_type.
// (llama.cpp's llama_tensor_get_type without --pure; gguf_format_for_shape then applies.)
FormatSpec gguf_embedding_type(const FormatSpec& linear_type, bool is_output);

// Registry matcher for "gguf:<type>".
std::optional<ElementDef> match_gguf(std::string_view token);
std::vector<std::string> gguf_tokens();

}  // namespace lowbit
