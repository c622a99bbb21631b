#include "quant/sensitivity.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <map>
#include <memory>
#include <numeric>

#include <fmt/format.h>

#include "calib/sequential.h"
#include "format/ggml_formats.h"
#include "quant/outliers.h"
#include "util/error.h"
#include "util/progress.h"

namespace lowbit {

using torch::Tensor;

SensitivityMetric parse_sensitivity(std::string_view name) {
  if (name == "hessian") return SensitivityMetric::Hessian;
  if (name == "fisher") return SensitivityMetric::Fisher;
  if (name == "kld") return SensitivityMetric::Kld;
  fail("unknown sensitivity '{}' (valid: kld, hessian, fisher)", name);
}

std::string sensitivity_name(SensitivityMetric m) {
  switch (m) {
    case SensitivityMetric::Hessian: return "hessian";
    case SensitivityMetric::Fisher: return "fisher";
    case SensitivityMetric::Kld: return "kld";
  }
  return "?";
}

// --- Entropy ----------------------------------------------------------------------------------

double activation_entropy(const Tensor& values, int clusters) {
  if (clusters < 1) fail("entropy: clusters must be >= 1, not {}", clusters);
  torch::NoGradGuard no_grad;
  Tensor v = std::get<0>(values.detach().reshape({-1}).to(torch::kCPU, torch::kFloat32).sort());
  const int64_t n = v.numel();
  if (n == 0) fail("entropy: no values");
  if (!std::isfinite(v[0].item<double>()) || !std::isfinite(v[n - 1].item<double>()))
    fail("entropy: values must be finite");
  v = v.to(torch::kFloat64);
  const Tensor prefix = torch::cat({torch::zeros({1}, v.options()), v.cumsum(0)});
  const int64_t K = std::min<int64_t>(clusters, n);
  auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  // Equal-count initialisation: cluster k holds sorted values [k n / K, (k+1) n / K).
  Tensor ends = (torch::arange(1, K + 1, i64) * n).floor_divide(K);
  Tensor starts = torch::cat({torch::zeros({1}, i64), ends.narrow(0, 0, K - 1)});
  Tensor counts = ends - starts;
  Tensor centroids = (prefix.index_select(0, ends) - prefix.index_select(0, starts)) / counts.to(torch::kFloat64);
  // Lloyd iterations. In 1-D the nearest-centroid cells of sorted centroids are the intervals
  // between midpoints; a value on a midpoint goes to the lower centroid. Sums come from prefix
  // sums, so an iteration costs O(K log n). Empty clusters keep their centroid.
  for (int it = 0; it < 1000; ++it) {
    centroids = std::get<0>(centroids.sort());
    Tensor mid = (centroids.narrow(0, 0, K - 1) + centroids.narrow(0, 1, K - 1)) * 0.5;
    Tensor new_ends = torch::cat({torch::searchsorted(v, mid, /*out_int32=*/false, /*right=*/true),
                                  torch::full({1}, n, i64)});
    const bool same = new_ends.equal(ends);
    ends = new_ends;
    starts = torch::cat({torch::zeros({1}, i64), ends.narrow(0, 0, K - 1)});
    counts = ends - starts;
    if (same && it > 0) break;
    Tensor sums = prefix.index_select(0, ends) - prefix.index_select(0, starts);
    Tensor nonempty = counts.gt(0);
    centroids = torch::where(nonempty, sums / counts.clamp_min(1).to(torch::kFloat64), centroids);
  }
  Tensor p = counts.to(torch::kFloat64) / double(n);
  p = p.masked_select(p.gt(0));
  double h = -(p * p.log2()).sum().item<double>();
  return std::max(h, 0.0);
}

// --- KLD probe --------------------------------------------------------------------------------

KldProbe::KldProbe(const LlamaModel& model, const Tensor& tokens, int batch, int64_t activation_budget_bytes,
                   const std::string& spill_dir, bool progress, int extra_stores)
    : model_(model) {
  torch::NoGradGuard no_grad;
  if (tokens.dim() != 2 || tokens.size(0) < 1 || tokens.size(1) < 1)
    fail("kld: tokens must be [windows, seqlen] with at least one window");
  const ModelConfig& c = model.config();
  const int L = c.num_layers;
  const int64_t n = tokens.size(0), T = tokens.size(1), b = std::max(1, batch);
  // The log-probabilities count as ceil(vocab / hidden) stores of block inputs.
  const int count = L + int((c.vocab_size + c.hidden_size - 1) / c.hidden_size) + std::max(extra_stores, 0);
  const ActivationPlan plan =
      plan_activations(n, T, c.hidden_size, count, activation_budget_bytes, scratch_dir_or_temp(spill_dir),
                       "kld probe", "block inputs, the log-probabilities and the measured blocks' outputs");
  if (progress) std::fprintf(stderr, "%s\n", plan.line.c_str());
  store_dir_ = plan.dir();
  for (int l = 0; l < L; ++l)
    inputs_.push_back(std::make_unique<ActivationStore>(n, T, c.hidden_size, b, model.device(), store_dir_));
  base_logp_ = std::make_unique<ActivationStore>(n, T, c.vocab_size, b, model.device(), store_dir_);
  Tensor t = tokens.to(model.device());
  for (int64_t k = 0; k < base_logp_->batches(); ++k) {
    Tensor x = model.embed(t.narrow(0, k * b, base_logp_->batch_windows(k)));
    for (int l = 0; l < L; ++l) {
      inputs_[size_t(l)]->put(k, x);
      x = model.layer_forward(l, x);
    }
    base_logp_->put(k, torch::log_softmax(model.head(x), -1));
  }
  windows_ = n, seqlen_ = T, batch_ = b;
  positions_ = n * T;
}

int KldProbe::passes_from(int layer) const { return model_.config().num_layers - layer + 1; }

std::unique_ptr<ActivationStore> KldProbe::block_output(int layer) const {
  torch::NoGradGuard no_grad;
  const int L = model_.config().num_layers;
  if (layer < 0 || layer >= L) fail("kld: block {} out of range (0..{})", layer, L - 1);
  const ActivationStore& in = *inputs_[size_t(layer)];
  auto out = std::make_unique<ActivationStore>(windows_, seqlen_, model_.config().hidden_size, batch_,
                                               model_.device(), store_dir_);
  for (int64_t k = 0; k < in.batches(); ++k) out->put(k, model_.layer_forward(layer, in.get(k)));
  return out;
}

std::vector<double> KldProbe::kld_after(int layer, const std::vector<ActivationStore*>& outputs,
                                        const std::function<void()>& after_step) const {
  torch::NoGradGuard no_grad;
  const int L = model_.config().num_layers;
  if (layer < 0 || layer >= L) fail("kld: block {} out of range (0..{})", layer, L - 1);
  // Block-major: a suffix block serves every output before the next one is needed.
  for (int l = layer + 1; l < L; ++l) {
    for (ActivationStore* out : outputs)
      for (int64_t k = 0; k < out->batches(); ++k) out->put(k, model_.layer_forward(l, out->get(k)));
    if (after_step) after_step();
  }
  std::vector<double> kld;
  for (ActivationStore* out : outputs) {
    double total = 0;
    for (int64_t k = 0; k < out->batches(); ++k) {
      Tensor lq = torch::log_softmax(model_.head(out->get(k)), -1);
      const Tensor lp = base_logp_->get(k);
      // Per position in float32 (V terms), over positions in float64.
      total += (lp.exp() * (lp - lq)).sum(-1).sum(torch::kFloat64).item<double>();
    }
    kld.push_back(total / double(positions_));
  }
  if (after_step) after_step();
  return kld;
}

double KldProbe::kld_from(int layer) const {
  std::unique_ptr<ActivationStore> out = block_output(layer);
  return kld_after(layer, {out.get()})[0];
}

// --- The estimate -----------------------------------------------------------------------------

namespace {

// Puts a tensor back when the scope ends, also on an exception.
struct RestoreWeight {
  Tensor& ref;
  Tensor saved;
  ~RestoreWeight() { ref = saved; }
};

}  // namespace

nlohmann::json to_json(const LayerSensitivity& l) {
  nlohmann::json cands = nlohmann::json::array();
  for (const PlanCandidate& c : l.candidates) cands.push_back({{"format", c.format}, {"bits", c.bits}, {"damage", c.damage}});
  return {{"name", l.name},
          {"layer", l.layer},
          {"short_name", l.short_name},
          {"rows", l.rows},
          {"cols", l.cols},
          {"entropy", std::isnan(l.entropy) ? nlohmann::json(nullptr) : nlohmann::json(l.entropy)},
          {"candidates", cands},
          {"note", l.note}};
}

LayerSensitivity layer_sensitivity_from_json(const nlohmann::json& j) {
  LayerSensitivity l;
  l.name = j.at("name"), l.layer = j.at("layer"), l.short_name = j.at("short_name");
  l.rows = j.at("rows"), l.cols = j.at("cols");
  l.entropy = j.at("entropy").is_null() ? std::nan("") : j.at("entropy").get<double>();
  for (const nlohmann::json& c : j.at("candidates")) l.candidates.push_back({c.at("format"), c.at("bits"), c.at("damage")});
  l.note = j.at("note");
  return l;
}

SensitivityReport estimate_sensitivity(LlamaModel& model, const Tensor& tokens,
                                       const std::vector<LayerScheme>& candidates, const SensitivityOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  if (candidates.empty()) fail("sensitivity: no candidate formats");
  if (tokens.dim() != 2 || tokens.size(0) < 1 || tokens.size(1) < 2)
    fail("sensitivity: calibration tokens must be [windows >= 1, seqlen >= 2]");
  if (opt.metric == SensitivityMetric::Kld && opt.kld_samples < 1)
    fail("sensitivity: kld_samples must be >= 1, not {}", opt.kld_samples);
  for (size_t i = 0; i < candidates.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (candidates[i] == candidates[j]) fail("sensitivity: candidate {} is given twice", candidates[i].str());
  torch::NoGradGuard no_grad;
  const Tensor toks = tokens.to(model.device(), torch::kInt64);
  const int L = model.config().num_layers;
  const int64_t N = toks.size(0), T = toks.size(1);

  SensitivityReport report;
  report.metric = opt.metric;

  // Gradient pieces first: the Fisher diagonal and the masks of each distinct gradient rule.
  const std::string spill_dir = scratch_dir_or_temp(opt.spill_dir);
  GradientOptions gradient_options = opt.gradients;
  gradient_options.progress = opt.progress;
  gradient_options.activation_budget_bytes = opt.activation_budget_bytes;
  gradient_options.spill_dir = spill_dir;
  ScratchTensors fisher(parking_dir(opt.activation_budget_bytes, spill_dir));
  if (opt.metric == SensitivityMetric::Fisher) {
    GradientOptions g = gradient_options;
    g.keep_fisher = true;
    g.keep_grad = false;
    torch::AutoGradMode grad_mode(true);
    compute_gradients(model, toks, g, [&](int, const std::string& name, LayerGradient&& lg) {
      fisher.put(name, lg.fisher);
    });
  }
  std::map<std::string, std::unique_ptr<ScratchTensors>> gradient_masks;  // rule -> parked masks by name
  bool hessian_rule = false;
  for (const LayerScheme& c : candidates) {
    if (!c.outliers) continue;
    if (!c.outliers->needs_gradients()) {
      hessian_rule = true;
      continue;
    }
    const std::string key = c.outliers->str();
    if (gradient_masks.count(key)) continue;
    torch::AutoGradMode grad_mode(true);
    const Tensor first = toks.narrow(0, 0, std::min<int64_t>(std::max(opt.gwq_samples, 1), N));
    gradient_masks[key] = gradient_outlier_masks(model, first, c.outliers->saliency, c.outliers->percent, false,
                                                 gradient_options);
  }

  const size_t linears = DecoderLayer::linear_names().size();
  std::unique_ptr<KldProbe> probe;
  if (opt.metric == SensitivityMetric::Kld) {
    const Tensor kld_tokens = toks.narrow(0, 0, std::min<int64_t>(opt.kld_samples, N));
    probe = std::make_unique<KldProbe>(model, kld_tokens, opt.batch, opt.activation_budget_bytes, spill_dir,
                                       opt.progress, int(linears * candidates.size()));
    if (opt.progress) {
      int64_t passes = 0;
      for (int l = 0; l < L; ++l) passes += int64_t(linears * candidates.size()) * probe->passes_from(l);
      std::fprintf(stderr,
                   "kld: %zu measurements (layers × candidates) on %lld×%lld tokens, each through its block, the "
                   "blocks after it and the head: %lld block passes, %.0f× one forward pass of the model\n",
                   size_t(L) * linears * candidates.size(), (long long)kld_tokens.size(0),
                   (long long)kld_tokens.size(1), (long long)passes, double(passes) / (L + 1));
    }
  }

  SequentialOptions so;
  so.hessian = opt.layer.method == QuantMethod::GPTQ || opt.metric == SensitivityMetric::Hessian || hessian_rule;
  so.input_sample_rows = std::min<int64_t>(std::max<int64_t>(opt.entropy_tokens, 0), N * T);
  so.batch = std::max(1, opt.batch);
  so.progress = false;
  so.after_block = SequentialOptions::AfterBlock::Unpin;  // every candidate's weight is put back
  so.activation_budget_bytes = opt.activation_budget_bytes;
  so.spill_dir = spill_dir;
  LayerQuantOptions lq = opt.layer;
  lq.compute_output_error = false;

  // Progress in block passes: a kld measurement of block l costs passes_from(l), others one.
  auto units = [&](int l) { return probe ? size_t(probe->passes_from(l)) : size_t(1); };
  size_t total = 0;
  for (int l = 0; l < L; ++l) total += linears * candidates.size() * units(l);
  Progress progress("sensitivity", total, opt.progress);
  size_t done = 0;
  std::string where;
  // Layers measured now whose damages are complete: checked, recorded, and handed to on_measured.
  std::vector<size_t> measured_now;
  auto finish_layers = [&] {
    for (size_t i : measured_now) {
      const LayerSensitivity& ls = report.layers[i];
      for (const PlanCandidate& c : ls.candidates)
        if (!std::isfinite(c.damage)) fail("sensitivity: {} with {} gave a non-finite damage", ls.name, c.format);
      if (opt.on_measured) opt.on_measured(ls);
    }
    measured_now.clear();
  };
  // kld: the outputs of the current block under each change, carried through the suffix together
  // once the block is done.
  struct Pending {
    size_t layer_index, candidate;
    std::unique_ptr<ActivationStore> output;
  };
  std::vector<Pending> pending;
  so.block_done = [&](int l, const ActivationStore&) {
    if (pending.empty()) return;
    std::vector<ActivationStore*> outputs;
    for (Pending& p : pending) outputs.push_back(p.output.get());
    const std::vector<double> kld = probe->kld_after(l, outputs, [&] {
      done += pending.size();
      progress.update(done, where);
    });
    for (size_t i = 0; i < pending.size(); ++i)
      report.layers[pending[i].layer_index].candidates[pending[i].candidate].damage = kld[i];
    pending.clear();
    finish_layers();
  };
  quantize_sequentially(model, toks, so, [&](int l, const std::string& name, Linear& lin, const LinearInputStats& st) {
    if (auto before = opt.measured_before.find(name); before != opt.measured_before.end()) {
      if (before->second.candidates.size() != candidates.size())
        fail("sensitivity: the earlier measurement of {} has {} candidates, not {}", name,
             before->second.candidates.size(), candidates.size());
      report.layers.push_back(before->second);
      done += candidates.size() * units(l);
      return;
    }
    LayerSensitivity ls;
    ls.name = name;
    ls.layer = l;
    const size_t prefix = fmt::format("model.layers.{}.", l).size();
    ls.short_name = name.substr(prefix, name.size() - prefix - std::string(".weight").size());
    where = fmt::format("layer {}/{} {}", l + 1, L, ls.short_name);
    const Tensor W = lin.weight;
    ls.rows = W.size(0);
    ls.cols = W.size(1);
    if (so.input_sample_rows > 0) {
      Tensor y = st.input_sample.to(W.device(), W.scalar_type()).matmul(W.t());
      if (lin.bias.defined()) y = y + lin.bias;
      ls.entropy = activation_entropy(y, opt.entropy_clusters);
    }
    const Tensor& H = st.hessian;
    for (const LayerScheme& c : candidates) {
      const FormatSpec spec = gguf_format_for_shape(c.format, ls.cols);
      if (!(spec == c.format))
        ls.note += fmt::format("{}{} cannot hold rows of {}: {}", ls.note.empty() ? "" : "; ", c.format.str(),
                               ls.cols, spec.str());
      const LayerScheme actual{spec, c.outliers};
      Tensor W_hat;
      if (c.outliers) {
        Tensor mask;
        if (c.outliers->needs_gradients()) mask = stored_outlier_mask(*gradient_masks.at(c.outliers->str()), name, W);
        else mask = select_outliers(hessian_saliency(W, H, spec, lq), c.outliers->percent);
        W_hat = quantize_layer_with_outliers(W, spec, lq, H, mask).layer.dequantized;
      } else {
        W_hat = quantize_layer(W, spec, lq, H).dequantized;
      }
      W_hat = W_hat.to(W.device(), W.scalar_type());
      double damage = std::nan("");  // kld: known once the block is done
      switch (opt.metric) {
        case SensitivityMetric::Hessian: damage = output_error(W_hat - W, H); break;
        case SensitivityMetric::Fisher: {
          const Tensor F = fisher.get(name).to(W.device());
          damage = (F * (W_hat - W).square()).sum(torch::kFloat64).item<double>();
          break;
        }
        case SensitivityMetric::Kld: {
          RestoreWeight restore{lin.weight, W};
          lin.weight = W_hat;
          pending.push_back({report.layers.size(), ls.candidates.size(), probe->block_output(l)});
          break;
        }
      }
      ls.candidates.push_back({c.str(), actual.bits(ls.rows, ls.cols), damage});
      progress.update(++done, where);
    }
    measured_now.push_back(report.layers.size());
    report.layers.push_back(std::move(ls));
    if (!probe) finish_layers();
  });
  progress.finish();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

// --- Plan input -------------------------------------------------------------------------------

std::vector<PlanLayer> plan_layers(const SensitivityReport& report) {
  std::vector<PlanLayer> layers;
  for (const LayerSensitivity& l : report.layers) layers.push_back({l.name, l.rows * l.cols, l.candidates});
  return layers;
}

std::vector<bool> apply_luq(std::vector<PlanLayer>& layers, const std::vector<double>& entropy,
                            const std::vector<std::vector<size_t>>& tied_groups, double fraction) {
  if (!(fraction > 0 && fraction <= 1)) fail("luq: the fraction of layers must be in (0, 1], not {}", fraction);
  if (entropy.size() != layers.size()) fail("luq: {} entropies for {} layers", entropy.size(), layers.size());
  for (size_t i = 0; i < entropy.size(); ++i)
    if (std::isnan(entropy[i])) fail("luq: layer {} has no entropy", layers[i].name);
  // Decisions: the tied groups, then every layer in none.
  std::vector<std::vector<size_t>> decisions;
  std::vector<bool> grouped(layers.size(), false);
  for (const auto& g : tied_groups) {
    if (g.empty()) continue;
    for (size_t i : g) {
      if (i >= layers.size() || grouped[i]) fail("luq: bad tied group");
      grouped[i] = true;
    }
    decisions.push_back(g);
  }
  for (size_t i = 0; i < layers.size(); ++i)
    if (!grouped[i]) decisions.push_back({i});
  std::vector<double> key(decisions.size());
  std::vector<size_t> first(decisions.size());
  for (size_t d = 0; d < decisions.size(); ++d) {
    double s = 0;
    for (size_t i : decisions[d]) s += entropy[i];
    key[d] = s / double(decisions[d].size());
    first[d] = *std::min_element(decisions[d].begin(), decisions[d].end());
  }
  std::vector<size_t> order(decisions.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return key[a] != key[b] ? key[a] < key[b] : first[a] < first[b];
  });
  const size_t low = std::min(decisions.size(), size_t(std::ceil(fraction * double(decisions.size()) - 1e-9)));
  std::vector<bool> allowed(layers.size(), false);
  for (size_t r = 0; r < low; ++r)
    for (size_t i : decisions[order[r]]) allowed[i] = true;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (allowed[i]) continue;
    auto& c = layers[i].candidates;
    c.erase(std::remove_if(c.begin(), c.end(),
                           [](const PlanCandidate& p) { return LayerScheme::parse(p.format).format.bits() < 4; }),
            c.end());
    if (c.empty())
      fail("luq: layer {} has no candidate of 4 or more element bits left; add one (e.g. int4:g32)", layers[i].name);
  }
  return allowed;
}

std::vector<UniformBaseline> uniform_baselines(const std::vector<PlanLayer>& layers, const PlanBudget& budget) {
  std::vector<UniformBaseline> out;
  if (layers.empty()) return out;
  int64_t weights = 0;
  for (const PlanLayer& l : layers) weights += l.weights;
  for (const PlanCandidate& c0 : layers[0].candidates) {
    UniformBaseline b;
    b.format = c0.format;
    bool everywhere = true;
    for (const PlanLayer& l : layers) {
      auto it = std::find_if(l.candidates.begin(), l.candidates.end(),
                             [&](const PlanCandidate& c) { return c.format == c0.format; });
      if (it == l.candidates.end()) {
        everywhere = false;
        break;
      }
      b.total_bits += it->bits;
      b.total_damage += it->damage;
    }
    if (!everywhere) continue;
    b.bits_per_weight = weights > 0 ? b.total_bits / double(weights) : 0;
    b.fits = b.total_bits <= budget.max_bits;
    out.push_back(b);
  }
  return out;
}

double parse_byte_size(std::string_view text) {
  std::string s(text);
  auto bad = [&]() -> double {
    fail("size '{}': expected bytes with an optional K, M, G or T suffix (powers of 1024), e.g. 2.5M", text);
  };
  if (s.empty()) bad();
  // Strip an optional trailing "B" / "iB".
  if (s.size() > 1 && (s.back() == 'B' || s.back() == 'b')) {
    s.pop_back();
    if (!s.empty() && s.back() == 'i') s.pop_back();
  }
  double mult = 1;
  if (!s.empty()) {
    switch (s.back()) {
      case 'k': case 'K': mult = 1024.0; break;
      case 'm': case 'M': mult = 1024.0 * 1024; break;
      case 'g': case 'G': mult = 1024.0 * 1024 * 1024; break;
      case 't': case 'T': mult = 1024.0 * 1024 * 1024 * 1024; break;
      default: break;
    }
    if (mult != 1) s.pop_back();
  }
  if (s.empty()) bad();
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    bad();
  }
  if (used != s.size() || !std::isfinite(v) || v <= 0) bad();
  return v * mult;
}

}  // namespace lowbit
