#include "common.h"

#include <torch/torch.h>

#include <filesystem>
#include <thread>

#include <unistd.h>

#include "io/output_path.h"
#include "quant/sensitivity.h"  // parse_byte_size
#include "util/allocator.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace lowbit::cli {

void RuntimeOptions::add_to(CLI::App* app) {
  app->add_option("--threads", threads, "CPU threads (0: all cores)");
  app->add_option("--device", device, "cpu or cuda (when LibTorch was built with CUDA)");
  app->add_option("--max-memory", max_memory,
                  "memory for weights and activations, e.g. 6G (default: a quarter of this machine's RAM)");
}

int64_t RuntimeOptions::max_memory_bytes() const {
  if (!max_memory.empty()) {
    const double b = parse_byte_size(max_memory);
    if (!(b >= 1 << 20)) fail("--max-memory {}: give at least 1M", max_memory);
    return int64_t(b);
  }
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? int64_t(pages) * page / 4 : int64_t(4) << 30;
}

void RuntimeOptions::apply(HeapPolicy heap) const {
  int n = threads > 0 ? threads : int(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
  keep_freed_memory(heap);
}

torch::Device RuntimeOptions::torch_device() const {
  if (device == "cpu") return torch::kCPU;
  if (device == "cuda") {
    if (!torch::cuda::is_available()) fail("--device cuda: this LibTorch build has no usable CUDA device");
    return torch::kCUDA;
  }
  fail("unknown --device '{}' (valid: cpu, cuda)", device);
}

void write_json(const std::string& path, nlohmann::json j) {
  if (j.is_object()) j[kJsonOutputKey] = "json";
  AtomicFile f(path);
  f.write(j.dump(2) + "\n");
  f.commit();
}

}  // namespace lowbit::cli
