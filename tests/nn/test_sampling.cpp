// The sampler (model/sampling.h) against distributions computed by hand: logits 0, ln 2, ln 4
// are the probabilities 1/7, 2/7, 4/7, so every filter's result is a small fraction.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "model/sampling.h"
#include "util/error.h"

using namespace lowbit;

namespace {

const std::vector<float> kLogits = {0.0f, float(std::log(2.0)), float(std::log(4.0))};

SamplingOptions plain() {  // temperature 1, no filter, no penalty
  SamplingOptions o;
  o.temperature = 1;
  o.top_k = 0;
  o.top_p = 1;
  o.min_p = 0;
  o.repeat_penalty = 1;
  return o;
}

void expect_distribution(const SamplingOptions& o, const std::vector<float>& logits, const std::vector<int32_t>& history,
                         const std::vector<double>& want) {
  std::vector<double> got = Sampler(o).distribution(logits.data(), int64_t(logits.size()), history);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-6) << "token " << i;
}

}  // namespace

TEST(Sampling, SoftmaxWithoutFilters) { expect_distribution(plain(), kLogits, {}, {1 / 7.0, 2 / 7.0, 4 / 7.0}); }

TEST(Sampling, TopKKeepsTheMostLikely) {
  SamplingOptions o = plain();
  o.top_k = 2;
  expect_distribution(o, kLogits, {}, {0, 1 / 3.0, 2 / 3.0});
  o.top_k = 1;
  expect_distribution(o, kLogits, {}, {0, 0, 1});
  o.top_k = 5;  // more than the vocabulary: all
  expect_distribution(o, kLogits, {}, {1 / 7.0, 2 / 7.0, 4 / 7.0});
}

TEST(Sampling, TopPKeepsTheShortestPrefixReachingP) {
  SamplingOptions o = plain();
  o.top_p = 0.6;  // 4/7 = 0.571 < 0.6 <= 6/7
  expect_distribution(o, kLogits, {}, {0, 1 / 3.0, 2 / 3.0});
  o.top_p = 0.5;  // 4/7 already reaches it
  expect_distribution(o, kLogits, {}, {0, 0, 1});
  o.top_p = 0.9;  // 6/7 = 0.857 < 0.9: all three
  expect_distribution(o, kLogits, {}, {1 / 7.0, 2 / 7.0, 4 / 7.0});
}

TEST(Sampling, MinPDropsTokensFarBelowTheBest) {
  SamplingOptions o = plain();
  o.min_p = 0.3;  // floor 0.3 * 4/7 = 0.171: 1/7 goes, 2/7 stays
  expect_distribution(o, kLogits, {}, {0, 1 / 3.0, 2 / 3.0});
  o.min_p = 0.2;  // floor 0.114: all stay
  expect_distribution(o, kLogits, {}, {1 / 7.0, 2 / 7.0, 4 / 7.0});
  o.min_p = 0.6;  // floor 0.343: only the best
  expect_distribution(o, kLogits, {}, {0, 0, 1});
}

TEST(Sampling, TemperatureSharpensAfterTheFilters) {
  SamplingOptions o = plain();
  o.temperature = 0.5;  // logits doubled: 1, 4, 16
  expect_distribution(o, kLogits, {}, {1 / 21.0, 4 / 21.0, 16 / 21.0});
  // top-p is decided on the distribution before the temperature: 0.6 keeps two tokens even
  // though 16/21 alone would reach it.
  o.top_p = 0.6;
  expect_distribution(o, kLogits, {}, {0, 4 / 20.0, 16 / 20.0});
}

TEST(Sampling, GreedyIsTheArgmaxWithTheLowestIdOnTies) {
  SamplingOptions o = plain();
  o.temperature = 0;
  Sampler s(o);
  EXPECT_EQ(s.sample(kLogits.data(), 3, {}), 2);
  const std::vector<float> tie = {1.0f, 3.0f, 3.0f, 2.0f};
  EXPECT_EQ(s.sample(tie.data(), 4, {}), 1);
  expect_distribution(o, tie, {}, {0, 1, 0, 0});
}

TEST(Sampling, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  SamplingOptions o = plain();
  o.temperature = 0;
  o.repeat_penalty = 1.1;
  const std::vector<float> pos = {2.0f, 1.9f};  // 2 / 1.1 = 1.818 < 1.9
  EXPECT_EQ(Sampler(o).sample(pos.data(), 2, {0}), 1);
  EXPECT_EQ(Sampler(o).sample(pos.data(), 2, {}), 0);
  const std::vector<float> neg = {-1.0f, -1.05f};  // -1 * 1.1 = -1.1 < -1.05
  EXPECT_EQ(Sampler(o).sample(neg.data(), 2, {0, 0, 0}), 1);  // counted once however often seen
  // Only the last repeat_last_n ids count: token 0 is outside the window of 2.
  o.repeat_last_n = 2;
  EXPECT_EQ(Sampler(o).sample(pos.data(), 2, {0, 1, 1}), 0);
  // With temperature 1 the penalized logits 2/1.1 and 1.9 give the distribution.
  o.temperature = 1;
  o.repeat_last_n = 64;
  const double a = std::exp(2.0 / 1.1), b = std::exp(1.9);
  expect_distribution(o, pos, {0}, {a / (a + b), b / (a + b)});
}

TEST(Sampling, DrawsFollowTheDistributionAndTheSeed) {
  SamplingOptions o = plain();
  o.seed = 7;
  Sampler s(o);
  const int n = 21000;
  std::vector<int> count(3, 0);
  std::vector<int32_t> first;
  for (int i = 0; i < n; ++i) {
    int32_t t = s.sample(kLogits.data(), 3, {});
    ++count[t];
    if (i < 50) first.push_back(t);
  }
  const double p[] = {1 / 7.0, 2 / 7.0, 4 / 7.0};
  for (int t = 0; t < 3; ++t) {
    const double sd = std::sqrt(n * p[t] * (1 - p[t]));
    EXPECT_NEAR(count[t], n * p[t], 5 * sd) << "token " << t;
  }
  // The same seed draws the same tokens; another seed does not.
  Sampler again(o);
  o.seed = 8;
  Sampler other(o);
  std::vector<int32_t> same, different;
  for (int i = 0; i < 50; ++i) {
    same.push_back(again.sample(kLogits.data(), 3, {}));
    different.push_back(other.sample(kLogits.data(), 3, {}));
  }
  EXPECT_EQ(same, first);
  EXPECT_NE(different, first);
}

TEST(Sampling, BadOptionsAreRefused) {
  for (auto set : std::vector<void (*)(SamplingOptions&)>{
           [](SamplingOptions& o) { o.temperature = -0.1; }, [](SamplingOptions& o) { o.top_k = -1; },
           [](SamplingOptions& o) { o.top_p = 0; }, [](SamplingOptions& o) { o.top_p = 1.5; },
           [](SamplingOptions& o) { o.min_p = 1; }, [](SamplingOptions& o) { o.repeat_penalty = 0; },
           [](SamplingOptions& o) { o.repeat_last_n = -1; }}) {
    SamplingOptions o;
    set(o);
    EXPECT_THROW(Sampler{o}, Error);
  }
  EXPECT_THROW(Sampler(plain()).sample(nullptr, 0, {}), Error);
}
