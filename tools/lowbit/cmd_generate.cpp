// lowbit generate: text from a prompt with the KV cache, greedy or sampled, streamed as produced.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <iterator>

#include "commands.h"
#include "common.h"
#include "model/generate.h"
#include "util/text_file.h"

namespace lowbit::cli {

void add_generate(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "Text generation from a prompt (greedy with --temp 0)");
  struct Opts {
    std::string model, tokenizer, prompt, prompt_file;
    int max_tokens = 256;
    int64_t prompt_tokens = 0;
    SamplingOptions sampling;
    bool stats = true, ignore_eos = false;
    RuntimeOptions rt;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "model directory or .gguf file")->required();
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json (default: beside the model)");
  auto* prompt = cmd->add_option("--prompt", o->prompt, "prompt text");
  auto* file = cmd->add_option("--prompt-file", o->prompt_file, "prompt from a file; - reads standard input");
  prompt->excludes(file);
  cmd->add_option("--prompt-tokens", o->prompt_tokens, "cut or repeat the prompt to exactly N tokens (benchmarks)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-tokens", o->max_tokens, "most tokens to generate")->check(CLI::PositiveNumber);
  SamplingOptions& s = o->sampling;
  cmd->add_option("--temp", s.temperature, "temperature; 0: greedy (default 0.8)");
  cmd->add_option("--top-k", s.top_k, "keep the k most likely tokens; 0: all (default 40)");
  cmd->add_option("--top-p", s.top_p, "keep the most likely tokens up to this probability; 1: all (default 0.95)");
  cmd->add_option("--min-p", s.min_p, "drop tokens below this fraction of the top one's probability (default 0.05)");
  cmd->add_option("--repeat-penalty", s.repeat_penalty, "penalty on recent tokens; 1: none (default 1)");
  cmd->add_option("--repeat-last-n", s.repeat_last_n, "tokens the penalty looks back on (default 64)");
  cmd->add_option("--seed", s.seed, "random seed: the same seed, model and prompt give the same text (default 0)");
  cmd->add_flag("--ignore-eos", o->ignore_eos, "go on past the end-of-text token (benchmarks)");
  cmd->add_flag("!--no-stats", o->stats, "no prefill and decode speeds on standard error at the end");
  o->rt.add_to(cmd);
  cmd->callback([o] {
    if (o->prompt_file.empty() && o->prompt.empty()) fail("give --prompt TEXT or --prompt-file FILE (- for standard input)");
    check_sampling_options(o->sampling);
    std::string text = o->prompt;
    if (o->prompt_file == "-")
      text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    else if (!o->prompt_file.empty())
      text = read_text_file(o->prompt_file);
    o->rt.apply();
    const auto t0 = std::chrono::steady_clock::now();
    LoadedModel m = load_model(o->model, o->tokenizer, o->rt.torch_device(), o->rt.run_memory());
    // Blocks load before the clock starts for prefill (those the memory budget holds).
    const LlamaModel& model = *m.model;
    for (int l = 0; l < model.config().num_layers; ++l) model.layer(l);
    const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int64_t n_prompt = o->prompt_tokens > 0 ? o->prompt_tokens : int64_t(m.tokenizer->encode(text, true).size());
    const int64_t trained = m.model->config().max_position_embeddings;
    if (trained > 0 && n_prompt + o->max_tokens > trained)
      std::fprintf(stderr, "warning: %lld prompt tokens + %d new ones run past the %lld tokens this model was trained on\n",
                   (long long)n_prompt, o->max_tokens, (long long)trained);
    GenerateOptions g;
    g.max_new_tokens = o->max_tokens;
    g.sampling = o->sampling;
    g.ignore_eos = o->ignore_eos;
    g.prompt_tokens = o->prompt_tokens;
    // Pieces are decoded from the prompt on, so the prompt is printed with the first piece.
    g.on_text = [](const std::string& piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    };
    GenerateResult r = generate(*m.model, *m.tokenizer, text, g);
    std::fputc('\n', stdout);
    if (o->stats)
      std::fprintf(stderr, "load: %.2f s; prefill: %lld tokens in %.3f s (%.1f tokens/s); decode: %lld tokens in %.3f s (%.1f tokens/s)\n",
                   load_seconds, (long long)r.prompt_tokens, r.prefill_seconds, r.prefill_tokens_per_second(),
                   (long long)std::max<int64_t>(0, r.new_tokens - 1), r.decode_seconds, r.decode_tokens_per_second());
  });
}

}  // namespace lowbit::cli
