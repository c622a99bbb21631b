#include "quant/scheme.h"

#include <charconv>
#include <cmath>

#include <fmt/format.h>

#include "util/error.h"

namespace lowbit {

OutlierRule OutlierRule::parse(std::string_view text) {
  OutlierRule r;
  const size_t colon = text.find(':');
  r.saliency = parse_saliency(text.substr(0, colon));
  if (colon != std::string_view::npos) {
    std::string_view p = text.substr(colon + 1);
    auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), r.percent);
    if (ec != std::errc() || end != p.data() + p.size() || !std::isfinite(r.percent) || r.percent < 0 ||
        r.percent > 100)
      fail("outliers '{}': the percentage must be a number in [0, 100], e.g. gradient:1", text);
  }
  return r;
}

std::string OutlierRule::str() const { return fmt::format("{}:{}", saliency_name(saliency), percent); }

LayerScheme LayerScheme::parse(std::string_view text) {
  LayerScheme s;
  const size_t plus = text.find('+');
  s.format = FormatSpec::parse(text.substr(0, plus));
  if (plus != std::string_view::npos) s.outliers = OutlierRule::parse(text.substr(plus + 1));
  return s;
}

std::string LayerScheme::str() const { return outliers ? format.str() + "+" + outliers->str() : format.str(); }

double LayerScheme::bits(int64_t rows, int64_t cols) const {
  double b = bits_per_weight(format, rows, cols) * double(rows * cols);
  if (outliers) b += double(SparseOutliers::bits(rows, cols, outlier_count(rows * cols, outliers->percent)));
  return b;
}

}  // namespace lowbit
