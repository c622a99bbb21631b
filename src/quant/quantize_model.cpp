#include "quant/quantize_model.h"

#include <torch/torch.h>

#include <chrono>
#include <algorithm>
#include <cmath>
#include <set>

#include "calib/sequential.h"
#include "io/quantized_checkpoint.h"
#include "model/model_loader.h"
#include "quant/activation.h"
#include "util/error.h"
#include "util/progress.h"

namespace lowbit {

namespace {

const char* method_name(QuantMethod m) { return m == QuantMethod::GPTQ ? "gptq" : "rtn"; }
const char* metric_name(MofqMetric m) { return m == MofqMetric::OutputError ? "output" : "weight"; }

// ‖X Wᵀ − q(X) Ŵᵀ‖² / rows(X): the output error of a layer whose weights and inputs are both
// quantized, which is what a weight+activation format choice must minimise.
double wa_output_error(const torch::Tensor& X, const torch::Tensor& W, const torch::Tensor& Wq,
                       const ActivationQuant& aq) {
  torch::Tensor ref = torch::matmul(X, W.t());
  torch::Tensor got = torch::matmul(aq.fake_quantizer()(X), Wq.t());
  return (ref - got).pow(2).sum().item<double>() / double(X.size(0));
}

nlohmann::json job_params(const QuantizeJob& job) {
  std::vector<std::string> cands;
  for (const auto& c : job.candidates) cands.push_back(c.str());
  nlohmann::json p = {{"method", method_name(job.layer.method)},
                      {"candidates", cands},
                      {"metric", metric_name(job.metric)},
                      {"activations", job.quantize_activations}};
  if (job.layer.method == QuantMethod::GPTQ)
    p["gptq"] = {{"damp", job.layer.gptq.damp},
                 {"block_size", job.layer.gptq.block_size},
                 {"act_order", job.layer.gptq.act_order},
                 {"static_groups", job.layer.gptq.static_groups}};
  else
    p["rtn"] = {{"clip_search", job.layer.rtn.clip_search}};
  if (needs_calibration(job))
    p["calibration"] = {{"file", job.calib.file},
                        {"nsamples", job.calib.nsamples},
                        {"seqlen", job.calib.seqlen},
                        {"seed", job.calib.seed}};
  return p;
}

}  // namespace

bool needs_calibration(const QuantizeJob& job) {
  return job.layer.method == QuantMethod::GPTQ || job.metric == MofqMetric::OutputError || job.quantize_activations;
}

nlohmann::json QuantizeReport::to_json() const {
  nlohmann::json layers_json = nlohmann::json::array();
  for (const LayerReport& l : layers)
    layers_json.push_back({{"name", l.name},
                           {"format", l.format},
                           {"errors", l.errors},
                           {"weight_mse", l.weight_mse},
                           {"output_error", std::isnan(l.output_error) ? nlohmann::json(nullptr)
                                                                        : nlohmann::json(l.output_error)},
                           {"bits_per_weight", l.bits_per_weight},
                           {"shape", {l.rows, l.cols}},
                           {"note", l.note}});
  return {{"bits_per_weight", bits_per_weight},
          {"quantized_weights", quantized_weights},
          {"seconds", seconds},
          {"params", quantization_config.value("params", nlohmann::json::object())},
          {"layers", layers_json}};
}

QuantizeReport quantize_model(const QuantizeJob& job) {
  auto t0 = std::chrono::steady_clock::now();
  if (job.candidates.empty()) fail("quantize: no format given");
  for (const FormatSpec& c : job.candidates)
    if (job.quantize_activations && c.scaling() == Scaling::Ggml)
      fail("quantize: {} is a GGUF weight type; activation quantization needs lowbit formats (int8, fp8_e4m3)", c.str());
  if (needs_calibration(job) && job.calib.file.empty())
    fail("quantize: {} needs calibration text: pass --calib FILE",
         job.layer.method == QuantMethod::GPTQ ? "GPTQ"
         : job.quantize_activations           ? "activation quantization"
                                              : "the output-error metric");
  LoadedModel m = load_model(job.model, job.tokenizer);
  LlamaModel& model = *m.model;
  if (m.source->quantization_config().is_object()) fail("{} is already quantized", job.model);

  std::unique_ptr<QuantizedCheckpointWriter> writer;
  if (!job.out.empty()) writer = std::make_unique<QuantizedCheckpointWriter>(job.out, model.config().to_json());
  QuantizeReport report;
  nlohmann::json tensors = nlohmann::json::object(), activations = nlohmann::json::object();

  // Embedding and head first, so that calibration runs on them as they will be.
  const bool tied = !m.source->has("lm_head.weight");
  const bool gguf_job = std::all_of(job.candidates.begin(), job.candidates.end(),
                                    [](const FormatSpec& c) { return c.scaling() == Scaling::Ggml; });
  auto embedding_format = [&](bool is_output) -> std::optional<FormatSpec> {
    const std::optional<FormatSpec>& given = is_output ? job.output_format : job.embed_format;
    if (given || !gguf_job) return given;
    return gguf_embedding_type(job.candidates[0], is_output);
  };
  std::set<std::string> quantized_extras;
  auto quantize_extra = [&](const std::string& name, torch::Tensor& weight, const std::optional<FormatSpec>& format) {
    if (!format) return;
    FormatSpec spec = gguf_format_for_shape(*format, weight.size(1));
    LayerQuantOptions o;
    o.compute_output_error = false;
    LayerQuantResult r = quantize_layer(weight, spec, o);
    tensors[name] = {{"format", spec.str()}, {"method", "rtn"}, {"shape", {r.q.rows, r.q.cols}},
                     {"bits_per_weight", bits_per_weight(spec, r.q.rows, r.q.cols)}, {"weight_mse", r.weight_mse}};
    if (writer) writer->add_quantized(name, r.q);
    weight = r.dequantized.to(weight.device());
    quantized_extras.insert(name);
  };
  quantize_extra("model.embed_tokens.weight", model.embed_weight(), embedding_format(tied));
  if (tied) model.lm_head().weight = model.embed_weight();
  else quantize_extra("lm_head.weight", model.lm_head().weight, embedding_format(true));

  // Everything else that is not a decoder linear stays in F32.
  if (writer)
    for (const std::string& name : m.source->names()) {
      bool linear = name.starts_with("model.layers.") && name.ends_with("_proj.weight");
      if (linear || quantized_extras.count(name)) continue;
      torch::Tensor t = m.source->get(name).contiguous();
      writer->add_float(name, t.sizes().vec(), t.data_ptr<float>());
    }
  double bits_sum = 0;

  auto quantize_one = [&](const std::string& name, Linear& linear, const LinearInputStats* stats) {
    torch::Tensor H = stats && stats->hessian.defined() ? stats->hessian : torch::Tensor();
    // GGUF types that cannot hold this row length fall back (format/ggml_formats.h).
    std::vector<FormatSpec> candidates;
    std::string note;
    for (const FormatSpec& c : job.candidates) {
      candidates.push_back(gguf_format_for_shape(c, linear.weight.size(1)));
      if (!(candidates.back() == c))
        note += fmt::format("{}{} cannot hold rows of {}: {}", note.empty() ? "" : "; ", c.str(),
                            linear.weight.size(1), candidates.back().str());
    }
    MofqChoice choice;
    std::vector<ActivationQuant> act;
    if (job.quantize_activations) {
      // W8A8: weights and inputs share the element format; choose by the joint output error.
      for (const FormatSpec& c : candidates) act.push_back(ActivationQuant::calibrated(c, stats->input_absmax));
      double best = std::numeric_limits<double>::infinity();
      for (size_t i = 0; i < candidates.size(); ++i) {
        LayerQuantResult r = quantize_layer(linear.weight, candidates[i], job.layer, H);
        double e = wa_output_error(stats->input_sample, linear.weight, r.dequantized, act[i]);
        choice.errors.push_back(e);
        if (e < best) {
          best = e;
          choice.best = i;
          choice.result = std::move(r);
        }
      }
    } else if (candidates.size() == 1) {
      choice.result = quantize_layer(linear.weight, candidates[0], job.layer, H);
      choice.errors = {job.metric == MofqMetric::OutputError ? choice.result.output_error : choice.result.weight_mse};
    } else {
      choice = choose_format(linear.weight, candidates, job.metric, job.layer, H);
    }
    const LayerQuantResult& r = choice.result;
    const FormatSpec& spec = candidates[choice.best];
    LayerReport lr{name, spec.str(), choice.errors, r.weight_mse, r.output_error,
                   bits_per_weight(spec, r.q.rows, r.q.cols), r.q.rows, r.q.cols, note};
    nlohmann::json tc = {{"format", spec.str()},
                         {"method", method_name(job.layer.method)},
                         {"shape", {r.q.rows, r.q.cols}},
                         {"bits_per_weight", lr.bits_per_weight},
                         {"weight_mse", r.weight_mse}};
    if (spec.scaling() == Scaling::NV) tc["tensor_scale"] = r.q.tensor_scale;
    if (!std::isnan(r.output_error)) tc["output_error"] = r.output_error;
    tensors[name] = tc;
    if (writer) writer->add_quantized(name, r.q);
    linear.weight = r.dequantized;
    if (job.quantize_activations) {
      linear.input_quant = act[choice.best].fake_quantizer();
      activations[name] = act[choice.best].to_json();
    }
    bits_sum += lr.bits_per_weight * double(r.q.rows * r.q.cols);
    report.quantized_weights += r.q.rows * r.q.cols;
    report.layers.push_back(std::move(lr));
  };

  if (needs_calibration(job)) {
    CalibOptions calib = job.calib;
    calib.seqlen = std::min(calib.seqlen, model.config().max_position_embeddings);
    torch::Tensor tokens = sample_calibration(*m.tokenizer, calib);
    SequentialOptions so;
    so.hessian = job.layer.method == QuantMethod::GPTQ || job.metric == MofqMetric::OutputError;
    so.input_sample_rows = job.quantize_activations ? 4096 : 0;
    so.batch = job.calib_batch;
    so.progress = job.progress;
    quantize_sequentially(model, tokens.to(model.device()), so,
                          [&](int, const std::string& name, Linear& lin, const LinearInputStats& st) {
                            quantize_one(name, lin, &st);
                          });
  } else {
    const int layers = model.config().num_layers;
    Progress progress("quantize", size_t(layers) * 7, job.progress);
    size_t done = 0;
    for (int l = 0; l < layers; ++l)
      for (const std::string& short_name : DecoderLayer::linear_names()) {
        quantize_one(fmt::format("model.layers.{}.{}.weight", l, short_name),
                     model.layers()[l].linear(short_name), nullptr);
        progress.update(++done, fmt::format("layer {}/{} {}", l + 1, layers, short_name));
      }
    progress.finish();
  }

  report.bits_per_weight = bits_sum / double(std::max<int64_t>(report.quantized_weights, 1));
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  report.quantization_config = {{"version", 1},
                                {"params", job_params(job)},
                                {"bits_per_weight", report.bits_per_weight},
                                {"tensors", tensors}};
  if (job.quantize_activations) report.quantization_config["activations"] = activations;
  if (writer) writer->finish(report.quantization_config, m.source->tokenizer_dir());
  return report;
}

}  // namespace lowbit
