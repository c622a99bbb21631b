#pragma once
// Static per-tensor activation quantization (the A of W8A8): the input of a linear layer is
// fake-quantized as round_to_grid(x / scale) * scale, with scale = calibrated absmax / the
// element format's largest value.
#include <torch/types.h>

#include <functional>
#include <nlohmann/json.hpp>

#include "format/spec.h"

namespace lowbit {

struct ActivationQuant {
  FormatSpec spec;  // only the element codec is used
  float scale = 1;

  static ActivationQuant calibrated(const FormatSpec& spec, double input_absmax);
  std::function<torch::Tensor(const torch::Tensor&)> fake_quantizer() const;
  nlohmann::json to_json() const;  // {"format": ..., "scale": ...}
  static ActivationQuant from_json(const nlohmann::json& j);
};

}  // namespace lowbit
