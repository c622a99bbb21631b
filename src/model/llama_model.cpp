#include "model/llama_model.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <regex>

#include "io/dtype.h"
#include "kernels/kernels.h"
#include "util/mapped_file.h"
#include "quant/activation.h"
#include "util/error.h"

namespace lowbit {

torch::Tensor Linear::operator()(const torch::Tensor& x) const {
  torch::Tensor in = input_quant ? input_quant(x) : x;
  if (packed) {
    torch::Tensor y = packed_linear(in, *packed);
    return bias.defined() ? y + bias : y;
  }
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

const Linear& DecoderLayer::linear(const std::string& n) const { return const_cast<DecoderLayer&>(*this).linear(n); }

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

// Rows of the output head converted per tile: the same tiles whatever the memory budget, so that
// every budget computes bit-identical logits.
constexpr int64_t kHeadTileRows = 4096;

void expect_tensor(const WeightSource& src, const std::string& name, const std::vector<int64_t>& shape) {
  if (!src.has(name)) fail("{}: missing tensor '{}'", src.description(), name);
  std::vector<int64_t> got = src.shape(name);
  if (got != shape)
    fail("{}: tensor '{}' has shape {}, expected {}", src.description(), name, fmt::join(got, "x"),
         fmt::join(shape, "x"));
}

torch::Tensor load(const WeightSource& src, const std::string& name, const std::vector<int64_t>& shape,
                   torch::Device device) {
  expect_tensor(src, name, shape);
  return src.get(name).to(device, torch::kFloat32).contiguous();
}

// The tensors of block `l` by short name ("mlp.up_proj.weight") with their shapes; biases only
// where the config has them (and the optional o_proj bias only where the checkpoint does).
std::vector<std::pair<std::string, std::vector<int64_t>>> block_tensors(const WeightSource& src, int l) {
  const ModelConfig& c = src.config();
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  const int64_t q_out = int64_t(c.num_heads) * c.head_dim, kv_out = int64_t(c.num_kv_heads) * c.head_dim;
  std::vector<std::pair<std::string, std::vector<int64_t>>> t = {
      {"input_layernorm.weight", {H}},        {"post_attention_layernorm.weight", {H}},
      {"self_attn.q_proj.weight", {q_out, H}}, {"self_attn.k_proj.weight", {kv_out, H}},
      {"self_attn.v_proj.weight", {kv_out, H}}, {"self_attn.o_proj.weight", {H, q_out}},
      {"mlp.gate_proj.weight", {I, H}},        {"mlp.up_proj.weight", {I, H}},
      {"mlp.down_proj.weight", {H, I}}};
  if (c.attention_bias)
    for (auto [n, d] : {std::pair{"q", q_out}, {"k", kv_out}, {"v", kv_out}})
      t.push_back({std::string("self_attn.") + n + "_proj.bias", {d}});
  if (c.attention_out_bias && src.has(fmt::format("model.layers.{}.self_attn.o_proj.bias", l)))
    t.push_back({"self_attn.o_proj.bias", {H}});
  if (c.mlp_bias)
    for (auto [n, d] : {std::pair{"gate", I}, {"up", I}, {"down", H}}) t.push_back({std::string("mlp.") + n + "_proj.bias", {d}});
  return t;
}

// The field of a block that holds the tensor of that short name.
torch::Tensor& block_field(DecoderLayer& L, const std::string& name) {
  if (name == "input_layernorm.weight") return L.attn_norm;
  if (name == "post_attention_layernorm.weight") return L.mlp_norm;
  const size_t dot = name.rfind('.');
  Linear& lin = L.linear(name.substr(0, dot));
  return name.substr(dot + 1) == "bias" ? lin.bias : lin.weight;
}

}  // namespace

LlamaModel::LlamaModel(std::shared_ptr<const WeightSource> source, torch::Device device, ModelMemory memory)
    : src_(std::move(source)), config_(src_->config()), device_(device), memory_(memory) {
  const WeightSource& src = *src_;
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size, V = c.vocab_size;
  // Everything is checked up front, so that a broken checkpoint fails before any work.
  expect_tensor(src, "model.embed_tokens.weight", {V, H});
  if (src.has("lm_head.weight")) expect_tensor(src, "lm_head.weight", {V, H});
  else if (!c.tie_word_embeddings)
    fail("{}: missing tensor 'lm_head.weight' and tie_word_embeddings is false", src.description());
  for (int l = 0; l < c.num_layers; ++l)
    for (const auto& [name, shape] : block_tensors(src, l))
      expect_tensor(src, fmt::format("model.layers.{}.{}", l, name), shape);
  final_norm_ = load(src, "model.norm.weight", {H}, device);
  // A source that cannot hand out its stored bytes (GGUF, a quantized checkpoint's quantized
  // head) gives fp32 tensors instead, unless they run packed.
  packed_embed_ = packed("model.embed_tokens.weight");
  if (!packed_embed_ && !src.get_stored("model.embed_tokens.weight"))
    embed_tokens_ = load(src, "model.embed_tokens.weight", {V, H}, device);
  if (src.has("lm_head.weight")) {
    lm_head_.packed = packed("lm_head.weight");
    if (!lm_head_.packed && !src.get_stored("lm_head.weight")) lm_head_.weight = load(src, "lm_head.weight", {V, H}, device);
  } else if (packed_embed_) {
    lm_head_.packed = packed_embed_;
  } else if (embed_tokens_.defined()) {
    lm_head_.weight = embed_tokens_;
  }
  inv_freq_ = rope_inverse_frequencies(c).to(device);

  layers_.resize(c.num_layers);
  state_.assign(c.num_layers, BlockState::Absent);
  input_quant_.resize(c.num_layers);
  // Weight+activation checkpoints: each linear's static activation fake-quantizer.
  nlohmann::json q = src.quantization_config();
  if (q.is_object() && q.contains("activations")) {
    for (const auto& [name, entry] : q["activations"].items()) {
      static const std::regex re(R"(model\.layers\.(\d+)\.(.+)\.weight)");
      std::smatch m;
      if (!std::regex_match(name, m, re) || std::stoi(m[1]) >= c.num_layers)
        fail("{}: activation quantization for unknown layer '{}'", src.description(), name);
      DecoderLayer().linear(m[2]);  // an unknown linear name fails here
      input_quant_[std::stoi(m[1])][m[2]] = ActivationQuant::from_json(entry).fake_quantizer();
    }
  }
  if (memory_.block_budget_bytes == ModelMemory::kAll)
    for (int l = 0; l < c.num_layers; ++l) resident(l);
}

// Bytes a block takes in memory: its fp32 tensors, or (packed) the stored bytes of its linears.
// Before any block is loaded, the fp32 size from the shapes.
int64_t LlamaModel::block_bytes() const {
  if (loaded_block_bytes_ > 0) return loaded_block_bytes_;
  int64_t n = 0;
  for (const auto& [name, shape] : block_tensors(*src_, 0)) {
    int64_t e = 1;
    for (int64_t d : shape) e *= d;
    n += e * 4;
  }
  return n;
}

static int64_t resident_bytes(const DecoderLayer& L) {
  int64_t n = (L.attn_norm.numel() + L.mlp_norm.numel()) * 4;
  for (const std::string& name : DecoderLayer::linear_names()) {
    const Linear& lin = L.linear(name);
    n += (lin.weight.defined() ? lin.weight.numel() * 4 : 0) + (lin.bias.defined() ? lin.bias.numel() * 4 : 0) +
         (lin.packed ? lin.packed->resident_bytes() : 0);
  }
  return n;
}

std::shared_ptr<const PackedWeight> LlamaModel::packed(const std::string& name) const {
  if (!memory_.packed_weights) return nullptr;
  if (!device_.is_cpu()) fail("{}: quantized weights run packed on the CPU only (device {})", name, device_.str());
  std::optional<QuantizedTensor> q = src_->get_quantized(name);
  if (q) return PackedWeight::make(std::move(*q), src_->get_outliers(name), name);
  // F16/BF16 weights of the linears and the head run as they are stored too: an original bf16
  // model holds bf16, and decoding never converts a whole weight per token. (An embedding used
  // only for look-ups stays in the memory map.)
  if (name != "model.embed_tokens.weight" || !src_->has("lm_head.weight")) {
    std::optional<StoredTensorView> v = src_->get_stored(name);
    if (!v || v->shape.size() != 2 || (v->dtype != DType::BF16 && v->dtype != DType::F16)) return nullptr;
    const FormatSpec spec = FormatSpec::parse(v->dtype == DType::BF16 ? "gguf:bf16" : "gguf:f16");
    std::vector<uint8_t> bytes(v->data, v->data + v->nbytes);
    release_mapped_pages(v->data, v->nbytes);
    return PackedWeight::make(from_ggml_blocks(spec, v->shape[0], v->shape[1], std::move(bytes)), std::nullopt, name);
  }
  return nullptr;
}

void LlamaModel::load_block(int l) const {
  DecoderLayer& L = layers_[l];
  for (const auto& [name, shape] : block_tensors(*src_, l)) {
    const std::string full = fmt::format("model.layers.{}.{}", l, name);
    if (name.ends_with(".weight") && name.find("_proj.") != std::string::npos)
      if ((L.linear(name.substr(0, name.rfind('.'))).packed = packed(full))) continue;
    block_field(L, name) = src_->get(full).to(device_, torch::kFloat32).contiguous();
  }
  for (const auto& [n, fq] : input_quant_[l]) L.linear(n).input_quant = fq;
  loaded_block_bytes_ = std::max(loaded_block_bytes_, resident_bytes(L));  // blocks differ only by format
}

const DecoderLayer& LlamaModel::resident(int l) const {
  if (l < 0 || l >= config_.num_layers) fail("internal: block {} of {}", l, config_.num_layers);
  BlockState& st = state_[l];
  if (st == BlockState::Released) fail("internal: block {} was used after it was released", l);
  if (st == BlockState::Pinned) return layers_[l];
  auto it = std::find(held_order_.begin(), held_order_.end(), l);
  if (it != held_order_.end()) {  // most recently used last
    held_order_.erase(it);
    held_order_.push_back(l);
    return layers_[l];
  }
  // Make room: drop the least recently used held blocks beyond the budget.
  if (memory_.block_budget_bytes != ModelMemory::kAll) {
    const int64_t bytes = block_bytes();
    int64_t pinned = 0;
    for (BlockState s : state_) pinned += s == BlockState::Pinned;
    while (!held_order_.empty() &&
           int64_t(held_order_.size() + pinned) * bytes > memory_.block_budget_bytes) {
      int victim = held_order_.front();
      held_order_.erase(held_order_.begin());
      layers_[victim] = DecoderLayer();
      state_[victim] = BlockState::Absent;
    }
  }
  load_block(l);
  st = BlockState::Held;
  held_order_.push_back(l);
  return layers_[l];
}

DecoderLayer& LlamaModel::layer(int l) {
  resident(l);
  auto it = std::find(held_order_.begin(), held_order_.end(), l);
  if (it != held_order_.end()) held_order_.erase(it);
  state_[l] = BlockState::Pinned;
  return layers_[l];
}

void LlamaModel::unpin_layer(int l) {
  if (!is_pinned(l)) return;
  state_[l] = BlockState::Held;
  held_order_.push_back(l);  // most recently used
}

void LlamaModel::drop_layer(int l) const {
  if (l < 0 || l >= config_.num_layers) fail("internal: block {} of {}", l, config_.num_layers);
  if (state_[l] != BlockState::Held) return;
  held_order_.erase(std::find(held_order_.begin(), held_order_.end(), l));
  layers_[l] = DecoderLayer();
  state_[l] = BlockState::Absent;
}

bool LlamaModel::is_pinned(int l) const {
  if (l < 0 || l >= config_.num_layers) fail("internal: block {} of {}", l, config_.num_layers);
  return state_[l] == BlockState::Pinned;
}

void LlamaModel::release_layer(int l) {
  if (l < 0 || l >= config_.num_layers) fail("internal: block {} of {}", l, config_.num_layers);
  auto it = std::find(held_order_.begin(), held_order_.end(), l);
  if (it != held_order_.end()) held_order_.erase(it);
  layers_[l] = DecoderLayer();
  state_[l] = BlockState::Released;
}

std::vector<DecoderLayer>& LlamaModel::layers() {
  for (int l = 0; l < config_.num_layers; ++l) layer(l);
  return layers_;
}

torch::Tensor& LlamaModel::embed_weight() {
  if (!embed_tokens_.defined()) {
    embed_tokens_ = load(*src_, "model.embed_tokens.weight", {config_.vocab_size, config_.hidden_size}, device_);
    if (!src_->has("lm_head.weight")) lm_head_.weight = embed_tokens_;
  }
  return embed_tokens_;
}

Linear& LlamaModel::lm_head() {
  if (!lm_head_.weight.defined()) {
    if (src_->has("lm_head.weight"))
      lm_head_.weight = load(*src_, "lm_head.weight", {config_.vocab_size, config_.hidden_size}, device_);
    else
      embed_weight();
  }
  return lm_head_;
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
  if (embed_tokens_.defined()) return torch::embedding(embed_tokens_, tokens.to(device_, torch::kLong));
  if (packed_embed_) {  // the rows these tokens need, dequantized
    torch::Tensor ids = tokens.to(torch::kCPU, torch::kLong).contiguous();
    torch::Tensor out = torch::empty({ids.size(0), ids.size(1), config_.hidden_size}, torch::kFloat32);
    for (int64_t i = 0; i < ids.numel(); ++i)
      dequantize_row(packed_embed_->q, ids.data_ptr<int64_t>()[i], out.data_ptr<float>() + i * config_.hidden_size);
    return out.to(device_);
  }
  return embed_rows(tokens);
}

// Rows of the stored embedding, converted for these tokens only.
torch::Tensor LlamaModel::embed_rows(const torch::Tensor& tokens) const {
  const StoredTensorView view = *src_->get_stored("model.embed_tokens.weight");
  const int64_t H = config_.hidden_size;
  const size_t row_bytes = size_t(H) * dtype_size(view.dtype);
  torch::Tensor ids = tokens.to(torch::kCPU, torch::kLong).contiguous();
  torch::Tensor out = torch::empty({ids.size(0), ids.size(1), H}, torch::kFloat32);
  const int64_t* id = ids.data_ptr<int64_t>();
  float* dst = out.data_ptr<float>();
  for (int64_t i = 0; i < ids.numel(); ++i) to_float(view.dtype, view.data + size_t(id[i]) * row_bytes, dst + i * H, size_t(H));
  return out.to(device_);
}

torch::Tensor LlamaModel::attn_norm(int li, const torch::Tensor& x) const {
  return rms_norm(x, resident(li).attn_norm);
}

torch::Tensor LlamaModel::attention(int li, const torch::Tensor& h, int64_t pos0, KVCache* cache) const {
  const ModelConfig& c = config_;
  const DecoderLayer& L = resident(li);
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
  return x + resident(li).o_proj(ctx);
}

torch::Tensor LlamaModel::mlp_norm(int li, const torch::Tensor& r) const { return rms_norm(r, resident(li).mlp_norm); }

torch::Tensor LlamaModel::mlp_hidden(int li, const torch::Tensor& h2) const {
  const DecoderLayer& L = resident(li);
  torch::Tensor gate = L.gate_proj(h2);
  torch::Tensor up = L.up_proj(h2);
  return torch::silu(gate) * up;
}

torch::Tensor LlamaModel::mlp_residual(int li, const torch::Tensor& r, const torch::Tensor& m) const {
  return r + resident(li).down_proj(m);
}

torch::Tensor LlamaModel::layer_forward(int li, const torch::Tensor& x, int64_t pos0, KVCache* cache) const {
  torch::Tensor r = attention_residual(li, x, attention(li, attn_norm(li, x), pos0, cache));
  return mlp_residual(li, r, mlp_hidden(li, mlp_norm(li, r)));
}

namespace {

// f(r0, n, rows) for each tile of the stored head [V, H]: rows r0 .. r0+n-1 converted to fp32
// on `device` (the tiles are the same whatever the memory budget).
template <class F>
void for_each_head_tile(const StoredTensorView& w, torch::Device device, F&& f) {
  const int64_t V = w.shape[0], H = w.shape[1];
  const size_t row_bytes = size_t(H) * dtype_size(w.dtype);
  torch::Tensor tile = torch::empty({std::min(kHeadTileRows, V), H}, torch::kFloat32);
  for (int64_t r0 = 0; r0 < V; r0 += kHeadTileRows) {
    const int64_t n = std::min(kHeadTileRows, V - r0);
    to_float(w.dtype, w.data + size_t(r0) * row_bytes, tile.data_ptr<float>(), size_t(n * H));
    f(r0, n, tile.narrow(0, 0, n).to(device));
  }
}

// h [n, H] times the stored head transposed: logits [n, V].
torch::Tensor stored_head_logits(const StoredTensorView& w, const torch::Tensor& h) {
  torch::Tensor logits = torch::empty({h.size(0), w.shape[0]}, h.options());
  for_each_head_tile(w, h.device(), [&](int64_t r0, int64_t n, const torch::Tensor& rows) {
    logits.narrow(1, r0, n).copy_(torch::matmul(h, rows.t()));
  });
  return logits;
}

// g [n, V] times the stored head: the gradient of stored_head_logits with respect to h.
torch::Tensor stored_head_input_grad(const StoredTensorView& w, const torch::Tensor& g) {
  torch::Tensor grad = torch::zeros({g.size(0), w.shape[1]}, g.options());
  for_each_head_tile(w, g.device(), [&](int64_t r0, int64_t n, const torch::Tensor& rows) {
    grad.addmm_(g.narrow(1, r0, n), rows);
  });
  return grad;
}

// The stored head as an autograd node: its backward re-reads the tiles instead of keeping them
// (a graph through plain matmuls would hold the whole head in fp32, or alias one reused tile).
struct StoredHeadFunction : torch::autograd::Function<StoredHeadFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& h, const StoredTensorView* w) {
    ctx->saved_data["w"] = reinterpret_cast<int64_t>(w);
    return stored_head_logits(*w, h);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list g) {
    const auto* w = reinterpret_cast<const StoredTensorView*>(ctx->saved_data["w"].toInt());
    return {stored_head_input_grad(*w, g[0].contiguous()), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor LlamaModel::head(const torch::Tensor& x) const {
  torch::Tensor h = rms_norm(x, final_norm_);
  if (lm_head_.weight.defined() || lm_head_.packed) return lm_head_(h);
  // The stored head (or tied embedding), converted a tile of vocabulary rows at a time.
  const std::string name = src_->has("lm_head.weight") ? "lm_head.weight" : "model.embed_tokens.weight";
  if (!stored_head_) stored_head_ = std::make_unique<StoredTensorView>(*src_->get_stored(name));
  std::vector<int64_t> shape = h.sizes().vec();
  shape.back() = config_.vocab_size;
  const torch::Tensor flat_h = h.reshape({-1, config_.hidden_size});
  torch::Tensor logits = torch::GradMode::is_enabled() && flat_h.requires_grad()
                             ? StoredHeadFunction::apply(flat_h, stored_head_.get())
                             : stored_head_logits(*stored_head_, flat_h);
  return logits.view(shape);
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

torch::Tensor LlamaModel::forward(const torch::Tensor& tokens, KVCache* cache, bool last_position_only) const {
  torch::NoGradGuard no_grad;
  const int64_t pos0 = cache ? cache->length : 0;
  torch::Tensor x = embed(tokens);
  for (int i = 0; i < config_.num_layers; ++i) x = layer_forward(i, x, pos0, cache);
  if (cache) cache->length += tokens.size(1);
  return head(last_position_only ? x.narrow(1, x.size(1) - 1, 1).contiguous() : x);
}

}  // namespace lowbit
