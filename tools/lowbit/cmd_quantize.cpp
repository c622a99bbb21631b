// lowbit quantize: RTN / GPTQ / FlexRound, one format, a per-layer choice (MoFQ) or a plan
// (lowbit plan), optionally with fp16 outliers (GWQ), weight-only or W8A8.
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <sstream>

#include "commands.h"
#include "model/gguf_export.h"
#include "common.h"
#include "quant/mixed_precision.h"
#include "quant/sensitivity.h"  // parse_byte_size
#include "quant/quantize_model.h"
#include "util/json_file.h"

namespace lowbit::cli {

namespace {

struct Recipe {
  const char* name;
  const char* description;
  const char* method;
  const char* formats;  // one spec, or a comma list for MoFQ
  const char* metric;
  bool activations;
};

// Named settings for common jobs. Flags given explicitly override a recipe's values.
const std::vector<Recipe>& recipes() {
  static const std::vector<Recipe> r = {
      {"rtn-w4g128", "round to nearest, INT4, groups of 128", "rtn", "int4:g128", "weight", false},
      {"gptq-w4g128", "GPTQ, INT4, groups of 128 (needs --calib)", "gptq", "int4:g128", "output", false},
      {"gptq-w3g128", "GPTQ, INT3, groups of 128 (needs --calib)", "gptq", "int3:g128", "output", false},
      {"mofq-w4", "MoFQ: INT4 or FP4 E2M1 per layer by weight error, RTN, g128", "rtn", "int4:g128,fp4_e2m1:g128",
       "weight", false},
      {"gptq-mofq-w4", "MoFQ with GPTQ: INT4 or FP4 per layer by output error (needs --calib)", "gptq",
       "int4:g128,fp4_e2m1:g128", "output", false},
      {"w8a8-int8", "weights and activations INT8 (per-channel weights, static activations)", "rtn",
       "int8:channel", "output", true},
      {"w8a8-fp8", "weights and activations FP8 E4M3", "rtn", "fp8_e4m3:channel", "output", true},
      {"mofq-w8a8", "MoFQ8: INT8 or FP8 E4M3 per layer for weights and activations", "rtn",
       "int8:channel,fp8_e4m3:channel", "output", true},
  };
  return r;
}

std::vector<FormatSpec> parse_candidates(const std::string& list) {
  std::vector<FormatSpec> out;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(FormatSpec::parse(item));
  return out;
}

std::string recipe_help() {
  std::string s = "Recipes (--recipe NAME):\n";
  for (const Recipe& r : recipes()) s += fmt::format("  {:<14} {}\n", r.name, r.description);
  s += "\nFormats (--format SPEC, or a comma list for --mofq):\n" + format_help();
  return s;
}

void print_report(const QuantizeReport& r, const QuantizeJob& job) {
  std::printf("%-40s %-28s %12s %12s %7s", "layer", "format", "weight_mse", "output_err", "bpw");
  if (job.candidates.size() > 1)
    for (const auto& c : job.candidates) std::printf("  err[%s]", c.str().c_str());
  std::printf("\n");
  for (const LayerReport& l : r.layers) {
    std::printf("%-40s %-28s %12.4e %12.4e %7.3f", l.name.c_str(), l.format.c_str(), l.weight_mse, l.output_error,
                l.bits_per_weight);
    if (job.candidates.size() > 1)
      for (double e : l.errors) std::printf("  %.4e", e);
    if (!l.note.empty()) std::printf("  (%s)", l.note.c_str());
    std::printf("\n");
  }
  std::printf("bits per weight (linear layers, scales and outliers included): %.4f over %lld weights; %.1f s\n", r.bits_per_weight,
              (long long)r.quantized_weights, r.seconds);
  if (r.file_bytes)
    std::printf("checkpoint: %llu bytes (%.2f GiB) of weights, embedding and head included\n",
                (unsigned long long)r.file_bytes, double(r.file_bytes) / double(1ull << 30));
}

// --out-gguf's options. general.name is the model's folder name, as when the file is exported
// from the model, rather than the intermediate checkpoint's.
template <typename Opts>
GgufExportOptions gguf_options(const Opts& o) {
  GgufExportOptions g;
  g.out = o.out_gguf;
  g.progress = o.job.progress;
  g.replace = o.force;
  std::filesystem::path model(o.model);
  if (model.filename().empty()) model = model.parent_path();  // "dir/"
  if (o.out.empty()) g.name = model.filename().string();
  return g;
}

// Every reason the outputs could not be written, found before any quantization work.
template <typename Opts>
void check_outputs(const Opts& o, const QuantizeJob& job) {
  const std::vector<std::string> inputs = {o.model, o.tokenizer, o.plan, job.calib.file};
  if (!job.out.empty()) check_output_path(job.out, OutputKind::QuantizedCheckpoint, job.replace, inputs);
  if (!o.json.empty()) check_output_path(o.json, OutputKind::Json, o.force, inputs);
  if (o.out_gguf.empty()) return;
  check_output_path(o.out_gguf, OutputKind::Gguf, o.force, inputs);
  auto src = open_weights(o.model);
  check_gguf_model(src->config());
  for (const std::string& name : src->names()) {
    if (!name.starts_with("model.layers.") || !name.ends_with("_proj.weight")) continue;
    const int64_t cols = src->shape(name).back();
    auto planned = job.plan.find(name);
    if (planned != job.plan.end()) {
      check_gguf_linear(name, planned->second.format, cols, planned->second.outliers.has_value());
      continue;
    }
    for (const FormatSpec& f : job.candidates) check_gguf_linear(name, f, cols, job.outliers.has_value());
  }
  const int64_t hidden = src->config().hidden_size;
  if (job.embed_format) check_gguf_linear("model.embed_tokens.weight", *job.embed_format, hidden, false);
  if (job.output_format) check_gguf_linear("lm_head.weight", *job.output_format, hidden, false);
}

}  // namespace

void add_quantize(CLI::App& app) {
  auto* cmd = app.add_subcommand("quantize", "Quantize every linear layer of a model");
  cmd->footer(recipe_help());
  struct Opts {
    std::string model, tokenizer, out, out_gguf, method = "rtn", format, mofq, metric = "weight", recipe, json, plan,
        outliers, embed_format, head_format;
    FlexRoundOptions flexround;
    QuantizeJob job;
    std::string max_shard_size = "512M";
    bool dry_run = false, w8a8 = false, force = false;
    RuntimeOptions rt;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "model directory or .gguf file")->required();
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json (default: beside the model)");
  auto* out_opt = cmd->add_option("--out", o->out, "output directory (a lowbit quantized checkpoint)");
  cmd->add_option("--out-gguf", o->out_gguf, "also (or only) write a GGUF file; needs GGUF formats (gguf:q4_0 ...)");
  auto* method_opt = cmd->add_option("--method", o->method, "rtn, gptq or flexround")
                         ->check(CLI::IsMember({"rtn", "gptq", "flexround"}));
  auto* format_opt = cmd->add_option("--format", o->format, "one format for every layer, e.g. int4:g128:asym");
  auto* mofq_opt = cmd->add_option("--mofq", o->mofq, "candidates chosen per layer, e.g. int4:g128,fp4_e2m1:g128");
  auto* plan_opt = cmd->add_option("--plan", o->plan, "a per-layer plan from lowbit plan --out");
  format_opt->excludes(mofq_opt);
  plan_opt->excludes(format_opt)->excludes(mofq_opt);
  auto* outliers_opt = cmd->add_option("--outliers", o->outliers,
                                       "keep weights in fp16: RULE:PERCENT, RULE gradient (GWQ, |g|), gradient-weight "
                                       "(|g·w|), fisher (g²) or hessian (SpQR), e.g. gradient:1");
  cmd->add_flag("--outliers-global", o->job.outliers_global, "one outlier threshold over all layers (gradient rules)")
      ->needs(outliers_opt);
  cmd->add_option("--gwq-samples", o->job.gwq_samples, "calibration windows for the outlier gradients")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--iters", o->flexround.iters, "FlexRound: Adam steps per block")->check(CLI::NonNegativeNumber);
  cmd->add_option("--lr", o->flexround.lr, "FlexRound: learning rate")->check(CLI::PositiveNumber);
  cmd->add_option("--embed-format", o->embed_format,
                  "quantize the token embedding (RTN) to any format, e.g. int8:channel (default: kept in its stored "
                  "dtype; GGUF jobs: llama-quantize's choice)");
  cmd->add_option("--head-format", o->head_format,
                  "quantize the output head (RTN), e.g. gguf:q6_k (default as --embed-format)");
  auto* metric_opt = cmd->add_option("--metric", o->metric, "format choice by weight MSE or by output error (H)")
                         ->check(CLI::IsMember({"weight", "output"}));
  auto* w8a8_opt = cmd->add_flag("--w8a8", o->w8a8, "quantize activations too (static per-tensor scales)");
  cmd->add_option("--recipe", o->recipe, "named settings (listed below)");
  cmd->add_option("--calib", o->job.calib.file, "calibration text (e.g. wikitext2/tok_valid.txt)");
  cmd->add_option("--nsamples", o->job.calib.nsamples, "calibration windows")->check(CLI::PositiveNumber);
  cmd->add_option("--seqlen", o->job.calib.seqlen, "tokens per window (capped at the model's context)")
      ->check(CLI::Range(2, 1 << 20));
  cmd->add_option("--seed", o->job.calib.seed, "seed for drawing calibration windows");
  cmd->add_option("--calib-batch", o->job.calib_batch, "calibration windows per forward pass")->check(CLI::PositiveNumber);
  cmd->add_flag("--clip-search", o->job.layer.rtn.clip_search, "RTN: MSE-optimal clipping per scale");
  cmd->add_option("--damp", o->job.layer.gptq.damp, "GPTQ: damping, fraction of mean diag(H)");
  cmd->add_option("--block-size", o->job.layer.gptq.block_size, "GPTQ: columns per lazy-update block");
  cmd->add_flag("--act-order", o->job.layer.gptq.act_order, "GPTQ: quantize columns by decreasing diag(H)");
  cmd->add_flag("--static-groups", o->job.layer.gptq.static_groups, "GPTQ: fit group scales up front");
  cmd->add_flag("--dry-run", o->dry_run, "print the per-layer choices and errors; write nothing");
  cmd->add_option("--json", o->json, "write the per-layer report as JSON (- for standard output)");
  cmd->add_flag("--force", o->force, "replace outputs an earlier lowbit run wrote (never anything else)");
  cmd->add_flag("--resume", o->job.resume,
                "continue an interrupted run of the same command from its last finished shard (same result)");
  cmd->add_option("--max-shard-size", o->max_shard_size,
                  "close an output shard at the first block boundary past this size (default 512M)");
  cmd->add_flag("--no-progress", [o](int64_t) { o->job.progress = false; }, "no progress line");
  o->rt.add_to(cmd);
  cmd->callback([=] {
    o->rt.apply(HeapPolicy::MapLarge);
    if (!o->recipe.empty()) {
      auto it = std::find_if(recipes().begin(), recipes().end(), [&](const Recipe& r) { return r.name == o->recipe; });
      if (it == recipes().end()) {
        std::string names;
        for (const Recipe& r : recipes()) names += std::string(names.empty() ? "" : ", ") + r.name;
        throw Error(fmt::format("unknown recipe '{}' (valid: {})", o->recipe, names));
      }
      if (!method_opt->count()) o->method = it->method;
      if (!format_opt->count() && !mofq_opt->count() && !plan_opt->count()) o->mofq = it->formats;
      if (!metric_opt->count()) o->metric = it->metric;
      if (!w8a8_opt->count()) o->w8a8 = it->activations;
    }
    if (o->format.empty() && o->mofq.empty() && o->plan.empty())
      throw Error("quantize: give --format SPEC, --mofq LIST, --plan FILE or --recipe NAME");
    if (o->out.empty() && o->out_gguf.empty() && !o->dry_run)
      throw Error("quantize: give --out DIR and/or --out-gguf FILE, or --dry-run");
    if (o->dry_run && (out_opt->count() || !o->out_gguf.empty()))
      throw Error("quantize: --dry-run writes nothing; drop --out and --out-gguf");
    QuantizeJob& job = o->job;
    job.model = o->model;
    job.tokenizer = o->tokenizer;
    job.replace = o->force;
    job.memory = o->rt.model_memory();
    job.activation_budget_bytes = o->rt.activation_memory();
    const double shard = parse_byte_size(o->max_shard_size);
    if (!(shard >= 1)) throw Error(fmt::format("--max-shard-size {}: give a size such as 512M", o->max_shard_size));
    job.max_shard_bytes = size_t(shard);
    // --out-gguf alone: written in the same pass where that can be (below), else from an
    // intermediate checkpoint the export reads, removed once it worked.
    const bool intermediate = !o->dry_run && o->out.empty();
    job.out = o->dry_run ? "" : intermediate ? o->out_gguf + ".lowbit-checkpoint" : o->out;
    if (intermediate && lowbit_output_kind(job.out) == OutputKind::QuantizedCheckpoint) job.replace = true;
    if (!o->plan.empty()) {
      PlanFile plan = plan_from_json(read_json_file(o->plan, "plan"));
      for (size_t i = 0; i < plan.layers.size(); ++i)
        job.plan[plan.layers[i].name] = LayerScheme::parse(plan.layers[i].candidates[plan.plan.choice[i]].format);
    } else {
      job.candidates = parse_candidates(o->format.empty() ? o->mofq : o->format);
    }
    if (!o->outliers.empty()) job.outliers = OutlierRule::parse(o->outliers);
    if (!o->embed_format.empty()) job.embed_format = FormatSpec::parse(o->embed_format);
    if (!o->head_format.empty()) job.output_format = FormatSpec::parse(o->head_format);
    job.layer.method = o->method == "gptq" ? QuantMethod::GPTQ : QuantMethod::RTN;
    if (o->method == "flexround") job.flexround = o->flexround;
    job.metric = o->metric == "output" ? MofqMetric::OutputError : MofqMetric::WeightMse;
    job.quantize_activations = o->w8a8;
    // --out-gguf alone, plain RTN of known types: the GGUF file is written in the same pass.
    if (intermediate && writes_gguf_in_one_pass(job)) {
      if (job.resume)
        std::fprintf(stderr, "--resume: %s is written in one pass, which leaves nothing to resume; starting it\n",
                     o->out_gguf.c_str());
      job.out.clear();
      job.resume = false;
      job.gguf_out = gguf_options(*o);
    }
    check_outputs(*o, job);
    QuantizeReport r;
    try {
      r = quantize_model(job);
    } catch (const Error& e) {
      // Finished blocks survive a failure (a full disk, a signal): say how to go on from them.
      const std::string msg = e.what();
      if (!job.out.empty() && !msg.starts_with("--resume") &&
          std::filesystem::exists(std::filesystem::path(scratch_path_of(job.out)) / ".resume" / "state.json"))
        throw Error(fmt::format("{} (the finished blocks are kept in {}; free what is needed and rerun with --resume)",
                                msg, scratch_path_of(job.out)));
      throw;
    }
    print_report(r, job);
    if (!o->json.empty()) write_json(o->json, r.to_json());
    if (!o->out.empty()) std::printf("wrote %s\n", o->out.c_str());
    if (r.gguf) {
      print_gguf_plan(*r.gguf);
      std::printf("wrote %s\n", o->out_gguf.c_str());
    } else if (!o->out_gguf.empty()) {
      GgufExportOptions g = gguf_options(*o);
      try {
        run_gguf_export(job.out, "", g, false);
      } catch (const Error& e) {
        if (intermediate) throw Error(fmt::format("{} (the checkpoint is kept in {})", e.what(), job.out));
        throw;
      }
      if (intermediate) remove_lowbit_directory(job.out);
    }
  });
}

}  // namespace lowbit::cli
