// lowbit generate: greedy decoding with the KV cache.
#include <torch/torch.h>

#include <cstdio>

#include "commands.h"
#include "common.h"

namespace lowbit::cli {

void add_generate(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "Greedy text generation from a prompt");
  struct Opts {
    std::string model, tokenizer, prompt;
    int max_tokens = 256;
    RuntimeOptions rt;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "model directory or .gguf file")->required();
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json (default: beside the model)");
  cmd->add_option("--prompt", o->prompt, "prompt text")->required();
  cmd->add_option("--max-tokens", o->max_tokens, "most tokens to generate")->check(CLI::PositiveNumber);
  o->rt.add_to(cmd);
  cmd->callback([o] {
    o->rt.apply();
    LoadedModel m = load_model(o->model, o->tokenizer, o->rt.torch_device());
    const LlamaModel& model = *m.model;
    std::vector<int32_t> ids = m.tokenizer->encode(o->prompt, /*add_bos=*/true);
    const size_t prompt_len = ids.size();
    KVCache cache = model.make_cache(1, int64_t(prompt_len) + o->max_tokens);
    torch::Tensor input = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end())).view({1, -1});
    std::string printed;  // decoded text so far, so only the new suffix is printed (UTF-8 safe)
    for (int step = 0; step < o->max_tokens; ++step) {
      torch::Tensor logits = model.forward(input, &cache);
      int32_t next = int32_t(logits[0][-1].argmax().item<int64_t>());
      // Stop at end of text, or at BOS, which marks the start of a new document.
      if (next == m.tokenizer->eos_id() || next == m.tokenizer->bos_id()) break;
      ids.push_back(next);
      std::string text = m.tokenizer->decode(std::vector<int32_t>(ids.begin() + 1, ids.end()));
      if (text.size() > printed.size() && text.compare(0, printed.size(), printed) == 0) {
        std::fwrite(text.data() + printed.size(), 1, text.size() - printed.size(), stdout);
        std::fflush(stdout);
        printed = text;
      }
      input = torch::tensor({int64_t(next)}).view({1, 1});
    }
    std::fputc('\n', stdout);
  });
}

}  // namespace lowbit::cli
