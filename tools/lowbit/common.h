#pragma once
// What every CLI command shares: runtime options (threads, device) and JSON output.
#include <CLI/CLI.hpp>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "io/output_path.h"
#include "model/model_loader.h"
#include "util/allocator.h"
#include "util/error.h"

namespace lowbit::cli {

// --threads (0: all cores), --device and --max-memory options shared by commands that run the model.
struct RuntimeOptions {
  int threads = 0;
  std::string device = "cpu";
  std::string max_memory;  // e.g. "6G"; "" = a quarter of this machine's RAM
  void add_to(CLI::App* app);
  // Threads and the heap policy; quantize and plan pass HeapPolicy::MapLarge (util/allocator.h).
  void apply(HeapPolicy heap = HeapPolicy::Reuse) const;
  torch::Device torch_device() const;
  int64_t max_memory_bytes() const;
  // Half of --max-memory for materialized decoder blocks; the rest is for activations.
  ModelMemory model_memory() const { return {max_memory_bytes() / 2}; }  // decoder blocks: half
  // For commands that only run the model (eval, generate): quantized weights stay packed.
  ModelMemory run_memory() const { return {max_memory_bytes() / 2, /*packed_weights=*/true}; }
  int64_t activation_memory() const { return max_memory_bytes() / 4; }   // calibration activations
};

// Writes a JSON report or plan, atomically and marked as lowbit's (io/output_path.h); "-" and
// /dev/stdout write to standard output. Check the path with check_output_path before any work.
void write_json(const std::string& path, nlohmann::json j);

}  // namespace lowbit::cli
