#include "format/registry.h"

#include <fmt/format.h>

#include "format/block_formats.h"
#include "format/ggml_formats.h"
#include "format/int_format.h"
#include "format/minifloat.h"
#include "format/nf4.h"
#include "util/error.h"

namespace lowbit {

const std::vector<FormatFamily>& format_registry() {
  static const std::vector<FormatFamily> registry = {
      {"int2..int8[:tensor|channel|g<N>][:sym|asym]",
       "integer grid, fp16 scale; sym = restricted [-(2^(b-1)-1), 2^(b-1)-1], asym = [0, 2^b-1] "
       "with a b-bit zero point; default sym, g128 (int8: channel)",
       "int4:g128:asym", match_int, int_tokens},
      {"fp<b>_e<x>m<y>[:tensor|channel|g<N>]",
       "OCP minifloat ExMy (fp4_e2m1, fp6_e2m3, fp6_e3m2, fp8_e4m3, fp8_e5m2, any split from e1m1 "
       "to e5m2; e<x>m<y> also works), fp16 absmax scale; default g128 (8-bit: channel)",
       "fp4_e2m1:g32", match_minifloat, minifloat_tokens},
      {"nf4[:tensor|channel|g<N>]",
       "QLoRA NormalFloat-4 codebook, fp16 absmax scale; default g64", "nf4:g64", match_nf4,
       nf4_tokens},
      {"mxfp4 | mxfp6[_e2m3|_e3m2] | mxfp8[_e4m3|_e5m2]",
       "OCP MX: blocks of 32 with one E8M0 power-of-two scale; mxfp6/mxfp8 mean e2m3/e4m3",
       "mxfp4", match_mx, mx_tokens},
      {"nvfp4", "NVIDIA FP4: E2M1 in blocks of 16 with an E4M3 scale, plus one fp32 tensor scale",
       "nvfp4", match_nvfp4, nvfp4_tokens},
      {"gguf:q8_0|q4_0|q4_1|iq4_nl|q4_k|q6_k|f16|bf16|f32",
       "a GGUF type with ggml's exact blocks and scale encoding, for export to llama.cpp "
       "(blocks of 32; q4_k, q6_k: 256)",
       "gguf:q4_0", match_gguf, gguf_tokens},
  };
  return registry;
}

ElementDef find_element(std::string_view token) {
  for (const FormatFamily& family : format_registry())
    if (auto def = family.match(token)) return *def;
  fail("unknown number format '{}'", token);
}

std::string valid_spec_forms() {
  std::string out;
  for (const FormatFamily& family : format_registry()) {
    if (!out.empty()) out += " | ";
    out += family.forms;
  }
  return out;
}

std::string format_help() {
  std::string out;
  for (const FormatFamily& family : format_registry()) {
    FormatSpec spec = FormatSpec::parse(family.example);
    out += fmt::format("  {:<48} {}\n  {:<48} e.g. {} = {:.4g} bits/weight\n", family.forms,
                       family.description, "", family.example,
                       bits_per_weight(spec, 4096, 4096));
  }
  return out;
}

}  // namespace lowbit
