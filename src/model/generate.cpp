#include "model/generate.h"

#include <torch/torch.h>

#include <chrono>

#include "util/error.h"

namespace lowbit {

GenerateResult generate(const LlamaModel& model, const Tokenizer& tok, const std::string& prompt,
                        const GenerateOptions& options) {
  using clock = std::chrono::steady_clock;
  GenerateResult r;
  r.ids = tok.encode(prompt, /*add_bos=*/true);
  if (options.prompt_tokens > 0) {
    if (r.ids.size() < 2) fail("generate: the prompt has no tokens to repeat up to {}", options.prompt_tokens);
    for (size_t i = 1; int64_t(r.ids.size()) < options.prompt_tokens; ++i) r.ids.push_back(r.ids[i]);
    r.ids.resize(size_t(options.prompt_tokens));
  }
  r.prompt_tokens = int64_t(r.ids.size());
  Sampler sampler(options.sampling);
  KVCache cache = model.make_cache(1, r.prompt_tokens + options.max_new_tokens);
  torch::Tensor input = torch::tensor(std::vector<int64_t>(r.ids.begin(), r.ids.end())).view({1, -1});
  std::string shown;  // text already handed to on_text
  for (int step = 0; step < options.max_new_tokens; ++step) {
    const auto t0 = clock::now();
    torch::Tensor logits = model.forward(input, &cache, /*last_position_only=*/true)[0][-1].contiguous();
    (step == 0 ? r.prefill_seconds : r.decode_seconds) += std::chrono::duration<double>(clock::now() - t0).count();
    int32_t next = sampler.sample(logits.data_ptr<float>(), logits.numel(), r.ids);
    if (!options.ignore_eos && (next == tok.eos_id() || next == tok.bos_id())) break;
    r.ids.push_back(next);
    ++r.new_tokens;
    if (options.on_text) {
      // Decode everything after BOS and hand over only the new suffix, once it is whole text.
      std::string text = tok.decode(std::vector<int32_t>(r.ids.begin() + 1, r.ids.end()));
      if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0 &&
          text.find("\xEF\xBF\xBD", shown.size()) == std::string::npos) {
        options.on_text(text.substr(shown.size()));
        shown = std::move(text);
      }
    }
    input = torch::tensor({int64_t(next)}).view({1, 1});
  }
  return r;
}

std::vector<int32_t> generate_greedy(const LlamaModel& model, const Tokenizer& tok, const std::string& prompt,
                                     int max_new_tokens, const std::function<void(const std::string&)>& on_text) {
  GenerateOptions o;
  o.max_new_tokens = max_new_tokens;
  o.sampling.temperature = 0;
  o.on_text = on_text;
  return generate(model, tok, prompt, o).ids;
}

}  // namespace lowbit
