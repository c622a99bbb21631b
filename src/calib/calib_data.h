#pragma once
// Calibration samples: random windows of a tokenized text, drawn with a fixed seed, as the GPTQ
// reference draws them from WikiText-2's training split (no BOS; windows may overlap).
#include <torch/types.h>

#include <cstdint>
#include <string>

#include "tokenizer/tokenizer.h"

namespace lowbit {

struct CalibOptions {
  std::string file;  // UTF-8 text; ../shared/assets/data/wikitext2/tok_valid.txt is disjoint from the test text
  int nsamples = 128;
  int seqlen = 2048;
  uint64_t seed = 0;
};

// [nsamples, seqlen] int64 token ids. The same text, tokenizer and seed give the same windows on
// every machine (std::mt19937_64 with an explicitly specified draw). Throws if the text is too short.
torch::Tensor sample_calibration(const Tokenizer& tok, const CalibOptions& options);

}  // namespace lowbit
