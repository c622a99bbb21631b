// Writes a synthetic Llama-shaped checkpoint (model/synthetic_checkpoint.h) for bench/scale.sh:
//   gen_checkpoint SHAPE OUT_DIR TOKENIZER_DIR     SHAPE: llama-3.2-1b, llama-2-7b, llama-2-13b[:BLOCKS]
#include <chrono>
#include <cstdio>

#include "model/synthetic_checkpoint.h"
#include "util/error.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: gen_checkpoint SHAPE OUT_DIR TOKENIZER_DIR\n");
    return 2;
  }
  try {
    auto t0 = std::chrono::steady_clock::now();
    uint64_t bytes = lowbit::write_synthetic_checkpoint(argv[2], lowbit::SyntheticShape::named(argv[1]), argv[3]);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%s: %.2f GB of bf16 weights in %s (%.0f s)\n", argv[1], double(bytes) / 1e9, argv[2], s);
  } catch (const lowbit::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
