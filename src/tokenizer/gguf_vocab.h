#pragma once
// The tokenizer part of a GGUF export: the tokenizer.ggml.* metadata that lets llama.cpp, with
// no other file, tokenize exactly as lowbit's Tokenizer does.
//
// SentencePiece style (Kind::SentencePieceBPE) becomes llama.cpp's "llama" (SPM) vocab. That
// tokenizer ignores merge lists: it repeatedly merges the adjacent pair whose concatenation is a
// token with the highest score (leftmost on ties), so every token needs a score. They come from
// tokenizer_dir/tokenizer.model when there is one (SentencePiece's own scores, as llama.cpp's
// convert_hf_to_gguf.py takes them; its pieces must equal lowbit's), else from
// Tokenizer::spm_scores() (derived from merge ranks).
//
// Byte-level BPE (Kind::ByteLevelBPE) becomes llama.cpp's "gpt2" vocab: merges as "a b" strings
// in rank order, and tokenizer.ggml.pre naming the pre-tokenizer. llama.cpp has a fixed regex
// set per pre name, so the name is found by matching split_patterns() against them (llama-bpe,
// qwen2, gpt-2, smollm, default), and then checked on a probe text; a pattern llama.cpp does not
// know, or a pre-tokenizer that splits differently from the name's regexes, is an Error.
//
// Keys, in the order the converter writes them:
//   llama: model, pre ("default"), tokens, scores, token_type,
//          bos/eos/unknown/padding ids, add_bos_token, add_eos_token[, add_space_prefix]
//   gpt2:  model, pre, tokens, token_type, merges,
//          bos/eos/unknown/padding ids, add_bos_token, add_eos_token
// Token ids are UINT32 (an id lowbit does not define is left out), token_type INT32, scores
// FLOAT32. Ids the tokenizer leaves unused become "[PAD<id>]" of type Unused, as in the
// converter; so do ids up to config.json's vocab_size when tokenizer_dir has a larger one.
// add_eos_token is false: lowbit's encode never appends EOS.
//
// Besides tokenizer.model, tokenizer_dir may hold (all optional): tokenizer.json (its model's
// ignore_merges must be what llama.cpp assumes for the pre name), tokenizer_config.json
// (pad_token) and config.json (vocab_size, pad_token_id).
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "io/gguf.h"
#include "tokenizer/tokenizer.h"

namespace lowbit {

// The tokenizer.ggml.* key/values, in the order llama.cpp's converter writes them.
// Throws Error when llama.cpp could not reproduce the tokenizer (see above).
std::vector<std::pair<std::string, GGUFValue>> gguf_tokenizer_metadata(const Tokenizer& tok,
                                                                       const std::string& tokenizer_dir);

// The tokenizer.ggml.pre name llama.cpp uses for these split_patterns() (as tokenizer.json
// writes them, or as llama-vocab.cpp does), or "" if none.
std::string gguf_pre_tokenizer_name(const std::vector<std::string>& split_patterns);

// The other direction, for reading a GGUF's tokenizer back: the regexes llama.cpp applies for a
// tokenizer.ggml.pre name (in tokenizer.json's spelling, each an HF Split with behavior Isolated,
// in order, before the byte-level mapping) and the ignore_merges it sets for that name. nullopt
// for a name not in the table above; gguf_pre_tokenizer_names() lists those that are.
struct GGUFPreTokenizer {
  std::vector<std::string> patterns;
  bool ignore_merges = false;
};
std::optional<GGUFPreTokenizer> gguf_pre_tokenizer(const std::string& name);
std::vector<std::string> gguf_pre_tokenizer_names();

}  // namespace lowbit
