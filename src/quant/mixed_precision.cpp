#include "quant/mixed_precision.h"

#include <glpk.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <regex>

#include "util/error.h"

namespace lowbit {

namespace {

double total_weights(const std::vector<PlanLayer>& layers) {
  double n = 0;
  for (const PlanLayer& l : layers) n += static_cast<double>(l.weights);
  return n;
}

void validate_layers(const std::vector<PlanLayer>& layers) {
  if (layers.empty()) fail("mixed precision plan: no layers");
  for (const PlanLayer& l : layers) {
    if (l.candidates.empty()) fail("mixed precision plan: layer {} has no candidates", l.name);
    if (l.weights < 0) fail("mixed precision plan: layer {} has a negative weight count", l.name);
    for (const PlanCandidate& c : l.candidates) {
      if (!std::isfinite(c.bits) || c.bits < 0)
        fail("mixed precision plan: layer {} candidate {} has invalid bits {}", l.name, c.format, c.bits);
      if (!std::isfinite(c.damage))
        fail("mixed precision plan: layer {} candidate {} has non-finite damage {}", l.name, c.format,
             c.damage);
    }
  }
}

// One decision: a layer alone, or a tied group. Its candidates are the common candidate indices.
struct Decision {
  std::vector<size_t> members;  // layer indices, ascending
  struct Option {
    size_t index;        // candidate index, shared by all members
    double bits, damage; // sums over the members
  };
  std::vector<Option> options;  // after dominance: bits strictly increasing, damage strictly decreasing
};

std::vector<Decision> make_decisions(const std::vector<PlanLayer>& layers,
                                     const std::vector<std::vector<size_t>>& groups) {
  const size_t n = layers.size();
  std::vector<long> owner(n, -1);
  std::vector<std::vector<size_t>> members;
  for (const std::vector<size_t>& g : groups) {
    if (g.empty()) fail("mixed precision plan: an empty tied group");
    std::vector<size_t> m = g;
    std::sort(m.begin(), m.end());
    for (size_t i : m) {
      if (i >= n) fail("mixed precision plan: tied group names layer index {} of {}", i, n);
      if (owner[i] >= 0) fail("mixed precision plan: layer {} is in two tied groups", layers[i].name);
      owner[i] = static_cast<long>(members.size());
    }
    const PlanLayer& first = layers[m[0]];
    for (size_t i : m) {
      const PlanLayer& l = layers[i];
      bool same = l.candidates.size() == first.candidates.size();
      for (size_t c = 0; same && c < l.candidates.size(); ++c)
        same = l.candidates[c].format == first.candidates[c].format;
      if (!same)
        fail("mixed precision plan: tied layers {} and {} have different candidate lists", first.name, l.name);
    }
    members.push_back(std::move(m));
  }
  for (size_t i = 0; i < n; ++i)
    if (owner[i] < 0) members.push_back({i});
  std::sort(members.begin(), members.end(), [](const auto& a, const auto& b) { return a[0] < b[0]; });

  std::vector<Decision> out(members.size());
  for (size_t d = 0; d < members.size(); ++d) {
    Decision& dec = out[d];
    dec.members = std::move(members[d]);
    std::vector<Decision::Option> all;
    for (size_t c = 0; c < layers[dec.members[0]].candidates.size(); ++c) {
      Decision::Option o{c, 0.0, 0.0};
      for (size_t i : dec.members) o.bits += layers[i].candidates[c].bits, o.damage += layers[i].candidates[c].damage;
      if (!std::isfinite(o.bits) || !std::isfinite(o.damage))
        fail("mixed precision plan: the bits or damage of layer {} candidate {} overflow", layers[dec.members[0]].name,
             layers[dec.members[0]].candidates[c].format);
      all.push_back(o);
    }
    // Drop dominated options: sorted by (bits, damage, index), an option survives only if its
    // damage is strictly below every cheaper-or-equal one's. Ties go to fewer bits, then the lower
    // index.
    std::stable_sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
      return a.bits != b.bits ? a.bits < b.bits : a.damage < b.damage;
    });
    for (const Decision::Option& o : all)
      if (dec.options.empty() || o.damage < dec.options.back().damage) dec.options.push_back(o);
  }
  return out;
}

std::vector<size_t> choice_of(const std::vector<Decision>& decs, const std::vector<size_t>& option, size_t n) {
  std::vector<size_t> choice(n);
  for (size_t d = 0; d < decs.size(); ++d)
    for (size_t i : decs[d].members) choice[i] = decs[d].options[option[d]].index;
  return choice;
}

struct ProbDeleter {
  void operator()(glp_prob* p) const { glp_delete_prob(p); }
};

const char* glpk_error_name(int rc) {
  switch (rc) {
    case GLP_EBOUND: return "invalid bounds";
    case GLP_EROOT: return "root LP optimum not provided";
    case GLP_ENOPFS: return "no primal feasible solution";
    case GLP_ENODFS: return "no dual feasible solution";
    case GLP_EFAIL: return "solver failed";
    case GLP_EMIPGAP: return "mip gap tolerance reached";
    case GLP_ETMLIM: return "time limit exceeded";
    case GLP_ESTOP: return "search terminated";
    default: return "error";
  }
}

// GLPK's simplex treats a reduced cost as zero below 1e-7 absolute plus 1e-10 relative to the
// cost coefficient: objective coefficients up to kObjScale keep the absolute part below the
// relative one.
constexpr double kObjScale = 1e4;

struct Column {
  size_t d, o;  // decision, option
  double a, c;  // normalised extra bits (budget row), objective coefficient
};

// min sum c x [+ slack_cost s]  s.t.  sum_o x[d][o] = 1 per decision,  sum a x <= ub
// [written sum a x + s = ub, s >= 0, when slack_cost >= 0],  0 <= x <= 1 binary.
// Each plan in excluded (an option per decision) gets a row sum_d x[d][plan[d]] <= D - 1.
std::unique_ptr<glp_prob, ProbDeleter> build_program(const std::vector<Column>& cols, size_t D, double ub,
                                                     double slack_cost,
                                                     const std::vector<std::vector<size_t>>& excluded = {}) {
  glp_term_out(GLP_OFF);
  std::unique_ptr<glp_prob, ProbDeleter> lp(glp_create_prob());
  glp_prob* P = lp.get();
  glp_set_obj_dir(P, GLP_MIN);
  glp_add_rows(P, static_cast<int>(D + 1));
  for (size_t d = 0; d < D; ++d) glp_set_row_bnds(P, static_cast<int>(d + 1), GLP_FX, 1.0, 1.0);
  const int budget_row = static_cast<int>(D + 1);
  const bool with_slack = slack_cost >= 0;
  glp_set_row_bnds(P, budget_row, with_slack ? GLP_FX : GLP_UP, with_slack ? ub : 0.0, ub);
  glp_add_cols(P, static_cast<int>(cols.size() + (with_slack ? 1 : 0)));
  std::vector<int> ia{0}, ja{0};
  std::vector<double> ar{0.0};
  for (size_t k = 0; k < cols.size(); ++k) {
    const int j = static_cast<int>(k + 1);
    glp_set_col_kind(P, j, GLP_BV);
    glp_set_obj_coef(P, j, cols[k].c);
    ia.push_back(static_cast<int>(cols[k].d + 1)), ja.push_back(j), ar.push_back(1.0);
    if (cols[k].a != 0) ia.push_back(budget_row), ja.push_back(j), ar.push_back(cols[k].a);
  }
  if (with_slack) {
    const int j = static_cast<int>(cols.size() + 1);
    glp_set_col_bnds(P, j, GLP_LO, 0.0, 0.0);
    glp_set_obj_coef(P, j, slack_cost);
    ia.push_back(budget_row), ja.push_back(j), ar.push_back(1.0);
  }
  if (!excluded.empty()) {
    const int first = glp_add_rows(P, static_cast<int>(excluded.size()));
    for (size_t e = 0; e < excluded.size(); ++e) {
      const int row = first + static_cast<int>(e);
      glp_set_row_bnds(P, row, GLP_UP, 0.0, static_cast<double>(D) - 1.0);
      for (size_t k = 0; k < cols.size(); ++k)
        if (excluded[e][cols[k].d] == cols[k].o) ia.push_back(row), ja.push_back(static_cast<int>(k + 1)), ar.push_back(1.0);
    }
  }
  glp_load_matrix(P, static_cast<int>(ia.size() - 1), ia.data(), ja.data(), ar.data());
  return lp;
}

// The LP relaxation (without slack column): the budget row's multiplier (>= 0, in objective units
// per unit of a) and a rounding of its solution that uses no more budget (each decision takes the
// cheapest option the LP uses; options are in increasing bits). ok = false if the LP fails.
struct LpResult {
  bool ok = false;
  double dual = 0;
  std::vector<size_t> rounded;
};
LpResult glpk_lp(const std::vector<Column>& cols, size_t D) {
  auto lp = build_program(cols, D, 1.0, -1);
  glp_prob* P = lp.get();
  glp_smcp sp;
  glp_init_smcp(&sp);
  sp.msg_lev = GLP_MSG_OFF;
  LpResult r;
  if (glp_simplex(P, &sp) != 0 || glp_get_status(P) != GLP_OPT) return r;
  r.dual = std::max(0.0, -glp_get_row_dual(P, static_cast<int>(D + 1)));
  r.rounded.assign(D, SIZE_MAX);
  for (size_t k = 0; k < cols.size(); ++k)
    if (glp_get_col_prim(P, static_cast<int>(k + 1)) > 1e-9) r.rounded[cols[k].d] = std::min(r.rounded[cols[k].d], cols[k].o);
  r.ok = std::none_of(r.rounded.begin(), r.rounded.end(), [](size_t o) { return o == SIZE_MAX; });
  return r;
}

// The 0-1 program solved to proven optimality by glp_intopt (presolver on, no relative gap).
// Returns the option chosen per decision, or nothing if the program is infeasible.
std::vector<size_t> glpk_mip(const std::vector<Column>& cols, size_t D, double ub, double slack_cost,
                             const std::vector<std::vector<size_t>>& excluded) {
  auto lp = build_program(cols, D, ub, slack_cost, excluded);
  glp_prob* P = lp.get();
  glp_iocp parm;
  glp_init_iocp(&parm);
  parm.msg_lev = GLP_MSG_OFF;
  parm.presolve = GLP_ON;
  parm.mip_gap = 0.0;
  parm.tol_obj = 1e-12;
  parm.tol_int = 1e-10;
  const int rc = glp_intopt(P, &parm);
  if (rc == GLP_ENOPFS) return {};
  if (rc != 0) fail("mixed precision plan: GLPK failed ({}, code {})", glpk_error_name(rc), rc);
  const int status = glp_mip_status(P);
  if (status == GLP_NOFEAS) return {};
  if (status != GLP_OPT)
    fail("mixed precision plan: GLPK found no optimal plan (status {})",
         status == GLP_FEAS ? "feasible only" : "undefined");
  std::vector<size_t> option(D, SIZE_MAX);
  for (size_t k = 0; k < cols.size(); ++k)
    if (glp_mip_col_val(P, static_cast<int>(k + 1)) > 0.5) {
      if (option[cols[k].d] != SIZE_MAX) fail("mixed precision plan: GLPK chose two candidates for one layer");
      option[cols[k].d] = cols[k].o;
    }
  for (size_t o : option)
    if (o == SIZE_MAX) fail("mixed precision plan: GLPK chose no candidate for a layer");
  return option;
}

}  // namespace

PlanBudget budget_from_bpw(const std::vector<PlanLayer>& layers, double bpw) {
  if (!std::isfinite(bpw) || bpw <= 0) fail("mixed precision plan: target bits per weight must be positive, got {}", bpw);
  const double n = total_weights(layers);
  if (n <= 0) fail("mixed precision plan: a bits-per-weight budget needs layers with weights");
  return {bpw * n};
}

PlanBudget budget_from_bytes(double bytes) {
  if (!std::isfinite(bytes) || bytes <= 0) fail("mixed precision plan: target size must be positive, got {} bytes", bytes);
  return {8.0 * bytes};
}

Plan evaluate_plan(const std::vector<PlanLayer>& layers, const std::vector<size_t>& choice) {
  if (choice.size() != layers.size())
    fail("mixed precision plan: {} choices for {} layers", choice.size(), layers.size());
  Plan p;
  p.choice = choice;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (choice[i] >= layers[i].candidates.size())
      fail("mixed precision plan: layer {} choice {} is out of range ({} candidates)", layers[i].name, choice[i],
           layers[i].candidates.size());
    p.total_bits += layers[i].candidates[choice[i]].bits;
    p.total_damage += layers[i].candidates[choice[i]].damage;
  }
  const double n = total_weights(layers);
  p.bits_per_weight = n > 0 ? p.total_bits / n : 0.0;
  return p;
}

Plan solve_plan(const std::vector<PlanLayer>& layers, const PlanBudget& budget,
                const std::vector<std::vector<size_t>>& tied_groups) {
  validate_layers(layers);
  if (!std::isfinite(budget.max_bits) || budget.max_bits < 0)
    fail("mixed precision plan: invalid budget of {} bits", budget.max_bits);
  const std::vector<Decision> decs = make_decisions(layers, tied_groups);
  const size_t D = decs.size(), n = layers.size();
  const double nw = total_weights(layers);

  // The cheapest plan decides feasibility; the least-damage plan may already fit.
  std::vector<size_t> cheapest(D, 0), best(D);
  for (size_t d = 0; d < D; ++d) best[d] = decs[d].options.size() - 1;
  const Plan min_plan = evaluate_plan(layers, choice_of(decs, cheapest, n));
  if (min_plan.total_bits > budget.max_bits)
    fail("mixed precision plan: the budget of {:.6g} bits ({:.4f} bits/weight) is infeasible; the smallest plan "
         "needs {:.6g} bits ({:.4f} bits/weight)",
         budget.max_bits, nw > 0 ? budget.max_bits / nw : 0.0, min_plan.total_bits, min_plan.bits_per_weight);
  Plan best_plan = evaluate_plan(layers, choice_of(decs, best, n));
  if (best_plan.total_bits <= budget.max_bits) {
    best_plan.optimal = true;
    return best_plan;
  }

  // Per option: bits above the decision's cheapest option, damage above its least-damage option.
  // Options that cannot fit even with every other decision at its cheapest are left out.
  const double slack = budget.max_bits - min_plan.total_bits;
  const double drop_above = slack * (1 + 1e-9) + 1e-12 * budget.max_bits;
  std::vector<std::vector<double>> xbits(D), xdmg(D);
  double dmax = 0;
  for (size_t d = 0; d < D; ++d)
    for (size_t o = 0; o < decs[d].options.size(); ++o) {
      const double b = decs[d].options[o].bits - decs[d].options[0].bits;
      if (o > 0 && b > drop_above) break;
      xbits[d].push_back(b);
      xdmg[d].push_back(decs[d].options[o].damage - decs[d].options.back().damage);
      dmax = std::max(dmax, xdmg[d].back());
    }
  if (!(dmax > 0)) {  // every option left has its decision's least damage: the cheapest plan is optimal
    Plan plan = evaluate_plan(layers, choice_of(decs, cheapest, n));
    plan.optimal = true;
    return plan;
  }
  auto extra_damage = [&](const std::vector<size_t>& option) {
    double z = 0;
    for (size_t d = 0; d < D; ++d) z += xdmg[d][option[d]];
    return z;
  };
  auto norm_bits = [&](double b) { return slack > 0 ? b / slack : (b > 0 ? 2.0 : 0.0); };

  auto fits = [&](const std::vector<size_t>& option) {
    return evaluate_plan(layers, choice_of(decs, option, n)).total_bits <= budget.max_bits;
  };

  // GLPK, with the plan checked against the budget in double arithmetic. GLPK accepts a row
  // violated within its feasibility tolerance (~1e-7 of the slack), so a plan over the budget is
  // excluded by a cut and the program solved again; after kMaxCuts such plans, the budget row is
  // tightened past the excess instead (losing plans within GLPK's tolerance below the budget).
  // Nothing if no plan is left (possible only once the row is tightened).
  constexpr size_t kMaxCuts = 32;
  bool gave_up = false;
  auto solve_checked = [&](const std::vector<Column>& cols, double slack_cost) {
    std::vector<std::vector<size_t>> excluded;
    double ub = 1.0;
    for (int attempt = 0; attempt < static_cast<int>(kMaxCuts) + 8; ++attempt) {
      std::vector<size_t> option = glpk_mip(cols, D, ub, slack_cost, excluded);
      if (option.empty()) return option;
      const Plan plan = evaluate_plan(layers, choice_of(decs, option, n));
      if (plan.total_bits <= budget.max_bits) return option;
      if (excluded.size() < kMaxCuts) {
        excluded.push_back(std::move(option));
        continue;
      }
      const double excess = slack > 0 ? (plan.total_bits - budget.max_bits) / slack : ub;
      ub = std::max(0.0, ub - excess - 2e-7 * (1.0 + ub));
    }
    gave_up = true;  // GLPK's plans keep exceeding the budget: keep the incumbent
    return std::vector<size_t>{};
  };

  // The LP relaxation gives the budget's multiplier pi (damage per bit) and, rounded, a first plan.
  std::vector<Column> cols;
  for (size_t d = 0; d < D; ++d)
    for (size_t o = 0; o < xbits[d].size(); ++o)
      cols.push_back({d, o, norm_bits(xbits[d][o]), xdmg[d][o] / dmax * kObjScale});
  const LpResult lp = glpk_lp(cols, D);
  const double pi = lp.ok && slack > 0 ? lp.dual * (dmax / kObjScale) / slack : 0.0;
  std::vector<size_t> incumbent = lp.ok && fits(lp.rounded) ? lp.rounded : cheapest;
  double z = extra_damage(incumbent);

  // Lagrangian fixing. For any pi >= 0, L = sum_d min_o (dmg + pi bits) - pi slack is a lower bound
  // on every plan's extra damage, and a plan's extra damage is at least L + sum_d r[d][o(d)], with
  // r = dmg + pi bits - min_o (dmg + pi bits) >= 0. So an option with r above the gap G = z - L is
  // in no plan better than the incumbent: it is left out. On the options left, the objective
  // sum r x + pi (slack - sum bits x) equals the extra damage up to a constant, with coefficients
  // of the order of G instead of the largest damage, so GLPK's tolerances apply at the scale of
  // what is left to decide. GLPK's optimum over the options left is the optimum. The program is
  // solved again while that improves the incumbent (in double arithmetic): the smaller gap fixes
  // more and rescales finer.
  std::vector<double> m(D);
  double L = -pi * slack, mag = pi * slack;
  for (size_t d = 0; d < D; ++d) {
    m[d] = std::numeric_limits<double>::infinity();
    for (size_t o = 0; o < xbits[d].size(); ++o) m[d] = std::min(m[d], xdmg[d][o] + pi * xbits[d][o]);
    L += m[d], mag += std::abs(m[d]);
  }
  for (int round = 0; round < 8; ++round) {
    const double gap = z - L, tol = 1e-12 * (mag + z);  // tol: above rounding in L and r
    std::vector<Column> reduced;
    std::vector<size_t> left(D, 0);
    double rmax = 0;
    for (size_t d = 0; d < D; ++d)
      for (size_t o = 0; o < xbits[d].size(); ++o) {
        const double r = xdmg[d][o] + pi * xbits[d][o] - m[d];
        if (r > gap + tol) continue;
        reduced.push_back({d, o, norm_bits(xbits[d][o]), std::max(r, 0.0)});
        rmax = std::max(rmax, r), ++left[d];
      }
    if (std::all_of(left.begin(), left.end(), [](size_t k) { return k == 1; })) break;  // the incumbent is optimal
    const double scale = std::max(gap, rmax);
    if (!(scale > 0)) break;  // every option left has r = 0 and the incumbent reaches L
    double slack_cost = pi * slack / scale * kObjScale;
    if (slack_cost > 1e4 * kObjScale) {
      // The budget is worth far more than what is left to decide: the slack's cost would dwarf the
      // other coefficients, so use the damages themselves, over their spread in what is left.
      std::vector<double> lo(D, std::numeric_limits<double>::infinity());
      for (const Column& c : reduced) lo[c.d] = std::min(lo[c.d], xdmg[c.d][c.o]);
      double spread = 0;
      for (const Column& c : reduced) spread = std::max(spread, xdmg[c.d][c.o] - lo[c.d]);
      if (!(spread > 0)) break;
      for (Column& c : reduced) c.c = (xdmg[c.d][c.o] - lo[c.d]) / spread * kObjScale;
      slack_cost = -1;
    } else {
      for (Column& c : reduced) c.c = c.c / scale * kObjScale;
    }
    std::vector<size_t> option = solve_checked(reduced, slack_cost);
    if (option.empty()) break;
    const double z2 = extra_damage(option);
    if (!(z2 < z)) break;
    incumbent = std::move(option), z = z2;
  }
  Plan plan = evaluate_plan(layers, choice_of(decs, incumbent, n));
  plan.optimal = !gave_up;
  return plan;
}

std::vector<std::vector<size_t>> fused_groups(const std::vector<PlanLayer>& layers) {
  static const std::regex re(R"(^(.*\blayers\.\d+)\.(?:self_attn\.(?:q|k|v)_proj|mlp\.(?:gate|up)_proj)(?:\.weight)?$)");
  static const std::regex attn(R"(\.self_attn\.)");
  std::map<std::string, std::vector<size_t>> by_key;
  for (size_t i = 0; i < layers.size(); ++i) {
    std::smatch m;
    if (!std::regex_match(layers[i].name, m, re)) continue;
    const bool is_attn = std::regex_search(layers[i].name, attn);
    by_key[m[1].str() + (is_attn ? "/attn" : "/mlp")].push_back(i);
  }
  std::vector<std::vector<size_t>> out;
  for (auto& [key, idx] : by_key)
    if (idx.size() >= 2) out.push_back(std::move(idx));
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a[0] < b[0]; });
  return out;
}

nlohmann::json plan_to_json(const PlanFile& file) {
  const std::vector<PlanLayer>& layers = file.layers;
  if (file.plan.choice.size() != layers.size())
    fail("mixed precision plan: {} choices for {} layers", file.plan.choice.size(), layers.size());
  nlohmann::json j;
  j["lowbit_plan"] = 1;
  j["max_bits"] = file.budget.max_bits;
  j["total_bits"] = file.plan.total_bits;
  j["total_damage"] = file.plan.total_damage;
  j["bits_per_weight"] = file.plan.bits_per_weight;
  j["optimal"] = file.plan.optimal;
  nlohmann::json groups = nlohmann::json::array();
  for (const auto& g : file.tied_groups) {
    nlohmann::json names = nlohmann::json::array();
    for (size_t i : g) {
      if (i >= layers.size()) fail("mixed precision plan: tied group names layer index {} of {}", i, layers.size());
      names.push_back(layers[i].name);
    }
    groups.push_back(std::move(names));
  }
  j["tied_groups"] = std::move(groups);
  nlohmann::json ls = nlohmann::json::array();
  for (size_t i = 0; i < layers.size(); ++i) {
    const PlanLayer& l = layers[i];
    const size_t c = file.plan.choice[i];
    if (c >= l.candidates.size()) fail("mixed precision plan: layer {} choice {} is out of range", l.name, c);
    nlohmann::json cands = nlohmann::json::array();
    for (const PlanCandidate& pc : l.candidates)
      cands.push_back({{"format", pc.format}, {"bits", pc.bits}, {"damage", pc.damage}});
    ls.push_back({{"name", l.name},
                  {"weights", l.weights},
                  {"choice", c},
                  {"format", l.candidates[c].format},
                  {"bits", l.candidates[c].bits},
                  {"damage", l.candidates[c].damage},
                  {"candidates", std::move(cands)}});
  }
  j["layers"] = std::move(ls);
  return j;
}

PlanFile plan_from_json(const nlohmann::json& j) {
  PlanFile f;
  std::vector<size_t> choice;
  try {
    if (!j.is_object() || !j.contains("lowbit_plan")) fail("plan file: not a lowbit plan (no \"lowbit_plan\" key)");
    if (j.at("lowbit_plan").get<int>() != 1) fail("plan file: unsupported version {}", j.at("lowbit_plan").dump());
    f.budget.max_bits = j.at("max_bits").get<double>();
    const bool optimal = j.value("optimal", false);
    std::map<std::string, size_t> index;
    for (const nlohmann::json& jl : j.at("layers")) {
      PlanLayer l;
      l.name = jl.at("name").get<std::string>();
      l.weights = jl.at("weights").get<int64_t>();
      for (const nlohmann::json& jc : jl.at("candidates"))
        l.candidates.push_back({jc.at("format").get<std::string>(), jc.at("bits").get<double>(),
                                jc.at("damage").get<double>()});
      const size_t c = jl.at("choice").get<size_t>();
      if (c >= l.candidates.size())
        fail("plan file: layer {} choice {} is out of range ({} candidates)", l.name, c, l.candidates.size());
      if (jl.contains("format") && jl.at("format").get<std::string>() != l.candidates[c].format)
        fail("plan file: layer {} format {} is not its candidate {} ({})", l.name, jl.at("format").get<std::string>(), c,
             l.candidates[c].format);
      if (!index.emplace(l.name, f.layers.size()).second) fail("plan file: layer {} appears twice", l.name);
      choice.push_back(c);
      f.layers.push_back(std::move(l));
    }
    validate_layers(f.layers);
    for (const nlohmann::json& jg : j.value("tied_groups", nlohmann::json::array())) {
      std::vector<size_t> g;
      for (const nlohmann::json& jn : jg) {
        const std::string name = jn.get<std::string>();
        auto it = index.find(name);
        if (it == index.end()) fail("plan file: tied group names unknown layer {}", name);
        g.push_back(it->second);
      }
      for (size_t i : g)
        if (choice[i] != choice[g[0]])
          fail("plan file: tied layers {} and {} have different choices", f.layers[g[0]].name, f.layers[i].name);
      f.tied_groups.push_back(std::move(g));
    }
    make_decisions(f.layers, f.tied_groups);  // validates the groups
    f.plan = evaluate_plan(f.layers, choice);
    f.plan.optimal = optimal;
  } catch (const nlohmann::json::exception& e) {
    fail("plan file: {}", e.what());
  }
  return f;
}

}  // namespace lowbit
