#include "format/spec.h"

#include <algorithm>
#include <cctype>
#include <optional>
#include <vector>

#include "format/registry.h"
#include "format/token.h"
#include "util/error.h"

namespace lowbit {

static std::vector<std::string_view> split_colons(std::string_view s) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    size_t end = s.find(':', start);
    parts.push_back(s.substr(start, end == std::string_view::npos ? end : end - start));
    if (end == std::string_view::npos) return parts;
    start = end + 1;
  }
}

static FormatSpec parse_or_throw(std::string_view text) {
  std::vector<std::string_view> parts = split_colons(text);
  FormatSpec spec;
  if (parts[0] == "gguf") {  // "gguf:<type>" is one element token
    if (parts.size() != 2) fail("a GGUF format is gguf:<type>, e.g. gguf:q4_0, and takes no options");
    spec.element = find_element(text);
    spec.granularity = spec.element.default_granularity;
    spec.group_size = spec.element.default_group_size;
    return spec;
  }
  spec.element = find_element(parts[0]);
  const ElementDef& def = spec.element;
  spec.granularity = def.default_granularity;
  spec.group_size = def.default_group_size;
  if (def.scaling != Scaling::Plain) {
    if (parts.size() > 1)
      fail("{} has fixed blocks of {} and takes no options", def.token, def.default_group_size);
    return spec;
  }
  bool seen_granularity = false, seen_symmetry = false;
  for (size_t i = 1; i < parts.size(); ++i) {
    std::string_view opt = parts[i];
    if (opt == "sym" || opt == "asym") {
      if (seen_symmetry) fail("sym/asym given twice");
      seen_symmetry = true;
      spec.asymmetric = opt == "asym";
      if (spec.asymmetric && !def.asym_codec)
        fail("{} has no asymmetric form (asym is for the integer formats)", def.token);
      continue;
    }
    Granularity granularity;
    int64_t group_size = 0;
    if (opt == "tensor") {
      granularity = Granularity::Tensor;
    } else if (opt == "channel") {
      granularity = Granularity::Channel;
    } else if (auto n = opt.starts_with("g") ? parse_count(opt.substr(1)) : std::nullopt) {
      granularity = Granularity::Group;
      group_size = *n;
    } else {
      fail("'{}' is not an option (tensor, channel, g<N>, sym, asym)", opt);
    }
    if (seen_granularity) fail("granularity given twice");
    seen_granularity = true;
    spec.granularity = granularity;
    spec.group_size = group_size;
  }
  return spec;
}

FormatSpec FormatSpec::parse(std::string_view text) {
  std::string lower(text);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return char(std::tolower(c)); });
  try {
    return parse_or_throw(lower);
  } catch (const Error& e) {
    fail("bad format spec '{}': {}. Valid forms: {}", text, e.what(), valid_spec_forms());
  }
}

const Codec& FormatSpec::codec() const {
  if (!element.codec) fail("{} has no element grid", str());
  return asymmetric ? *element.asym_codec : *element.codec;
}

int FormatSpec::bits() const {
  if (element.codec) return codec().bits();
  return element.ggml_type == GGMLType::F32 ? 32 : 16;
}

std::string FormatSpec::str() const {
  std::string out = element.token;
  if (element.scaling != Scaling::Plain) return out;
  switch (granularity) {
    case Granularity::Tensor: out += ":tensor"; break;
    case Granularity::Channel: out += ":channel"; break;
    case Granularity::Group: out += fmt::format(":g{}", group_size); break;
  }
  if (element.asym_codec) out += asymmetric ? ":asym" : ":sym";
  return out;
}

int64_t slots_per_row(const FormatSpec& spec, int64_t cols) {
  switch (spec.granularity) {
    case Granularity::Tensor: return 0;
    case Granularity::Channel: return 1;
    case Granularity::Group: return (cols + spec.group_size - 1) / spec.group_size;
  }
  return 0;
}

int64_t num_slots(const FormatSpec& spec, int64_t rows, int64_t cols) {
  return spec.granularity == Granularity::Tensor ? 1 : rows * slots_per_row(spec, cols);
}

int64_t slot_index(const FormatSpec& spec, int64_t cols, int64_t row, int64_t col) {
  switch (spec.granularity) {
    case Granularity::Tensor: return 0;
    case Granularity::Channel: return row;
    case Granularity::Group: return row * slots_per_row(spec, cols) + col / spec.group_size;
  }
  return 0;
}

int scale_bits(const FormatSpec& spec) {
  if (spec.scaling() == Scaling::Ggml) fail("{} has no separate scales", spec.str());
  return spec.scaling() == Scaling::Plain ? 16 : 8;
}

double bits_per_weight(const FormatSpec& spec, int64_t rows, int64_t cols) {
  if (rows < 1 || cols < 1) fail("bits_per_weight: empty {}x{} matrix", rows, cols);
  if (spec.scaling() == Scaling::Ggml) {
    const GGMLTypeInfo& t = ggml_type_info(spec.element.ggml_type);
    return double(t.block_bytes) * 8 / double(t.block_size);
  }
  double per_slot = scale_bits(spec) + (spec.asymmetric ? spec.bits() : 0);
  double tensor_bits = spec.scaling() == Scaling::NV ? 32 : 0;
  double weights = double(rows) * double(cols);
  return spec.bits() + (double(num_slots(spec, rows, cols)) * per_slot + tensor_bits) / weights;
}

}  // namespace lowbit
