#pragma once
// FormatSpec: a number format as a user types it, e.g. "int4:g128:asym", "fp4_e2m1:g32", "nf4:g64",
// "mxfp4", "nvfp4", "fp8_e4m3:channel", "int8:channel:sym".
//
// Grammar: <element>[:<granularity>][:sym|asym]   (the two options in either order)
//   granularity: tensor | channel | g<N>   (N columns per group along a row; the last group of a
//                                            row may be partial, e.g. rows of 172 with g128)
// Defaults (also in the registry's help): sym; g128 for elements below 8 bits, channel for 8-bit
// ones, g64 for nf4 (QLoRA's block).
// asym exists for the integer formats only. MX and NVFP4 formats have fixed blocks and take no
// options. str() prints the canonical form (every option explicit), and parse(str()) gives back
// an equal spec.
//
// Weights are row-major [rows = output channels, cols = input columns]; groups run along a row.
#include <cstdint>
#include <string>
#include <string_view>

#include "format/codec.h"
#include "io/ggml_type.h"

namespace lowbit {

enum class Granularity { Tensor, Channel, Group };

// How a group's scale is chosen and stored.
enum class Scaling {
  Plain,  // fp16 scale per tensor / channel / group: absmax (sym) or min/max + zero point (asym)
  MX,     // OCP MX: E8M0 power-of-two scale per block of 32
  NV,     // NVFP4: E4M3 scale per block of 16, times one fp32 scale per tensor
  Ggml,   // a GGUF type: ggml's own block layout and scale encoding (format/ggml_formats.h)
};

// What an element token such as "int4", "fp6_e3m2" or "mxfp4" resolves to.
struct ElementDef {
  std::string token;                   // canonical token, as printed
  const Codec* codec = nullptr;        // the (symmetric / signed) element grid
  const Codec* asym_codec = nullptr;   // unsigned grid for :asym; null if asym is not offered
  Scaling scaling = Scaling::Plain;
  Granularity default_granularity = Granularity::Group;
  int64_t default_group_size = 128;    // also the fixed block size of MX (32) and NV (16)
  GGMLType ggml_type = GGMLType::F32;  // Scaling::Ggml only; codec is null for its float types
};

struct FormatSpec {
  ElementDef element;
  Granularity granularity = Granularity::Group;
  int64_t group_size = 128;  // columns per group when granularity is Group; 0 otherwise
  bool asymmetric = false;

  static FormatSpec parse(std::string_view text);  // throws lowbit::Error listing valid forms
  std::string str() const;

  const Codec& codec() const;  // Error for GGUF's float types, which have none
  int bits() const;  // element bits: the codec's, or 16 / 32 for GGUF's float types
  Scaling scaling() const { return element.scaling; }

  bool operator==(const FormatSpec& o) const { return str() == o.str(); }
};

// --- Scale slots -----------------------------------------------------------------------------
// One slot holds one scale (and one zero point when asymmetric). Slots are ordered row-major:
// tensor: 1 slot; channel: one per row; group/MX/NV: ceil(cols / group) per row.
int64_t slots_per_row(const FormatSpec& spec, int64_t cols);  // 0 for tensor (one shared slot)
int64_t num_slots(const FormatSpec& spec, int64_t rows, int64_t cols);
int64_t slot_index(const FormatSpec& spec, int64_t cols, int64_t row, int64_t col);

// Bits of one stored scale: 16 (fp16, Plain) or 8 (E8M0 for MX, E4M3 for NV). Not for Ggml.
int scale_bits(const FormatSpec& spec);

// Storage cost per weight of a rows x cols matrix: element bits, plus every stored scale, zero
// point (stored with the element's width) and tensor scale (32 bits, NVFP4), divided by the
// number of weights. A partial last group counts as a whole group.
//   int4:g128 -> 4 + 16/128 = 4.125; int4:g128:asym -> 4 + (16+4)/128 = 4.15625;
//   mxfp4 -> 4 + 8/32 = 4.25; nvfp4 -> 4 + 8/16 + 32/(rows*cols).
// GGUF types: their block bytes * 8 / block elements (gguf:q4_0 -> 18*8/32 = 4.5).
double bits_per_weight(const FormatSpec& spec, int64_t rows, int64_t cols);

}  // namespace lowbit
