#pragma once
// Bit-exact ggml block layouts for the block-quantized GGUF types lowbit writes and reads:
//   Q8_0, Q4_0, Q4_1, IQ4_NL  blocks of 32 elements with one fp16 scale (Q4_1: and an fp16 min);
//   Q4_K                      super-blocks of 256: fp16 d and dmin, 8 sub-blocks of 32 with a
//                             6-bit scale and a 6-bit min each (packed in 12 bytes);
//   Q6_K                      super-blocks of 256: fp16 d, 16 sub-blocks of 16 with an int8 scale.
// Byte layouts follow ggml-common.h's block structs; values follow ggml-quants.c's
// dequantize_row_* formulas, evaluated in float32 in the same order:
//   Q8_0    y = d * q                         q = int8 (two's complement byte)
//   Q4_0    y = (q - 8) * d                   q in 0..15
//   Q4_1    y = q * d + m                     q in 0..15
//   IQ4_NL  y = d * kvalues_iq4nl[q]          q in 0..15
//   Q4_K    y = (d * sc) * q - (dmin * mn)    q in 0..15, sc and mn in 0..63 (per sub-block of 32)
//   Q6_K    y = d * sc * (q - 32)             q in 0..63, sc int8 (per sub-block of 16)
// with d, dmin, m the fp16 values converted to float. Every product in these formulas is exact
// in float32 (significand bits: 11 for d, at most 7 for a scale, 5 for q - 32), so the only
// rounding is the final add of Q4_1 and Q4_K: results match ggml's bit for bit whatever the
// evaluation order, FMA contraction included.
//
// GGMLBlocks is the unpacked form that quantizers produce and that packing turns into bytes.
#include <array>
#include <cstdint>
#include <vector>

#include "io/ggml_type.h"

namespace lowbit {

// The 16 IQ4_NL grid values (ggml's kvalues_iq4nl), ascending.
const std::array<int8_t, 16>& iq4nl_values();

// Whether pack/unpack/dequantize below support type t: true for the six block types above only
// (dequantize_ggml also takes F32, F16 and BF16, for which this returns false).
bool ggml_blocks_supported(GGMLType t);

// The contents of whole blocks of n elements (n a multiple of the type's block size), unpacked.
// Fields a type does not use stay empty.
struct GGMLBlocks {
  std::vector<uint8_t> q;          // n codes, one per element, meaning as in the table above
                                   // (Q8_0: the int8's byte, e.g. -1 -> 0xFF)
  std::vector<uint16_t> d;         // fp16 bits, one per block (super-block for K types)
  std::vector<uint16_t> m;         // fp16 bits, one per block: Q4_1's m, Q4_K's dmin
  std::vector<uint8_t> sub_scale;  // per sub-block: Q4_K's 6-bit sc (8 per super-block),
                                   // Q6_K's int8 scale as its byte (16 per super-block)
  std::vector<uint8_t> sub_min;    // per sub-block: Q4_K's 6-bit mn (8 per super-block)
};

// Packs blocks into ggml's byte layout: ggml_nbytes(type, {n}) bytes at out. Throws Error when
// n is not a multiple of the block size, a vector has the wrong length (a field the type does
// not use must be empty), or a value is out of range (a 4-bit code above 15, a 6-bit code or
// scale above 63, ...).
void pack_ggml_blocks(GGMLType type, const GGMLBlocks& blocks, int64_t n, uint8_t* out);

// The inverse of pack_ggml_blocks: pack(unpack(bytes)) == bytes for every byte string.
GGMLBlocks unpack_ggml_blocks(GGMLType type, const uint8_t* data, int64_t n);

// n floats from ggml-layout data of type (the formulas above; F32/F16/BF16 converted).
void dequantize_ggml(GGMLType type, const uint8_t* data, int64_t n, float* out);

}  // namespace lowbit
