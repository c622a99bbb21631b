#include "quant/activation.h"

#include <torch/torch.h>

#include "quant/quantizer.h"
#include "util/error.h"

namespace lowbit {

ActivationQuant ActivationQuant::calibrated(const FormatSpec& spec, double input_absmax) {
  double max_value = spec.codec().grid().back();
  ActivationQuant a{spec, float(input_absmax > 0 ? input_absmax / max_value : 1.0)};
  return a;
}

std::function<torch::Tensor(const torch::Tensor&)> ActivationQuant::fake_quantizer() const {
  const Codec* codec = &spec.codec();  // codecs live in the registry for the whole program
  const float s = scale;
  return [codec, s](const torch::Tensor& x) { return round_to_grid(x / s, *codec) * s; };
}

nlohmann::json ActivationQuant::to_json() const { return {{"format", spec.str()}, {"scale", scale}}; }

ActivationQuant ActivationQuant::from_json(const nlohmann::json& j) {
  try {
    return {FormatSpec::parse(j.at("format").get<std::string>()), j.at("scale").get<float>()};
  } catch (const nlohmann::json::exception& e) {
    fail("activation quantization entry {} is malformed: {}", j.dump(), e.what());
  }
}

}  // namespace lowbit
