#pragma once
// Tensor names of llama.cpp's GGUF files and their Hugging Face counterparts (llama and qwen2
// architectures), shared by the GGUF reader (gguf_source.cpp) and the exporter (gguf_export.cpp).
#include <string>

namespace lowbit {

// "blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight"; "" for names lowbit does
// not use.
std::string hf_name_of_gguf(const std::string& gguf_name);

// The inverse; "" for names that have no GGUF counterpart (e.g. rotary_emb.inv_freq).
std::string gguf_name_of_hf(const std::string& hf_name);

}  // namespace lowbit
