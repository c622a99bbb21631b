#include "model/synthetic_checkpoint.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>
#include <vector>

#include "format/token.h"
#include "io/safetensors.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace lowbit {

namespace fs = std::filesystem;

SyntheticShape SyntheticShape::named(const std::string& spec) {
  // "llama-2-13b:2": the shape with its first 2 blocks only (per-block costs, memory against depth).
  const size_t colon = spec.find(':');
  const std::string n = spec.substr(0, colon);
  SyntheticShape s;
  // Published configs of the models these shapes stand for.
  if (n == "llama-3.2-1b") s = {n, 2048, 8192, 16, 32, 8, 128256, 131072, true};
  else if (n == "llama-2-7b") s = {n, 4096, 11008, 32, 32, 32, 32000, 4096, false};
  else if (n == "llama-2-13b") s = {n, 5120, 13824, 40, 40, 40, 32000, 4096, false};
  else fail("unknown synthetic shape '{}' (llama-3.2-1b, llama-2-7b, llama-2-13b, optionally :BLOCKS)", spec);
  if (colon != std::string::npos) {
    const std::string blocks = spec.substr(colon + 1);
    const std::optional<int64_t> b = parse_count(blocks);
    if (!b || *b > s.layers) fail("synthetic shape '{}': blocks must be 1..{}, not '{}'", spec, s.layers, blocks);
    s.layers = *b;
    s.name = spec;
  }
  return s;
}

namespace {

std::vector<std::pair<std::string, std::vector<int64_t>>> tensors_of(const SyntheticShape& s) {
  const int64_t H = s.hidden, I = s.intermediate, D = H / s.heads, KV = s.kv_heads * D;
  std::vector<std::pair<std::string, std::vector<int64_t>>> t = {{"model.embed_tokens.weight", {s.vocab, H}}};
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (auto& [n, shape] : std::vector<std::pair<std::string, std::vector<int64_t>>>{
             {"input_layernorm.weight", {H}}, {"self_attn.q_proj.weight", {H, H}}, {"self_attn.k_proj.weight", {KV, H}},
             {"self_attn.v_proj.weight", {KV, H}}, {"self_attn.o_proj.weight", {H, H}},
             {"post_attention_layernorm.weight", {H}}, {"mlp.gate_proj.weight", {I, H}},
             {"mlp.up_proj.weight", {I, H}}, {"mlp.down_proj.weight", {H, I}}})
      t.push_back({p + n, shape});
  }
  t.push_back({"model.norm.weight", {H}});
  if (!s.tied) t.push_back({"lm_head.weight", {s.vocab, H}});
  return t;
}

// xorshift64*: fast, and the same stream on every machine.
struct Rng {
  uint64_t x;
  float uniform() {  // [-1, 1)
    x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
    return float(int64_t((x * 2685821657736338717ull) >> 40) - (int64_t(1) << 23)) / float(1 << 23);
  }
};

}  // namespace

uint64_t write_synthetic_checkpoint(const std::string& dir, const SyntheticShape& s, const std::string& tokenizer_dir,
                                    const SyntheticOptions& o) {
  if (fs::exists(dir)) fail("{} exists; the synthetic checkpoint needs a new directory", dir);
  fs::create_directories(dir);
  auto tensors = tensors_of(s);
  // Shards in order, each up to max_shard_bytes (a tensor never splits).
  std::vector<std::vector<size_t>> shards(1);
  uint64_t in_shard = 0, total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    int64_t n = 1;
    for (int64_t d : tensors[i].second) n *= d;
    const uint64_t bytes = uint64_t(n) * dtype_size(o.dtype);
    if (in_shard > 0 && in_shard + bytes > o.max_shard_bytes) shards.emplace_back(), in_shard = 0;
    shards.back().push_back(i);
    in_shard += bytes, total += bytes;
  }
  nlohmann::json weight_map;
  Rng rng{o.seed * 0x9E3779B97F4A7C15ull + 1};
  std::vector<float> f;
  std::vector<uint8_t> buf;
  for (size_t k = 0; k < shards.size(); ++k) {
    const std::string file = fmt::format("model-{:05d}-of-{:05d}.safetensors", k + 1, shards.size());
    SafetensorsWriter w((fs::path(dir) / file).string(), {{"format", "pt"}});
    for (size_t i : shards[k]) w.declare(tensors[i].first, o.dtype, tensors[i].second);
    for (size_t i : shards[k]) {
      const auto& [name, shape] = tensors[i];
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      f.resize(size_t(n));
      const bool norm = shape.size() == 1;
      for (float& v : f) v = norm ? 1.0f + 0.1f * rng.uniform() : o.scale * rng.uniform();
      buf.resize(size_t(n) * dtype_size(o.dtype));
      from_float(o.dtype, f.data(), buf.data(), size_t(n));
      w.write(name, buf.data(), buf.size());
      weight_map[name] = file;
    }
    w.finish();
  }
  auto write_text = [&](const std::string& name, const std::string& text) {
    AtomicFile a((fs::path(dir) / name).string());
    a.write(text);
    a.commit();
  };
  write_text("model.safetensors.index.json",
             nlohmann::json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}.dump(2));
  nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"},
                        {"hidden_size", s.hidden}, {"intermediate_size", s.intermediate},
                        {"num_hidden_layers", s.layers}, {"num_attention_heads", s.heads},
                        {"num_key_value_heads", s.kv_heads}, {"vocab_size", s.vocab},
                        {"max_position_embeddings", s.context}, {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0},
                        {"hidden_act", "silu"}, {"tie_word_embeddings", s.tied}, {"bos_token_id", 1},
                        {"eos_token_id", 2}, {"torch_dtype", o.dtype == DType::BF16 ? "bfloat16" : "float32"}};
  write_text("config.json", cfg.dump(2));
  // The tokenizer, padded with unused tokens to the vocabulary, as real checkpoints pad theirs.
  std::ifstream in(fs::path(tokenizer_dir) / "tokenizer.json");
  nlohmann::json tok = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!tok.is_object() || !tok.contains("model") || !tok["model"].contains("vocab") || !tok["model"]["vocab"].is_object())
    fail("{}/tokenizer.json: expected a BPE tokenizer with a model.vocab object", tokenizer_dir);
  nlohmann::json& vocab = tok["model"]["vocab"];
  for (int64_t id = int64_t(vocab.size()); id < s.vocab; ++id) vocab[fmt::format("<synthetic_{}>", id)] = id;
  write_text("tokenizer.json", tok.dump());
  return total;
}

}  // namespace lowbit
