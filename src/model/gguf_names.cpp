#include "model/gguf_names.h"

#include <regex>
#include <utility>
#include <vector>

namespace lowbit {

namespace {

using NamePairs = std::vector<std::pair<std::string, std::string>>;  // {gguf, hf}

const NamePairs& global_names() {
  static const NamePairs names = {{"token_embd.weight", "model.embed_tokens.weight"},
                                  {"output_norm.weight", "model.norm.weight"},
                                  {"output.weight", "lm_head.weight"}};
  return names;
}

// Per decoder layer: blk.N.<gguf> <-> model.layers.N.<hf>.
const NamePairs& layer_names() {
  static const NamePairs names = {
      {"attn_norm.weight", "input_layernorm.weight"},
      {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"attn_q.weight", "self_attn.q_proj.weight"},   {"attn_q.bias", "self_attn.q_proj.bias"},
      {"attn_k.weight", "self_attn.k_proj.weight"},   {"attn_k.bias", "self_attn.k_proj.bias"},
      {"attn_v.weight", "self_attn.v_proj.weight"},   {"attn_v.bias", "self_attn.v_proj.bias"},
      {"attn_output.weight", "self_attn.o_proj.weight"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},
      {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"}};
  return names;
}

std::string translate(const std::string& name, bool to_hf) {
  for (const auto& [gguf, hf] : global_names())
    if (name == (to_hf ? gguf : hf)) return to_hf ? hf : gguf;
  static const std::regex gguf_layer(R"(blk\.(\d+)\.(.+))"), hf_layer(R"(model\.layers\.(\d+)\.(.+))");
  std::smatch m;
  if (!std::regex_match(name, m, to_hf ? gguf_layer : hf_layer)) return "";
  for (const auto& [gguf, hf] : layer_names())
    if (m[2] == (to_hf ? gguf : hf))
      return to_hf ? "model.layers." + m[1].str() + "." + hf : "blk." + m[1].str() + "." + gguf;
  return "";
}

}  // namespace

std::string hf_name_of_gguf(const std::string& gguf_name) { return translate(gguf_name, true); }
std::string gguf_name_of_hf(const std::string& hf_name) { return translate(hf_name, false); }

}  // namespace lowbit
