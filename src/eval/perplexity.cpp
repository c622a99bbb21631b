#include "eval/perplexity.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "eval/logits_file.h"
#include "util/error.h"
#include "util/progress.h"

namespace lowbit {

PplProtocol parse_protocol(const std::string& s) {
  if (s == "llamacpp") return PplProtocol::LlamaCpp;
  if (s == "windows") return PplProtocol::Windows;
  fail("unknown perplexity protocol '{}' (valid: llamacpp, windows)", s);
}

std::string protocol_name(PplProtocol p) { return p == PplProtocol::LlamaCpp ? "llamacpp" : "windows"; }

nlohmann::json KldStats::to_json() const {
  return {{"mean", mean}, {"mean_err", mean_err}, {"median", median}, {"p99", p99},   {"p99_9", p999},
          {"max", max},   {"min", min},           {"same_top", same_top}, {"rms_dp", rms_dp}};
}

nlohmann::json EvalResult::to_json() const {
  nlohmann::json j = {{"protocol", protocol_name(protocol)},
                      {"ctx", ctx},
                      {"chunks", chunks},
                      {"chunks_available", chunks_available},
                      {"tokens_scored", tokens_scored},
                      {"stream_tokens", stream_tokens},
                      {"nll", nll},
                      {"perplexity", ppl},
                      {"perplexity_err", ppl_err},
                      {"seconds", seconds},
                      {"tokens_per_second", tokens_per_second}};
  if (kld) j["kld"] = kld->to_json();
  return j;
}

namespace {

struct Plan {
  int64_t chunks_available, chunks, first, rows;  // rows: scored positions per chunk
};

Plan make_plan(PplProtocol proto, int64_t stream_len, int ctx, int max_chunks) {
  if (ctx < 4) fail("--ctx must be at least 4, got {}", ctx);
  Plan p;
  p.chunks_available = stream_len / ctx;
  if (p.chunks_available == 0)
    fail("the text has {} tokens, fewer than one chunk of --ctx {}", stream_len, ctx);
  p.chunks = max_chunks > 0 ? std::min<int64_t>(max_chunks, p.chunks_available) : p.chunks_available;
  p.first = proto == PplProtocol::LlamaCpp ? ctx / 2 : 0;
  p.rows = ctx - 1 - p.first;
  return p;
}

double percentile(const std::vector<float>& sorted, double q) {
  if (sorted.empty()) return 0;
  double pos = q * double(sorted.size() - 1);
  size_t i = size_t(pos);
  double f = pos - double(i);
  return i + 1 < sorted.size() ? sorted[i] * (1 - f) + sorted[i + 1] * f : sorted[i];
}

}  // namespace

EvalResult evaluate(const LlamaModel& model, const std::vector<int32_t>& text_tokens, int32_t bos,
                    const EvalOptions& opt) {
  torch::NoGradGuard no_grad;
  const ModelConfig& cfg = model.config();
  std::vector<int32_t> stream;
  stream.reserve(text_tokens.size() + 1);
  stream.push_back(bos);
  stream.insert(stream.end(), text_tokens.begin(), text_tokens.end());
  const Plan plan = make_plan(opt.protocol, int64_t(stream.size()), opt.ctx, opt.max_chunks);
  const int64_t ctx = opt.ctx, V = cfg.vocab_size;

  // Chunks per forward pass: keep attention scores and logits of one batch within ~1 GiB.
  int64_t per_chunk_bytes = 4 * ctx * (int64_t(cfg.num_heads) * ctx + 4 * cfg.hidden_size +
                                       2 * cfg.intermediate_size + V);
  int64_t batch = opt.batch > 0 ? opt.batch : std::clamp<int64_t>((int64_t(1) << 30) / per_chunk_bytes, 1, 16);

  std::unique_ptr<LogitsWriter> saver;
  std::unique_ptr<LogitsReader> base;
  LogitsHeader header{uint32_t(V), uint32_t(ctx), uint32_t(opt.protocol), uint32_t(plan.rows), uint32_t(plan.chunks),
                      stream};
  if (!opt.save_logits.empty()) saver = std::make_unique<LogitsWriter>(opt.save_logits, header);
  if (!opt.kld_base.empty()) {
    base = std::make_unique<LogitsReader>(opt.kld_base);
    const LogitsHeader& b = base->header();
    if (b.vocab != header.vocab) fail("{}: base vocab {} differs from the model's {}", opt.kld_base, b.vocab, V);
    if (b.ctx != header.ctx || b.protocol != header.protocol)
      fail("{}: saved with ctx {} and protocol {}, but this run uses ctx {} and protocol {}", opt.kld_base, b.ctx,
           protocol_name(PplProtocol(b.protocol)), ctx, protocol_name(opt.protocol));
    if (b.tokens != header.tokens) fail("{}: saved from a different text or tokenizer", opt.kld_base);
    if (b.chunks < header.chunks)
      fail("{}: holds {} chunks, this run needs {}", opt.kld_base, b.chunks, header.chunks);
  }

  EvalResult r;
  r.protocol = opt.protocol;
  r.ctx = opt.ctx;
  r.chunks = plan.chunks;
  r.chunks_available = plan.chunks_available;
  r.stream_tokens = int64_t(stream.size());

  double nll_sum = 0, nll2_sum = 0;
  std::vector<float> kld_values;
  double kld_sum = 0, kld2_sum = 0, dp2_sum = 0;
  int64_t same_top = 0;
  std::vector<float> base_rows;

  Progress progress("eval", size_t(plan.chunks), opt.progress);
  for (int64_t c0 = 0; c0 < plan.chunks; c0 += batch) {
    const int64_t nb = std::min(batch, plan.chunks - c0);
    torch::Tensor input = torch::from_blob(stream.data() + c0 * ctx, {nb, ctx}, torch::kInt).to(torch::kLong).clone();
    if (opt.protocol == PplProtocol::LlamaCpp) input.select(1, 0).fill_(bos);
    torch::Tensor targets = input.narrow(1, plan.first + 1, plan.rows).to(model.device());

    torch::Tensor x = model.embed(input);
    for (int l = 0; l < cfg.num_layers; ++l) x = model.layer_forward(l, x);
    // Only the scored positions go through the output head.
    torch::Tensor logp = torch::log_softmax(model.head(x.narrow(1, plan.first, plan.rows)), -1);  // [nb,rows,V]
    torch::Tensor tok_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).to(torch::kDouble).cpu();
    nll_sum -= tok_logp.sum().item<double>();
    nll2_sum += tok_logp.pow(2).sum().item<double>();

    if (saver || base) {
      torch::Tensor lp = logp.reshape({nb * plan.rows, V}).cpu().contiguous();
      if (saver)
        for (int64_t i = 0; i < lp.size(0); ++i) saver->add_row(lp[i].data_ptr<float>());
      if (base) {
        base_rows.resize(size_t(lp.size(0) * V));
        for (int64_t i = 0; i < lp.size(0); ++i)
          base->read_row(uint64_t(c0 * plan.rows + i), base_rows.data() + i * V);
        torch::Tensor lb = torch::from_blob(base_rows.data(), {lp.size(0), V}, torch::kFloat).to(torch::kDouble);
        torch::Tensor lq = lp.to(torch::kDouble);
        torch::Tensor pb = lb.exp();
        torch::Tensor kld = (pb * (lb - lq)).sum(-1);  // [rows]
        torch::Tensor tgt = targets.reshape({-1, 1}).cpu();
        torch::Tensor dp = lq.gather(-1, tgt).exp() - lb.gather(-1, tgt).exp();
        same_top += (lb.argmax(-1) == lq.argmax(-1)).sum().item<int64_t>();
        dp2_sum += dp.pow(2).sum().item<double>();
        kld_sum += kld.sum().item<double>();
        kld2_sum += kld.pow(2).sum().item<double>();
        auto acc = kld.to(torch::kFloat).contiguous();
        kld_values.insert(kld_values.end(), acc.data_ptr<float>(), acc.data_ptr<float>() + acc.numel());
      }
    }
    r.tokens_scored += nb * plan.rows;
    progress.update(size_t(c0 + nb), fmt::format("ppl {:.4f}", std::exp(nll_sum / double(r.tokens_scored))));
  }
  r.seconds = progress.seconds();
  r.nll = nll_sum / double(r.tokens_scored);
  r.ppl = std::exp(r.nll);
  // Standard error as llama.cpp computes it: from the variance of per-token NLL.
  double n = double(r.tokens_scored);
  double var = nll2_sum / n - r.nll * r.nll;
  r.ppl_err = n > 1 ? r.ppl * std::sqrt(std::max(var, 0.0) / (n - 1)) : 0;
  r.tokens_per_second = double(plan.chunks * ctx) / std::max(r.seconds, 1e-9);
  progress.finish(fmt::format("ppl {:.4f}", r.ppl));

  if (saver) saver->commit();
  if (base) {
    KldStats k;
    k.mean = kld_sum / n;
    k.mean_err = n > 1 ? std::sqrt(std::max(kld2_sum / n - k.mean * k.mean, 0.0) / (n - 1)) : 0;
    std::sort(kld_values.begin(), kld_values.end());
    k.median = percentile(kld_values, 0.5);
    k.p99 = percentile(kld_values, 0.99);
    k.p999 = percentile(kld_values, 0.999);
    k.max = kld_values.back();
    k.min = kld_values.front();
    k.same_top = double(same_top) / n;
    k.rms_dp = std::sqrt(dp2_sum / n);
    r.kld = k;
  }
  return r;
}

}  // namespace lowbit
