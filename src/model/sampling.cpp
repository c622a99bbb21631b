#include "model/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_set>

#include "util/error.h"

namespace lowbit {

void check_sampling_options(const SamplingOptions& o) {
  if (!(o.temperature >= 0) || !std::isfinite(o.temperature)) fail("--temp {}: give a number >= 0", o.temperature);
  if (o.top_k < 0) fail("--top-k {}: give 0 (all) or more", o.top_k);
  if (!(o.top_p > 0 && o.top_p <= 1)) fail("--top-p {}: give a number in (0, 1]", o.top_p);
  if (!(o.min_p >= 0 && o.min_p < 1)) fail("--min-p {}: give a number in [0, 1)", o.min_p);
  if (!(o.repeat_penalty > 0) || !std::isfinite(o.repeat_penalty))
    fail("--repeat-penalty {}: give a number > 0 (1: none)", o.repeat_penalty);
  if (o.repeat_last_n < 0) fail("--repeat-last-n {}: give 0 or more", o.repeat_last_n);
}

Sampler::Sampler(const SamplingOptions& options) : options_(options), rng_(options.seed) {
  check_sampling_options(options_);
}

namespace {

// The logits in double with CTRL's repetition penalty applied to every id among the last
// `last_n` of the history: a positive logit is divided by the penalty, any other multiplied.
std::vector<double> penalized(const float* logits, int64_t n, const std::vector<int32_t>& history, double penalty,
                              int last_n) {
  std::vector<double> l(logits, logits + n);
  if (penalty == 1.0) return l;
  std::unordered_set<int32_t> seen;
  const size_t from = history.size() > size_t(last_n) ? history.size() - size_t(last_n) : 0;
  for (size_t i = from; i < history.size(); ++i)
    if (history[i] >= 0 && history[i] < n && seen.insert(history[i]).second)
      l[history[i]] = l[history[i]] > 0 ? l[history[i]] / penalty : l[history[i]] * penalty;
  return l;
}

int32_t argmax(const std::vector<double>& l) {
  return int32_t(std::max_element(l.begin(), l.end()) - l.begin());  // the first of equal maxima
}

}  // namespace

std::vector<double> Sampler::distribution(const float* logits, int64_t n, const std::vector<int32_t>& history) const {
  if (n < 1) fail("sampler: no logits");
  const SamplingOptions& o = options_;
  std::vector<double> l = penalized(logits, n, history, o.repeat_penalty, o.repeat_last_n);
  std::vector<double> p(static_cast<size_t>(n), 0.0);
  if (o.temperature == 0) {
    p[argmax(l)] = 1.0;
    return p;
  }
  // Candidates from the most likely down; equal logits keep id order.
  std::vector<int32_t> cand(static_cast<size_t>(n));
  std::iota(cand.begin(), cand.end(), 0);
  auto by_logit = [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); };
  size_t keep = o.top_k > 0 ? std::min<size_t>(size_t(o.top_k), cand.size()) : cand.size();
  std::partial_sort(cand.begin(), cand.begin() + keep, cand.end(), by_logit);
  cand.resize(keep);
  const double top = l[cand[0]];
  if (!std::isfinite(top)) fail("sampler: the most likely logit is {}", top);
  // top-p: the shortest prefix whose probability (softmax of what is left) reaches p.
  if (o.top_p < 1) {
    double z = 0;
    for (int32_t c : cand) z += std::exp(l[c] - top);
    double cum = 0;
    size_t k = 0;
    while (k < cand.size()) {
      cum += std::exp(l[cand[k]] - top) / z;
      ++k;
      if (cum >= o.top_p) break;
    }
    cand.resize(k);
  }
  // min-p: probability at least min_p times the most likely one's, i.e. l >= top + log(min_p).
  if (o.min_p > 0) {
    const double floor = top + std::log(o.min_p);
    size_t k = 1;
    while (k < cand.size() && l[cand[k]] >= floor) ++k;
    cand.resize(k);
  }
  double z = 0;
  for (int32_t c : cand) z += std::exp((l[c] - top) / o.temperature);
  for (int32_t c : cand) p[c] = std::exp((l[c] - top) / o.temperature) / z;
  return p;
}

int32_t Sampler::sample(const float* logits, int64_t n, const std::vector<int32_t>& history) {
  if (options_.temperature == 0) {
    if (n < 1) fail("sampler: no logits");
    return argmax(penalized(logits, n, history, options_.repeat_penalty, options_.repeat_last_n));
  }
  std::vector<double> p = distribution(logits, n, history);
  // 53 random bits: a uniform draw in [0, 1) that is the same on every platform.
  const double u = double(rng_() >> 11) * 0x1p-53;
  double cum = 0;
  int32_t last = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (p[i] == 0) continue;
    last = int32_t(i);
    cum += p[i];
    if (u < cum) return last;
  }
  return last;  // u within rounding of 1
}

}  // namespace lowbit
