#include "model/generate.h"

#include <torch/torch.h>

namespace lowbit {

std::vector<int32_t> generate_greedy(const LlamaModel& model, const Tokenizer& tok, const std::string& prompt,
                                     int max_new_tokens, const std::function<void(const std::string&)>& on_text) {
  std::vector<int32_t> ids = tok.encode(prompt, /*add_bos=*/true);
  KVCache cache = model.make_cache(1, int64_t(ids.size()) + max_new_tokens);
  torch::Tensor input = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end())).view({1, -1});
  std::string shown;  // text already handed to on_text
  for (int step = 0; step < max_new_tokens; ++step) {
    torch::Tensor logits = model.forward(input, &cache);
    int32_t next = int32_t(logits[0][-1].argmax().item<int64_t>());
    if (next == tok.eos_id() || next == tok.bos_id()) break;
    ids.push_back(next);
    if (on_text) {
      // Decode everything after BOS and hand over only the new suffix, once it is whole text.
      std::string text = tok.decode(std::vector<int32_t>(ids.begin() + 1, ids.end()));
      if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0 &&
          text.find("\xEF\xBF\xBD", shown.size()) == std::string::npos) {
        on_text(text.substr(shown.size()));
        shown = std::move(text);
      }
    }
    input = torch::tensor({int64_t(next)}).view({1, 1});
  }
  return ids;
}

}  // namespace lowbit
