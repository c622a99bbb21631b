// Mixed precision by integer programming (src/quant/mixed_precision.h): GLPK's plan against
// independent references - brute-force enumeration of every plan on small random instances (with
// and without tied groups, damages over 11 orders of magnitude), an exact dynamic program over the
// budget on a 7B-sized instance, and a hand-worked example - plus errors, tying and the plan file.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>

#include "quant/mixed_precision.h"
#include "util/error.h"

using namespace lowbit;

namespace {

using Groups = std::vector<std::vector<size_t>>;

struct Reference {
  bool feasible = false;
  double damage = std::numeric_limits<double>::infinity();
  double bits = 0;
};

// Every choice vector (an odometer over the layers), skipping those that break a tie; sums in
// layer order as a plan's totals are defined.
Reference brute_force(const std::vector<PlanLayer>& layers, double max_bits, const Groups& groups) {
  Reference best;
  std::vector<size_t> c(layers.size(), 0);
  while (true) {
    bool tied_ok = true;
    for (const auto& g : groups)
      for (size_t i : g) tied_ok = tied_ok && c[i] == c[g[0]];
    if (tied_ok) {
      double bits = 0, damage = 0;
      for (size_t i = 0; i < layers.size(); ++i)
        bits += layers[i].candidates[c[i]].bits, damage += layers[i].candidates[c[i]].damage;
      if (bits <= max_bits && damage < best.damage) best = {true, damage, bits};
    }
    size_t i = 0;
    while (i < c.size() && ++c[i] == layers[i].candidates.size()) c[i++] = 0;
    if (i == c.size()) break;
  }
  return best;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

double rel_diff(double a, double b) { return std::abs(a - b) / std::max({std::abs(a), std::abs(b), 1e-300}); }

// Random instances. Realistic: candidates are bit widths, damage falls ~4x per bit, each layer
// has its own sensitivity 10^U(lo_exp, hi_exp). Uniform: bits and damage unrelated (many
// dominated candidates), damage sensitivity x U(0,1). LogUniform: like Uniform, every damage
// 10^U(lo_exp, hi_exp) on its own. All layers share one format list, so any grouping is valid.
enum class Kind { Realistic, Uniform, LogUniform };

std::vector<PlanLayer> random_instance(std::mt19937_64& rng, size_t n_layers, size_t n_cands, Kind kind,
                                       double lo_exp, double hi_exp) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const double widths[] = {2.0, 2.5, 3.0, 3.5, 4.25, 4.5, 5.0, 6.5, 8.5};
  std::vector<double> bpw(n_cands);
  for (double& b : bpw) b = widths[rng() % 9];
  std::vector<PlanLayer> layers(n_layers);
  for (size_t i = 0; i < n_layers; ++i) {
    PlanLayer& l = layers[i];
    l.name = "layer" + std::to_string(i);
    l.weights = 1000 + static_cast<int64_t>(rng() % 100000);
    const double sens = std::pow(10.0, lo_exp + (hi_exp - lo_exp) * u(rng));
    for (size_t c = 0; c < n_cands; ++c) {
      PlanCandidate pc;
      pc.format = "f" + std::to_string(c);
      if (kind == Kind::Realistic) {
        pc.bits = static_cast<double>(l.weights) * bpw[c] + static_cast<double>(rng() % 64);
        pc.damage = sens * std::pow(4.0, -bpw[c]) * (0.5 + u(rng));
      } else {
        pc.bits = 1 + std::floor(100 * u(rng));
        pc.damage = kind == Kind::Uniform ? sens * u(rng) : std::pow(10.0, lo_exp + (hi_exp - lo_exp) * u(rng));
      }
      l.candidates.push_back(pc);
    }
  }
  return layers;
}

// A budget strictly between the cheapest and the most expensive plan, or (every third seed)
// exactly the bits of a random tie-respecting plan, so that optima sit on the budget boundary.
double random_budget(std::mt19937_64& rng, const std::vector<PlanLayer>& layers, const Groups& groups) {
  double lo = 0, hi = 0;
  for (const PlanLayer& l : layers) {
    double mn = l.candidates[0].bits, mx = mn;
    for (const auto& c : l.candidates) mn = std::min(mn, c.bits), mx = std::max(mx, c.bits);
    lo += mn, hi += mx;
  }
  if (rng() % 3 == 0) {
    std::vector<size_t> c(layers.size());
    for (size_t i = 0; i < c.size(); ++i) c[i] = rng() % layers[i].candidates.size();
    for (const auto& g : groups)
      for (size_t i : g) c[i] = c[g[0]];
    double bits = 0;
    for (size_t i = 0; i < c.size(); ++i) bits += layers[i].candidates[c[i]].bits;
    return bits;
  }
  return lo + (hi - lo) * std::uniform_real_distribution<double>(0.05, 0.95)(rng);
}

void check_against_brute_force(Kind kind, double lo_exp, double hi_exp, int seeds) {
  const Groups groups = {{0, 1, 2}, {3, 4}};  // like q/k/v and gate/up
  int feasible = 0;
  for (int seed = 0; seed < seeds; ++seed) {
    for (bool tied : {false, true}) {
      std::mt19937_64 rng(1000 * seed + tied);
      const std::vector<PlanLayer> layers = random_instance(rng, 6, 4, kind, lo_exp, hi_exp);
      const Groups g = tied ? groups : Groups{};
      const double max_bits = random_budget(rng, layers, g);
      const Reference ref = brute_force(layers, max_bits, g);
      SCOPED_TRACE(testing::Message() << "seed " << seed << (tied ? " tied" : " untied") << " kind " << static_cast<int>(kind));
      if (!ref.feasible) {
        EXPECT_THROW(solve_plan(layers, {max_bits}, g), Error);
        continue;
      }
      ++feasible;
      const Plan p = solve_plan(layers, {max_bits}, g);
      EXPECT_TRUE(p.optimal);
      EXPECT_LE(p.total_bits, max_bits);
      EXPECT_LE(rel_diff(p.total_damage, ref.damage), 1e-9) << p.total_damage << " vs brute force " << ref.damage;
      for (const auto& grp : g)
        for (size_t i : grp) EXPECT_EQ(p.choice[i], p.choice[grp[0]]);
      // The totals are those of the returned choice.
      const Plan e = evaluate_plan(layers, p.choice);
      EXPECT_EQ(e.total_bits, p.total_bits);
      EXPECT_EQ(e.total_damage, p.total_damage);
    }
  }
  EXPECT_GT(feasible, seeds);  // most instances are feasible: the comparison is not vacuous
}

PlanLayer layer(const std::string& name, int64_t weights, std::vector<PlanCandidate> cands) {
  return {name, weights, std::move(cands)};
}

// Three layers of 100 weights; int2/int4/int8 at 2.5/4.5/8.5 bits per weight.
std::vector<PlanLayer> hand_example() {
  auto l = [](const std::string& name, double d2, double d4, double d8) {
    return layer(name, 100, {{"int2:g32", 250, d2}, {"int4:g32", 450, d4}, {"int8:g32", 850, d8}});
  };
  return {l("A", 8, 2, 0.1), l("B", 1, 0.5, 0.01), l("C", 20, 3, 0.2)};
}

}  // namespace

TEST(MixedPrecision, MatchesBruteForceOnRandomInstances) {
  check_against_brute_force(Kind::Realistic, -2, 2, 300);
  check_against_brute_force(Kind::Uniform, 0, 0, 300);
}

TEST(MixedPrecision, MatchesBruteForceWithDamagesFrom1e8To1e3) {
  check_against_brute_force(Kind::Realistic, -8, 3, 500);
  check_against_brute_force(Kind::Uniform, -8, 3, 500);
  check_against_brute_force(Kind::LogUniform, -8, 3, 500);
}

// Budget 1550 bits (193.75 bytes): extra bits above all-int2 (750) are 200 per int4 and 600 per
// int8, so the plans that fit are up to three int4, or one int8 with at most one int4. The best of
// the first kind is all int4 (2 + 0.5 + 3 = 5.5); of the second, C int8 + A int4 + B int2
// (0.2 + 2 + 1 = 3.2), which uses the budget exactly. Tying A and B ({A,B} int2/int4/int8 cost
// 500/900/1700 bits) leaves {AB int4, C int4} = 5.5 as the best (AB int2 + C int8 = 9.2).
TEST(MixedPrecision, HandWorkedExample) {
  const std::vector<PlanLayer> layers = hand_example();
  const Plan p = solve_plan(layers, budget_from_bytes(193.75));
  EXPECT_EQ(p.choice, (std::vector<size_t>{1, 0, 2}));
  EXPECT_DOUBLE_EQ(p.total_damage, 3.2);
  EXPECT_EQ(p.total_bits, 1550);
  EXPECT_DOUBLE_EQ(p.bits_per_weight, 1550.0 / 300);
  EXPECT_TRUE(p.optimal);

  const Plan t = solve_plan(layers, budget_from_bytes(193.75), {{0, 1}});
  EXPECT_EQ(t.choice, (std::vector<size_t>{1, 1, 1}));
  EXPECT_DOUBLE_EQ(t.total_damage, 5.5);
  EXPECT_EQ(t.total_bits, 1350);

  // A generous budget takes the least damage everywhere; the cheapest plan's budget only int2.
  EXPECT_EQ(solve_plan(layers, budget_from_bpw(layers, 9)).choice, (std::vector<size_t>{2, 2, 2}));
  EXPECT_EQ(solve_plan(layers, budget_from_bpw(layers, 2.5)).choice, (std::vector<size_t>{0, 0, 0}));
}

// GLPK accepts rows violated by ~1e-7 of their scale: here the tempting plan is 1 bit over a
// budget whose slack is 1e10 bits. The plan must respect the budget to the bit.
TEST(MixedPrecision, BudgetRespectedToTheBit) {
  auto l = [](const std::string& name) {
    return layer(name, 4000000000, {{"int2", 1e10, 10}, {"int4", 2e10, 5}, {"int4+o", 2e10 + 1, 4}});
  };
  const std::vector<PlanLayer> layers = {l("A"), l("B")};
  const Plan p = solve_plan(layers, {3e10});
  EXPECT_LE(p.total_bits, 3e10);
  EXPECT_EQ(p.total_damage, 15);
  const Plan q = solve_plan(layers, {3e10 + 1});  // now it fits
  EXPECT_EQ(q.total_bits, 3e10 + 1);
  EXPECT_EQ(q.total_damage, 14);
}

TEST(MixedPrecision, BudgetHelpers) {
  const std::vector<PlanLayer> layers = hand_example();
  EXPECT_DOUBLE_EQ(budget_from_bpw(layers, 3.5).max_bits, 1050);
  EXPECT_DOUBLE_EQ(budget_from_bytes(1000).max_bits, 8000);
  EXPECT_THROW(budget_from_bpw(layers, 0), Error);
  EXPECT_THROW(budget_from_bytes(-1), Error);
  EXPECT_THROW(budget_from_bpw({layer("x", 0, {{"int4", 0, 0}})}, 4), Error);
}

TEST(MixedPrecision, InfeasibleBudgetNamesMinimumBpw) {
  const std::vector<PlanLayer> layers = hand_example();
  try {
    solve_plan(layers, budget_from_bpw(layers, 2.4));
    FAIL() << "expected an infeasible budget";
  } catch (const Error& e) {
    EXPECT_PRED2(contains, std::string(e.what()), "infeasible");
    EXPECT_PRED2(contains, std::string(e.what()), "2.5000 bits/weight");
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
  }
}

TEST(MixedPrecision, TiedGroupsShareOneChoiceAndCanBeSwitchedOff) {
  // q/k/v of one block: q and k are cheap to quantize, v is sensitive. Untied, v alone gets int8;
  // tied, the three share int4.
  auto l = [](const std::string& name, double d2, double d4, double d8) {
    return layer(name, 100, {{"int2:g32", 250, d2}, {"int4:g32", 450, d4}, {"int8:g32", 850, d8}});
  };
  const std::vector<PlanLayer> layers = {l("model.layers.0.self_attn.q_proj.weight", 0.1, 0.01, 0.001),
                                         l("model.layers.0.self_attn.k_proj.weight", 0.1, 0.01, 0.001),
                                         l("model.layers.0.self_attn.v_proj.weight", 100, 10, 0.1)};
  const PlanBudget b = budget_from_bpw(layers, 4.5);
  const Plan untied = solve_plan(layers, b);
  EXPECT_EQ(untied.choice, (std::vector<size_t>{0, 0, 2}));
  const Groups g = fused_groups(layers);
  ASSERT_EQ(g, (Groups{{0, 1, 2}}));
  const Plan tied = solve_plan(layers, b, g);
  EXPECT_EQ(tied.choice, (std::vector<size_t>{1, 1, 1}));
  EXPECT_GT(tied.total_damage, untied.total_damage);
}

TEST(MixedPrecision, FusedGroupsFromHfNames) {
  std::vector<PlanLayer> layers;
  for (int b = 0; b < 2; ++b)
    for (const char* n : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"})
      layers.push_back(layer("model.layers." + std::to_string(b) + "." + n + ".weight", 1, {{"int4", 1, 1}}));
  EXPECT_EQ(fused_groups(layers), (Groups{{0, 1, 2}, {4, 5}, {7, 8, 9}, {11, 12}}));
  // Without ".weight", in another order, and blocks 1 and 10 kept apart.
  std::vector<PlanLayer> other = {layer("model.layers.10.mlp.up_proj", 1, {}), layer("model.layers.1.mlp.gate_proj", 1, {}),
                                  layer("model.layers.10.mlp.gate_proj", 1, {}), layer("model.layers.1.mlp.up_proj", 1, {}),
                                  layer("model.layers.1.mlp.down_proj", 1, {}), layer("lm_head", 1, {})};
  EXPECT_EQ(fused_groups(other), (Groups{{0, 2}, {1, 3}}));
  // A lone q_proj (the others not planned) makes no group.
  EXPECT_TRUE(fused_groups({layer("model.layers.0.self_attn.q_proj.weight", 1, {})}).empty());
}

TEST(MixedPrecision, RejectsBadInput) {
  std::vector<PlanLayer> layers = hand_example();
  const PlanBudget b = budget_from_bpw(layers, 4);
  EXPECT_THROW(solve_plan({}, b), Error);
  auto expect_error = [](auto&& f, const std::string& what) {
    try {
      f();
      ADD_FAILURE() << "expected an error mentioning " << what;
    } catch (const Error& e) {
      EXPECT_PRED2(contains, std::string(e.what()), what);
    }
  };
  {
    auto l = layers;
    l[1].candidates.clear();
    expect_error([&] { solve_plan(l, b); }, "B has no candidates");
  }
  {
    auto l = layers;
    l[2].candidates[1].damage = std::numeric_limits<double>::quiet_NaN();
    expect_error([&] { solve_plan(l, b); }, "non-finite damage");
    l[2].candidates[1].damage = std::numeric_limits<double>::infinity();
    expect_error([&] { solve_plan(l, b); }, "non-finite damage");
  }
  {
    auto l = layers;
    l[1].candidates[2].format = "fp8_e4m3:g32";
    expect_error([&] { solve_plan(l, b, {{0, 1}}); }, "different candidate lists");
    l[1].candidates.pop_back();
    l[1].candidates[1].format = "int4:g32";
    expect_error([&] { solve_plan(l, b, {{0, 1}}); }, "different candidate lists");
    EXPECT_NO_THROW(solve_plan(l, b));  // untied, different lists are fine
  }
  expect_error([&] { solve_plan(layers, b, {{0, 1}, {1, 2}}); }, "two tied groups");
  expect_error([&] { solve_plan(layers, b, {{0, 3}}); }, "index 3");
  expect_error([&] { solve_plan(layers, {std::numeric_limits<double>::quiet_NaN()}); }, "invalid budget");
}

TEST(MixedPrecision, JsonRoundTrip) {
  std::mt19937_64 rng(7);
  std::vector<PlanLayer> layers = random_instance(rng, 6, 4, Kind::Realistic, -8, 3);
  layers[0].name = "model.layers.0.self_attn.q_proj.weight";
  layers[1].name = "model.layers.0.self_attn.k_proj.weight";
  layers[2].name = "model.layers.0.self_attn.v_proj.weight";
  const Groups g = fused_groups(layers);
  ASSERT_EQ(g.size(), 1u);
  const PlanBudget b = budget_from_bpw(layers, 4.0);
  const PlanFile f{layers, b, g, solve_plan(layers, b, g)};
  const nlohmann::json j = plan_to_json(f);
  EXPECT_EQ(j["layers"][0]["format"], layers[0].candidates[f.plan.choice[0]].format);
  const PlanFile r = plan_from_json(nlohmann::json::parse(j.dump(2)));
  ASSERT_EQ(r.layers.size(), layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    EXPECT_EQ(r.layers[i].name, layers[i].name);
    EXPECT_EQ(r.layers[i].weights, layers[i].weights);
    ASSERT_EQ(r.layers[i].candidates.size(), layers[i].candidates.size());
    for (size_t c = 0; c < layers[i].candidates.size(); ++c) {
      EXPECT_EQ(r.layers[i].candidates[c].format, layers[i].candidates[c].format);
      EXPECT_EQ(r.layers[i].candidates[c].bits, layers[i].candidates[c].bits);      // doubles exactly
      EXPECT_EQ(r.layers[i].candidates[c].damage, layers[i].candidates[c].damage);
    }
  }
  EXPECT_EQ(r.tied_groups, g);
  EXPECT_EQ(r.budget.max_bits, b.max_bits);
  EXPECT_EQ(r.plan.choice, f.plan.choice);
  EXPECT_EQ(r.plan.total_bits, f.plan.total_bits);
  EXPECT_EQ(r.plan.total_damage, f.plan.total_damage);
  EXPECT_EQ(r.plan.bits_per_weight, f.plan.bits_per_weight);
  EXPECT_TRUE(r.plan.optimal);
  EXPECT_EQ(plan_to_json(r), j);
}

TEST(MixedPrecision, MalformedPlanFiles) {
  const std::vector<PlanLayer> layers = hand_example();
  const PlanBudget b = budget_from_bytes(193.75);
  const nlohmann::json good = plan_to_json({layers, b, {{0, 1}}, solve_plan(layers, b, {{0, 1}})});
  EXPECT_NO_THROW(plan_from_json(good));
  auto expect_error = [](const nlohmann::json& j, const std::string& what) {
    try {
      plan_from_json(j);
      ADD_FAILURE() << "expected an error mentioning " << what;
    } catch (const Error& e) {
      EXPECT_PRED2(contains, std::string(e.what()), what);
    }
  };
  expect_error(nlohmann::json{{"layers", nlohmann::json::array()}}, "not a lowbit plan");
  nlohmann::json j = good;
  j["layers"][2]["choice"] = 3;
  expect_error(j, "out of range");
  j = good;
  j["layers"][2]["format"] = "int3:g32";
  expect_error(j, "is not its candidate");
  j = good;
  j["layers"][0]["choice"] = 2, j["layers"][0]["format"] = "int8:g32";
  expect_error(j, "different choices");
  j = good;
  j["layers"][1]["name"] = "A";
  expect_error(j, "appears twice");
  j = good;
  j["tied_groups"][0][1] = "Z";
  expect_error(j, "unknown layer Z");
  j = good;
  j["layers"][0].erase("weights");
  expect_error(j, "plan file");
}

TEST(MixedPrecision, Deterministic) {
  // Many exactly equal candidates and layers: lots of ties.
  std::vector<PlanLayer> layers(12, layer("", 100, {{"a", 250, 1.0}, {"b", 250, 1.0}, {"c", 450, 0.25}, {"d", 450, 0.25}}));
  for (size_t i = 0; i < layers.size(); ++i) layers[i].name = "l" + std::to_string(i);
  const PlanBudget b = budget_from_bpw(layers, 3.5);
  const Plan p = solve_plan(layers, b);
  for (int k = 0; k < 5; ++k) EXPECT_EQ(solve_plan(layers, b).choice, p.choice);
  int upgraded = 0;
  for (size_t c : p.choice) {
    EXPECT_TRUE(c == 0 || c == 2) << "equal candidates resolve to the lower index";
    upgraded += c == 2;
  }
  EXPECT_EQ(upgraded, 6);
  EXPECT_DOUBLE_EQ(p.total_damage, 6 * 1.0 + 6 * 0.25);
}

// A 32-block 7B model (hidden 4096, intermediate 11008): 224 linear layers × 10 candidates. The
// bits are multiples of 2^17, so a dynamic program over the budget in those units is an exact,
// independent reference.
TEST(MixedPrecision, LargeInstanceMatchesDynamicProgram) {
  const double bpw[10] = {2.5, 2.75, 3.5, 3.75, 4.5, 4.5, 4.75, 4.75, 6.5, 8.5};
  const char* fmt[10] = {"int2:g32", "int2:g32+o", "int3:g32", "int3:g32+o", "int4:g32",
                         "fp4_e2m1:g32", "int4:g32+o", "fp4_e2m1:g32+o", "int6:g32", "int8:g32"};
  const double unit = std::ldexp(1.0, 17);
  for (const auto& [lo_exp, hi_exp] : {std::pair{-2.0, 2.0}, std::pair{-8.0, 3.0}}) {
    std::mt19937_64 rng(42);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::vector<PlanLayer> layers;
    for (int b = 0; b < 32; ++b)
      for (const char* n : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}) {
        PlanLayer l;
        l.name = "model.layers." + std::to_string(b) + "." + n + ".weight";
        l.weights = std::string(n).starts_with("mlp") ? int64_t{4096} * 11008 : int64_t{4096} * 4096;
        const double sens = std::pow(10.0, lo_exp + (hi_exp - lo_exp) * u(rng)) * static_cast<double>(l.weights) / 16777216.0;
        for (int c = 0; c < 10; ++c) {
          const bool outliers = std::string(fmt[c]).ends_with("+o");
          const double base = std::floor(bpw[c]);  // outliers cost bits and cut damage
          l.candidates.push_back({fmt[c], static_cast<double>(l.weights) * bpw[c],
                                  sens * std::pow(4.0, -base) * (outliers ? 0.6 : 1.0) * (0.7 + 0.6 * u(rng))});
        }
        layers.push_back(std::move(l));
      }
    for (bool tied : {false, true}) {
      const Groups g = tied ? fused_groups(layers) : Groups{};
      if (tied) {
        ASSERT_EQ(g.size(), 64u);
      }
      for (double target : {3.0, 3.5, 4.25}) {
        const PlanBudget budget = budget_from_bpw(layers, target);
        const auto t0 = std::chrono::steady_clock::now();
        const Plan p = solve_plan(layers, budget, g);
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        std::printf("[ timing ] 224 layers x 10 candidates, damages 1e%+.0f..1e%+.0f, %s, %.2f bpw: GLPK %.1f ms\n",
                    lo_exp, hi_exp, tied ? "tied q/k/v, gate/up (128 decisions)" : "untied", target, ms);

        // Reference: DP over the decisions, extra bits above each decision's cheapest candidate in
        // units of 2^17 bits, every candidate considered (no dominance pruning).
        std::vector<std::vector<size_t>> decisions = g;
        std::vector<bool> in(layers.size(), false);
        for (const auto& grp : g)
          for (size_t i : grp) in[i] = true;
        for (size_t i = 0; i < layers.size(); ++i)
          if (!in[i]) decisions.push_back({i});
        double base_bits = 0;
        std::vector<std::vector<std::pair<long, double>>> opts;
        for (const auto& d : decisions) {
          std::vector<std::pair<double, double>> sums(10, {0.0, 0.0});
          for (size_t i : d)
            for (int c = 0; c < 10; ++c) sums[c].first += layers[i].candidates[c].bits, sums[c].second += layers[i].candidates[c].damage;
          double mn = sums[0].first;
          for (const auto& s : sums) mn = std::min(mn, s.first);
          base_bits += mn;
          opts.emplace_back();
          for (const auto& s : sums) opts.back().push_back({std::lround((s.first - mn) / unit), s.second});
        }
        const long cap = static_cast<long>(std::floor((budget.max_bits - base_bits) / unit));
        ASSERT_GE(cap, 0);
        const double inf = std::numeric_limits<double>::infinity();
        std::vector<double> dp(cap + 1, 0.0), next(cap + 1);
        for (const auto& o : opts) {
          std::fill(next.begin(), next.end(), inf);
          for (long s = 0; s <= cap; ++s)
            for (const auto& [w, dmg] : o)
              if (w <= s) next[s] = std::min(next[s], dp[s - w] + dmg);
          dp.swap(next);
        }
        EXPECT_LE(p.total_bits, budget.max_bits);
        EXPECT_LE(rel_diff(p.total_damage, dp[cap]), 1e-9) << p.total_damage << " vs DP " << dp[cap];
        EXPECT_TRUE(p.optimal);
      }
    }
  }
}
