#pragma once
// The Llama-family decoder (llama, mistral, qwen2) on LibTorch: RMSNorm, RoPE (default, linear,
// llama3 scaling), grouped-query attention with optional q/k/v biases, SwiGLU MLP, tied or untied
// output head. Device-agnostic: weights and activations live on `device`; fp32 on CPU.
#include <torch/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/weight_source.h"

namespace lowbit {

// A linear layer y = x Wᵀ + b. `weight` is [out, in]. An optional activation fake-quantizer is
// applied to the input first (used for weight+activation quantization).
struct Linear {
  torch::Tensor weight, bias;
  std::function<torch::Tensor(const torch::Tensor&)> input_quant;
  torch::Tensor operator()(const torch::Tensor& x) const;
};

struct DecoderLayer {
  torch::Tensor attn_norm, mlp_norm;  // RMSNorm weights [hidden]
  Linear q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj;
  // The seven linears by their HF short names ("self_attn.q_proj", ..., "mlp.down_proj").
  static const std::vector<std::string>& linear_names();
  Linear& linear(const std::string& short_name);
};

// Per-layer key/value cache for incremental decoding. Keys are stored after RoPE.
struct KVCache {
  std::vector<torch::Tensor> k, v;  // per layer: [B, kv_heads, capacity, head_dim]
  int64_t length = 0;               // tokens already cached
  int64_t capacity = 0;
};

class LlamaModel {
 public:
  // Loads every weight from `source` onto `device`.
  LlamaModel(const WeightSource& source, torch::Device device = torch::kCPU);

  const ModelConfig& config() const { return config_; }
  torch::Device device() const { return device_; }

  // tokens: [B, T] int64. Returns logits [B, T, vocab] float32. With a cache, the tokens continue
  // the cached sequence and the cache grows by T.
  torch::Tensor forward(const torch::Tensor& tokens, KVCache* cache = nullptr) const;

  KVCache make_cache(int64_t batch, int64_t capacity) const;

  // Pieces of forward(), for block-by-block calibration.
  torch::Tensor embed(const torch::Tensor& tokens) const;                        // [B,T,hidden]
  torch::Tensor layer_forward(int layer, const torch::Tensor& x, int64_t pos0 = 0,
                              KVCache* cache = nullptr) const;                    // [B,T,hidden]
  torch::Tensor head(const torch::Tensor& x) const;                             // final norm + lm_head

  // The stages of layer_forward, for drivers that need each linear's input (calibration):
  //   h   = attn_norm(x)                 input of q/k/v
  //   ctx = attention(h)                 input of o_proj  [B,T,heads*head_dim]
  //   r   = x + o_proj(ctx)              (attention_residual)
  //   h2  = mlp_norm(r)                  input of gate/up
  //   m   = silu(gate(h2)) * up(h2)      input of down_proj (mlp_hidden)
  //   y   = r + down_proj(m)             (mlp_residual)
  torch::Tensor attn_norm(int layer, const torch::Tensor& x) const;
  torch::Tensor attention(int layer, const torch::Tensor& h, int64_t pos0 = 0, KVCache* cache = nullptr) const;
  torch::Tensor attention_residual(int layer, const torch::Tensor& x, const torch::Tensor& ctx) const;
  torch::Tensor mlp_norm(int layer, const torch::Tensor& r) const;
  torch::Tensor mlp_hidden(int layer, const torch::Tensor& h2) const;
  torch::Tensor mlp_residual(int layer, const torch::Tensor& r, const torch::Tensor& m) const;

  std::vector<DecoderLayer>& layers() { return layers_; }
  const std::vector<DecoderLayer>& layers() const { return layers_; }
  Linear& lm_head() { return lm_head_; }
  // The token embedding [vocab, hidden]; with tied embeddings it is also lm_head().weight, and a
  // quantizer must set both.
  torch::Tensor& embed_weight() { return embed_tokens_; }

 private:
  ModelConfig config_;
  torch::Device device_;
  torch::Tensor embed_tokens_, final_norm_;
  Linear lm_head_;
  std::vector<DecoderLayer> layers_;
  torch::Tensor inv_freq_;  // [head_dim/2] float64 on device, after rope scaling

  torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w) const;
  std::pair<torch::Tensor, torch::Tensor> rope_cos_sin(int64_t pos0, int64_t T) const;
};

// Rotary inverse frequencies for a config, with its rope_scaling applied (float64, CPU).
torch::Tensor rope_inverse_frequencies(const ModelConfig& c);

}  // namespace lowbit
