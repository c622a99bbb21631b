// lowbit eval: perplexity and KL divergence against saved base logits.
#include <torch/torch.h>

#include <cstdio>

#include "commands.h"
#include "common.h"
#include "eval/perplexity.h"
#include "util/text_file.h"

namespace lowbit::cli {

void add_eval(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "Perplexity and KL divergence on a text file");
  struct Opts {
    std::string model, tokenizer, text, protocol = "llamacpp", json;
    bool force = false;
    EvalOptions eval;
    RuntimeOptions rt;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "model directory or .gguf file")->required();
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json (default: beside the model)");
  cmd->add_option("--text", o->text, "UTF-8 text file")->required();
  cmd->add_option("--protocol", o->protocol, "llamacpp (llama-perplexity) or windows (GPTQ-style)")
      ->check(CLI::IsMember({"llamacpp", "windows"}));
  cmd->add_option("--ctx", o->eval.ctx, "tokens per chunk")->check(CLI::Range(4, 1 << 20));
  cmd->add_option("--chunks", o->eval.max_chunks, "evaluate only the first N chunks (0: all)");
  cmd->add_option("--batch", o->eval.batch, "chunks per forward pass (0: automatic)");
  cmd->add_option("--save-logits", o->eval.save_logits, "write this model's log-probs for later --kld-base");
  cmd->add_option("--kld-base", o->eval.kld_base, "compare against log-probs saved with --save-logits");
  cmd->add_option("--json", o->json, "write the results as JSON (- for standard output)");
  cmd->add_flag("--force", o->force, "replace outputs an earlier lowbit run wrote (never anything else)");
  cmd->add_flag("--no-progress", [o](int64_t) { o->eval.progress = false; }, "no progress line");
  o->rt.add_to(cmd);
  cmd->callback([o] {
    o->rt.apply();
    o->eval.protocol = parse_protocol(o->protocol);
    const std::vector<std::string> inputs = {o->model, o->tokenizer, o->text, o->eval.kld_base};
    if (!o->json.empty()) check_output_path(o->json, OutputKind::Json, o->force, inputs);
    if (!o->eval.save_logits.empty()) check_output_path(o->eval.save_logits, OutputKind::Logits, o->force, inputs);
    LoadedModel m = load_model(o->model, o->tokenizer, o->rt.torch_device(), o->rt.run_memory());
    std::string text = read_text_file(o->text);
    std::vector<int32_t> tokens = m.tokenizer->encode(text, /*add_bos=*/false);
    EvalResult r = evaluate(*m.model, tokens, m.tokenizer->bos_id(), o->eval);
    std::printf("model: %s\ntext: %s (%lld tokens)\nprotocol: %s, ctx %d, %lld of %lld chunks, %lld tokens scored\n",
                o->model.c_str(), o->text.c_str(), (long long)tokens.size(), protocol_name(r.protocol).c_str(), r.ctx,
                (long long)r.chunks, (long long)r.chunks_available, (long long)r.tokens_scored);
    std::printf("Final estimate: PPL = %.4f +/- %.5f\n", r.ppl, r.ppl_err);
    if (r.kld) {
      const KldStats& k = *r.kld;
      std::printf("Mean KLD: %10.6f ± %.6f\nMedian KLD: %10.6f\n99.0%%   KLD: %10.6f\n99.9%%   KLD: %10.6f\n"
                  "Maximum KLD: %10.6f\nSame top p: %6.3f %%\nRMS Δp: %6.3f %%\n",
                  k.mean, k.mean_err, k.median, k.p99, k.p999, k.max, 100 * k.same_top, 100 * k.rms_dp);
    }
    std::printf("time: %.1f s (%.0f tokens/s)\n", r.seconds, r.tokens_per_second);
    if (!o->json.empty()) {
      nlohmann::json j = r.to_json();
      j["model"] = o->model;
      j["text"] = o->text;
      write_json(o->json, j);
    }
  });
}

}  // namespace lowbit::cli
