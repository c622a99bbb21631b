#include "format/ggml_formats.h"

#include <array>

#include "format/int_format.h"
#include "io/ggml_blocks.h"
#include "util/error.h"

namespace lowbit {

namespace {

// Integer grid lo, lo+1, ... with codes 0, 1, ... in order: ggml's offset-binary nibbles (code = q - lo).
std::vector<float> offset_grid(int bits, int lo) {
  std::vector<float> values;
  for (int c = 0; c < (1 << bits); ++c) values.push_back(float(c + lo));
  return values;
}

const Codec& q4_0_codec() {
  static const Codec codec("q4_0", 4, offset_grid(4, -8));
  return codec;
}

const Codec& q6_k_codec() {
  static const Codec codec("q6_k", 6, offset_grid(6, -32));
  return codec;
}

const Codec& iq4nl_codec() {
  static const Codec codec = [] {
    std::vector<float> values;
    for (int8_t v : iq4nl_values()) values.push_back(float(v));
    return Codec("iq4_nl", 4, values);
  }();
  return codec;
}

struct GgufName {
  const char* token;  // after "gguf:"
  GgmlFormatInfo info;
};

const std::array<GgufName, 9>& gguf_names() {
  static const std::array<GgufName, 9> names = {{
      {"q8_0", {GGMLType::Q8_0, 32, 32, false, false}},
      {"q4_0", {GGMLType::Q4_0, 32, 32, false, false}},
      {"q4_1", {GGMLType::Q4_1, 32, 32, true, false}},
      {"iq4_nl", {GGMLType::IQ4_NL, 32, 32, false, false}},
      {"q4_k", {GGMLType::Q4_K, 256, 32, true, false}},
      {"q6_k", {GGMLType::Q6_K, 256, 16, false, false}},
      {"f16", {GGMLType::F16, 1, 1, false, true}},
      {"bf16", {GGMLType::BF16, 1, 1, false, true}},
      {"f32", {GGMLType::F32, 1, 1, false, true}},
  }};
  return names;
}

const Codec* element_codec(GGMLType t) {
  switch (t) {
    case GGMLType::Q8_0: return &int_codec(8, true);
    case GGMLType::Q4_0: return &q4_0_codec();
    case GGMLType::Q4_1:
    case GGMLType::Q4_K: return &int_codec(4, false);
    case GGMLType::IQ4_NL: return &iq4nl_codec();
    case GGMLType::Q6_K: return &q6_k_codec();
    default: return nullptr;
  }
}

}  // namespace

const GgmlFormatInfo& ggml_format_info(const FormatSpec& spec) {
  if (spec.scaling() == Scaling::Ggml)
    for (const GgufName& n : gguf_names())
      if (n.info.type == spec.element.ggml_type) return n.info;
  fail("{} is not a GGUF type", spec.str());
}

GGMLType ggml_type_of(const FormatSpec& spec) { return ggml_format_info(spec).type; }

std::optional<FormatSpec> gguf_spec(GGMLType type) {
  for (const GgufName& n : gguf_names())
    if (n.info.type == type) return FormatSpec::parse(std::string("gguf:") + n.token);
  return std::nullopt;
}

FormatSpec gguf_format_for_shape(const FormatSpec& spec, int64_t cols) {
  if (spec.scaling() != Scaling::Ggml) return spec;
  FormatSpec s = spec;
  if (cols % 256 != 0) {
    if (ggml_type_of(s) == GGMLType::Q4_K) s = *gguf_spec(GGMLType::Q4_1);
    if (ggml_type_of(s) == GGMLType::Q6_K) s = *gguf_spec(GGMLType::Q8_0);
  }
  if (cols % ggml_format_info(s).block != 0) s = *gguf_spec(GGMLType::F16);
  return s;
}

FormatSpec gguf_embedding_type(const FormatSpec& linear_type, bool is_output) {
  if (ggml_format_info(linear_type).is_float || !is_output) return linear_type;
  if (ggml_type_of(linear_type) == GGMLType::Q8_0) return linear_type;  // never below the linears
  return *gguf_spec(GGMLType::Q6_K);
}

std::optional<ElementDef> match_gguf(std::string_view token) {
  if (!token.starts_with("gguf:")) return std::nullopt;
  std::string_view type = token.substr(5);
  for (const GgufName& n : gguf_names()) {
    if (type != n.token) continue;
    ElementDef def;
    def.token = std::string("gguf:") + n.token;
    def.codec = element_codec(n.info.type);
    def.scaling = Scaling::Ggml;
    def.ggml_type = n.info.type;
    def.default_granularity = n.info.is_float ? Granularity::Tensor : Granularity::Group;
    def.default_group_size = n.info.is_float ? 0 : n.info.block;
    return def;
  }
  std::string valid;
  for (const std::string& t : gguf_tokens()) valid += (valid.empty() ? "" : ", ") + t;
  fail("'{}' is not a GGUF type lowbit writes ({})", token, valid);
}

std::vector<std::string> gguf_tokens() {
  std::vector<std::string> out;
  for (const GgufName& n : gguf_names()) out.push_back(std::string("gguf:") + n.token);
  return out;
}

}  // namespace lowbit
