// Per-layer sensitivity (quant/sensitivity.h) against independent references: the cached-suffix
// KLD against a brute-force full forward with the one layer replaced; the Hessian damage against
// tr(ΔW H ΔWᵀ) with H gathered in float64 from a hook on the layer's input; the Fisher damage
// against per-window whole-graph autograd; the K-means entropy against hand values and a naive
// Lloyd loop; LUQ's restriction; exact outlier bits; an end-to-end plan on stories260K that meets
// its budget and beats every uniform candidate that fits; (`lowbit plan` itself: test_cli).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <vector>

#include "calib/calib_data.h"
#include "format/spec.h"
#include "model/model_loader.h"
#include "quant/mixed_precision.h"
#include "quant/outliers.h"
#include "quant/quantizer.h"
#include "quant/scheme.h"
#include "quant/sensitivity.h"
#include "util/allocator.h"
#include "util/error.h"

#include "support.h"

using namespace lowbit;
using namespace lowbit::test_support;
using torch::Tensor;
namespace fs = std::filesystem;

namespace {

const LayerSensitivity& layer_named(const SensitivityReport& r, const std::string& name) {
  for (const LayerSensitivity& l : r.layers)
    if (l.name == name) return l;
  throw std::runtime_error("no layer " + name);
}

std::vector<LayerScheme> schemes(const std::vector<std::string>& names) {
  std::vector<LayerScheme> out;
  for (const auto& n : names) out.push_back(LayerScheme::parse(n));
  return out;
}

SensitivityOptions options(SensitivityMetric metric, QuantMethod method) {
  SensitivityOptions o;
  o.metric = metric;
  o.layer.method = method;
  o.progress = false;
  return o;
}

// Σ_positions KL(p‖q) / positions from two logit tensors, in float64.
double kld_reference(const Tensor& base_logits, const Tensor& logits) {
  Tensor lp = torch::log_softmax(base_logits.to(torch::kFloat64), -1);
  Tensor lq = torch::log_softmax(logits.to(torch::kFloat64), -1);
  return (lp.exp() * (lp - lq)).sum(-1).mean().item<double>();
}

// ΔW of RTN onto spec (what the RTN sensitivities must use).
Tensor rtn_delta(const Tensor& W, const std::string& spec) {
  LayerQuantOptions o;
  o.compute_output_error = false;
  return quantize_layer(W, FormatSpec::parse(spec), o).dequantized - W;
}

// --- Entropy ----------------------------------------------------------------------------------

TEST(Entropy, HandValues) {
  // Two values, equally often: 1 bit, whatever K >= 2.
  Tensor two = torch::cat({torch::zeros({50}), torch::ones({50})});
  EXPECT_NEAR(activation_entropy(two, 100), 1.0, 1e-12);
  EXPECT_NEAR(activation_entropy(two, 2), 1.0, 1e-12);
  // Shares 1/8, 1/8, 1/4, 1/2: 3/8 + 3/8 + 1/2 + 1/2 = 1.75 bits.
  Tensor four = torch::tensor({-3.f, 0.f, 2.f, 2.f, 7.f, 7.f, 7.f, 7.f}).reshape({2, 4});
  EXPECT_NEAR(activation_entropy(four, 100), 1.75, 1e-12);
  // One cluster, or one distinct value: 0 bits.
  EXPECT_EQ(activation_entropy(four, 1), 0.0);
  EXPECT_EQ(activation_entropy(torch::full({10, 10}, 3.5f), 100), 0.0);
  // 1000 equally spaced values: K-means cuts them into K equal runs, log2 K bits.
  Tensor grid = torch::arange(1000, torch::kFloat32) * 0.01f;
  EXPECT_NEAR(activation_entropy(grid, 100), std::log2(100.0), 1e-12);
  EXPECT_NEAR(activation_entropy(grid, 8), 3.0, 1e-12);
  // Scaling and shifting the values changes nothing; NaN is refused.
  Tensor g = torch::randn({4000}, torch::TensorOptions().dtype(torch::kFloat64));
  EXPECT_NEAR(activation_entropy(g * 8 + 3, 100), activation_entropy(g, 100), 1e-9);
  EXPECT_THROW(activation_entropy(torch::tensor({1.f, NAN}), 4), Error);
}

// A naive Lloyd loop (every value against every centroid) from the same quantile start.
double naive_kmeans_entropy(std::vector<double> v, int K) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  std::vector<double> c(K);
  for (int k = 0; k < K; ++k) {
    size_t a = size_t(k) * n / K, b = size_t(k + 1) * n / K;
    double s = 0;
    for (size_t i = a; i < b; ++i) s += v[i];
    c[k] = s / double(b - a);
  }
  std::vector<size_t> assign(n, 0), prev;
  for (int it = 0; it < 1000; ++it) {
    std::sort(c.begin(), c.end());
    for (size_t i = 0; i < n; ++i) {
      size_t best = 0;
      for (int k = 1; k < K; ++k)  // strictly nearer only: a tie stays with the lower centroid
        if (std::abs(v[i] - c[k]) < std::abs(v[i] - c[best])) best = size_t(k);
      assign[i] = best;
    }
    if (assign == prev) break;
    prev = assign;
    std::vector<double> sum(K, 0);
    std::vector<size_t> cnt(K, 0);
    for (size_t i = 0; i < n; ++i) sum[assign[i]] += v[i], cnt[assign[i]]++;
    for (int k = 0; k < K; ++k)
      if (cnt[k]) c[k] = sum[k] / double(cnt[k]);
  }
  std::vector<size_t> cnt(K, 0);
  for (size_t a : assign) cnt[a]++;
  double h = 0;
  for (size_t x : cnt)
    if (x) h -= double(x) / double(n) * std::log2(double(x) / double(n));
  return h;
}

TEST(Entropy, MatchesNaiveKMeans) {
  std::mt19937_64 rng(5);
  std::student_t_distribution<double> heavy(3.0);
  std::vector<double> v(3000);
  for (double& x : v) x = heavy(rng);
  Tensor t = torch::from_blob(v.data(), {int64_t(v.size())}, torch::kFloat64).clone();
  for (int K : {2, 7, 30})
    EXPECT_NEAR(activation_entropy(t.to(torch::kFloat32), K), naive_kmeans_entropy(
                    [&] {
                      std::vector<double> f(v.size());
                      for (size_t i = 0; i < v.size(); ++i) f[i] = double(float(v[i]));
                      return f;
                    }(),
                    K),
                1e-9)
        << "K " << K;
}

// --- KLD --------------------------------------------------------------------------------------

TEST(Kld, CachedSuffixEqualsFullForward) {
  LoadedModel m = load_model(kStories);
  LlamaModel& model = *m.model;
  Tensor tokens = calibration(*m.tokenizer, 3, 32, 4);
  torch::NoGradGuard ng;
  Tensor base = model.forward(tokens);
  KldProbe probe(model, tokens, /*batch=*/2);  // an uneven split of the three windows
  for (int l = 0; l < model.config().num_layers; ++l) EXPECT_LT(std::abs(probe.kld_from(l)), 1e-9);
  for (const std::string name : {"model.layers.0.self_attn.k_proj.weight", "model.layers.2.mlp.up_proj.weight",
                                 "model.layers.4.mlp.down_proj.weight"}) {
    Linear& lin = linear_of(model, name);
    Tensor W = lin.weight;
    lin.weight = W + rtn_delta(W, "int2:g32");
    const int layer = name[13] - '0';
    const double ref = kld_reference(base, model.forward(tokens));
    const double got = probe.kld_from(layer);
    lin.weight = W;
    EXPECT_GT(ref, 1e-4) << name;
    EXPECT_NEAR(got, ref, 1e-5 * ref) << name;
  }
  EXPECT_THROW(probe.kld_from(5), Error);
}

TEST(Kld, SensitivityIsTheBruteForceKld) {
  LoadedModel m = load_model(kStories);
  LlamaModel& model = *m.model;
  Tensor tokens = calibration(*m.tokenizer, 6, 48, 2);
  SensitivityOptions o = options(SensitivityMetric::Kld, QuantMethod::RTN);
  o.kld_samples = 4;  // the first four windows
  o.batch = 4;
  SensitivityReport r = estimate_sensitivity(model, tokens, schemes({"int3:g32", "int2:g32"}), o);
  ASSERT_EQ(r.layers.size(), 35u);
  torch::NoGradGuard ng;
  Tensor kt = tokens.narrow(0, 0, 4);
  Tensor base = model.forward(kt);
  for (const std::string name : {"model.layers.1.self_attn.q_proj.weight", "model.layers.3.mlp.gate_proj.weight"}) {
    const LayerSensitivity& ls = layer_named(r, name);
    ASSERT_EQ(ls.candidates.size(), 2u);
    Linear& lin = linear_of(model, name);
    Tensor W = lin.weight;
    for (size_t c = 0; c < 2; ++c) {
      lin.weight = W + rtn_delta(W, c == 0 ? "int3:g32" : "int2:g32");
      const double ref = kld_reference(base, model.forward(kt));
      lin.weight = W;
      EXPECT_NEAR(ls.candidates[c].damage, ref, 1e-5 * ref) << name << " " << c;
    }
    EXPECT_GT(ls.candidates[1].damage, ls.candidates[0].damage) << name;  // int2 hurts more than int3
  }
  // The model is left exactly as it was.
  EXPECT_TRUE(model.forward(kt).equal(base));
}

// --- Hessian ----------------------------------------------------------------------------------

// H = 2/n Σ x xᵀ of one linear's input over every token, in float64, from a hook on that input
// during plain full-model forwards.
Tensor hessian_by_hook(LlamaModel& model, const std::string& name, const Tensor& tokens) {
  Linear& lin = linear_of(model, name);
  Tensor acc;
  int64_t n = 0;
  lin.input_quant = [&](const Tensor& x) {
    Tensor x2 = x.reshape({-1, x.size(-1)}).to(torch::kFloat64);
    acc = acc.defined() ? acc + x2.t().mm(x2) : x2.t().mm(x2);
    n += x2.size(0);
    return x;
  };
  torch::NoGradGuard ng;
  for (int64_t s = 0; s < tokens.size(0); ++s) model.forward(tokens.narrow(0, s, 1));
  lin.input_quant = nullptr;
  return acc * (2.0 / double(n));
}

TEST(Hessian, DamageIsTraceWithIndependentH) {
  LoadedModel m = load_model(kStories);
  LlamaModel& model = *m.model;
  Tensor tokens = calibration(*m.tokenizer, 5, 40, 9);
  SensitivityOptions o = options(SensitivityMetric::Hessian, QuantMethod::RTN);
  o.batch = 2;
  SensitivityReport r = estimate_sensitivity(model, tokens, schemes({"int3:g32", "int4:g32"}), o);
  for (const std::string name : {"model.layers.0.self_attn.v_proj.weight", "model.layers.2.self_attn.o_proj.weight",
                                 "model.layers.3.mlp.up_proj.weight", "model.layers.4.mlp.down_proj.weight"}) {
    Tensor H = hessian_by_hook(model, name, tokens);
    Tensor W = linear_of(model, name).weight;
    const LayerSensitivity& ls = layer_named(r, name);
    for (size_t c = 0; c < 2; ++c) {
      Tensor d = rtn_delta(W, c == 0 ? "int3:g32" : "int4:g32").to(torch::kFloat64);
      const double ref = (d.mm(H) * d).sum().item<double>();
      EXPECT_GT(ref, 0) << name;
      EXPECT_NEAR(ls.candidates[c].damage, ref, 1e-4 * ref) << name << " " << c;
    }
  }
  // GPTQ minimises exactly this quantity: over all layers it must do better than RTN.
  SensitivityReport g = estimate_sensitivity(model, tokens, schemes({"int3:g32"}), options(SensitivityMetric::Hessian,
                                                                                             QuantMethod::GPTQ));
  double rtn = 0, gptq = 0;
  for (size_t i = 0; i < r.layers.size(); ++i) rtn += r.layers[i].candidates[0].damage;
  for (const auto& l : g.layers) gptq += l.candidates[0].damage;
  EXPECT_LT(gptq, 0.9 * rtn);
}

// --- Fisher -----------------------------------------------------------------------------------

TEST(Fisher, DamageIsFisherWeightedSquaredError) {
  LoadedModel m = load_model(kStories);
  LlamaModel& model = *m.model;
  Tensor tokens = calibration(*m.tokenizer, 3, 24, 11);
  SensitivityReport r = estimate_sensitivity(model, tokens, schemes({"int3:g32"}),
                                             options(SensitivityMetric::Fisher, QuantMethod::RTN));
  // Reference: each window's mean LM loss through one whole graph, every linear a leaf; F is the
  // mean over windows of the squared gradients.
  std::map<std::string, Tensor> F;
  for (int64_t b = 0; b < tokens.size(0); ++b) {
    double loss = 0;
    for (auto& [name, g] : full_graph_gradients(model, tokens.narrow(0, b, 1), &loss)) {
      Tensor g2 = g.to(torch::kFloat64).square() / double(tokens.size(0));
      F[name] = F.count(name) ? F[name] + g2 : g2;
    }
  }
  ASSERT_EQ(r.layers.size(), F.size());
  for (const LayerSensitivity& ls : r.layers) {
    Tensor W = linear_of(model, ls.name).weight;
    Tensor d = rtn_delta(W, "int3:g32").to(torch::kFloat64);
    const double ref = (F[ls.name] * d.square()).sum().item<double>();
    EXPECT_GT(ref, 0) << ls.name;
    EXPECT_NEAR(ls.candidates[0].damage, ref, 1e-3 * ref) << ls.name;
  }
}

// --- Bits, outliers, GGUF fallbacks, determinism ----------------------------------------------

TEST(Bits, OutlierCandidatesCostTheExactExtraBits) {
  LoadedModel m = load_model(kStories);
  Tensor tokens = calibration(*m.tokenizer, 4, 32, 1);
  SensitivityReport r = estimate_sensitivity(*m.model, tokens,
                                             schemes({"int3:g32", "int3:g32+hessian:1", "int3:g32+gradient:2"}),
                                             options(SensitivityMetric::Hessian, QuantMethod::RTN));
  double plain = 0, hess = 0;
  for (const LayerSensitivity& ls : r.layers) {
    ASSERT_EQ(ls.candidates.size(), 3u);
    EXPECT_EQ(ls.candidates[1].format, "int3:g32:sym+hessian:1");
    const int64_t n = ls.rows * ls.cols;
    // int3 with an fp16 scale per started group of 32 columns.
    const double base = double(ls.rows) * double(3 * ls.cols + 16 * ((ls.cols + 31) / 32));
    EXPECT_EQ(ls.candidates[0].bits, base) << ls.name;
    // CSR: 32-bit row pointers (rows + 1), 16-bit columns and fp16 values per outlier.
    for (auto [c, percent] : {std::pair{1, 1.0}, std::pair{2, 2.0}}) {
      const int64_t nnz = int64_t(std::floor(double(n) * percent / 100));
      EXPECT_EQ(ls.candidates[c].bits, base + 32.0 * double(ls.rows + 1) + 32.0 * double(nnz)) << ls.name;
    }
    plain += ls.candidates[0].damage;
    hess += ls.candidates[1].damage;
  }
  EXPECT_LT(hess, plain);
}

TEST(Bits, GgufFallbackKeepsTheGivenName) {
  LoadedModel m = load_model(kStories);
  Tensor tokens = calibration(*m.tokenizer, 2, 32, 1);
  SensitivityReport r = estimate_sensitivity(*m.model, tokens, schemes({"gguf:q4_0", "gguf:q4_k"}),
                                             options(SensitivityMetric::Hessian, QuantMethod::RTN));
  const LayerSensitivity& q = layer_named(r, "model.layers.0.self_attn.q_proj.weight");  // 64 columns
  EXPECT_EQ(q.candidates[0].format, "gguf:q4_0");
  EXPECT_EQ(q.candidates[0].bits, 4.5 * 64 * 64);
  EXPECT_EQ(q.candidates[1].bits, 5.0 * 64 * 64);  // Q4_K -> Q4_1 (64 is no multiple of 256)
  EXPECT_NE(q.note.find("gguf:q4_1"), std::string::npos) << q.note;
  const LayerSensitivity& d = layer_named(r, "model.layers.0.mlp.down_proj.weight");  // 172 columns
  EXPECT_EQ(d.candidates[0].bits, 16.0 * 64 * 172);  // F16: 172 is no multiple of 32
  EXPECT_EQ(d.candidates[0].damage, d.candidates[1].damage);
}

TEST(Determinism, SameInputsSameNumbers) {
  LoadedModel m = load_model(kStories);
  Tensor tokens = calibration(*m.tokenizer, 4, 32, 3);
  SensitivityOptions o = options(SensitivityMetric::Kld, QuantMethod::GPTQ);
  o.kld_samples = 2;
  auto a = estimate_sensitivity(*m.model, tokens, schemes({"int2:g32", "int4:g32"}), o);
  auto b = estimate_sensitivity(*m.model, tokens, schemes({"int2:g32", "int4:g32"}), o);
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (size_t i = 0; i < a.layers.size(); ++i) {
    EXPECT_EQ(a.layers[i].entropy, b.layers[i].entropy);
    for (size_t c = 0; c < 2; ++c) EXPECT_EQ(a.layers[i].candidates[c].damage, b.layers[i].candidates[c].damage);
  }
}

TEST(Entropy, LayerEntropyIsThatOfItsOutputs) {
  LoadedModel m = load_model(kStories);
  LlamaModel& model = *m.model;
  Tensor tokens = calibration(*m.tokenizer, 3, 32, 6);
  SensitivityOptions o = options(SensitivityMetric::Hessian, QuantMethod::RTN);
  o.entropy_tokens = 64;  // the first two windows
  SensitivityReport r = estimate_sensitivity(model, tokens, schemes({"int8:g32"}), o);
  const std::string name = "model.layers.2.mlp.gate_proj.weight";
  Linear& lin = linear_of(model, name);
  Tensor outs;
  lin.input_quant = [&](const Tensor& x) {
    outs = torch::matmul(x, lin.weight.t());
    return x;
  };
  {
    torch::NoGradGuard ng;
    model.forward(tokens.narrow(0, 0, 2));
  }
  lin.input_quant = nullptr;
  EXPECT_NEAR(layer_named(r, name).entropy, activation_entropy(outs, 100), 1e-9);
  for (const auto& l : r.layers) {
    EXPECT_GT(l.entropy, 1.0) << l.name;
    EXPECT_LE(l.entropy, std::log2(100.0) + 1e-9) << l.name;
  }
}

// --- LUQ and the plan -------------------------------------------------------------------------

std::vector<PlanLayer> one_block_layers() {
  std::vector<PlanLayer> layers;
  for (const std::string& n : DecoderLayer::linear_names()) {
    PlanLayer l{"model.layers.0." + n + ".weight", 4096, {}};
    for (const char* f : {"int2:g32:sym", "int3:g32:sym", "int4:g32:sym", "fp4_e2m1:g32:sym", "int8:g32:sym"})
      l.candidates.push_back({f, 4096.0 * (f[3] - '0'), 1.0});
    layers.push_back(l);
  }
  return layers;
}

TEST(Luq, OnlyTheLowestEntropyDecisionsGetUltraLowBits) {
  std::vector<PlanLayer> layers = one_block_layers();
  const auto groups = fused_groups(layers);  // {q,k,v}, {gate,up}; o and down alone: 4 decisions
  ASSERT_EQ(groups.size(), 2u);
  //                           q    k    v    o    gate up   down
  const std::vector<double> h = {1.0, 5.0, 3.0, 2.5, 0.5, 4.0, 6.0};
  // Means: qkv 3.0, o 2.5, gate/up 2.25, down 6.0; half of four decisions: gate/up and o.
  std::vector<bool> allowed = apply_luq(layers, h, groups, 0.5);
  EXPECT_EQ(allowed, (std::vector<bool>{false, false, false, true, true, true, false}));
  for (size_t i = 0; i < layers.size(); ++i) {
    std::vector<std::string> names;
    for (const auto& c : layers[i].candidates) names.push_back(c.format);
    if (allowed[i])
      EXPECT_EQ(names.size(), 5u) << layers[i].name;
    else
      EXPECT_EQ(names, (std::vector<std::string>{"int4:g32:sym", "fp4_e2m1:g32:sym", "int8:g32:sym"}))
          << layers[i].name;
  }
  // Tied lists stay identical, so the integer program accepts them.
  EXPECT_NO_THROW(solve_plan(layers, budget_from_bpw(layers, 6), groups));
  // A fraction rounds up to whole decisions; 1 keeps everything; no ties: seven decisions.
  std::vector<PlanLayer> l2 = one_block_layers();
  EXPECT_EQ(apply_luq(l2, h, groups, 0.01), (std::vector<bool>{false, false, false, false, true, true, false}));
  std::vector<PlanLayer> l3 = one_block_layers();
  EXPECT_EQ(apply_luq(l3, h, {}, 2.0 / 7), (std::vector<bool>{true, false, false, false, true, false, false}));
  std::vector<PlanLayer> l4 = one_block_layers();
  EXPECT_EQ(apply_luq(l4, h, groups, 1.0), std::vector<bool>(7, true));
  EXPECT_THROW(apply_luq(l4, h, groups, 0.0), Error);
  EXPECT_THROW(apply_luq(l4, {1, 2, 3, NAN, 5, 6, 7}, groups, 0.5), Error);
  // Only sub-4-bit candidates: a layer would be left with nothing.
  std::vector<PlanLayer> l5 = one_block_layers();
  for (auto& l : l5) l.candidates.resize(2);
  EXPECT_THROW(apply_luq(l5, h, groups, 0.5), Error);
}

TEST(Plan, EndToEndOnStories260KBeatsEveryUniformCandidate) {
  LoadedModel m = load_model(kStories);
  Tensor tokens = calibration(*m.tokenizer, 8, 64, 0);
  SensitivityOptions o = options(SensitivityMetric::Kld, QuantMethod::GPTQ);
  o.kld_samples = 4;
  SensitivityReport r = estimate_sensitivity(*m.model, tokens,
                                             schemes({"int2:g32", "int3:g32", "int4:g32", "int8:g32"}), o);
  std::vector<PlanLayer> layers = plan_layers(r);
  const auto groups = fused_groups(layers);
  for (double bpw : {2.8, 3.5, 4.2}) {
    const PlanBudget budget = budget_from_bpw(layers, bpw);
    Plan plan = solve_plan(layers, budget, groups);
    EXPECT_LE(plan.bits_per_weight, bpw) << bpw;
    EXPECT_TRUE(plan.optimal);
    int fitting = 0;
    for (const UniformBaseline& b : uniform_baselines(layers, budget)) {
      if (!b.fits) continue;
      ++fitting;
      EXPECT_LE(plan.total_damage, b.total_damage * (1 + 1e-12)) << b.format << " at " << bpw;
    }
    EXPECT_GE(fitting, 1) << bpw;
    // The plan file round-trips through plan_from_json, extra keys and all.
    nlohmann::json j = plan_to_json(PlanFile{layers, budget, groups, plan});
    j["sensitivity"] = "kld";
    j["layers"][0]["entropy"] = r.layers[0].entropy;
    PlanFile back = plan_from_json(j);
    EXPECT_EQ(back.plan.choice, plan.choice);
    EXPECT_DOUBLE_EQ(back.plan.total_damage, plan.total_damage);
    for (const auto& l : back.layers)
      EXPECT_NO_THROW(LayerScheme::parse(l.candidates[0].format));
  }
  // The uniform int2 plan costs 2.5 bits per weight in the 64-column layers.
  auto ub = uniform_baselines(layers, budget_from_bpw(layers, 3.5));
  ASSERT_EQ(ub.size(), 4u);
  EXPECT_EQ(ub[0].format, "int2:g32:sym");
  EXPECT_GT(ub[0].total_damage, ub[3].total_damage);
}

TEST(Plan, ByteSizes) {
  EXPECT_EQ(parse_byte_size("100"), 100.0);
  EXPECT_EQ(parse_byte_size("2.5M"), 2.5 * 1024 * 1024);
  EXPECT_EQ(parse_byte_size("512K"), 512.0 * 1024);
  EXPECT_EQ(parse_byte_size("3KiB"), 3.0 * 1024);
  EXPECT_EQ(parse_byte_size("1G"), 1024.0 * 1024 * 1024);
  for (const char* bad : {"", "M", "abc", "-1", "0", "1X", "1.5.2K"}) EXPECT_THROW(parse_byte_size(bad), Error) << bad;
}

}  // namespace
