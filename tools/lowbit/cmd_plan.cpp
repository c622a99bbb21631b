// lowbit plan: per-layer sensitivity of every candidate scheme, then the least-damage mixture
// within a size budget (exact integer program), written as a plan for `quantize --plan`.
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "calib/calib_data.h"
#include "commands.h"
#include "common.h"
#include "quant/mixed_precision.h"
#include "quant/resume.h"
#include "quant/sensitivity.h"
#include "util/atomic_file.h"
#include "util/crash_point.h"

namespace lowbit::cli {

namespace {

std::vector<LayerScheme> parse_schemes(const std::string& list, const std::string& outliers) {
  std::vector<LayerScheme> out;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    try {
      out.push_back(LayerScheme::parse(item));
    } catch (const Error& e) {
      throw Error(fmt::format("--candidates: {}", e.what()));
    }
  }
  if (out.empty()) throw Error("plan: --candidates lists no format");
  if (!outliers.empty()) {
    OutlierRule rule;
    try {
      rule = OutlierRule::parse(outliers);
    } catch (const Error& e) {
      throw Error(fmt::format("--outliers: {}", e.what()));
    }
    const size_t n = out.size();
    for (size_t i = 0; i < n; ++i) {
      if (out[i].outliers) continue;
      LayerScheme s = out[i];
      s.outliers = rule;
      out.push_back(s);
    }
  }
  for (size_t i = 0; i < out.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (out[i] == out[j]) throw Error(fmt::format("--candidates: {} is listed twice", out[i].str()));
  return out;
}

nlohmann::json num(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

// plan --resume: every layer measured so far, in "<out>.lowbit-partial.json" beside the plan,
// rewritten atomically after each layer, with the fingerprint of the run (quant/resume.h). The
// budget, --luq and --no-tie do not enter it: a resume may choose another mixture from the same
// measurements.
class PlanJournal {
 public:
  PlanJournal(const std::string& out, nlohmann::json fingerprint)
      : path_(out + ".lowbit-partial.json"), fingerprint_(std::move(fingerprint)) {}
  const std::string& path() const { return path_; }

  // The layers measured before, or none. Error when the file is not lowbit's or another run's.
  std::map<std::string, LayerSensitivity> load() const {
    std::map<std::string, LayerSensitivity> out;
    nlohmann::json j = read_if_ours();
    if (j.is_null()) return out;
    const std::string diff = fingerprint_difference(j.at("fingerprint"), fingerprint_);
    if (!diff.empty())
      throw Error(fmt::format("--resume: {} differs from the interrupted run's in {}; give the same command line, or "
                              "drop --resume to start over", diff, path_));
    for (const nlohmann::json& l : j.at("layers")) {
      LayerSensitivity ls = layer_sensitivity_from_json(l);
      out[ls.name] = std::move(ls);
    }
    return out;
  }
  void add(const LayerSensitivity& l) {
    layers_.push_back(to_json(l));
    AtomicFile f(path_);
    f.write(nlohmann::json{{"lowbit_resume", "plan"}, {"fingerprint", fingerprint_}, {"layers", layers_}}.dump());
    f.commit();
  }
  void seed(const std::map<std::string, LayerSensitivity>& before) {
    for (const auto& [name, l] : before) layers_.push_back(to_json(l));
  }
  // Removes the journal (it must be lowbit's); says so when it held an interrupted run's work.
  void remove(bool announce) const {
    if (read_if_ours().is_null()) return;
    if (announce) note_discarding_interrupted_run(path_);
    std::filesystem::remove(path_);
  }

 private:
  std::string path_;
  nlohmann::json fingerprint_, layers_ = nlohmann::json::array();

  nlohmann::json read_if_ours() const {
    std::error_code ec;
    if (!std::filesystem::exists(std::filesystem::symlink_status(path_, ec))) return nullptr;
    std::ifstream in(path_);
    nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || j.value("lowbit_resume", "") != "plan" || !j.contains("fingerprint") || !j.contains("layers"))
      throw Error(fmt::format("{} exists and was not left by lowbit plan; move it away yourself", path_));
    return j;
  }
};

}  // namespace

void add_plan(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "plan", "Measure each layer's sensitivity to every candidate format and choose the least-damage mixture "
              "within a size budget (integer program); writes a plan for quantize --plan");
  struct Opts {
    std::string model, tokenizer, candidates, outliers, sensitivity = "kld", method = "gptq", target_size, out, json;
    double target_bpw = 0, luq = 0;
    bool no_tie = false, progress = true, force = false, resume = false;
    CalibOptions calib;
    int calib_batch = 8, kld_samples = 8;
    SensitivityOptions sens;
    RuntimeOptions rt;
  };
  auto o = std::make_shared<Opts>();
  o->calib.nsamples = 128;
  cmd->add_option("--model", o->model, "model directory or .gguf file")->required();
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json (default: beside the model)");
  cmd->add_option("--calib", o->calib.file, "calibration text (e.g. wikitext2/tok_valid.txt); required");
  cmd->add_option("--nsamples", o->calib.nsamples, "calibration windows (default 128)")->check(CLI::PositiveNumber);
  cmd->add_option("--seqlen", o->calib.seqlen, "tokens per window (default 2048, capped at the model's context)")
      ->check(CLI::Range(2, 1 << 20));
  cmd->add_option("--seed", o->calib.seed, "seed for drawing calibration windows");
  cmd->add_option("--calib-batch", o->calib_batch, "calibration windows per forward pass (default 8)")->check(CLI::PositiveNumber);
  cmd->add_option("--candidates", o->candidates,
                  "comma list of schemes, e.g. int2:g32,int3:g32,int4:g32,fp4_e2m1:g32,int8:g32 "
                  "(a scheme may carry outliers: int3:g32+gradient:1)")
      ->required();
  auto* bpw_opt = cmd->add_option("--target-bpw", o->target_bpw, "budget: bits per weight of the decoder linears");
  auto* size_opt = cmd->add_option("--target-size", o->target_size,
                                   "budget: bytes of the decoder linear weights, with optional K/M/G suffix "
                                   "(powers of 1024: 2.5M = 2621440 bytes)");
  bpw_opt->excludes(size_opt);
  cmd->add_option("--sensitivity", o->sensitivity, "damage metric: kld (measured), hessian (tr ΔW H ΔWᵀ), "
                                                   "fisher (Σ F ΔW²); default kld")
      ->check(CLI::IsMember({"kld", "hessian", "fisher"}));
  cmd->add_option("--method", o->method, "quantizer the plan will be used with: rtn or gptq (default gptq)")
      ->check(CLI::IsMember({"rtn", "gptq"}));
  cmd->add_option("--outliers", o->outliers, "also offer every candidate with these fp16 outliers, e.g. gradient:1");
  cmd->add_option("--gwq-samples", o->sens.gwq_samples,
                  "calibration windows for gradient outlier masks (default 8, as quantize)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--luq", o->luq,
                  "LUQ: only this fraction (0,1] of layers/tied groups, those of lowest output entropy, "
                  "may take formats of fewer than 4 element bits");
  cmd->add_flag("--no-tie", o->no_tie, "choose q/k/v and gate/up independently (default: tied, as engines fuse them)");
  cmd->add_option("--kld-samples", o->kld_samples, "kld: the first N calibration windows measure the KL divergence (default 8)")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--clip-search", o->sens.layer.rtn.clip_search, "RTN: MSE-optimal clipping per scale");
  cmd->add_option("--damp", o->sens.layer.gptq.damp, "GPTQ: damping, fraction of mean diag(H)");
  cmd->add_option("--out", o->out, "write the plan (JSON, read by quantize --plan)");
  cmd->add_option("--json", o->json, "write the per-layer report as JSON (- for standard output)");
  cmd->add_flag("--force", o->force, "replace outputs an earlier lowbit run wrote (never anything else)");
  cmd->add_flag("--resume", o->resume,
                "continue an interrupted run of the same command (needs --out): layers already measured are kept");
  cmd->add_flag("--no-progress", [o](int64_t) { o->progress = false; }, "no progress line");
  o->rt.add_to(cmd);
  cmd->callback([=] {
    o->rt.apply(HeapPolicy::MapLarge);
    if (o->calib.file.empty()) throw Error("plan: --calib FILE is required (sensitivities are measured on it)");
    if (!bpw_opt->count() && !size_opt->count()) throw Error("plan: give a budget: --target-bpw B or --target-size BYTES");
    if (bpw_opt->count() && !(o->target_bpw > 0 && std::isfinite(o->target_bpw)))
      throw Error(fmt::format("plan: --target-bpw must be positive, not {}", o->target_bpw));
    const double target_bytes = size_opt->count() ? parse_byte_size(o->target_size) : 0;
    if (o->luq != 0 && !(o->luq > 0 && o->luq <= 1))
      throw Error(fmt::format("plan: --luq must be a fraction in (0, 1], not {}", o->luq));
    const std::vector<LayerScheme> candidates = parse_schemes(o->candidates, o->outliers);
    const std::vector<std::string> inputs = {o->model, o->tokenizer, o->calib.file};
    if (!o->out.empty()) check_output_path(o->out, OutputKind::Json, o->force, inputs);
    if (!o->json.empty()) check_output_path(o->json, OutputKind::Json, o->force, inputs);

    SensitivityOptions so = o->sens;
    so.metric = parse_sensitivity(o->sensitivity);
    so.layer.method = o->method == "gptq" ? QuantMethod::GPTQ : QuantMethod::RTN;
    so.kld_samples = o->kld_samples;
    so.batch = o->calib_batch;
    so.gradients.batch = o->calib_batch;
    so.progress = o->progress;
    so.activation_budget_bytes = o->rt.activation_memory();

    if (o->resume && o->out.empty()) throw Error("plan --resume: give the --out of the interrupted run");

    LoadedModel m = load_model(o->model, o->tokenizer, o->rt.torch_device(), o->rt.model_memory());
    if (m.source->quantization_config().is_object()) throw Error(fmt::format("{} is already quantized", o->model));
    CalibOptions calib = o->calib;
    calib.seqlen = std::min(calib.seqlen, m.model->config().max_position_embeddings);
    const torch::Tensor tokens = sample_calibration(*m.tokenizer, calib);

    // What changes the measurements (not the budget): the journal's fingerprint.
    std::vector<std::string> names;
    for (const LayerScheme& c : candidates) names.push_back(c.str());
    const nlohmann::json measured_by = {
        {"sensitivity", o->sensitivity}, {"method", o->method}, {"candidates", names},
        {"kld_samples", o->kld_samples}, {"calib_batch", o->calib_batch}, {"gwq_samples", so.gwq_samples},
        {"clip_search", so.layer.rtn.clip_search}, {"damp", so.layer.gptq.damp},
        {"calibration", {{"nsamples", calib.nsamples}, {"seqlen", calib.seqlen}, {"seed", calib.seed}}},
        {"threads", at::get_num_threads()}};
    std::optional<PlanJournal> journal;
    if (!o->out.empty()) {
      journal.emplace(o->out, run_fingerprint({o->model, o->tokenizer, o->calib.file}, measured_by));
      if (o->resume) {
        so.measured_before = journal->load();
        journal->seed(so.measured_before);
        std::fprintf(stderr, so.measured_before.empty() ? "--resume: no interrupted run of %s to continue\n"
                                                        : "resuming %s: %zu layers measured before\n",
                     o->out.c_str(), so.measured_before.size());
      } else {
        journal->remove(/*announce=*/true);
      }
      so.on_measured = [&](const LayerSensitivity& l) {
        journal->add(l);
        crash_point("plan-layer");
      };
    }
    const SensitivityReport report = estimate_sensitivity(*m.model, tokens, candidates, so);

    const std::vector<PlanLayer> all = plan_layers(report);
    std::vector<PlanLayer> layers = all;
    const std::vector<std::vector<size_t>> groups = o->no_tie ? std::vector<std::vector<size_t>>{} : fused_groups(layers);
    std::vector<double> entropy;
    for (const LayerSensitivity& l : report.layers) entropy.push_back(l.entropy);
    std::vector<bool> low_bit(layers.size(), true);
    if (o->luq > 0) low_bit = apply_luq(layers, entropy, groups, o->luq);
    const PlanBudget budget = bpw_opt->count() ? budget_from_bpw(layers, o->target_bpw) : budget_from_bytes(target_bytes);
    const Plan plan = solve_plan(layers, budget, groups);
    const std::vector<UniformBaseline> baselines = uniform_baselines(all, budget);

    int64_t weights = 0;
    for (const PlanLayer& l : layers) weights += l.weights;
    std::printf("%-40s %-26s %12s %7s %8s\n", "layer", "scheme", o->sensitivity.c_str(), "bpw", "entropy");
    nlohmann::json jl = nlohmann::json::array();
    for (size_t i = 0; i < layers.size(); ++i) {
      const PlanCandidate& c = layers[i].candidates[plan.choice[i]];
      const double bpw = c.bits / double(layers[i].weights);
      std::printf("%-40s %-26s %12.4e %7.3f %8.4f%s\n", layers[i].name.c_str(), c.format.c_str(), c.damage, bpw,
                  entropy[i], report.layers[i].note.empty() ? "" : ("  (" + report.layers[i].note + ")").c_str());
      nlohmann::json cands = nlohmann::json::array();
      for (const PlanCandidate& pc : all[i].candidates)
        cands.push_back({{"format", pc.format},
                         {"bits", pc.bits},
                         {"bits_per_weight", pc.bits / double(all[i].weights)},
                         {"damage", pc.damage}});
      jl.push_back({{"name", layers[i].name},
                    {"scheme", c.format},
                    {"damage", c.damage},
                    {"bits_per_weight", bpw},
                    {"entropy", num(entropy[i])},
                    {"low_bit_allowed", bool(low_bit[i])},
                    {"shape", {report.layers[i].rows, report.layers[i].cols}},
                    {"note", report.layers[i].note},
                    {"candidates", std::move(cands)}});
    }
    std::printf("plan: %.4f bits per weight over %lld weights, %.0f bytes of linear weights (budget %.0f bytes); "
                "total %s damage %.6e; %s\n",
                plan.bits_per_weight, (long long)weights, plan.total_bits / 8, budget.max_bits / 8,
                o->sensitivity.c_str(), plan.total_damage, plan.optimal ? "optimal" : "NOT proven optimal");
    std::printf("uniform candidates (every layer the same format):\n");
    nlohmann::json jb = nlohmann::json::array();
    for (const UniformBaseline& b : baselines) {
      std::printf("  %-26s %7.4f bpw  damage %.6e  %s\n", b.format.c_str(), b.bits_per_weight, b.total_damage,
                  b.fits ? "fits" : "over budget");
      jb.push_back({{"format", b.format},
                    {"bits_per_weight", b.bits_per_weight},
                    {"total_bits", b.total_bits},
                    {"total_damage", b.total_damage},
                    {"fits", b.fits}});
    }
    std::printf("%.1f s\n", report.seconds);

    std::vector<std::string> cand_names;
    for (const LayerScheme& c : candidates) cand_names.push_back(c.str());
    const nlohmann::json params = {{"sensitivity", o->sensitivity},
                                   {"method", o->method},
                                   {"candidates", cand_names},
                                   {"luq", o->luq},
                                   {"tied", !o->no_tie},
                                   {"kld_samples", o->kld_samples},
                                   {"calibration",
                                    {{"file", calib.file},
                                     {"nsamples", calib.nsamples},
                                     {"seqlen", calib.seqlen},
                                     {"seed", calib.seed}}}};
    if (!o->out.empty()) {
      nlohmann::json j = plan_to_json(PlanFile{layers, budget, groups, plan});
      for (const auto& [k, v] : params.items()) j[k] = v;
      for (size_t i = 0; i < layers.size(); ++i) j["layers"][i]["entropy"] = num(entropy[i]);
      write_json(o->out, j);
      journal->remove(/*announce=*/false);  // the plan is complete
      std::printf("wrote %s\n", o->out.c_str());
    }
    if (!o->json.empty())
      write_json(o->json, {{"params", params},
                           {"bits_per_weight", plan.bits_per_weight},
                           {"total_bits", plan.total_bits},
                           {"bytes", plan.total_bits / 8},
                           {"max_bits", budget.max_bits},
                           {"total_damage", plan.total_damage},
                           {"optimal", plan.optimal},
                           {"weights", weights},
                           {"seconds", report.seconds},
                           {"uniform", jb},
                           {"layers", jl}});
  });
}

}  // namespace lowbit::cli
