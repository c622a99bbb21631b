#pragma once
// Choosing the next token from a row of logits, as llama.cpp's default sampler chain does:
// repetition penalty, then top-k, top-p and min-p on the temperature-free distribution, then the
// temperature, then one draw from a seeded generator. Temperature 0 is greedy (argmax; the
// lowest id wins a tie), whatever the other options say.
#include <cstdint>
#include <random>
#include <vector>

namespace lowbit {

struct SamplingOptions {
  double temperature = 0.8;    // 0: greedy
  int top_k = 40;              // keep the k most likely tokens; 0: all
  double top_p = 0.95;         // keep the smallest set whose probability reaches p; 1: all
  double min_p = 0.05;         // drop tokens below min_p times the most likely one's probability; 0: none
  double repeat_penalty = 1.0; // CTRL's penalty on tokens seen in the last repeat_last_n; 1: none
  int repeat_last_n = 64;
  uint64_t seed = 0;           // the same seed, model and prompt give the same text
};

// Throws lowbit::Error naming the first option out of range.
void check_sampling_options(const SamplingOptions& o);

class Sampler {
 public:
  explicit Sampler(const SamplingOptions& options);

  // The next token from logits[0 .. n) (float32), given the ids so far (for the penalty).
  int32_t sample(const float* logits, int64_t n, const std::vector<int32_t>& history);

  // The probabilities the draw is made from, after every filter (0 for the tokens cut), in
  // id order; for tests and for inspecting a sampler.
  std::vector<double> distribution(const float* logits, int64_t n, const std::vector<int32_t>& history) const;

 private:
  SamplingOptions options_;
  std::mt19937_64 rng_;
};

}  // namespace lowbit
