#pragma once
// Mixed precision by integer programming: choose one candidate (format × bits) per linear layer so
// that the total damage (the sum of per-layer sensitivities) is minimal under a budget on the
// total storage bits. It is a multiple-choice knapsack, solved exactly as a 0-1 integer program
// by GLPK (glp_intopt with its MIP presolver):
//
//   minimise   Σ_d Σ_c damage[d][c] · x[d][c]
//   subject to Σ_c x[d][c] = 1               for every decision d (a layer, or a tied group)
//              Σ_d Σ_c bits[d][c] · x[d][c] ≤ max_bits
//              x[d][c] ∈ {0, 1}
//
// Tied groups: layers that inference engines fuse (q/k/v, gate/up) share one choice index. Their
// candidate lists must be identical (same formats in the same order); the group is one decision
// whose bits and damage are the sums over its layers.
//
// Exactness and numerics. Each decision first drops its dominated candidates (another candidate
// has no more bits and no more damage: no optimal plan is lost), and options that cannot fit even
// with every other decision at its cheapest. Bits are counted above each decision's cheapest
// option over the budget's slack above the cheapest plan, damages above its least-damage option,
// so coefficients are O(1) whatever the units (1e10-bit budgets, damages from 1e-8 to 1e3). GLPK's
// simplex ignores reduced costs below ~1e-7 absolute: with damages over the largest spread, layers
// whose damages are 1e-10 of the largest would be decided at random. So:
//   1. GLPK solves the LP relaxation: the budget's multiplier pi and, rounded down to the cheaper
//      option the LP uses in each decision, a feasible first plan (the incumbent);
//   2. Lagrangian fixing, exact for any pi >= 0: L = sum_d min_o (damage + pi bits) - pi slack
//      bounds every plan's damage from below, and no option whose reduced cost exceeds the gap
//      between the incumbent and L can be in a better plan, so those are left out;
//   3. glp_intopt (presolver on, mip_gap 0) solves the 0-1 program on the options left, with the
//      objective written with reduced costs and an explicit budget slack priced at pi, which
//      equals the damage up to a constant but has coefficients of the order of the gap, so GLPK's
//      tolerances apply at the scale of what is left to decide;
//   4. while that strictly improves the incumbent (in double arithmetic), steps 2-3 are repeated.
// GLPK accepts a row violated within its tolerance (~1e-7 of the slack): a plan over the budget
// in double arithmetic is excluded by a cut (sum of its x <= decisions - 1) and the program is
// solved again, so the returned plan always respects the budget exactly. (After 32 such plans the
// budget row is tightened past the excess instead, which may lose a plan within that tolerance
// below the budget.) Tested against brute force and an exact
// dynamic program, damages 1e-8..1e3 included, to 1e-9 relative.
//
// Ties. Within a decision, of candidates with equal bits and equal damage the one with the lower
// index wins, and of candidates with equal damage the one with fewer bits. Between plans of equal
// total damage the result is GLPK's, and a later round replaces the incumbent only if strictly
// better; all of it is deterministic for a given input. When the least-damage plan already fits
// the budget it is returned without calling GLPK.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace lowbit {

struct PlanCandidate {
  std::string format;  // e.g. "int4:g32"; also how tied layers' candidate lists are compared
  double bits = 0;     // total storage bits of the layer with this candidate (scales, outliers...)
  double damage = 0;   // estimated damage of quantizing this layer alone with it (finite)
};

struct PlanLayer {
  std::string name;     // e.g. "model.layers.3.self_attn.q_proj.weight"
  int64_t weights = 0;  // number of weights (for bits per weight)
  std::vector<PlanCandidate> candidates;
};

struct PlanBudget {
  double max_bits = 0;  // total bits over all the layers
};
// max_bits = bpw × (total weights of the layers).
PlanBudget budget_from_bpw(const std::vector<PlanLayer>& layers, double bpw);
// max_bits = 8 × bytes.
PlanBudget budget_from_bytes(double bytes);

struct Plan {
  std::vector<size_t> choice;  // per layer, an index into its candidates
  double total_bits = 0, total_damage = 0;  // sums over the layers, in layer order
  double bits_per_weight = 0;               // total_bits / total weights (0 with no weights)
  bool optimal = false;  // proven optimal by GLPK (or trivially); false only if GLPK's plans kept
                         // exceeding the budget and the best plan within it was kept instead
};

// The least-damage plan within the budget. Throws lowbit::Error on: no layers, a layer without
// candidates, non-finite or negative bits, non-finite damage, a bad group (index out of range, a
// layer in two groups, different candidate lists), a budget below the cheapest plan (the message
// names the minimum bits per weight), or a GLPK failure.
Plan solve_plan(const std::vector<PlanLayer>& layers, const PlanBudget& budget,
                const std::vector<std::vector<size_t>>& tied_groups = {});

// Totals of a given choice (no budget check); validates indices.
Plan evaluate_plan(const std::vector<PlanLayer>& layers, const std::vector<size_t>& choice);

// The groups inference engines fuse, by Hugging Face names: q_proj/k_proj/v_proj of each
// "<prefix>.layers.N.self_attn", gate_proj/up_proj of each "<prefix>.layers.N.mlp" (a ".weight"
// suffix is optional). Only groups of two or more layers present; indices ascending, groups in
// order of their first layer. Pass {} to solve_plan instead to switch tying off.
std::vector<std::vector<size_t>> fused_groups(const std::vector<PlanLayer>& layers);

// A plan as saved by `lowbit plan --out` and read by `lowbit quantize --plan`: every layer with
// its candidates and its choice, the budget and the tied groups (by layer name).
struct PlanFile {
  std::vector<PlanLayer> layers;
  PlanBudget budget;
  std::vector<std::vector<size_t>> tied_groups;
  Plan plan;
};
nlohmann::json plan_to_json(const PlanFile& file);
// Validates (choice in range and agreeing with the stored format name, unique layer names, tied
// layers sharing one choice) and recomputes the totals from the candidates; "optimal" is kept as
// stored. Throws lowbit::Error with a one-line message on a malformed file.
PlanFile plan_from_json(const nlohmann::json& j);

}  // namespace lowbit
