// lowbit generate: greedy decoding with the KV cache.
#include <torch/torch.h>

#include <cstdio>

#include "commands.h"
#include "common.h"
#include "model/generate.h"

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
    LoadedModel m = load_model(o->model, o->tokenizer, o->rt.torch_device(), o->rt.run_memory());
    // Pieces are decoded from the prompt on, so the prompt is printed with the first piece.
    generate_greedy(*m.model, *m.tokenizer, o->prompt, o->max_tokens, [](const std::string& piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    });
    std::fputc('\n', stdout);
  });
}

}  // namespace lowbit::cli
