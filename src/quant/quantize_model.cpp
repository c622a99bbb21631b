#include "quant/quantize_model.h"

#include <torch/torch.h>

#include <chrono>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <future>
#include <set>

#include "calib/sequential.h"
#include "io/quantized_checkpoint.h"
#include "model/model_loader.h"
#include "quant/activation.h"
#include "quant/methods.h"
#include "quant/outliers.h"
#include "quant/resume.h"
#include "util/crash_point.h"
#include "util/allocator.h"
#include "util/error.h"
#include "util/mapped_file.h"
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
  nlohmann::json p = {{"method", job.flexround ? "flexround" : method_name(job.layer.method)},
                      {"candidates", cands},
                      {"metric", metric_name(job.metric)},
                      {"activations", job.quantize_activations}};
  if (!job.plan.empty()) {
    p.erase("candidates");
    p["plan"] = nlohmann::json::object();
    for (const auto& [name, scheme] : job.plan) p["plan"][name] = scheme.str();
  }
  if (job.outliers) p["outliers"] = {{"rule", job.outliers->str()}, {"global", job.outliers_global}};
  if (job.outliers || !job.plan.empty()) p["gwq_samples"] = job.gwq_samples;
  if (job.flexround)
    p["flexround"] = {{"iters", job.flexround->iters}, {"lr", job.flexround->lr}, {"batch", job.flexround->batch},
                      {"learn_scale", job.flexround->learn_scale}, {"input_divisor", job.flexround->input_divisor},
                      {"seed", job.flexround->seed}};
  else if (job.layer.method == QuantMethod::GPTQ)
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

// Each layer's schemes to choose from: its plan entry, or every candidate with the job's outliers.
std::vector<LayerScheme> schemes_of(const QuantizeJob& job, const std::string& name) {
  if (!job.plan.empty()) return {job.plan.at(name)};
  std::vector<LayerScheme> out;
  for (const FormatSpec& c : job.candidates) out.push_back({c, job.outliers});
  return out;
}

std::vector<LayerScheme> all_schemes(const QuantizeJob& job) {
  std::vector<LayerScheme> out;
  for (const auto& [name, s] : job.plan) out.push_back(s);
  for (const FormatSpec& c : job.candidates) out.push_back({c, job.outliers});
  return out;
}

bool uses_outliers(const QuantizeJob& job) {
  for (const LayerScheme& s : all_schemes(job))
    if (s.outliers && s.outliers->percent > 0) return true;
  return false;
}

bool uses_hessian_outliers(const QuantizeJob& job) {
  for (const LayerScheme& s : all_schemes(job))
    if (s.outliers && s.outliers->saliency == Saliency::Hessian) return true;
  return false;
}

void check_job(const QuantizeJob& job) {
  if (job.candidates.empty() && job.plan.empty()) fail("quantize: no format given");
  if (!job.plan.empty() && job.outliers) fail("quantize: a plan names each layer's outliers; drop --outliers");
  for (const LayerScheme& s : all_schemes(job)) {
    if (job.quantize_activations && s.format.scaling() == Scaling::Ggml)
      fail("quantize: {} is a GGUF weight type; activation quantization needs lowbit formats (int8, fp8_e4m3)",
           s.format.str());
    if (s.outliers && s.format.scaling() == Scaling::Ggml)
      fail("quantize: {}: llama.cpp has no sparse fp16 part, so GGUF types take no outliers", s.str());
  }
  if (job.quantize_activations && uses_outliers(job))
    fail("quantize: outliers and activation quantization do not combine");
  if (job.outliers_global && (!job.outliers || !job.outliers->needs_gradients()))
    fail("quantize: global outlier selection needs a gradient rule (gradient, gradient-weight, fisher)");
  if (job.gwq_samples < 1) fail("quantize: --gwq-samples must be at least 1");
  if (job.flexround) {
    if (job.plan.empty() && job.candidates.size() != 1)
      fail("quantize: FlexRound takes one format (--format) or a plan, not a MoFQ list");
    if (job.quantize_activations) fail("quantize: FlexRound quantizes weights only; drop --w8a8");
    for (const LayerScheme& s : all_schemes(job))
      if (s.format.scaling() == Scaling::Ggml)
        fail("quantize: FlexRound does not fit GGUF types' scale encodings; use int4:g32 (exported as Q4_0) or "
             "int8:g32 (Q8_0)");
  }
}

}  // namespace

bool needs_calibration(const QuantizeJob& job) {
  return job.layer.method == QuantMethod::GPTQ || job.flexround || uses_outliers(job) ||
         job.metric == MofqMetric::OutputError || job.quantize_activations;
}

bool writes_gguf_in_one_pass(const QuantizeJob& job) {
  return !needs_calibration(job) && (!job.plan.empty() || job.candidates.size() == 1);
}

namespace {

nlohmann::json layer_to_json(const LayerReport& l) {
  return {{"name", l.name},
          {"format", l.format},
          {"errors", l.errors},
          {"weight_mse", l.weight_mse},
          {"output_error", std::isnan(l.output_error) ? nlohmann::json(nullptr) : nlohmann::json(l.output_error)},
          {"bits_per_weight", l.bits_per_weight},
          {"shape", {l.rows, l.cols}},
          {"outliers", l.outliers},
          {"note", l.note}};
}

LayerReport layer_from_json(const nlohmann::json& j) {
  LayerReport l;
  l.name = j.at("name");
  l.format = j.at("format");
  l.errors = j.at("errors").get<std::vector<double>>();
  l.weight_mse = j.at("weight_mse");
  l.output_error = j.at("output_error").is_null() ? std::nan("") : j.at("output_error").get<double>();
  l.bits_per_weight = j.at("bits_per_weight");
  l.rows = j.at("shape")[0], l.cols = j.at("shape")[1];
  l.outliers = j.at("outliers");
  l.note = j.at("note");
  return l;
}

// Everything that changes the checkpoint's bytes, for --resume's fingerprint. The memory budgets
// are left out: they change nothing (tests/nn/test_streaming.cpp).
nlohmann::json result_options(const QuantizeJob& job) {
  nlohmann::json o = job_params(job);
  o["embed_format"] = job.embed_format ? job.embed_format->str() : "";
  o["head_format"] = job.output_format ? job.output_format->str() : "";
  o["calib_batch"] = job.calib_batch;
  o["max_shard_bytes"] = job.max_shard_bytes;
  o["threads"] = at::get_num_threads();  // float sums may be split differently
  return o;
}

}  // namespace

nlohmann::json QuantizeReport::to_json() const {
  nlohmann::json layers_json = nlohmann::json::array();
  for (const LayerReport& l : layers) layers_json.push_back(layer_to_json(l));
  return {{"bits_per_weight", bits_per_weight},
          {"quantized_weights", quantized_weights},
          {"file_bytes", file_bytes},
          {"seconds", seconds},
          {"params", quantization_config.value("params", nlohmann::json::object())},
          {"layers", layers_json}};
}

QuantizeReport quantize_model(const QuantizeJob& job) {
  auto t0 = std::chrono::steady_clock::now();
  check_job(job);
  if (job.resume && job.out.empty()) fail("quantize --resume: there is no output to resume (--dry-run)");
  if (job.resume && job.flexround) fail("quantize --resume: FlexRound runs cannot resume yet; drop --resume");
  if (needs_calibration(job) && job.calib.file.empty())
    fail("quantize: {} needs calibration text: pass --calib FILE",
         job.flexround                         ? "FlexRound"
         : job.layer.method == QuantMethod::GPTQ ? "GPTQ"
         : uses_outliers(job)          ? "choosing outliers"
         : job.quantize_activations           ? "activation quantization"
                                              : "the output-error metric");
  // Plain RTN needs no forward pass: each tensor goes from the checkpoint to the output on its
  // own. Calibrated methods run the model a block at a time (job.memory).
  const bool calibrated = needs_calibration(job);
  LoadedModel m = load_model(job.model, job.tokenizer, torch::kCPU,
                             calibrated ? job.memory : ModelMemory{/*block_budget_bytes=*/0});
  LlamaModel& model = *m.model;
  const WeightSource& src = *m.source;
  if (src.quantization_config().is_object()) fail("{} is already quantized", job.model);
  const int num_layers = model.config().num_layers;
  if (!job.plan.empty()) {
    size_t found = 0;
    for (int l = 0; l < num_layers; ++l)
      for (const std::string& short_name : DecoderLayer::linear_names()) {
        std::string name = fmt::format("model.layers.{}.{}.weight", l, short_name);
        if (!job.plan.count(name)) fail("quantize: the plan has no entry for {} (a plan made for another model?)", name);
        ++found;
      }
    if (found != job.plan.size()) fail("quantize: the plan names layers this model does not have");
  }

  QuantizeReport report;
  nlohmann::json tensors = nlohmann::json::object(), activations = nlohmann::json::object();
  double bits_sum = 0;
  // The output, and with it what an interrupted run left to resume from (quant/resume.h).
  std::unique_ptr<QuantizedCheckpointWriter> writer;
  std::optional<ResumeJournal> journal;
  std::optional<ResumePoint> resumed;
  if (!job.out.empty()) {
    writer = std::make_unique<QuantizedCheckpointWriter>(job.out, model.config().to_json(), job.replace,
                                                         job.max_shard_bytes, /*reuse=*/job.resume);
    journal.emplace(writer->resume_dir(),
                    run_fingerprint({job.model, job.tokenizer, calibrated ? job.calib.file : ""}, result_options(job)));
    if (job.resume) {
      writer->keep_scratch();  // whatever load() says, the interrupted run's work stays
      resumed = journal->load();
      writer->keep_scratch(resumed.has_value());
      if (!resumed)
        std::fprintf(stderr, "--resume: no interrupted run of %s to continue; starting from the beginning\n",
                     job.out.c_str());
      writer->restore(resumed ? resumed->writer : nlohmann::json::object());
    }
  }
  if (resumed) {
    const nlohmann::json& r = resumed->report;
    tensors = r.at("tensors"), activations = r.at("activations"), bits_sum = r.at("bits_sum");
    report.quantized_weights = r.at("quantized_weights");
    for (const nlohmann::json& l : r.at("layers")) report.layers.push_back(layer_from_json(l));
    std::fprintf(stderr, "resuming %s %s\n", job.out.c_str(),
                   resumed->finishing ? "at its final write" : fmt::format("at block {} of {}", resumed->next_block + 1, num_layers).c_str());
  }
  const int first_block = resumed ? resumed->next_block : 0;
  auto progress_state = [&] {
    nlohmann::json layers = nlohmann::json::array();
    for (const LayerReport& l : report.layers) layers.push_back(layer_to_json(l));
    return nlohmann::json{{"tensors", tensors}, {"activations", activations}, {"bits_sum", bits_sum},
                          {"quantized_weights", report.quantized_weights}, {"layers", layers}};
  };
  // The end of block l: when a shard closes, the journal records where to go on from (with the
  // next block's calibration inputs, when there are any), once the shard is on disk. The shard is
  // written on the writer's thread while the next block is quantized, and so is that entry; the
  // inputs file of the entry before is dropped after it.
  std::string saved_inputs;  // the activation file of the last journal entry
  auto block_done = [&](int l, const ActivationStore* next_inputs) {
    if (writer && writer->shard_full()) {
      ResumePoint p{l + 1, false, nlohmann::json(), progress_state(), ""};
      if (next_inputs && l + 1 < num_layers) {
        p.activations = fmt::format("activations-{}.bin", l + 1);
        std::filesystem::create_directories(journal->dir());
        next_inputs->save((std::filesystem::path(journal->dir()) / p.activations).string());
      }
      writer->end_block([&journal = *journal, &w = *writer, p, previous = saved_inputs](const nlohmann::json& state) {
        ResumePoint point = p;
        point.writer = state;
        journal.save(point);
        w.keep_scratch();
        if (!previous.empty()) std::filesystem::remove(std::filesystem::path(journal.dir()) / previous);
      });
      saved_inputs = p.activations;
    }
    crash_point("block");
  };

  torch::Tensor calib_tokens;
  if (calibrated) {
    CalibOptions calib = job.calib;
    calib.seqlen = std::min(calib.seqlen, model.config().max_position_embeddings);
    calib_tokens = sample_calibration(*m.tokenizer, calib).to(model.device());
  }
  // GWQ: outlier masks from the full-precision model's gradients, per distinct gradient rule.
  std::map<std::string, std::unique_ptr<ScratchTensors>> gradient_masks;  // rule -> parked masks by name
  for (const LayerScheme& s : all_schemes(job)) {
    if (resumed && resumed->finishing) break;  // every layer is quantized already
    if (!s.outliers || !s.outliers->needs_gradients() || s.outliers->percent == 0) continue;
    if (gradient_masks.count(s.outliers->str())) continue;
    GradientOptions go;
    go.progress = job.progress;
    go.activation_budget_bytes = job.activation_budget_bytes;
    if (writer) go.spill_dir = writer->scratch_dir();
    torch::Tensor tokens = calib_tokens.narrow(0, 0, std::min<int64_t>(job.gwq_samples, calib_tokens.size(0)));
    gradient_masks[s.outliers->str()] = gradient_outlier_masks(model, tokens, s.outliers->saliency,
                                                               s.outliers->percent, job.outliers_global, go);
    release_free_memory();
  }
  auto outlier_mask = [&](const std::string& name, const LayerScheme& s, const torch::Tensor& W,
                          const torch::Tensor& H) -> torch::Tensor {
    if (!s.outliers || s.outliers->percent == 0) return torch::zeros_like(W, torch::kBool);
    if (s.outliers->needs_gradients()) return stored_outlier_mask(*gradient_masks.at(s.outliers->str()), name, W);
    return select_outliers(hessian_saliency(W, H, s.format, job.layer), s.outliers->percent);
  };

  // Embedding and head first, so that calibration runs on them as they will be.
  const bool tied = !m.source->has("lm_head.weight");
  // (With a plan of GGUF types, the embedding type follows the first layer's.)
  const std::vector<LayerScheme> schemes = all_schemes(job);
  const bool gguf_job = std::all_of(schemes.begin(), schemes.end(),
                                    [](const LayerScheme& s) { return s.format.scaling() == Scaling::Ggml; });
  auto embedding_format = [&](bool is_output) -> std::optional<FormatSpec> {
    const std::optional<FormatSpec>& given = is_output ? job.output_format : job.embed_format;
    if (given || !gguf_job) return given;
    return gguf_embedding_type(schemes_of(job, "model.layers.0.self_attn.q_proj.weight")[0].format, is_output);
  };
  // --out-gguf in one pass: the GGUF file takes each quantized weight as it is made.
  std::unique_ptr<GgufModelWriter> gguf;
  if (job.gguf_out) {
    if (!writes_gguf_in_one_pass(job) || writer) fail("internal: this job cannot write its GGUF file in one pass");
    std::map<std::string, FormatSpec> given;
    for (int l = 0; l < num_layers; ++l)
      for (const std::string& short_name : DecoderLayer::linear_names()) {
        const std::string name = fmt::format("model.layers.{}.{}.weight", l, short_name);
        given.emplace(name, gguf_format_for_shape(schemes_of(job, name)[0].format, src.shape(name).back()));
      }
    for (const std::string name : {"model.embed_tokens.weight", "lm_head.weight"})
      if (src.has(name))
        if (std::optional<FormatSpec> f = embedding_format(name == "lm_head.weight" || tied))
          given.emplace(name, gguf_format_for_shape(*f, src.shape(name).back()));
    GgufExportOptions o = *job.gguf_out;
    if (o.tokenizer_dir.empty()) o.tokenizer_dir = m.tokenizer_dir;
    gguf = std::make_unique<GgufModelWriter>(src, *m.tokenizer, o, given);
  }
  std::set<std::string> quantized_extras;
  // RTN of the embedding or head; returns the dequantized tensor (undefined when kept as stored).
  auto quantize_extra = [&](const std::string& name, const std::optional<FormatSpec>& format) -> torch::Tensor {
    if (!format) return {};
    FormatSpec spec = gguf_format_for_shape(*format, src.shape(name).back());
    LayerQuantOptions o;
    o.compute_output_error = false;
    o.keep_dequantized = calibrated;
    // A tile of rows at a time from the stored bytes where the format allows it: a 128256-row
    // embedding is 1 GB as fp32.
    std::optional<StoredTensorView> view = rows_quantized_independently(spec) ? src.get_stored(name) : std::nullopt;
    LayerQuantResult r = view ? quantize_stored_rows(*view, spec, o)
                              : quantize_layer(src.get(name).contiguous(), spec, o);
    tensors[name] = {{"format", spec.str()}, {"method", "rtn"}, {"shape", {r.q.rows, r.q.cols}},
                     {"bits_per_weight", bits_per_weight(spec, r.q.rows, r.q.cols)}, {"weight_mse", r.weight_mse}};
    if (writer) writer->add_quantized(name, r.q);
    if (gguf) gguf->add_quantized(name, r.q);
    quantized_extras.insert(name);
    return r.dequantized;
  };
  // The model computes with them as they will be stored (only calibration runs it). A resumed run
  // has them in its shards already, and the next block's inputs saved.
  if (!resumed) {
    if (torch::Tensor e = quantize_extra("model.embed_tokens.weight", embedding_format(tied)); e.defined() && calibrated) {
      model.embed_weight() = e.to(model.device());
      if (tied) model.lm_head().weight = model.embed_weight();
    }
    if (!tied)
      if (torch::Tensor h = quantize_extra("lm_head.weight", embedding_format(true)); h.defined() && calibrated)
        model.lm_head().weight = h.to(model.device());

    // Everything else that is not a decoder linear keeps the dtype it is stored in (F32 where the
    // source's form is not a plain float tensor, e.g. a GGUF's).
    if (writer)
      for (const std::string& name : src.names()) {
        bool linear = name.starts_with("model.layers.") && name.ends_with("_proj.weight");
        if (linear || quantized_extras.count(name)) continue;
        if (auto stored = src.get_stored(name)) {
          writer->add_stored(name, stored->dtype, stored->shape, stored->data, stored->nbytes);
          release_mapped_pages(stored->data, stored->nbytes);  // copied
          continue;
        }
        torch::Tensor t = src.get(name).contiguous();
        writer->add_float(name, t.sizes().vec(), t.data_ptr<float>());
      }
  }

  // Writes one quantized linear into the checkpoint and the report, and puts it into the model.
  auto record = [&](const std::string& name, Linear& linear, const LayerScheme& scheme, LayerQuantResult r,
                    std::vector<double> errors, const SparseOutliers* outliers, const std::string& note) {
    const FormatSpec& spec = scheme.format;
    const int64_t nnz = outliers ? outliers->nnz() : 0;
    const double bits = bits_per_weight(spec, r.q.rows, r.q.cols) * double(r.q.rows * r.q.cols) +
                        double(outliers ? outliers->bits() : 0);
    LayerReport lr{name, scheme.str(), std::move(errors), r.weight_mse, r.output_error,
                   bits / double(r.q.rows * r.q.cols), r.q.rows, r.q.cols, note, nnz};
    nlohmann::json tc = {{"format", spec.str()},
                         {"method", job.flexround ? "flexround" : method_name(job.layer.method)},
                         {"shape", {r.q.rows, r.q.cols}},
                         {"bits_per_weight", lr.bits_per_weight},
                         {"weight_mse", r.weight_mse}};
    if (spec.scaling() == Scaling::NV) tc["tensor_scale"] = r.q.tensor_scale;
    if (!std::isnan(r.output_error)) tc["output_error"] = r.output_error;
    if (nnz > 0) tc["outliers"] = {{"rule", scheme.outliers->str()}, {"count", nnz}};
    tensors[name] = tc;
    if (writer) writer->add_quantized(name, r.q);
    if (gguf) gguf->add_quantized(name, r.q);
    if (writer && nnz > 0) writer->add_outliers(name, outliers->to_stored());
    linear.weight = r.dequantized;
    bits_sum += bits;
    report.quantized_weights += r.q.rows * r.q.cols;
    report.layers.push_back(std::move(lr));
    crash_point("linear");
  };

  // `stored`: the weight's bytes in the checkpoint, for a caller that has not read linear.weight;
  // plain RTN quantizes them row by row, and every other method reads the weight first.
  auto quantize_one = [&](const std::string& name, Linear& linear, const LinearInputStats* stats,
                          const StoredTensorView* stored = nullptr) {
    torch::Tensor H = stats && stats->hessian.defined() ? stats->hessian : torch::Tensor();
    // GGUF types that cannot hold this row length fall back (format/ggml_formats.h).
    std::vector<LayerScheme> schemes = schemes_of(job, name);
    const int64_t cols = linear.weight.defined() ? linear.weight.size(1) : src.shape(name).back();
    std::string note;
    for (LayerScheme& s : schemes) {
      FormatSpec fitted = gguf_format_for_shape(s.format, cols);
      if (!(fitted == s.format))
        note += fmt::format("{}{} cannot hold rows of {}: {}", note.empty() ? "" : "; ", s.format.str(), cols,
                            fitted.str());
      s.format = fitted;
    }
    const bool with_outliers = std::any_of(schemes.begin(), schemes.end(), [](const LayerScheme& s) {
      return s.outliers && s.outliers->percent > 0;
    });
    const bool from_stored = stored && !calibrated && !with_outliers && schemes.size() == 1 &&
                             !job.quantize_activations && job.layer.method == QuantMethod::RTN &&
                             rtn_direct_applies(schemes[0].format, job.layer.rtn);
    if (!from_stored && !linear.weight.defined()) linear.weight = src.get(name).contiguous();
    if (with_outliers) {
      // Each scheme with its outliers; the least error under the job's metric wins (MoFQ).
      std::vector<double> errors;
      std::optional<OutlierQuantResult> best;
      size_t best_i = 0;
      for (size_t i = 0; i < schemes.size(); ++i) {
        torch::Tensor mask = outlier_mask(name, schemes[i], linear.weight, H);
        OutlierQuantResult r = quantize_layer_with_outliers(linear.weight, schemes[i].format, job.layer, H, mask);
        errors.push_back(job.metric == MofqMetric::OutputError ? r.layer.output_error : r.layer.weight_mse);
        if (!best || errors.back() < errors[best_i]) best = std::move(r), best_i = i;
      }
      record(name, linear, schemes[best_i], std::move(best->layer), errors, &best->outliers, note);
      return;
    }
    std::vector<FormatSpec> candidates;
    for (const LayerScheme& s : schemes) candidates.push_back(s.format);
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
      LayerQuantOptions o = job.layer;
      o.keep_dequantized = calibrated;  // the model runs on it; plain RTN only stores the result
      if (from_stored) {
        choice.result = quantize_rtn_direct(*stored, candidates[0], false);
        release_mapped_pages(stored->data, stored->nbytes);  // not needed again
      } else {
        choice.result = quantize_layer(linear.weight, candidates[0], o, H);
      }
      choice.errors = {job.metric == MofqMetric::OutputError ? choice.result.output_error : choice.result.weight_mse};
    } else {
      choice = choose_format(linear.weight, candidates, job.metric, job.layer, H);
    }
    if (job.quantize_activations) {
      linear.input_quant = act[choice.best].fake_quantizer();
      activations[name] = act[choice.best].to_json();
    }
    record(name, linear, schemes[choice.best], std::move(choice.result), choice.errors, nullptr, note);
  };

  if (job.flexround) {
    // Block reconstruction, each block written as soon as it is trained, then dropped.
    FlexRoundOptions fo = *job.flexround;
    fo.progress = job.progress;
    fo.activation_budget_bytes = job.activation_budget_bytes;
    if (writer) fo.spill_dir = writer->scratch_dir();
    FlexRoundOutliers fo_outliers;
    if (uses_outliers(job)) {
      fo_outliers.needs_hessian = uses_hessian_outliers(job);
      fo_outliers.mask_of = [&](const std::string& name, const torch::Tensor& W, const torch::Tensor& H) {
        return outlier_mask(name, schemes_of(job, name)[0], W, H);
      };
    }
    flexround_model(
        model, calib_tokens, [&](const std::string& name) { return schemes_of(job, name)[0].format; }, fo, fo_outliers,
        [&](int l, FlexRoundResult& block) {
          for (const std::string& short_name : DecoderLayer::linear_names()) {
            const std::string name = fmt::format("model.layers.{}.{}.weight", l, short_name);
            LayerQuantResult& r = block.layers.at(name);
            const double mse = r.weight_mse;
            auto kept = block.outliers.find(name);
            record(name, model.layer(l).linear(short_name), schemes_of(job, name)[0], std::move(r), {mse},
                   kept == block.outliers.end() ? nullptr : &kept->second, "");
          }
          if (writer) writer->end_block();
        });
  } else if (resumed && resumed->finishing) {
    // Every block is in the shards: only the final write was left.
  } else if (needs_calibration(job)) {
    SequentialOptions so;
    so.hessian = job.layer.method == QuantMethod::GPTQ || job.metric == MofqMetric::OutputError ||
                 uses_hessian_outliers(job);
    so.input_sample_rows = job.quantize_activations ? 4096 : 0;
    so.batch = job.calib_batch;
    so.progress = job.progress;
    so.after_block = SequentialOptions::AfterBlock::Release;  // in the checkpoint once its outputs are computed
    so.activation_budget_bytes = job.activation_budget_bytes;
    if (writer) so.spill_dir = writer->scratch_dir();
    so.first_block = first_block;
    if (first_block > 0) so.first_inputs = (std::filesystem::path(journal->dir()) / resumed->activations).string();
    saved_inputs = resumed ? resumed->activations : "";
    so.block_done = [&](int l, const ActivationStore& next_inputs) { block_done(l, &next_inputs); };
    quantize_sequentially(model, calib_tokens, so,
                          [&](int, const std::string& name, Linear& lin, const LinearInputStats& st) {
                            quantize_one(name, lin, &st);
                          });
  } else {
    const std::vector<std::string>& linears = DecoderLayer::linear_names();
    const size_t per_block = linears.size(), count = size_t(num_layers - first_block) * per_block;
    auto block_of = [&](size_t i) { return first_block + int(i / per_block); };
    auto name_of = [&](size_t i) {
      return fmt::format("model.layers.{}.{}.weight", block_of(i), linears[i % per_block]);
    };
    Progress progress("quantize", count, job.progress);
    // The next weight's pages are read and mapped on another thread while this one is quantized,
    // so that the quantizing threads neither wait for the disk nor take the page faults.
    std::future<void> prefetch;
    for (size_t i = 0; i < count; ++i) {
      const std::string name = name_of(i);
      const int l = block_of(i);
      Linear linear;  // one weight in memory at a time, straight from the checkpoint
      const std::optional<StoredTensorView> stored = src.get_stored(name);
      if (prefetch.valid()) prefetch.get();
      if (i + 1 < count)
        if (std::optional<StoredTensorView> next = src.get_stored(name_of(i + 1)))
          prefetch = std::async(std::launch::async, [d = next->data, n = next->nbytes] { prefault_mapped_pages(d, n); });
      quantize_one(name, linear, nullptr, stored ? &*stored : nullptr);
      progress.update(i + 1, fmt::format("layer {}/{} {}", l + 1, num_layers, linears[i % per_block]));
      if ((i + 1) % per_block == 0) block_done(l, nullptr);
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
  if (writer) {
    writer->close_shards(report.quantization_config);
    journal->save({num_layers, /*finishing=*/true, writer->state(), progress_state(), ""});
    writer->keep_scratch();
    if (!saved_inputs.empty()) std::filesystem::remove(std::filesystem::path(journal->dir()) / saved_inputs);
    crash_point("finish");
    writer->finish(report.quantization_config, src.tokenizer_dir());
    report.file_bytes = writer->weight_file_bytes();
  }
  if (gguf) {
    report.gguf = gguf->finish();
    report.file_bytes = std::filesystem::file_size(job.gguf_out->out);
  }
  return report;
}

}  // namespace lowbit
