#pragma once
#include <functional>
#include <string>
#include <vector>

#include "model/llama_model.h"
#include "tokenizer/tokenizer.h"

namespace lowbit {

// Greedy decoding with the KV cache. Returns the prompt ids (with BOS) followed by up to
// `max_new_tokens` generated ids; stops early at EOS, or at BOS, which starts a new document.
// `on_text` receives each newly completed piece of decoded text (never a partial UTF-8 character).
std::vector<int32_t> generate_greedy(const LlamaModel& model, const Tokenizer& tok, const std::string& prompt,
                                     int max_new_tokens,
                                     const std::function<void(const std::string&)>& on_text = {});

}  // namespace lowbit
