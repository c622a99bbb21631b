#pragma once
// A Llama-shaped Hugging Face checkpoint with random weights, for memory and speed measurements at
// real sizes (bench/scale.sh) and for streaming tests: config.json, bf16 safetensors sharded like
// the Hub's (model-0000i-of-0000N + index), and the real tokenizer.json of `tokenizer_dir` padded
// with unused tokens to the config's vocabulary. Weights are uniform
// in ±scale from a fixed seed, written one tensor at a time, so memory stays at one tensor.
#include <cstdint>
#include <string>

#include "io/dtype.h"

namespace lowbit {

struct SyntheticShape {
  std::string name;  // "llama-2-7b", ...
  int64_t hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0, vocab = 0, context = 4096;
  bool tied = false;
  // llama-3.2-1b, llama-2-7b, llama-2-13b; "llama-2-13b:2" keeps the first 2 blocks.
  static SyntheticShape named(const std::string& spec);
};

struct SyntheticOptions {
  DType dtype = DType::BF16;
  uint64_t max_shard_bytes = uint64_t(5) << 30;  // as transformers' save_pretrained
  uint64_t seed = 1;
  float scale = 0.02f;
};

// Writes the checkpoint into `dir` (created; must not exist). Returns the bytes of weights written.
uint64_t write_synthetic_checkpoint(const std::string& dir, const SyntheticShape& shape, const std::string& tokenizer_dir,
                                    const SyntheticOptions& options = {});

}  // namespace lowbit
