#pragma once
// The Llama-family decoder (llama, mistral, qwen2) on LibTorch: RMSNorm, RoPE (default, linear,
// llama3 scaling), grouped-query attention with optional q/k/v biases, SwiGLU MLP, tied or untied
// output head. Device-agnostic: weights and activations live on `device`; fp32 on CPU.
#include <torch/types.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/packed_linear.h"
#include "model/weight_source.h"

namespace lowbit {

// A linear layer y = x Wᵀ + b. `weight` is [out, in]. An optional activation fake-quantizer is
// applied to the input first (used for weight+activation quantization). A layer run as stored
// holds `packed` (the quantized weight and its outliers, model/packed_linear.h) and no `weight`.
struct Linear {
  torch::Tensor weight, bias;
  std::shared_ptr<const PackedWeight> packed;
  std::function<torch::Tensor(const torch::Tensor&)> input_quant;
  torch::Tensor operator()(const torch::Tensor& x) const;
};

struct DecoderLayer {
  torch::Tensor attn_norm, mlp_norm;  // RMSNorm weights [hidden]
  Linear q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj;
  // The seven linears by their HF short names ("self_attn.q_proj", ..., "mlp.down_proj").
  static const std::vector<std::string>& linear_names();
  Linear& linear(const std::string& short_name);
  const Linear& linear(const std::string& short_name) const;
};

// Per-layer key/value cache for incremental decoding. Keys are stored after RoPE.
struct KVCache {
  std::vector<torch::Tensor> k, v;  // per layer: [B, kv_heads, capacity, head_dim]
  int64_t length = 0;               // tokens already cached
  int64_t capacity = 0;
};

// How much of the decoder stays in memory. Blocks are materialized (fp32, on the device) when a
// computation reaches them and dropped again, oldest first, once the blocks held exceed the
// budget; the one being worked on is always held. Token embedding and output head stay in the
// checkpoint's memory map in their stored dtype: embedding rows are converted as tokens need them,
// and the head is applied in tiles of vocabulary rows.
struct ModelMemory {
  static constexpr int64_t kAll = -1;
  int64_t block_budget_bytes = kAll;  // kAll: every block is loaded once and kept
  // Quantized weights stay packed and run through the packed kernels (model/packed_linear.h),
  // rather than being dequantized to fp32 when their block loads; F16/BF16 weights stay in their
  // 16 bits the same way. For running a model (eval, generate); drivers that change weights
  // leave it off.
  bool packed_weights = false;
};

class LlamaModel {
 public:
  // Validates every tensor's presence and shape (no data is read); loads blocks per `memory`.
  LlamaModel(std::shared_ptr<const WeightSource> source, torch::Device device = torch::kCPU, ModelMemory memory = {});

  const ModelConfig& config() const { return config_; }
  torch::Device device() const { return device_; }

  // tokens: [B, T] int64. Returns logits [B, T, vocab] float32 ([B, 1, vocab] for the last
  // position only: generation, which needs no other). With a cache, the tokens continue the
  // cached sequence and the cache grows by T.
  torch::Tensor forward(const torch::Tensor& tokens, KVCache* cache = nullptr, bool last_position_only = false) const;

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

  // Block `l`, materialized. The non-const form also pins it: a block a caller may change is never
  // dropped and re-read behind its back; release_layer() ends that.
  const DecoderLayer& layer(int l) const { return resident(l); }
  DecoderLayer& layer(int l);
  // Ends the pin of layer(l) for a caller that has put back everything it changed: the block may
  // be dropped again and re-read from the checkpoint (a no-op for a block not pinned).
  void unpin_layer(int l);
  bool is_pinned(int l) const;
  // Frees block `l` now if it is held and not pinned (a pass that will not use it again soon); it
  // is re-read from the checkpoint when used again.
  void drop_layer(int l) const;
  // Drops block `l` for good (a driver that has finished with it); using it again is an error.
  void release_layer(int l);
  // Every block, materialized and pinned (tests and small models).
  std::vector<DecoderLayer>& layers();
  // Token embedding [vocab, hidden] and output head, materialized in fp32 for a caller that
  // changes them (quantizers); with tied embeddings lm_head().weight is the embedding, and a
  // quantizer must set both.
  Linear& lm_head();
  // The embedding and head when they run packed (ModelMemory::packed_weights), else null.
  const PackedWeight* packed_embedding() const { return packed_embed_.get(); }
  const PackedWeight* packed_head() const { return lm_head_.packed.get(); }
  torch::Tensor& embed_weight();
  const WeightSource& source() const { return *src_; }

 private:
  enum class BlockState { Absent, Held, Pinned, Released };
  std::shared_ptr<const WeightSource> src_;
  ModelConfig config_;
  torch::Device device_;
  ModelMemory memory_;
  torch::Tensor embed_tokens_, final_norm_;  // embed_tokens_ only once materialized
  std::shared_ptr<const PackedWeight> packed_embed_;  // a quantized embedding run as stored
  Linear lm_head_;                          // weight only once materialized (or untied and not stored)
  mutable std::unique_ptr<StoredTensorView> stored_head_;  // else the head's bytes in the memory map
  mutable std::vector<DecoderLayer> layers_;
  mutable std::vector<BlockState> state_;
  mutable std::vector<int> held_order_;  // Held blocks, least recently used first
  // Per block: the static activation fake-quantizers a W8A8 checkpoint gives its linears.
  std::vector<std::map<std::string, std::function<torch::Tensor(const torch::Tensor&)>>> input_quant_;
  torch::Tensor inv_freq_;  // [head_dim/2] float64 on device, after rope scaling

  const DecoderLayer& resident(int l) const;
  void load_block(int l) const;
  // The stored quantized weight `name` as a PackedWeight, or null (not quantized, or not packed).
  std::shared_ptr<const PackedWeight> packed(const std::string& name) const;
  int64_t block_bytes() const;
  mutable int64_t loaded_block_bytes_ = 0;  // the largest block loaded so far
  torch::Tensor embed_rows(const torch::Tensor& tokens) const;

  torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w) const;
  std::pair<torch::Tensor, torch::Tensor> rope_cos_sin(int64_t pos0, int64_t T) const;
};

// Rotary inverse frequencies for a config, with its rope_scaling applied (float64, CPU).
torch::Tensor rope_inverse_frequencies(const ModelConfig& c);

}  // namespace lowbit
