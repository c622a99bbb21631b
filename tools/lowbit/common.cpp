#include "common.h"

#include <torch/torch.h>

#include <filesystem>
#include <thread>

#include "io/output_path.h"
#include "util/allocator.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace lowbit::cli {

void RuntimeOptions::add_to(CLI::App* app) {
  app->add_option("--threads", threads, "CPU threads (0: all cores)");
  app->add_option("--device", device, "cpu or cuda (when LibTorch was built with CUDA)");
}

void RuntimeOptions::apply() const {
  int n = threads > 0 ? threads : int(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
  keep_freed_memory();
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
