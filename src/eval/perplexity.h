#pragma once
// Perplexity and KL divergence of a model on a token stream, with two protocols:
//  - llamacpp: llama.cpp's llama-perplexity. The stream starts with BOS; chunk i is tokens
//    [i*ctx, (i+1)*ctx) with its first token replaced by BOS; logits at positions ctx/2 .. ctx-2
//    score the tokens that follow them (ctx/2 - 1 per chunk).
//  - windows: GPTQ-style non-overlapping windows of ctx tokens over the stream (which starts with
//    BOS); every token after the first of each window is scored (ctx - 1 per window).
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "model/llama_model.h"

namespace lowbit {

enum class PplProtocol { LlamaCpp = 0, Windows = 1 };
PplProtocol parse_protocol(const std::string& s);
std::string protocol_name(PplProtocol p);

struct EvalOptions {
  PplProtocol protocol = PplProtocol::LlamaCpp;
  int ctx = 512;
  int max_chunks = 0;  // 0: all
  int batch = 0;       // chunks per forward pass; 0: chosen from a memory budget
  std::string save_logits, kld_base;
  bool progress = true;
};

struct KldStats {
  double mean = 0, mean_err = 0, median = 0, p99 = 0, p999 = 0, max = 0, min = 0;
  double same_top = 0;  // fraction of positions whose argmax agrees with the base
  double rms_dp = 0;    // RMS of the change in probability of the true next token
  nlohmann::json to_json() const;
};

struct EvalResult {
  PplProtocol protocol;
  int ctx = 0;
  int64_t chunks = 0, chunks_available = 0, tokens_scored = 0, stream_tokens = 0;
  double nll = 0;  // mean negative log-likelihood per scored token (nats)
  double ppl = 0, ppl_err = 0;
  double seconds = 0, tokens_per_second = 0;  // tokens run through the model per second
  std::optional<KldStats> kld;
  nlohmann::json to_json() const;
};

// `text_tokens` is the tokenized text without BOS; `bos` is prepended as each protocol says.
EvalResult evaluate(const LlamaModel& model, const std::vector<int32_t>& text_tokens, int32_t bos,
                    const EvalOptions& opt);

}  // namespace lowbit
