#pragma once
// Text generation with the KV cache: the prompt is run once (prefill), then one token per step
// (decode), each chosen by the sampler (model/sampling.h; greedy at temperature 0).
#include <functional>
#include <string>
#include <vector>

#include "model/llama_model.h"
#include "model/sampling.h"
#include "tokenizer/tokenizer.h"

namespace lowbit {

struct GenerateOptions {
  int max_new_tokens = 256;
  bool ignore_eos = false;  // generate max_new_tokens whatever comes (benchmarks)
  // > 0: the prompt's tokens (BOS included) cut or repeated to exactly this many (benchmarks).
  int64_t prompt_tokens = 0;
  SamplingOptions sampling;
  // Receives each newly completed piece of decoded text (never a partial UTF-8 character).
  std::function<void(const std::string&)> on_text;
};

struct GenerateResult {
  std::vector<int32_t> ids;          // the prompt ids (with BOS), then the generated ones
  int64_t prompt_tokens = 0, new_tokens = 0;
  double prefill_seconds = 0;        // the prompt's forward pass, up to its first token's logits
  double decode_seconds = 0;         // every later step
  double prefill_tokens_per_second() const { return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0; }
  // Decode steps are the generated tokens after the first (which comes from the prefill).
  double decode_tokens_per_second() const {
    return decode_seconds > 0 ? double(new_tokens - 1) / decode_seconds : 0;
  }
};

// Generates up to max_new_tokens after the prompt; stops early at EOS, or at BOS, which starts a
// new document.
GenerateResult generate(const LlamaModel& model, const Tokenizer& tok, const std::string& prompt,
                        const GenerateOptions& options);

// Greedy decoding: the ids of generate() at temperature 0.
std::vector<int32_t> generate_greedy(const LlamaModel& model, const Tokenizer& tok, const std::string& prompt,
                                     int max_new_tokens,
                                     const std::function<void(const std::string&)>& on_text = {});

}  // namespace lowbit
