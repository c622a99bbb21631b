#include "model/llama_model.h"

#include <torch/torch.h>

#include <cmath>
#include <regex>

#include "quant/activation.h"
#include "util/error.h"

namespace lowbit {

torch::Tensor Linear::operator()(const torch::Tensor& x) const {
  torch::Tensor in = input_quant ? input_quant(x) : x;
  return bias.defined() ? torch::linear(in, weight, bias) : torch::linear(in, weight);
}

const std::vector<std::string>& DecoderLayer::linear_names() {
  static const std::vector<std::string> names = {
      "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
      "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
  return names;
}

Linear& DecoderLayer::linear(const std::string& n) {
  if (n == "self_attn.q_proj") return q_proj;
  if (n == "self_attn.k_proj") return k_proj;
  if (n == "self_attn.v_proj") return v_proj;
  if (n == "self_attn.o_proj") return o_proj;
  if (n == "mlp.gate_proj") return gate_proj;
  if (n == "mlp.up_proj") return up_proj;
  if (n == "mlp.down_proj") return down_proj;
  fail("unknown linear layer '{}'", n);
}

torch::Tensor rope_inverse_frequencies(const ModelConfig& c) {
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  torch::Tensor inv = 1.0 / torch::pow(c.rope_theta, torch::arange(0, c.head_dim, 2, opts) / c.head_dim);
  const RopeScaling& rs = c.rope_scaling;
  if (rs.type == "linear") {
    inv = inv / rs.factor;
  } else if (rs.type == "llama3") {
    // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, and the band between
    // them interpolated smoothly.
    double old_ctx = rs.original_max_position_embeddings;
    double low_wavelen = old_ctx / rs.low_freq_factor, high_wavelen = old_ctx / rs.high_freq_factor;
    torch::Tensor wavelen = 2 * M_PI / inv;
    torch::Tensor scaled = torch::where(wavelen > low_wavelen, inv / rs.factor, inv);
    torch::Tensor smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
    torch::Tensor smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled;
    torch::Tensor medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen);
    inv = torch::where(medium, smoothed, scaled);
  }
  return inv;
}

namespace {

torch::Tensor load(const WeightSource& src, const std::string& name, std::vector<int64_t> shape,
                   torch::Device device) {
  if (!src.has(name)) fail("{}: missing tensor '{}'", src.description(), name);
  torch::Tensor t = src.get(name);
  if (t.sizes() != torch::IntArrayRef(shape))
    fail("{}: tensor '{}' has shape {}, expected {}", src.description(), name, fmt::join(t.sizes(), "x"),
         fmt::join(shape, "x"));
  return t.to(device, torch::kFloat32).contiguous();
}

torch::Tensor load_optional(const WeightSource& src, const std::string& name, std::vector<int64_t> shape,
                            torch::Device device) {
  return src.has(name) ? load(src, name, std::move(shape), device) : torch::Tensor();
}

}  // namespace

LlamaModel::LlamaModel(const WeightSource& src, torch::Device device) : config_(src.config()), device_(device) {
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int64_t q_out = int64_t(c.num_heads) * c.head_dim, kv_out = int64_t(c.num_kv_heads) * c.head_dim;
  embed_tokens_ = load(src, "model.embed_tokens.weight", {V, H}, device);
  final_norm_ = load(src, "model.norm.weight", {H}, device);
  if (src.has("lm_head.weight"))
    lm_head_.weight = load(src, "lm_head.weight", {V, H}, device);
  else if (c.tie_word_embeddings)
    lm_head_.weight = embed_tokens_;
  else
    fail("{}: missing tensor 'lm_head.weight' and tie_word_embeddings is false", src.description());

  layers_.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    std::string p = fmt::format("model.layers.{}.", i);
    DecoderLayer& L = layers_[i];
    L.attn_norm = load(src, p + "input_layernorm.weight", {H}, device);
    L.mlp_norm = load(src, p + "post_attention_layernorm.weight", {H}, device);
    L.q_proj.weight = load(src, p + "self_attn.q_proj.weight", {q_out, H}, device);
    L.k_proj.weight = load(src, p + "self_attn.k_proj.weight", {kv_out, H}, device);
    L.v_proj.weight = load(src, p + "self_attn.v_proj.weight", {kv_out, H}, device);
    L.o_proj.weight = load(src, p + "self_attn.o_proj.weight", {H, q_out}, device);
    L.gate_proj.weight = load(src, p + "mlp.gate_proj.weight", {I, H}, device);
    L.up_proj.weight = load(src, p + "mlp.up_proj.weight", {I, H}, device);
    L.down_proj.weight = load(src, p + "mlp.down_proj.weight", {H, I}, device);
    if (c.attention_bias) {
      L.q_proj.bias = load(src, p + "self_attn.q_proj.bias", {q_out}, device);
      L.k_proj.bias = load(src, p + "self_attn.k_proj.bias", {kv_out}, device);
      L.v_proj.bias = load(src, p + "self_attn.v_proj.bias", {kv_out}, device);
    }
    if (c.attention_out_bias) L.o_proj.bias = load_optional(src, p + "self_attn.o_proj.bias", {H}, device);
    if (c.mlp_bias) {
      L.gate_proj.bias = load(src, p + "mlp.gate_proj.bias", {I}, device);
      L.up_proj.bias = load(src, p + "mlp.up_proj.bias", {I}, device);
      L.down_proj.bias = load(src, p + "mlp.down_proj.bias", {H}, device);
    }
  }
  inv_freq_ = rope_inverse_frequencies(c).to(device);

  // Weight+activation checkpoints: install each linear's static activation fake-quantizer.
  nlohmann::json q = src.quantization_config();
  if (q.is_object() && q.contains("activations")) {
    for (const auto& [name, entry] : q["activations"].items()) {
      static const std::regex re(R"(model\.layers\.(\d+)\.(.+)\.weight)");
      std::smatch m;
      if (!std::regex_match(name, m, re) || std::stoi(m[1]) >= c.num_layers)
        fail("{}: activation quantization for unknown layer '{}'", src.description(), name);
      layers_[std::stoi(m[1])].linear(m[2]).input_quant = ActivationQuant::from_json(entry).fake_quantizer();
    }
  }
}

torch::Tensor LlamaModel::rms_norm(const torch::Tensor& x, const torch::Tensor& w) const {
  torch::Tensor var = x.pow(2).mean(-1, /*keepdim=*/true);
  return x * torch::rsqrt(var + config_.rms_norm_eps) * w;
}

std::pair<torch::Tensor, torch::Tensor> LlamaModel::rope_cos_sin(int64_t pos0, int64_t T) const {
  // Angles in float64 so that long positions keep their precision; cos/sin are then float32.
  torch::Tensor pos = torch::arange(pos0, pos0 + T, inv_freq_.options());
  torch::Tensor ang = torch::outer(pos, inv_freq_);  // [T, D/2]
  ang = torch::cat({ang, ang}, -1);                    // HF rotate_half layout: [T, D]
  return {ang.cos().to(torch::kFloat32), ang.sin().to(torch::kFloat32)};
}

namespace {
// HF rotate_half: (x1, x2) -> (-x2, x1) on the two halves of the head dimension.
torch::Tensor rotate_half(const torch::Tensor& x) {
  auto halves = x.chunk(2, -1);
  return torch::cat({-halves[1], halves[0]}, -1);
}
}  // namespace

torch::Tensor LlamaModel::embed(const torch::Tensor& tokens) const {
  if (tokens.dim() != 2) fail("forward: tokens must be [batch, time], got {} dims", tokens.dim());
  if (tokens.numel() > 0) {
    int64_t lo = tokens.min().item<int64_t>(), hi = tokens.max().item<int64_t>();
    if (lo < 0 || hi >= config_.vocab_size)
      fail("forward: token id {} out of range for vocab {}", lo < 0 ? lo : hi, config_.vocab_size);
  }
  return torch::embedding(embed_tokens_, tokens.to(device_, torch::kLong));
}

torch::Tensor LlamaModel::attn_norm(int li, const torch::Tensor& x) const {
  return rms_norm(x, layers_.at(li).attn_norm);
}

torch::Tensor LlamaModel::attention(int li, const torch::Tensor& h, int64_t pos0, KVCache* cache) const {
  const ModelConfig& c = config_;
  const DecoderLayer& L = layers_.at(li);
  const int64_t B = h.size(0), T = h.size(1), D = c.head_dim, H = c.num_heads, KV = c.num_kv_heads;
  const int64_t rep = H / KV;
  torch::Tensor q = L.q_proj(h).view({B, T, H, D}).transpose(1, 2);
  torch::Tensor k = L.k_proj(h).view({B, T, KV, D}).transpose(1, 2);
  torch::Tensor v = L.v_proj(h).view({B, T, KV, D}).transpose(1, 2);
  auto [cos, sin] = rope_cos_sin(pos0, T);
  q = q * cos + rotate_half(q) * sin;
  k = k * cos + rotate_half(k) * sin;

  if (cache) {
    if (pos0 + T > cache->capacity) fail("KV cache full: {} + {} tokens > capacity {}", pos0, T, cache->capacity);
    cache->k[li].narrow(2, pos0, T).copy_(k);
    cache->v[li].narrow(2, pos0, T).copy_(v);
    k = cache->k[li].narrow(2, 0, pos0 + T);
    v = cache->v[li].narrow(2, 0, pos0 + T);
  }
  const int64_t S = k.size(2);
  // Grouped-query attention without copying K/V: query heads rep*kv .. rep*kv+rep-1 share kv head
  // `kv`, so [B,H,T,D] is viewed as [B,KV,rep*T,D] and multiplied by each kv head once.
  torch::Tensor qg = q.contiguous().view({B, KV, rep * T, D});
  torch::Tensor scores = torch::matmul(qg, k.transpose(-1, -2)).mul_(1.0 / std::sqrt(double(D)));
  // Causal (and sliding-window) mask: query at absolute position pos0+i sees keys j <= pos0+i.
  auto iopts = torch::TensorOptions().dtype(torch::kLong).device(device_);
  torch::Tensor qi = torch::arange(pos0, pos0 + T, iopts).unsqueeze(1);
  torch::Tensor kj = torch::arange(0, S, iopts).unsqueeze(0);
  torch::Tensor masked = kj > qi;
  if (c.sliding_window > 0) masked = masked | (kj <= qi - c.sliding_window);
  scores = scores.view({B, KV, rep, T, S}).masked_fill_(masked, -std::numeric_limits<float>::infinity());
  torch::Tensor attn = torch::softmax(scores, -1).view({B, KV, rep * T, S});
  return torch::matmul(attn, v).view({B, H, T, D}).transpose(1, 2).reshape({B, T, H * D});
}

torch::Tensor LlamaModel::attention_residual(int li, const torch::Tensor& x, const torch::Tensor& ctx) const {
  return x + layers_.at(li).o_proj(ctx);
}

torch::Tensor LlamaModel::mlp_norm(int li, const torch::Tensor& r) const { return rms_norm(r, layers_.at(li).mlp_norm); }

torch::Tensor LlamaModel::mlp_hidden(int li, const torch::Tensor& h2) const {
  const DecoderLayer& L = layers_.at(li);
  torch::Tensor gate = L.gate_proj(h2);
  torch::Tensor up = L.up_proj(h2);
  return torch::silu(gate) * up;
}

torch::Tensor LlamaModel::mlp_residual(int li, const torch::Tensor& r, const torch::Tensor& m) const {
  return r + layers_.at(li).down_proj(m);
}

torch::Tensor LlamaModel::layer_forward(int li, const torch::Tensor& x, int64_t pos0, KVCache* cache) const {
  torch::Tensor r = attention_residual(li, x, attention(li, attn_norm(li, x), pos0, cache));
  return mlp_residual(li, r, mlp_hidden(li, mlp_norm(li, r)));
}

torch::Tensor LlamaModel::head(const torch::Tensor& x) const {
  return lm_head_(rms_norm(x, final_norm_));
}

KVCache LlamaModel::make_cache(int64_t batch, int64_t capacity) const {
  KVCache cache;
  cache.capacity = capacity;
  auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(device_);
  for (int i = 0; i < config_.num_layers; ++i) {
    cache.k.push_back(torch::zeros({batch, config_.num_kv_heads, capacity, config_.head_dim}, opts));
    cache.v.push_back(torch::zeros({batch, config_.num_kv_heads, capacity, config_.head_dim}, opts));
  }
  return cache;
}

torch::Tensor LlamaModel::forward(const torch::Tensor& tokens, KVCache* cache) const {
  torch::NoGradGuard no_grad;
  const int64_t pos0 = cache ? cache->length : 0;
  torch::Tensor x = embed(tokens);
  for (int i = 0; i < config_.num_layers; ++i) x = layer_forward(i, x, pos0, cache);
  if (cache) cache->length += tokens.size(1);
  return head(x);
}

}  // namespace lowbit
