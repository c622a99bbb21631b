#pragma once
// What one linear layer is quantized to: a number format, optionally with a share of its weights
// kept in fp16 as sparse outliers (GWQ / SpQR, outliers.h). Written "FORMAT[+RULE:PERCENT]":
//   "int3:g32"               the format alone
//   "int3:g32+gradient:1"    1% of the weights chosen by |g| kept in fp16, the rest int3:g32
//   "int4:g128+hessian:0.5"  0.5% chosen by SpQR's Hessian rule
// This is how quantize --outliers, the candidates of lowbit plan and a saved plan name a choice.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "format/spec.h"
#include "quant/outliers.h"

namespace lowbit {

struct OutlierRule {
  Saliency saliency = Saliency::Gradient;
  double percent = 1.0;  // of the layer's weights, in [0, 100]

  // "gradient:1", "hessian:0.5", "fisher:2", "gradient-weight:1"; "gradient" alone means 1%.
  static OutlierRule parse(std::string_view text);
  std::string str() const;  // canonical "rule:percent", parse(str()) == *this
  bool needs_gradients() const { return saliency != Saliency::Hessian; }
  bool operator==(const OutlierRule& o) const { return str() == o.str(); }
};

struct LayerScheme {
  FormatSpec format;
  std::optional<OutlierRule> outliers;

  static LayerScheme parse(std::string_view text);  // throws lowbit::Error naming the bad part
  std::string str() const;

  // Exact storage bits of a [rows, cols] layer: the format's (scales included) plus the sparse
  // part that outlier_count(rows·cols, percent) outliers take (SparseOutliers::bits()).
  double bits(int64_t rows, int64_t cols) const;
  bool operator==(const LayerScheme& o) const { return str() == o.str(); }
};

}  // namespace lowbit
